//! The jobs database: one SQLite file in WAL mode with `synchronous = FULL`, so
//! a committed state change survives power loss — an acknowledgement is only
//! sent after the row that backs it is committed. At most one job per
//! (shard_id, log_id) is active (not FAILED or CANCELLED), enforced by a
//! partial unique index, which is what makes pushes idempotent under races.
//!
//! Writes go through one connection; reads take a connection of their own
//! from a small pool, so a slow read (a long listing, verify) never holds up
//! the write that acknowledges a push. Per-shard counters and the watermark
//! are kept by triggers (`schema`), so reading them costs an index lookup
//! whatever a shard's history.

mod rows;
mod schema;
mod shards;

pub use shards::ResolveOutcome;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::StoreError;
use crate::types::{
    Digest, FailureKind, Job, JobFilter, JobId, JobState, JsonStats, LogId, Received,
    SegmentRequest, ShardId, now_unix_ms,
};
use rows::{COLUMNS, active_job, get, job_from_row};

/// How long a statement waits for another writer (a backup tool holding
/// the database, a checkpoint) before it fails.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Reader connections kept open between reads.
const IDLE_READERS: usize = 8;

pub struct JobDb {
    /// The database held no jobs when it was opened.
    fresh: bool,
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
}

/// What recording a new RECEIVING job found.
#[derive(Debug)]
pub enum InsertOutcome {
    /// The job was recorded.
    New(Job),
    /// The segment already has an active (not FAILED or CANCELLED) job.
    Existing(Job),
}

/// An archive found in the store, as its header describes it.
#[derive(Clone, Copy, Debug)]
pub struct FoundArchive {
    pub shard_id: ShardId,
    pub log_id: LogId,
    pub size: u64,
    pub sha256: Digest,
    pub kind: crate::types::ContentKind,
    pub zstd_level: i32,
    pub archive_size: u64,
}

impl JobDb {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut writer = Connection::open(path)?;
        writer.pragma_update(None, "journal_mode", "WAL")?;
        writer.pragma_update(None, "synchronous", "FULL")?;
        writer.busy_timeout(BUSY_TIMEOUT)?;
        let fresh = schema::migrate(&mut writer)?;
        Ok(JobDb {
            fresh,
            path: path.to_owned(),
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
        })
    }

    /// The database held no jobs when it was opened: a new data dir, or one
    /// whose database was lost.
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    /// Records an archive found in the store as an ARCHIVED job (rebuilding a
    /// lost jobs database); `false` when the segment has an active job already.
    pub fn insert_archived(&self, found: &FoundArchive) -> Result<bool, StoreError> {
        self.write(|conn| {
            let now = now_unix_ms();
            let inserted = conn.execute(
                "INSERT INTO jobs (shard_id, log_id, state, reason, size, sha256, kind, ack, zstd_level,
                                   archive_size, created_ms, updated_ms)
                 VALUES (?1, ?2, 'ARCHIVED', 'found in the archive store', ?3, ?4, ?5, 'queued', ?6, ?7, ?8, ?8)",
                params![
                    found.shard_id,
                    found.log_id as i64,
                    found.size as i64,
                    found.sha256.0.to_vec(),
                    found.kind.as_str(),
                    found.zstd_level,
                    found.archive_size as i64,
                    now
                ],
            );
            match inserted {
                Ok(_) => Ok(true),
                Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::ConstraintViolation => Ok(false),
                Err(e) => Err(e.into()),
            }
        })
    }

    /// Marks `log_id` of a shard as submitted but not archived, so the
    /// watermark stops before it until it is archived (or resolved).
    pub fn mark_pending(&self, shard_id: ShardId, log_id: LogId) -> Result<(), StoreError> {
        self.write(|conn| {
            conn.execute(
                "INSERT INTO segments (shard_id, log_id, state, since_ms) VALUES (?1, ?2, 0, ?3) ON CONFLICT DO NOTHING",
                params![shard_id, log_id as i64, now_unix_ms()],
            )?;
            Ok(())
        })
    }

    fn write<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = self
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&conn)
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let pooled = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match pooled {
            Some(conn) => conn,
            None => {
                let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
                let conn = Connection::open_with_flags(&self.path, flags)?;
                conn.busy_timeout(BUSY_TIMEOUT)?;
                conn
            }
        };
        let result = f(&conn);
        let mut idle = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < IDLE_READERS {
            idle.push(conn);
        }
        result
    }

    /// Records a new RECEIVING job, or returns the segment's active job if it has one.
    pub fn insert_receiving(
        &self,
        new: &SegmentRequest,
        zstd_level: i32,
    ) -> Result<InsertOutcome, StoreError> {
        self.write(|conn| {
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
        self.read(|conn| get(conn, id))
    }

    pub fn active_job(&self, shard_id: ShardId, log_id: LogId) -> Result<Option<Job>, StoreError> {
        self.read(|conn| active_job(conn, shard_id, log_id))
    }

    /// The ARCHIVED job of a segment, if any.
    pub fn archived_job(
        &self,
        shard_id: ShardId,
        log_id: LogId,
    ) -> Result<Option<Job>, StoreError> {
        self.read(|conn| {
            let sql = format!("SELECT {COLUMNS} FROM jobs WHERE shard_id = ?1 AND log_id = ?2 AND state = 'ARCHIVED'");
            conn.query_row(&sql, params![shard_id, log_id as i64], job_from_row)
                .optional()?
                .transpose()
        })
    }

    /// RECEIVING → QUEUED with the verified size, digest and content checksum.
    pub fn mark_queued(&self, id: JobId, received: &Received) -> Result<Option<Job>, StoreError> {
        self.update(
            id,
            "state = 'QUEUED', size = ?2, sha256 = ?3, content_xxh3 = ?4",
            "state = 'RECEIVING'",
            params![
                id.0 as i64,
                received.size as i64,
                received.sha256.0.to_vec(),
                received.content_xxh3.to_le_bytes().to_vec(),
            ],
        )
    }

    /// ARCHIVED → QUEUED for a job whose archive is being written again from
    /// a re-push of the same bytes. Its segment stays settled (the watermark
    /// never moves back: the segment was archived, and is durable in the spool).
    pub fn reopen_for_repair(
        &self,
        id: JobId,
        received: &Received,
    ) -> Result<Option<Job>, StoreError> {
        self.update(
            id,
            "state = 'QUEUED', content_xxh3 = ?2, \
             reason = 'repairing: the archive was damaged or missing; writing it again'",
            "state = 'ARCHIVED' AND size = ?3 AND sha256 = ?4",
            params![
                id.0 as i64,
                received.content_xxh3.to_le_bytes().to_vec(),
                received.size as i64,
                received.sha256.0.to_vec(),
            ],
        )
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
        self.update(
            id,
            "state = ?2, reason = ?3",
            &in_states(from),
            params![id.0 as i64, to.as_str(), reason],
        )
    }

    pub fn mark_archived(
        &self,
        id: JobId,
        archive_size: u64,
        json: Option<JsonStats>,
    ) -> Result<Option<Job>, StoreError> {
        self.update(
            id,
            "state = 'ARCHIVED', reason = '', archive_size = ?2, json_entries = ?3, json_first_ts = ?4, json_last_ts = ?5",
            "state IN ('QUEUED', 'COMPRESSING')",
            params![
                id.0 as i64,
                archive_size as i64,
                json.map(|j| j.entries as i64),
                json.and_then(|j| j.first_timestamp),
                json.and_then(|j| j.last_timestamp),
            ],
        )
    }

    /// Moves a job in one of `from` to FAILED with its kind and reason, in one
    /// statement: no reader ever sees FAILED without its kind.
    pub fn fail(
        &self,
        id: JobId,
        from: &[JobState],
        kind: FailureKind,
        reason: &str,
    ) -> Result<Option<Job>, StoreError> {
        self.update(
            id,
            "state = 'FAILED', failure = ?2, reason = ?3",
            &in_states(from),
            params![id.0 as i64, kind.as_str(), reason],
        )
    }

    /// COMPRESSING → QUEUED after a failure that passes (a full disk, the
    /// object store down): the job keeps its spool and is tried again.
    pub fn retry_later(&self, id: JobId, reason: &str) -> Result<Option<Job>, StoreError> {
        self.update(
            id,
            "state = 'QUEUED', reason = ?2, attempts = attempts + 1",
            "state = 'COMPRESSING'",
            params![id.0 as i64, reason],
        )
    }

    /// Sets a job's reason while it is in `state` (a stall being reported).
    pub fn note(
        &self,
        id: JobId,
        state: JobState,
        reason: &str,
    ) -> Result<Option<Job>, StoreError> {
        self.update(
            id,
            "reason = ?3",
            "state = ?2",
            params![id.0 as i64, state.as_str(), reason],
        )
    }

    /// `UPDATE jobs SET <set>, updated_ms = now WHERE id = ?1 AND <only_if>`;
    /// the job as it is now, or `None` when `only_if` did not hold.
    fn update(
        &self,
        id: JobId,
        set: &str,
        only_if: &str,
        params: &[&dyn rusqlite::ToSql],
    ) -> Result<Option<Job>, StoreError> {
        self.write(|conn| {
            // The clock is SQLite's, so the statement text stays the same and cached.
            let sql = format!(
                "UPDATE jobs SET {set}, updated_ms = CAST(unixepoch('subsec') * 1000 AS INTEGER) \
                 WHERE id = ?1 AND {only_if}"
            );
            if conn.prepare_cached(&sql)?.execute(params)? == 0 {
                Ok(None)
            } else {
                get(conn, id)
            }
        })
    }

    pub fn list(&self, filter: &JobFilter) -> Result<Vec<Job>, StoreError> {
        self.read(|conn| {
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

    /// ARCHIVED jobs of a shard by log_id, expired ones included (verify).
    pub fn archived_jobs(&self, shard_id: ShardId) -> Result<Vec<Job>, StoreError> {
        self.read(|conn| {
            let sql = format!("SELECT {COLUMNS} FROM jobs WHERE shard_id = ?1 AND state = 'ARCHIVED' ORDER BY log_id");
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(params![shard_id], job_from_row)?;
            rows.map(|row| row?).collect()
        })
    }
}

/// `state IN ('A','B')` for a list of states.
fn in_states(states: &[JobState]) -> String {
    let list: Vec<String> = states.iter().map(|s| format!("'{}'", s.as_str())).collect();
    format!("state IN ({})", list.join(","))
}

#[cfg(test)]
mod tests;
