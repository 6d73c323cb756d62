//! Per-shard views: counters and the deletion watermark (kept by triggers,
//! read by index lookups), and what retention may remove.

use rusqlite::{Connection, OptionalExtension, params};

use super::JobDb;
use super::rows::{COLUMNS, job_from_row};
use crate::store::StoreError;
use crate::types::SIDE_FILE_LOG_ID;
use crate::types::{
    Blocker, Job, JobId, JobState, LogId, Resolution, ShardId, ShardStatus, now_unix_ms,
};

/// What resolving a segment found.
#[derive(Debug)]
pub enum ResolveOutcome {
    Resolved(Resolution),
    /// The shard never submitted that log_id (or it is a side file).
    NotSubmitted,
    /// It is archived: nothing to give up.
    Archived,
    /// A job is still working on it.
    Active(JobId, JobState),
}

impl JobDb {
    /// Lets the watermark pass a pending segment, recorded with who and why.
    pub fn resolve(
        &self,
        shard_id: ShardId,
        log_id: LogId,
        reason: &str,
        by: &str,
    ) -> Result<ResolveOutcome, StoreError> {
        self.write(|conn| {
            let tx = conn.unchecked_transaction()?;
            let state: Option<i64> = tx
                .query_row(
                    "SELECT state FROM segments WHERE shard_id = ?1 AND log_id = ?2",
                    params![shard_id, log_id as i64],
                    |row| row.get(0),
                )
                .optional()?;
            match state {
                None => return Ok(ResolveOutcome::NotSubmitted),
                Some(1) => return Ok(ResolveOutcome::Archived),
                Some(2) => {
                    let existing = resolution(&tx, shard_id, log_id)?;
                    return Ok(existing.map_or(ResolveOutcome::NotSubmitted, ResolveOutcome::Resolved));
                }
                Some(_) => {}
            }
            let active: Option<(i64, String)> = tx
                .query_row(
                    "SELECT id, state FROM jobs WHERE shard_id = ?1 AND log_id = ?2
                       AND state IN ('RECEIVING', 'QUEUED', 'COMPRESSING')",
                    params![shard_id, log_id as i64],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()?;
            if let Some((id, state)) = active {
                let state = state.parse().map_err(StoreError::Corrupt)?;
                return Ok(ResolveOutcome::Active(JobId(id as u64), state));
            }
            let now = now_unix_ms();
            tx.execute(
                "INSERT INTO resolutions (shard_id, log_id, reason, by_name, unix_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![shard_id, log_id as i64, reason, by, now],
            )?;
            tx.execute(
                "UPDATE segments SET state = 2 WHERE shard_id = ?1 AND log_id = ?2",
                params![shard_id, log_id as i64],
            )?;
            tx.commit()?;
            Ok(ResolveOutcome::Resolved(Resolution {
                shard_id,
                log_id,
                reason: reason.to_owned(),
                by: by.to_owned(),
                unix_ms: now,
            }))
        })
    }

    /// The segments of a shard an operator resolved, by log_id.
    pub fn resolutions(&self, shard_id: ShardId) -> Result<Vec<Resolution>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT log_id, reason, by_name, unix_ms FROM resolutions WHERE shard_id = ?1 ORDER BY log_id",
            )?;
            let rows = stmt.query_map(params![shard_id], |row| {
                Ok(Resolution {
                    shard_id,
                    log_id: row.get::<_, i64>(0)? as LogId,
                    reason: row.get(1)?,
                    by: row.get(2)?,
                    unix_ms: row.get(3)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    pub fn shard_ids(&self) -> Result<Vec<ShardId>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached("SELECT shard_id FROM shards ORDER BY shard_id")?;
            let ids = stmt
                .query_map([], |row| row.get(0))?
                .collect::<Result<Vec<ShardId>, _>>()?;
            Ok(ids)
        })
    }

    /// Jobs per state over all shards, every state included.
    pub fn state_counts(&self) -> Result<Vec<(JobState, u64)>, StoreError> {
        self.read(|conn| {
            let row = conn.query_row(
                "SELECT COALESCE(SUM(receiving), 0), COALESCE(SUM(queued), 0), COALESCE(SUM(compressing), 0),
                        COALESCE(SUM(archived), 0), COALESCE(SUM(failed), 0), COALESCE(SUM(cancelled), 0)
                 FROM shards",
                [],
                |row| (0..6).map(|i| row.get::<_, i64>(i)).collect::<Result<Vec<_>, _>>(),
            )?;
            Ok(JobState::ALL
                .iter()
                .zip(row)
                .map(|(state, count)| (*state, count as u64))
                .collect())
        })
    }

    /// Counters and watermark of a shard; `None` if it never submitted anything.
    pub fn shard_status(&self, shard_id: ShardId) -> Result<Option<ShardStatus>, StoreError> {
        self.read(|conn| {
            let counters = conn
                .query_row(
                    "SELECT receiving, queued, compressing, archived, failed, bytes_in, bytes_out, last_archived_ms,
                            (SELECT COUNT(*) FROM resolutions r WHERE r.shard_id = shards.shard_id)
                     FROM shards WHERE shard_id = ?1",
                    params![shard_id],
                    |row| {
                        Ok(ShardStatus {
                            shard_id,
                            receiving: row.get::<_, i64>(0)? as u64,
                            queued: row.get::<_, i64>(1)? as u64,
                            running: row.get::<_, i64>(2)? as u64,
                            archived: row.get::<_, i64>(3)? as u64,
                            failed: row.get::<_, i64>(4)? as u64,
                            bytes_in: row.get::<_, i64>(5)? as u64,
                            bytes_out: row.get::<_, i64>(6)? as u64,
                            last_archived_unix_ms: row.get(7)?,
                            resolved: row.get::<_, i64>(8)? as u64,
                            ..ShardStatus::default()
                        })
                    },
                )
                .optional()?;
            let Some(mut status) = counters else {
                return Ok(None);
            };
            let pending = lowest_pending(conn, shard_id)?;
            status.archived_watermark = watermark(conn, shard_id, pending)?;
            status.held_by = pending.map(|log_id| blocker(conn, shard_id, log_id)).transpose()?;
            status.failed_segments = conn.query_row(
                "SELECT COUNT(*) FROM segments s INDEXED BY segments_pending
                 WHERE s.shard_id = ?1 AND s.state = 0
                   AND (SELECT state FROM jobs j INDEXED BY jobs_by_segment
                        WHERE j.shard_id = s.shard_id AND j.log_id = s.log_id ORDER BY j.id DESC LIMIT 1) = 'FAILED'",
                params![shard_id],
                |row| row.get::<_, i64>(0),
            )? as u64;
            Ok(Some(status))
        })
    }

    /// Live (not expired) archives of a shard that retention may remove: at
    /// or below `watermark`, not among the newest `keep_newest` (when not 0)
    /// and last updated before `updated_before` (when set); oldest log_id
    /// first, at most `limit`. Age is checked per archive: a younger one (a
    /// segment pushed again) does not shelter older ones above it.
    pub fn retention_candidates(
        &self,
        shard_id: ShardId,
        watermark: LogId,
        keep_newest: u64,
        updated_before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        self.read(|conn| {
            // The newest `keep_newest` live archives stay: find where they start.
            let kept_from: Option<i64> = if keep_newest == 0 {
                None
            } else {
                conn.query_row(
                    "SELECT log_id FROM jobs INDEXED BY jobs_live_archives
                     WHERE shard_id = ?1 AND state = 'ARCHIVED' AND expired_ms IS NULL
                     ORDER BY log_id DESC LIMIT 1 OFFSET ?2",
                    params![shard_id, keep_newest as i64 - 1],
                    |row| row.get(0),
                )
                .optional()?
                .or(Some(i64::MIN))
            };
            let below = kept_from.unwrap_or(i64::MAX).min(watermark as i64 + 1);
            let sql = format!(
                "SELECT {COLUMNS} FROM jobs INDEXED BY jobs_live_archives
                 WHERE shard_id = ?1 AND state = 'ARCHIVED' AND expired_ms IS NULL AND log_id < ?2
                   AND updated_ms < ?4
                 ORDER BY log_id LIMIT ?3"
            );
            let mut stmt = conn.prepare_cached(&sql)?;
            let updated_before = updated_before.unwrap_or(i64::MAX);
            let rows = stmt.query_map(
                params![shard_id, below, limit as i64, updated_before],
                job_from_row,
            )?;
            rows.map(|row| row?).collect()
        })
    }

    /// Retention's first step: the job says its archive is gone (a crash
    /// before the removal leaves a stray file, never a job that claims an
    /// archive it no longer has).
    pub fn mark_expired(&self, id: JobId) -> Result<(), StoreError> {
        self.write(|conn| {
            conn.execute(
                "UPDATE jobs SET expired_ms = ?2 WHERE id = ?1 AND expired_ms IS NULL",
                params![id.0 as i64, now_unix_ms()],
            )?;
            Ok(())
        })
    }

    /// Retention's last step: the archive was removed from the store.
    pub fn mark_archive_removed(&self, id: JobId) -> Result<(), StoreError> {
        self.write(|conn| {
            conn.execute(
                "UPDATE jobs SET archive_removed = 1 WHERE id = ?1",
                params![id.0 as i64],
            )?;
            Ok(())
        })
    }

    /// Jobs marked expired whose archive removal did not finish (a crash).
    pub fn unfinished_removals(&self, shard_id: ShardId) -> Result<Vec<Job>, StoreError> {
        self.read(|conn| {
            let sql = format!(
                "SELECT {COLUMNS} FROM jobs INDEXED BY jobs_expiring
                 WHERE shard_id = ?1 AND expired_ms IS NOT NULL AND archive_removed = 0"
            );
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(params![shard_id], job_from_row)?;
            rows.map(|row| row?).collect()
        })
    }
}

/// The lowest log_id of the shard that holds its watermark back.
fn lowest_pending(conn: &Connection, shard_id: ShardId) -> Result<Option<LogId>, StoreError> {
    // `state = 0` is a literal so SQLite can use the partial index of pending segments.
    let pending: Option<i64> = conn.query_row(
        "SELECT MIN(log_id) FROM segments INDEXED BY segments_pending WHERE shard_id = ?1 AND state = 0",
        params![shard_id],
        |row| row.get(0),
    )?;
    Ok(pending.map(|p| p as LogId))
}

/// What holds the watermark at `log_id`: its latest job, if it has one.
fn blocker(conn: &Connection, shard_id: ShardId, log_id: LogId) -> Result<Blocker, StoreError> {
    let since: Option<i64> = conn.query_row(
        "SELECT since_ms FROM segments WHERE shard_id = ?1 AND log_id = ?2",
        params![shard_id, log_id as i64],
        |row| row.get(0),
    )?;
    let sql = format!(
        "SELECT {COLUMNS} FROM jobs INDEXED BY jobs_by_segment WHERE shard_id = ?1 AND log_id = ?2 ORDER BY id DESC LIMIT 1"
    );
    let job = conn
        .query_row(&sql, params![shard_id, log_id as i64], job_from_row)
        .optional()?
        .transpose()?;
    Ok(match job {
        Some(job) => Blocker {
            log_id,
            job_id: Some(job.id),
            state: Some(job.state),
            reason: job.reason,
            failure_class: job.failure_class,
            since_unix_ms: since.unwrap_or(job.created_unix_ms),
        },
        None => Blocker {
            log_id,
            job_id: None,
            state: None,
            reason: "no archive for this log_id between archived ones (found when the jobs were rebuilt from \
                     the archive store): push it again, or resolve it"
                .into(),
            failure_class: None,
            since_unix_ms: since.unwrap_or(0),
        },
    })
}

/// The highest log_id L such that every log_id ≤ L the shard ever submitted
/// has an ARCHIVED job (or was resolved). A failed or cancelled segment holds
/// the watermark back until it is pushed again and archived: its WAL must not
/// be deleted. Two index lookups: the lowest pending segment, then the
/// highest settled one below it. Side files (log_id ≥ 2^62) take no part.
fn watermark(
    conn: &Connection,
    shard_id: ShardId,
    pending: Option<LogId>,
) -> Result<Option<LogId>, StoreError> {
    let below = pending.unwrap_or(SIDE_FILE_LOG_ID) as i64;
    let mark: Option<i64> = conn.query_row(
        "SELECT MAX(log_id) FROM segments WHERE shard_id = ?1 AND log_id < ?2",
        params![shard_id, below],
        |row| row.get(0),
    )?;
    Ok(mark.map(|m| m as LogId))
}

fn resolution(
    conn: &Connection,
    shard_id: ShardId,
    log_id: LogId,
) -> Result<Option<Resolution>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT reason, by_name, unix_ms FROM resolutions WHERE shard_id = ?1 AND log_id = ?2",
            params![shard_id, log_id as i64],
            |row| {
                Ok(Resolution {
                    shard_id,
                    log_id,
                    reason: row.get(0)?,
                    by: row.get(1)?,
                    unix_ms: row.get(2)?,
                })
            },
        )
        .optional()?)
}
