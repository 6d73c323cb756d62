//! A job's life through the real server: every state seen by a watcher,
//! cancel in each state, status kept across restarts, fairness between
//! shards, and a graceful shutdown that keeps queued work.

mod common;

use std::time::Duration;

use common::calls::{assert_status, health_status, push_archived};
use common::*;
use futures::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use wal_archiver::client::{Client, PushOptions, RetryPolicy};
use wal_archiver::proto;
use wal_archiver::types::{AckLevel, ContentKind, JobId, JobState};

const LIMIT: Duration = Duration::from_secs(120);

async fn job_id_in(server: &Server, shard: u32, state: proto::JobState) -> u64 {
    let mut rpc = server.rpc().await;
    eventually(LIMIT, || {
        let mut rpc = rpc.clone();
        async move {
            let request = proto::ListJobsRequest {
                shard_id: Some(shard),
                state: state as i32,
                ..Default::default()
            };
            rpc.list_jobs(request)
                .await
                .ok()?
                .into_inner()
                .jobs
                .first()
                .map(|j| j.job_id)
        }
    })
    .await
    .max(
        rpc.get_shard(proto::GetShardRequest { shard_id: shard })
            .await
            .map(|_| 0)
            .unwrap_or(0),
    )
}

/// A segment slow enough to compress (level 19) that it is reliably seen COMPRESSING.
fn slow_options() -> PushOptions {
    PushOptions {
        kind: ContentKind::JsonLines,
        zstd_level: Some(19),
        ..PushOptions::default()
    }
}

fn write_segment(dir: &std::path::Path, name: &str, seed: u64, size: usize) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, json_segment(seed, size)).unwrap();
    path
}

/// One compression worker, no lane for small jobs, no zstd threads: while
/// `occupy_the_worker` holds it, every other push stays QUEUED.
const ONE_WORKER: [&str; 6] = [
    "--archive-parallelism",
    "1",
    "--multithread-min-size",
    "0",
    "--small-job-size",
    "0",
];

/// Pushes `size` bytes at zstd level 19 as `shard`'s log 1 and waits until
/// the server's one worker compresses it, so the next push stays QUEUED.
/// The job and the segment's file.
async fn occupy_the_worker(
    client: &Client,
    dir: &std::path::Path,
    shard: u32,
    size: usize,
) -> (JobId, std::path::PathBuf) {
    let slow = write_segment(dir, "slow.log", 3, size);
    let running = client
        .push_file(shard, 1, &slow, &slow_options())
        .await
        .unwrap()
        .job
        .id;
    eventually(LIMIT, || async {
        (client.job(running).await.ok()?.state == JobState::Compressing).then_some(())
    })
    .await;
    (running, slow)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sees_every_state_in_order() {
    let server = Server::start(&[]);
    let data = json_segment(1, 2 << 20);
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tx.send(header_msg(header(1, 1, &data))).await.unwrap();
    let chunks = data_msgs(&data, 256 << 10);
    let (first, rest) = chunks.split_at(2);
    for m in first {
        tx.send(m.clone()).await.unwrap();
    }
    let mut rpc = server.rpc().await;
    let upload = tokio::spawn(async move { rpc.archive(ReceiverStream::new(rx)).await });
    let id = job_id_in(&server, 1, proto::JobState::Receiving).await;
    let client = server.client().await;
    let states = client.watch(id).await.unwrap();
    for m in rest {
        tx.send(m.clone()).await.unwrap();
    }
    drop(tx);
    upload.await.unwrap().unwrap();
    let seen: Vec<JobState> = states.map(|job| job.unwrap().state).collect().await;
    assert_eq!(
        seen,
        vec![
            JobState::Receiving,
            JobState::Queued,
            JobState::Compressing,
            JobState::Archived
        ]
    );

    let unknown = client.watch(424_242).await.err().and_then(|e| e.code());
    assert_eq!(unknown, Some(Code::NotFound));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_in_every_state() {
    let server = Server::start(&ONE_WORKER);
    let client = server.client().await;
    let dir = tempfile::tempdir().unwrap();

    // RECEIVING: the uploader's call ends CANCELLED.
    let data = json_segment(2, 300_000);
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(header_msg(header(1, 1, &data))).await.unwrap();
    let mut rpc = server.rpc().await;
    let upload = tokio::spawn(async move { rpc.archive(ReceiverStream::new(rx)).await });
    let receiving = job_id_in(&server, 1, proto::JobState::Receiving).await;
    assert_eq!(
        client.cancel(receiving).await.unwrap().state,
        JobState::Cancelled
    );
    assert_eq!(upload.await.unwrap().unwrap_err().code(), Code::Cancelled);
    drop(tx);

    // COMPRESSING and QUEUED: one worker, busy with a slow segment.
    let (running, _) = occupy_the_worker(&client, dir.path(), 2, 24 << 20).await;
    let queued_path = write_segment(dir.path(), "queued.log", 4, 100_000);
    let queued = client
        .push_file(2, 2, &queued_path, &PushOptions::default())
        .await
        .unwrap()
        .job
        .id;
    assert_eq!(client.job(queued).await.unwrap().state, JobState::Queued);
    assert_eq!(
        client.cancel(queued).await.unwrap().state,
        JobState::Cancelled
    );
    assert_eq!(
        client.cancel(running).await.unwrap().state,
        JobState::Cancelled
    );
    eventually(LIMIT, || async {
        server.spool_files().is_empty().then_some(())
    })
    .await;
    assert!(server.archives(2).is_empty());
    assert!(server.temporaries().is_empty());
    assert_eq!(
        client.shard(2).await.unwrap().archived_watermark,
        None,
        "cancelled segments hold the watermark"
    );

    // Finished: FAILED_PRECONDITION. A cancelled segment can be pushed again.
    let again = client
        .push_file(2, 2, &queued_path, &PushOptions::default())
        .await
        .unwrap();
    let done = client.wait(again.job.id).await.unwrap();
    let refused = client.cancel(done.id).await.unwrap_err();
    assert_eq!(refused.code(), Some(Code::FailedPrecondition));
    assert!(refused.to_string().contains("ARCHIVED"), "{refused}");
}

/// A cancel of a QUEUED job cut by its deadline (the jobs database was
/// locked) still completes: the job ends CANCELLED, and a push waiting for
/// it to be ARCHIVED is told so instead of waiting for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_past_its_deadline_still_ends_the_wait_for_archived() {
    let server = Server::start(&[&ONE_WORKER[..], &["--unary-timeout-ms", "200"]].concat());
    let client = server.client().await.retry_policy(RetryPolicy::none());
    let dir = tempfile::tempdir().unwrap();
    occupy_the_worker(&client, dir.path(), 2, 24 << 20).await;
    let queued_path = write_segment(dir.path(), "queued.log", 4, 100_000);
    let waiter = client.clone();
    let waiting = tokio::spawn(async move {
        let archived = PushOptions {
            ack: AckLevel::Archived,
            ..PushOptions::default()
        };
        waiter.push_file(2, 2, &queued_path, &archived).await
    });
    let queued = job_id_in(&server, 2, proto::JobState::Queued).await;

    let lock = server.lock_jobs_db();
    let late = client.cancel(queued).await.unwrap_err();
    assert_eq!(late.code(), Some(Code::DeadlineExceeded), "{late}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    lock.release();

    let ended = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("the push waiting for ARCHIVED was never told of the cancel")
        .unwrap()
        .unwrap_err();
    assert_eq!(ended.code(), Some(Code::Aborted), "{ended}");
    assert!(
        ended.to_string().contains("cancelled by request"),
        "{ended}"
    );
    assert_eq!(client.job(queued).await.unwrap().state, JobState::Cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_status() {
    let mut server = Server::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let client = server.client().await;
    let mut segments = Vec::new();
    for (shard, log_id) in [(1u32, 1u64), (1, 2), (2, 1)] {
        let path = write_segment(
            dir.path(),
            &format!("{shard}-{log_id}"),
            shard as u64 * 10 + log_id,
            200_000,
        );
        let pushed = client
            .push_file(shard, log_id, &path, &PushOptions::default())
            .await
            .unwrap();
        client.wait(pushed.job.id).await.unwrap();
        segments.push((shard, log_id, path));
    }
    let mut rpc = server.rpc().await;
    let data = json_segment(99, 10_000);
    let mut lying = header(2, 2, &data);
    lying.sha256 = bytes::Bytes::copy_from_slice(&[1u8; 32]);
    push(&mut rpc, lying, &data).await.unwrap_err();
    let before = client
        .list(&wal_archiver::types::JobFilter::default())
        .await
        .unwrap()
        .0;
    let shards_before = (
        client.shard(1).await.unwrap(),
        client.shard(2).await.unwrap(),
    );

    assert!(server.terminate().success(), "SIGTERM exits 0");
    server.restart();
    let client = server.client().await;
    let after = client
        .list(&wal_archiver::types::JobFilter::default())
        .await
        .unwrap()
        .0;
    assert_eq!(before, after);
    assert_eq!(
        (
            client.shard(1).await.unwrap(),
            client.shard(2).await.unwrap()
        ),
        shards_before
    );
    for (shard, log_id, path) in &segments {
        let mut restored = std::io::Cursor::new(Vec::new());
        client
            .restore_to(*shard, *log_id, &mut restored, None)
            .await
            .unwrap();
        assert_eq!(&restored.into_inner(), &std::fs::read(path).unwrap());
    }
    let next = client
        .push_file(3, 1, &segments[0].2, &PushOptions::default())
        .await
        .unwrap();
    assert!(
        next.job.id > before.iter().map(|j| j.id).max().unwrap(),
        "job ids continue"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shards_progress_while_a_third_is_flooded() {
    let server = Server::start(&[
        "--archive-parallelism",
        "1",
        // One worker and no small lane: a queued job stays queued.
        "--small-job-size",
        "0",
        "--archive-queue-size",
        "64",
        "--multithread-min-size",
        "0",
    ]);
    let client = server.client().await;
    let dir = tempfile::tempdir().unwrap();
    let flood = write_segment(dir.path(), "flood.log", 5, 2 << 20);
    for log_id in 1..=12 {
        client
            .push_file(3, log_id, &flood, &slow_options())
            .await
            .unwrap();
    }
    let small = write_segment(dir.path(), "small.log", 6, 50_000);
    let one = client
        .push_file(1, 1, &small, &PushOptions::default())
        .await
        .unwrap();
    let two = client
        .push_file(2, 1, &small, &PushOptions::default())
        .await
        .unwrap();
    client.wait(one.job.id).await.unwrap();
    client.wait(two.job.id).await.unwrap();
    let flooded = client.shard(3).await.unwrap();
    assert!(
        flooded.queued >= 6,
        "shards 1 and 2 waited for most of shard 3's queue: {flooded:?}"
    );
}

/// A job's state and spool as the jobs database and the data dir hold them,
/// read with the server stopped.
fn state_on_disk(server: &Server, id: wal_archiver::types::JobId) -> String {
    let db = rusqlite::Connection::open_with_flags(
        server.data_dir.join("jobs.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open jobs.db read-only");
    db.query_row(
        "SELECT state FROM jobs WHERE id = ?1",
        [id.0 as i64],
        |row| row.get(0),
    )
    .expect("the job's row")
}

/// SIGTERM with a compression that cannot finish within `shutdown_grace` and
/// two jobs waiting behind it: the grace is enforced (the compression is
/// interrupted, not waited for: its job is back to QUEUED when the process
/// has exited 0) and queued jobs are kept, not drained (still QUEUED, with
/// their spool files, in the stopped server's data dir). At the next start
/// all three are archived, byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_interrupts_after_the_grace_and_keeps_queued_jobs() {
    let mut server = Server::start(&[
        "--archive-parallelism",
        "1",
        // One worker and no small lane: a queued job stays queued.
        "--small-job-size",
        "0",
        "--shutdown-grace",
        "1",
        "--multithread-min-size",
        "0",
    ]);
    let client = server.client().await;
    let dir = tempfile::tempdir().unwrap();
    // Level 19 on 16 MiB takes about 14 s of CPU on this project's machines,
    // far past the 1 s grace.
    let (running, slow) = occupy_the_worker(&client, dir.path(), 1, 16 << 20).await;
    let mut queued = Vec::new();
    for log_id in 2..=3 {
        let path = write_segment(dir.path(), &format!("q{log_id}"), 10 + log_id, 100_000);
        queued.push((
            log_id,
            client
                .push_file(1, log_id, &path, &PushOptions::default())
                .await
                .unwrap()
                .job
                .id,
            path,
        ));
    }

    signal(server.pid(), libc::SIGTERM);
    let channel = tonic::transport::Endpoint::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let not_serving = tonic_health::pb::health_check_response::ServingStatus::NotServing;
    eventually(LIMIT, || async {
        (health_status(&channel).await == Some(not_serving)).then_some(())
    })
    .await;
    let mut rpc = server.rpc().await;
    let data = json_segment(20, 1000);
    let refused = push(&mut rpc, header(1, 9, &data), &data)
        .await
        .unwrap_err();
    assert_status(
        &refused,
        Code::Unavailable,
        "the service is shutting down; retry later",
    );
    drop((channel, rpc, client));
    // No second SIGTERM: that would mean "stop now".
    assert!(
        server.wait_exit(LIMIT).success(),
        "exit code 0 after draining"
    );

    // The stopped server's data dir: nothing ran to the end, nothing was lost.
    assert_eq!(
        state_on_disk(&server, running),
        "QUEUED",
        "the compression was interrupted after the grace and its job put back"
    );
    for (log_id, id, _) in &queued {
        assert_eq!(
            state_on_disk(&server, *id),
            "QUEUED",
            "log_id {log_id} was kept queued, not drained"
        );
    }
    assert_eq!(server.spool_files().len(), 3, "{:?}", server.spool_files());
    assert!(server.archives(1).is_empty(), "{:?}", server.archives(1));
    assert!(
        server.temporaries().is_empty(),
        "{:?}",
        server.temporaries()
    );
    let log = server.log_text();
    assert!(
        log.contains("job interrupted") && log.contains("Shutdown"),
        "the log says the job was interrupted by the shutdown:\n{log}"
    );

    server.restart();
    let client = server.client().await;
    let resumed = client.wait(running).await.unwrap();
    assert_eq!(
        resumed.state,
        JobState::Archived,
        "the interrupted job is resumed, not lost"
    );
    assert_eq!(
        zstd_decode(&server.archive_path(1, 1)),
        std::fs::read(&slow).unwrap()
    );
    for (log_id, id, path) in queued {
        client.wait(id).await.unwrap();
        let mut restored = std::io::Cursor::new(Vec::new());
        client
            .restore_to(1, log_id, &mut restored, None)
            .await
            .unwrap();
        assert_eq!(restored.into_inner(), std::fs::read(path).unwrap());
    }
    assert!(server.spool_files().is_empty());
}

/// ListJobs between log_id_min and log_id_max (inclusive), alone or with a
/// shard and a state, page by page: every job in the range once, in job
/// order, and an empty page token only on the last page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_jobs_by_log_id_range_and_pages() {
    let server = Server::start(&[]);
    let mut rpc = server.rpc().await;
    // Shards 1 and 2 push log_ids 1..=9 in turns, so their job ids interleave;
    // shard 1's log_id 5 fails once before it is archived.
    for log_id in 1..=9u64 {
        for shard in [1u32, 2] {
            let data = json_segment(shard as u64 * 100 + log_id, 5_000);
            if (shard, log_id) == (1, 5) {
                let mut lying = header(shard, log_id, &data);
                lying.sha256 = bytes::Bytes::copy_from_slice(&[3u8; 32]);
                push(&mut rpc, lying, &data).await.unwrap_err();
            }
            push_archived(&mut rpc, shard, log_id, &data).await;
        }
    }
    // Every page of a listing: (shard, log_id, state) of each job, and the page sizes.
    let list_all = |request: proto::ListJobsRequest| {
        let mut rpc = rpc.clone();
        async move {
            let mut request = request;
            let mut seen = Vec::new();
            let mut pages = Vec::new();
            let mut last_id = 0;
            loop {
                let reply = rpc.list_jobs(request.clone()).await.unwrap().into_inner();
                pages.push(reply.jobs.len());
                for job in &reply.jobs {
                    assert!(job.job_id > last_id, "jobs in job order");
                    last_id = job.job_id;
                    seen.push((
                        job.shard_id,
                        job.log_id,
                        proto::JobState::try_from(job.state).unwrap(),
                    ));
                }
                if reply.next_page_token.is_empty() {
                    return (seen, pages);
                }
                request.page_token = reply.next_page_token;
            }
        }
    };
    use proto::JobState::{Archived, Failed};
    let range = |shard: Option<u32>, min: Option<u64>, max: Option<u64>, page_size: u32| {
        proto::ListJobsRequest {
            shard_id: shard,
            log_id_min: min,
            log_id_max: max,
            page_size,
            ..Default::default()
        }
    };

    // One shard, a range, pages of 2: the failed attempt at log_id 5 is listed too.
    let (jobs, pages) = list_all(range(Some(1), Some(3), Some(7), 2)).await;
    assert_eq!(
        jobs,
        vec![
            (1, 3, Archived),
            (1, 4, Archived),
            (1, 5, Failed),
            (1, 5, Archived),
            (1, 6, Archived),
            (1, 7, Archived)
        ]
    );
    assert_eq!(
        pages,
        vec![2, 2, 2, 0],
        "a full last page is followed by an empty one"
    );
    // With a state: only the archived jobs of the range.
    let mut archived_only = range(Some(1), Some(3), Some(7), 4);
    archived_only.state = Archived as i32;
    let (jobs, pages) = list_all(archived_only).await;
    assert_eq!(
        jobs,
        (3..=7)
            .map(|log_id| (1, log_id, Archived))
            .collect::<Vec<_>>()
    );
    assert_eq!(pages, vec![4, 1]);
    // Open ends.
    let (jobs, _) = list_all(range(Some(2), Some(8), None, 0)).await;
    assert_eq!(jobs, vec![(2, 8, Archived), (2, 9, Archived)]);
    let (jobs, _) = list_all(range(Some(2), None, Some(2), 0)).await;
    assert_eq!(jobs, vec![(2, 1, Archived), (2, 2, Archived)]);
    // Every shard: the range applies to each, pages cross shards.
    let (jobs, pages) = list_all(range(None, Some(8), Some(9), 3)).await;
    assert_eq!(
        jobs,
        vec![
            (1, 8, Archived),
            (2, 8, Archived),
            (1, 9, Archived),
            (2, 9, Archived)
        ]
    );
    assert_eq!(pages, vec![3, 1]);
    // An empty range.
    let (jobs, pages) = list_all(range(Some(1), Some(7), Some(3), 0)).await;
    assert!(jobs.is_empty(), "{jobs:?}");
    assert_eq!(pages, vec![0]);

    // The client library pages the same way.
    let client = server.client().await;
    let mut filter = wal_archiver::types::JobFilter {
        shard_id: Some(2),
        log_id_min: Some(2),
        log_id_max: Some(6),
        limit: 2,
        ..Default::default()
    };
    let mut log_ids = Vec::new();
    loop {
        let (page, next) = client.list(&filter).await.unwrap();
        log_ids.extend(page.iter().map(|job| job.log_id));
        match next {
            Some(after) => filter.after = Some(after),
            None => break,
        }
    }
    assert_eq!(log_ids, vec![2, 3, 4, 5, 6]);
}

/// SIGTERM right after the server says it listens must still drain and exit 0
/// (the handlers are installed before it listens; once they were not).
#[test]
fn sigterm_right_after_start_exits_cleanly() {
    for round in 0..20 {
        let mut server = Server::start(&[]);
        let status = server.terminate();
        assert!(
            status.success(),
            "round {round}: {status:?}\n{}",
            server.log_text()
        );
    }
}
