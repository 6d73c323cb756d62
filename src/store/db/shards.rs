//! Per-shard views of the jobs table: counters, the deletion watermark, and
//! counts by state.

use rusqlite::{Connection, params};

use super::JobDb;
use crate::store::StoreError;
use crate::types::{JobState, LogId, ShardId, ShardStatus};

impl JobDb {
    pub fn shard_ids(&self) -> Result<Vec<ShardId>, StoreError> {
        self.with(|conn| {
            let mut stmt =
                conn.prepare_cached("SELECT DISTINCT shard_id FROM jobs ORDER BY shard_id")?;
            let ids = stmt
                .query_map([], |row| row.get(0))?
                .collect::<Result<Vec<ShardId>, _>>()?;
            Ok(ids)
        })
    }

    /// Jobs per state, every state included.
    pub fn state_counts(&self) -> Result<Vec<(JobState, u64)>, StoreError> {
        self.with(|conn| {
            let mut counts: Vec<(JobState, u64)> = JobState::ALL.iter().map(|s| (*s, 0)).collect();
            let mut stmt =
                conn.prepare_cached("SELECT state, COUNT(*) FROM jobs GROUP BY state")?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                let state: JobState = row
                    .get::<_, String>(0)?
                    .parse()
                    .map_err(StoreError::Corrupt)?;
                if let Some(entry) = counts.iter_mut().find(|(s, _)| *s == state) {
                    entry.1 = row.get::<_, i64>(1)? as u64;
                }
            }
            Ok(counts)
        })
    }

    /// Counters and watermark of a shard; `None` if it never submitted anything.
    pub fn shard_status(&self, shard_id: ShardId) -> Result<Option<ShardStatus>, StoreError> {
        self.with(|conn| {
            let mut status = ShardStatus {
                shard_id,
                ..ShardStatus::default()
            };
            let mut seen = false;
            let mut stmt = conn.prepare_cached(
                "SELECT state, COUNT(*), COALESCE(SUM(size), 0), COALESCE(SUM(archive_size), 0)
                 FROM jobs WHERE shard_id = ?1 GROUP BY state",
            )?;
            let mut rows = stmt.query(params![shard_id])?;
            while let Some(row) = rows.next()? {
                seen = true;
                let state: String = row.get(0)?;
                let count = row.get::<_, i64>(1)? as u64;
                match state.parse::<JobState>().map_err(StoreError::Corrupt)? {
                    JobState::Receiving => status.receiving = count,
                    JobState::Queued => status.queued = count,
                    JobState::Compressing => status.running = count,
                    JobState::Archived => {
                        status.archived = count;
                        status.bytes_in = row.get::<_, i64>(2)? as u64;
                        status.bytes_out = row.get::<_, i64>(3)? as u64;
                    }
                    JobState::Failed => status.failed = count,
                    JobState::Cancelled => {}
                }
            }
            if !seen {
                return Ok(None);
            }
            status.archived_watermark = watermark(conn, shard_id)?;
            Ok(Some(status))
        })
    }
}

/// The highest log_id L such that every log_id ≤ L the shard ever submitted
/// has an ARCHIVED job. A failed or cancelled segment holds the watermark
/// back until it is pushed again and archived: its WAL must not be deleted.
fn watermark(conn: &Connection, shard_id: ShardId) -> Result<Option<LogId>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT log_id, MAX(state = 'ARCHIVED') FROM jobs WHERE shard_id = ?1 GROUP BY log_id ORDER BY log_id",
    )?;
    let mut rows = stmt.query(params![shard_id])?;
    let mut mark = None;
    while let Some(row) = rows.next()? {
        let archived: bool = row.get(1)?;
        if !archived {
            break;
        }
        mark = Some(row.get::<_, i64>(0)? as LogId);
    }
    Ok(mark)
}
