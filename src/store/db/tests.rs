use super::*;
use crate::types::{AckLevel, ContentKind, SIDE_FILE_LOG_ID};

fn new_job(shard_id: ShardId, log_id: LogId) -> SegmentRequest {
    SegmentRequest {
        shard_id,
        log_id,
        size: Some(3),
        sha256: Some(Digest::of(b"abc")),
        kind: ContentKind::Raw,
        ack: AckLevel::Queued,
        zstd_level: None,
    }
}

fn insert(db: &JobDb, shard_id: ShardId, log_id: LogId) -> InsertOutcome {
    db.insert_receiving(&new_job(shard_id, log_id), 3).unwrap()
}

fn new(outcome: InsertOutcome) -> Job {
    match outcome {
        InsertOutcome::New(job) => job,
        other => panic!("expected a new job, got {other:?}"),
    }
}

fn received() -> Received {
    Received {
        size: 3,
        sha256: Digest::of(b"abc"),
        content_xxh3: xxhash_rust::xxh3::xxh3_128(b"abc"),
    }
}

#[test]
fn one_active_job_per_segment_and_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let db = JobDb::open(&dir.path().join("jobs.db")).unwrap();
    let first = new(insert(&db, 1, 10));
    let InsertOutcome::Existing(again) = insert(&db, 1, 10) else {
        panic!("a second active job for one segment");
    };
    assert_eq!(first.id, again.id);
    let second = new(insert(&db, 1, 11));
    let third = new(insert(&db, 1, 12));
    assert_eq!(
        db.shard_status(1).unwrap().unwrap().archived_watermark,
        None
    );

    for job in [&first, &third] {
        db.mark_queued(job.id, &received()).unwrap().unwrap();
        db.mark_archived(job.id, 20, None).unwrap().unwrap();
    }
    assert_eq!(
        db.shard_status(1).unwrap().unwrap().archived_watermark,
        Some(10)
    );
    db.transition(
        second.id,
        &[JobState::Receiving],
        JobState::Failed,
        "interrupted",
    )
    .unwrap()
    .unwrap();
    // A failed segment still holds the watermark back, and can be pushed again.
    assert_eq!(
        db.shard_status(1).unwrap().unwrap().archived_watermark,
        Some(10)
    );
    let retry = new(insert(&db, 1, 11));
    db.mark_queued(retry.id, &received()).unwrap().unwrap();
    db.mark_archived(retry.id, 20, None).unwrap().unwrap();
    let status = db.shard_status(1).unwrap().unwrap();
    assert_eq!(status.archived_watermark, Some(12));
    assert_eq!(
        (
            status.archived,
            status.failed,
            status.bytes_in,
            status.bytes_out
        ),
        (3, 1, 9, 60)
    );
    assert!(db.shard_status(2).unwrap().is_none());
}

fn archive(db: &JobDb, shard_id: ShardId, log_id: LogId) -> Job {
    let job = new(insert(db, shard_id, log_id));
    db.mark_queued(job.id, &received()).unwrap().unwrap();
    db.mark_archived(job.id, 20, None).unwrap().unwrap()
}

#[test]
fn side_files_never_hold_the_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let db = JobDb::open(&dir.path().join("jobs.db")).unwrap();
    archive(&db, 1, 1);
    // A side file that is not archived does not hold segment 2 back...
    new(insert(&db, 1, SIDE_FILE_LOG_ID + 7));
    archive(&db, 1, 2);
    assert_eq!(
        db.shard_status(1).unwrap().unwrap().archived_watermark,
        Some(2)
    );
    // ...and an archived one does not move the watermark beyond the segments.
    archive(&db, 1, SIDE_FILE_LOG_ID + 9);
    let status = db.shard_status(1).unwrap().unwrap();
    assert_eq!(status.archived_watermark, Some(2));
    assert_eq!((status.archived, status.receiving), (3, 1));
}

#[test]
fn an_old_data_dir_is_migrated_with_its_counters_and_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.db");
    {
        // The schema as the first release wrote it, with a little history.
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(schema::BASE_FOR_TESTS).unwrap();
        for (log_id, state, size, archive_size) in [
            (1, "ARCHIVED", 100, 10),
            (2, "ARCHIVED", 200, 20),
            (3, "FAILED", 300, 0),
            (4, "ARCHIVED", 400, 40),
            (5, "QUEUED", 500, 0),
        ] {
            conn.execute(
                "INSERT INTO jobs (shard_id, log_id, state, size, archive_size, kind, ack, zstd_level, created_ms, updated_ms)
                 VALUES (7, ?1, ?2, ?3, ?4, 'raw', 'queued', 3, 1, 1)",
                params![log_id, state, size, archive_size],
            )
            .unwrap();
        }
    }
    let db = JobDb::open(&path).unwrap();
    let status = db.shard_status(7).unwrap().unwrap();
    assert_eq!(
        status.archived_watermark,
        Some(2),
        "the failed log_id 3 holds it"
    );
    assert_eq!(
        (
            status.archived,
            status.failed,
            status.queued,
            status.bytes_in,
            status.bytes_out
        ),
        (3, 1, 1, 700, 70)
    );
    drop(db);
    // Opening again migrates nothing twice.
    let db = JobDb::open(&path).unwrap();
    assert_eq!(db.shard_status(7).unwrap().unwrap().archived, 3);
}

/// A reader racing `fail` must never see FAILED without its failure kind
/// (which reads as "retry" to a client waiting for ARCHIVED).
#[test]
fn a_failure_is_recorded_with_its_kind_in_one_step() {
    let dir = tempfile::tempdir().unwrap();
    let db = std::sync::Arc::new(JobDb::open(&dir.path().join("jobs.db")).unwrap());
    let ids: Vec<JobId> = (0..300)
        .map(|log_id| new(insert(&db, 1, log_id)).id)
        .collect();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (db, done, ids) = (db.clone(), done.clone(), ids.clone());
        std::thread::spawn(move || {
            let mut seen_failed = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                for id in &ids {
                    let job = db.get(*id).unwrap().unwrap();
                    if job.state == JobState::Failed {
                        assert_eq!(job.failure, Some(FailureKind::InvalidData), "{job:?}");
                        seen_failed += 1;
                    }
                }
            }
            seen_failed
        })
    };
    for id in &ids {
        db.fail(
            *id,
            &[JobState::Receiving],
            FailureKind::InvalidData,
            "bad line",
        )
        .unwrap()
        .unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(reader.join().unwrap() > 0, "the reader saw failed jobs");
}

#[test]
fn retention_candidates_keep_the_newest_and_stay_at_or_below_the_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let db = JobDb::open(&dir.path().join("jobs.db")).unwrap();
    for log_id in 1..=10 {
        archive(&db, 1, log_id);
    }
    let log_ids = |jobs: Vec<Job>| jobs.iter().map(|j| j.log_id).collect::<Vec<_>>();
    assert_eq!(
        log_ids(db.retention_candidates(1, 10, 3, None, 100).unwrap()),
        (1..=7).collect::<Vec<_>>()
    );
    assert_eq!(
        log_ids(db.retention_candidates(1, 5, 0, None, 100).unwrap()),
        (1..=5).collect::<Vec<_>>()
    );
    assert_eq!(
        log_ids(db.retention_candidates(1, 10, 0, None, 2).unwrap()),
        vec![1, 2]
    );
    let first = db
        .retention_candidates(1, 10, 0, None, 1)
        .unwrap()
        .remove(0);
    db.mark_expired(first.id).unwrap();
    assert_eq!(db.unfinished_removals(1).unwrap().len(), 1);
    assert_eq!(
        log_ids(db.retention_candidates(1, 10, 8, None, 100).unwrap()),
        vec![2]
    );
    db.mark_archive_removed(first.id).unwrap();
    assert!(db.unfinished_removals(1).unwrap().is_empty());
    // An expired job stays ARCHIVED: the watermark never moves back.
    assert_eq!(
        db.shard_status(1).unwrap().unwrap().archived_watermark,
        Some(10)
    );
}
