//! Rows of the `jobs` table as `Job`s: the column list and the one function
//! that reads a row, so every query returns jobs the same way.

use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::store::StoreError;
use crate::types::{Digest, FailureKind, Job, JobId, JsonStats, LogId, ShardId};

pub(super) const COLUMNS: &str = "id, shard_id, log_id, state, reason, size, sha256, kind, ack, zstd_level, archive_size, \
                       json_entries, json_first_ts, json_last_ts, created_ms, updated_ms, content_xxh3, failure, expired_ms, attempts";

pub(super) fn get(conn: &Connection, id: JobId) -> Result<Option<Job>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM jobs WHERE id = ?1");
    conn.query_row(&sql, params![id.0 as i64], job_from_row)
        .optional()?
        .transpose()
}

pub(super) fn active_job(
    conn: &Connection,
    shard_id: ShardId,
    log_id: LogId,
) -> Result<Option<Job>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM jobs WHERE shard_id = ?1 AND log_id = ?2 AND state NOT IN ('FAILED', 'CANCELLED')"
    );
    conn.query_row(&sql, params![shard_id, log_id as i64], job_from_row)
        .optional()?
        .transpose()
}

pub(super) fn job_from_row(row: &Row) -> rusqlite::Result<Result<Job, StoreError>> {
    let state: String = row.get(3)?;
    let kind: String = row.get(7)?;
    let ack: String = row.get(8)?;
    let sha: Option<Vec<u8>> = row.get(6)?;
    let json_entries: Option<i64> = row.get(11)?;
    let content_xxh3: Option<Vec<u8>> = row.get(16)?;
    let failure: Option<String> = row.get(17)?;
    let expired_unix_ms: Option<i64> = row.get(18)?;
    let attempts: i64 = row.get(19)?;
    let parsed = (|| {
        Ok::<_, String>(Job {
            id: JobId(row.get::<_, i64>(0).map_err(|e| e.to_string())? as u64),
            shard_id: row.get(1).map_err(|e| e.to_string())?,
            log_id: row.get::<_, i64>(2).map_err(|e| e.to_string())? as LogId,
            state: state.parse()?,
            reason: row.get(4).map_err(|e| e.to_string())?,
            failure: failure
                .as_deref()
                .map(str::parse::<FailureKind>)
                .transpose()?,
            failure_class: failure
                .as_deref()
                .and_then(|f| f.parse::<FailureKind>().ok())
                .map(FailureKind::class),
            size: row
                .get::<_, Option<i64>>(5)
                .map_err(|e| e.to_string())?
                .map(|s| s as u64),
            sha256: match sha {
                Some(bytes) => Some(Digest::from_slice(&bytes).ok_or("sha256 is not 32 bytes")?),
                None => None,
            },
            kind: kind.parse()?,
            ack: ack.parse()?,
            zstd_level: row.get(9).map_err(|e| e.to_string())?,
            archive_size: row
                .get::<_, Option<i64>>(10)
                .map_err(|e| e.to_string())?
                .map(|s| s as u64),
            json: match json_entries {
                Some(entries) => Some(JsonStats {
                    entries: entries as u64,
                    first_timestamp: row.get(12).map_err(|e| e.to_string())?,
                    last_timestamp: row.get(13).map_err(|e| e.to_string())?,
                }),
                None => None,
            },
            expired_unix_ms,
            attempts: attempts as u32,
            content_xxh3: match content_xxh3 {
                Some(bytes) => Some(u128::from_le_bytes(
                    bytes
                        .try_into()
                        .map_err(|_| "content_xxh3 is not 16 bytes")?,
                )),
                None => None,
            },
            created_unix_ms: row.get(14).map_err(|e| e.to_string())?,
            updated_unix_ms: row.get(15).map_err(|e| e.to_string())?,
        })
    })();
    Ok(parsed.map_err(StoreError::Corrupt))
}
