//! The jobs database: one SQLite file in WAL mode with `synchronous = FULL`, so
//! a committed state change survives power loss — an acknowledgement is only
//! sent after the row that backs it is committed. At most one job per
//! (shard_id, log_id) is active (not FAILED or CANCELLED), enforced by a
//! partial unique index, which is what makes pushes idempotent under races.

mod rows;
mod shards;

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

use super::StoreError;
use crate::types::{
    Digest, FailureKind, Job, JobFilter, JobId, JobState, JsonStats, LogId, SegmentRequest,
    ShardId, now_unix_ms,
};
use rows::{COLUMNS, active_job, get, job_from_row};

pub struct JobDb {
    conn: Mutex<Connection>,
}

/// What recording a new RECEIVING job found.
#[derive(Debug)]
pub enum InsertOutcome {
    /// The job was recorded.
    New(Job),
    /// The segment already has an active (not FAILED or CANCELLED) job.
    Existing(Job),
}

/// What receiving a segment proved about it.
#[derive(Clone, Copy, Debug)]
pub struct Received {
    pub size: u64,
    pub sha256: Digest,
    pub content_xxh3: u128,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    shard_id      INTEGER NOT NULL,
    log_id        INTEGER NOT NULL,
    state         TEXT    NOT NULL,
    reason        TEXT    NOT NULL DEFAULT '',
    size          INTEGER,
    sha256        BLOB,
    kind          TEXT    NOT NULL,
    ack           TEXT    NOT NULL,
    zstd_level    INTEGER NOT NULL,
    archive_size  INTEGER,
    json_entries  INTEGER,
    json_first_ts INTEGER,
    json_last_ts  INTEGER,
    content_xxh3  BLOB,
    failure       TEXT,
    expired_ms    INTEGER,
    created_ms    INTEGER NOT NULL,
    updated_ms    INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_one_active_per_segment
    ON jobs(shard_id, log_id) WHERE state NOT IN ('FAILED', 'CANCELLED');
CREATE INDEX IF NOT EXISTS jobs_by_segment ON jobs(shard_id, log_id);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs(state);
";

impl JobDb {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.execute_batch(SCHEMA)?;
        Ok(JobDb {
            conn: Mutex::new(conn),
        })
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = self
            .conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&conn)
    }

    /// Records a new RECEIVING job, or returns the segment's active job if it has one.
    pub fn insert_receiving(
        &self,
        new: &SegmentRequest,
        zstd_level: i32,
    ) -> Result<InsertOutcome, StoreError> {
        self.with(|conn| {
            let now = now_unix_ms();
            let inserted = conn.execute(
                "INSERT INTO jobs (shard_id, log_id, state, size, sha256, kind, ack, zstd_level, created_ms, updated_ms)
                 VALUES (?1, ?2, 'RECEIVING', ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
                params![
                    new.shard_id,
                    new.log_id as i64,
                    new.size.map(|s| s as i64),
                    new.sha256.map(|d| d.0.to_vec()),
                    new.kind.as_str(),
                    new.ack.as_str(),
                    zstd_level,
                    now
                ],
            );
            match inserted {
                Ok(_) => {
                    let id = JobId(conn.last_insert_rowid() as u64);
                    let job = get(conn, id)?.ok_or_else(|| StoreError::Corrupt(format!("job {id} vanished")))?;
                    Ok(InsertOutcome::New(job))
                }
                Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::ConstraintViolation => {
                    let existing = active_job(conn, new.shard_id, new.log_id)?
                        .ok_or_else(|| StoreError::Corrupt("active job vanished during insert".into()))?;
                    Ok(InsertOutcome::Existing(existing))
                }
                Err(e) => Err(e.into()),
            }
        })
    }

    pub fn get(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        self.with(|conn| get(conn, id))
    }

    pub fn active_job(&self, shard_id: ShardId, log_id: LogId) -> Result<Option<Job>, StoreError> {
        self.with(|conn| active_job(conn, shard_id, log_id))
    }

    /// The ARCHIVED job of a segment, if any.
    pub fn archived_job(
        &self,
        shard_id: ShardId,
        log_id: LogId,
    ) -> Result<Option<Job>, StoreError> {
        self.with(|conn| {
            let sql = format!("SELECT {COLUMNS} FROM jobs WHERE shard_id = ?1 AND log_id = ?2 AND state = 'ARCHIVED'");
            conn.query_row(&sql, params![shard_id, log_id as i64], job_from_row)
                .optional()?
                .transpose()
        })
    }

    /// RECEIVING → QUEUED with the verified size, digest, content checksum and JSON statistics.
    pub fn mark_queued(&self, id: JobId, received: &Received) -> Result<Option<Job>, StoreError> {
        self.with(|conn| {
            let changed = conn.execute(
                "UPDATE jobs SET state = 'QUEUED', size = ?2, sha256 = ?3, content_xxh3 = ?4, updated_ms = ?5
                 WHERE id = ?1 AND state = 'RECEIVING'",
                params![
                    id.0 as i64,
                    received.size as i64,
                    received.sha256.0.to_vec(),
                    received.content_xxh3.to_le_bytes().to_vec(),
                    now_unix_ms()
                ],
            )?;
            if changed == 0 { Ok(None) } else { get(conn, id) }
        })
    }

    /// Moves a job to `to` if it is in one of `from`; `None` when it was not
    /// (someone else moved it first: a cancel racing a worker, say).
    pub fn transition(
        &self,
        id: JobId,
        from: &[JobState],
        to: JobState,
        reason: &str,
    ) -> Result<Option<Job>, StoreError> {
        self.with(|conn| {
            let from_list = from.iter().map(|s| format!("'{}'", s.as_str())).collect::<Vec<_>>().join(",");
            let sql = format!(
                "UPDATE jobs SET state = ?2, reason = ?3, updated_ms = ?4 WHERE id = ?1 AND state IN ({from_list})"
            );
            let changed = conn.execute(&sql, params![id.0 as i64, to.as_str(), reason, now_unix_ms()])?;
            if changed == 0 { Ok(None) } else { get(conn, id) }
        })
    }

    pub fn mark_archived(
        &self,
        id: JobId,
        archive_size: u64,
        json: Option<JsonStats>,
    ) -> Result<Option<Job>, StoreError> {
        self.with(|conn| {
            let changed = conn.execute(
                "UPDATE jobs SET state = 'ARCHIVED', reason = '', archive_size = ?2, json_entries = ?3,
                        json_first_ts = ?4, json_last_ts = ?5, updated_ms = ?6
                 WHERE id = ?1 AND state IN ('QUEUED', 'COMPRESSING')",
                params![
                    id.0 as i64,
                    archive_size as i64,
                    json.map(|j| j.entries as i64),
                    json.and_then(|j| j.first_timestamp),
                    json.and_then(|j| j.last_timestamp),
                    now_unix_ms()
                ],
            )?;
            if changed == 0 {
                Ok(None)
            } else {
                get(conn, id)
            }
        })
    }

    /// Moves a job in one of `from` to FAILED with its kind and reason.
    pub fn fail(
        &self,
        id: JobId,
        from: &[JobState],
        kind: FailureKind,
        reason: &str,
    ) -> Result<Option<Job>, StoreError> {
        let job = self.transition(id, from, JobState::Failed, reason)?;
        if job.is_none() {
            return Ok(None);
        }
        self.with(|conn| {
            conn.execute(
                "UPDATE jobs SET failure = ?2 WHERE id = ?1",
                params![id.0 as i64, kind.as_str()],
            )?;
            get(conn, id)
        })
    }

    pub fn list(&self, filter: &JobFilter) -> Result<Vec<Job>, StoreError> {
        self.with(|conn| {
            let sql = format!(
                "SELECT {COLUMNS} FROM jobs
                 WHERE (?1 IS NULL OR shard_id = ?1) AND (?2 IS NULL OR state = ?2)
                   AND (?3 IS NULL OR log_id >= ?3) AND (?4 IS NULL OR log_id <= ?4)
                   AND id > ?5
                 ORDER BY id LIMIT ?6"
            );
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(
                params![
                    filter.shard_id,
                    filter.state.map(JobState::as_str),
                    filter.log_id_min.map(|l| l.min(i64::MAX as u64) as i64),
                    filter.log_id_max.map(|l| l.min(i64::MAX as u64) as i64),
                    filter.after.map_or(0, |id| id.0 as i64),
                    filter.limit as i64
                ],
                job_from_row,
            )?;
            rows.map(|row| row?).collect()
        })
    }

    pub fn in_states(&self, states: &[JobState]) -> Result<Vec<Job>, StoreError> {
        let mut jobs = Vec::new();
        for state in states {
            let filter = JobFilter {
                state: Some(*state),
                limit: usize::MAX >> 1,
                ..JobFilter::default()
            };
            jobs.extend(self.list(&filter)?);
        }
        jobs.sort_by_key(|job| job.id);
        Ok(jobs)
    }

    /// ARCHIVED jobs of a shard by log_id, expired ones included.
    pub fn archived_jobs(&self, shard_id: ShardId) -> Result<Vec<Job>, StoreError> {
        self.with(|conn| {
            let sql = format!("SELECT {COLUMNS} FROM jobs WHERE shard_id = ?1 AND state = 'ARCHIVED' ORDER BY log_id");
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(params![shard_id], job_from_row)?;
            rows.map(|row| row?).collect()
        })
    }

    /// Records that retention removed a job's archive.
    pub fn mark_expired(&self, id: JobId) -> Result<(), StoreError> {
        self.with(|conn| {
            conn.execute(
                "UPDATE jobs SET expired_ms = ?2 WHERE id = ?1 AND expired_ms IS NULL",
                params![id.0 as i64, now_unix_ms()],
            )?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{AckLevel, ContentKind};

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
}
