//! The jobs database's schema and its migrations, applied in order at open
//! and counted in SQLite's `user_version`, so a data dir written by an older
//! release is upgraded in place.
//!
//! `jobs` is the truth. `shards` (counters per state, bytes, last archive
//! time) and `segments` (one row per submitted log_id: pending, archived or
//! resolved) are kept by triggers in the same transaction as every change to
//! `jobs`, whichever code path makes it, so reading a shard's status or its
//! watermark never scans its history and can never drift from it.

use rusqlite::Connection;

use crate::store::StoreError;

// `segments.state`: 0 — the segment holds the watermark back; 1 — an ARCHIVED
// job holds it; 2 — an operator resolved it (given up; the watermark passes). The SQL below spells `crate::types::SIDE_FILE_LOG_ID` (2^62)
// as 4611686018427387904; a unit test keeps the two equal.

const BASE: &str = "
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

#[cfg(test)]
pub const BASE_FOR_TESTS: &str = BASE;

/// Each entry upgrades the schema by one version.
const MIGRATIONS: &[&str] = &[
    // 1: incremental shard counters and watermark; retries; retention bookkeeping.
    "
ALTER TABLE jobs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN archive_removed INTEGER NOT NULL DEFAULT 0;
CREATE INDEX jobs_live_archives ON jobs(shard_id, log_id)
    WHERE state = 'ARCHIVED' AND expired_ms IS NULL;
CREATE INDEX jobs_expiring ON jobs(shard_id)
    WHERE expired_ms IS NOT NULL AND archive_removed = 0;

CREATE TABLE shards (
    shard_id         INTEGER PRIMARY KEY,
    receiving        INTEGER NOT NULL DEFAULT 0,
    queued           INTEGER NOT NULL DEFAULT 0,
    compressing      INTEGER NOT NULL DEFAULT 0,
    archived         INTEGER NOT NULL DEFAULT 0,
    failed           INTEGER NOT NULL DEFAULT 0,
    cancelled        INTEGER NOT NULL DEFAULT 0,
    bytes_in         INTEGER NOT NULL DEFAULT 0,
    bytes_out        INTEGER NOT NULL DEFAULT 0,
    last_archived_ms INTEGER
);
CREATE TABLE segments (
    shard_id INTEGER NOT NULL,
    log_id   INTEGER NOT NULL,
    state    INTEGER NOT NULL,
    PRIMARY KEY (shard_id, log_id)
) WITHOUT ROWID;
CREATE INDEX segments_pending ON segments(shard_id, log_id) WHERE state = 0;

CREATE TRIGGER jobs_counted AFTER INSERT ON jobs BEGIN
    INSERT INTO shards (shard_id) VALUES (NEW.shard_id) ON CONFLICT DO NOTHING;
    UPDATE shards SET
        receiving   = receiving   + (NEW.state = 'RECEIVING'),
        queued      = queued      + (NEW.state = 'QUEUED'),
        compressing = compressing + (NEW.state = 'COMPRESSING'),
        archived    = archived    + (NEW.state = 'ARCHIVED'),
        failed      = failed      + (NEW.state = 'FAILED'),
        cancelled   = cancelled   + (NEW.state = 'CANCELLED')
    WHERE shard_id = NEW.shard_id;
    INSERT INTO segments (shard_id, log_id, state)
        SELECT NEW.shard_id, NEW.log_id, NEW.state = 'ARCHIVED'
        WHERE NEW.log_id < 4611686018427387904
    ON CONFLICT (shard_id, log_id) DO UPDATE SET state = MAX(state, excluded.state);
END;

CREATE TRIGGER jobs_recounted AFTER UPDATE OF state ON jobs WHEN OLD.state <> NEW.state BEGIN
    UPDATE shards SET
        receiving   = receiving   - (OLD.state = 'RECEIVING')   + (NEW.state = 'RECEIVING'),
        queued      = queued      - (OLD.state = 'QUEUED')      + (NEW.state = 'QUEUED'),
        compressing = compressing - (OLD.state = 'COMPRESSING') + (NEW.state = 'COMPRESSING'),
        archived    = archived    - (OLD.state = 'ARCHIVED')    + (NEW.state = 'ARCHIVED'),
        failed      = failed      - (OLD.state = 'FAILED')      + (NEW.state = 'FAILED'),
        cancelled   = cancelled   - (OLD.state = 'CANCELLED')   + (NEW.state = 'CANCELLED'),
        bytes_in    = bytes_in
            + CASE WHEN NEW.state = 'ARCHIVED' THEN COALESCE(NEW.size, 0) ELSE 0 END
            - CASE WHEN OLD.state = 'ARCHIVED' THEN COALESCE(OLD.size, 0) ELSE 0 END,
        bytes_out   = bytes_out
            + CASE WHEN NEW.state = 'ARCHIVED' THEN COALESCE(NEW.archive_size, 0) ELSE 0 END
            - CASE WHEN OLD.state = 'ARCHIVED' THEN COALESCE(OLD.archive_size, 0) ELSE 0 END,
        last_archived_ms = CASE WHEN NEW.state = 'ARCHIVED'
            THEN MAX(COALESCE(last_archived_ms, 0), NEW.updated_ms) ELSE last_archived_ms END
    WHERE shard_id = NEW.shard_id;
    UPDATE segments SET state = 1
        WHERE NEW.state = 'ARCHIVED' AND shard_id = NEW.shard_id AND log_id = NEW.log_id;
END;

INSERT INTO shards (shard_id, receiving, queued, compressing, archived, failed, cancelled,
                    bytes_in, bytes_out, last_archived_ms)
    SELECT shard_id,
           SUM(state = 'RECEIVING'), SUM(state = 'QUEUED'), SUM(state = 'COMPRESSING'),
           SUM(state = 'ARCHIVED'), SUM(state = 'FAILED'), SUM(state = 'CANCELLED'),
           COALESCE(SUM(CASE WHEN state = 'ARCHIVED' THEN size END), 0),
           COALESCE(SUM(CASE WHEN state = 'ARCHIVED' THEN archive_size END), 0),
           MAX(CASE WHEN state = 'ARCHIVED' THEN updated_ms END)
    FROM jobs GROUP BY shard_id;
INSERT INTO segments (shard_id, log_id, state)
    SELECT shard_id, log_id, MAX(state = 'ARCHIVED') FROM jobs
    WHERE log_id < 4611686018427387904 GROUP BY shard_id, log_id;
UPDATE jobs SET archive_removed = 1 WHERE expired_ms IS NOT NULL;
",
    // 2: segments an operator resolved; since when each segment has waited.
    "
CREATE TABLE resolutions (
    shard_id INTEGER NOT NULL,
    log_id   INTEGER NOT NULL,
    reason   TEXT    NOT NULL,
    by_name  TEXT    NOT NULL,
    unix_ms  INTEGER NOT NULL,
    PRIMARY KEY (shard_id, log_id)
) WITHOUT ROWID;
ALTER TABLE segments ADD COLUMN since_ms INTEGER;
UPDATE segments SET since_ms = (
    SELECT MIN(created_ms) FROM jobs j WHERE j.shard_id = segments.shard_id AND j.log_id = segments.log_id
);
DROP TRIGGER jobs_counted;
CREATE TRIGGER jobs_counted AFTER INSERT ON jobs BEGIN
    INSERT INTO shards (shard_id) VALUES (NEW.shard_id) ON CONFLICT DO NOTHING;
    UPDATE shards SET
        receiving   = receiving   + (NEW.state = 'RECEIVING'),
        queued      = queued      + (NEW.state = 'QUEUED'),
        compressing = compressing + (NEW.state = 'COMPRESSING'),
        archived    = archived    + (NEW.state = 'ARCHIVED'),
        failed      = failed      + (NEW.state = 'FAILED'),
        cancelled   = cancelled   + (NEW.state = 'CANCELLED')
    WHERE shard_id = NEW.shard_id;
    INSERT INTO segments (shard_id, log_id, state, since_ms)
        SELECT NEW.shard_id, NEW.log_id, NEW.state = 'ARCHIVED', NEW.created_ms
        WHERE NEW.log_id < 4611686018427387904
    ON CONFLICT (shard_id, log_id) DO UPDATE SET state = MAX(state, excluded.state);
END;
",
];

/// Brings the database up to the current schema; `true` when it held no
/// jobs before (a new data dir, or one whose database was lost).
pub fn migrate(conn: &mut Connection) -> Result<bool, StoreError> {
    conn.execute_batch(BASE)?;
    let version: usize = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let fresh = version == 0
        && conn.query_row("SELECT NOT EXISTS (SELECT 1 FROM jobs)", [], |row| {
            row.get::<_, bool>(0)
        })?;
    if version > MIGRATIONS.len() {
        return Err(StoreError::Corrupt(format!(
            "the jobs database is at schema version {version}, newer than this build understands ({}); \
             run the release that wrote it",
            MIGRATIONS.len()
        )));
    }
    for (done, migration) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction()?;
        tx.execute_batch(migration)?;
        tx.pragma_update(None, "user_version", done + 1)?;
        tx.commit()?;
    }
    Ok(fresh)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_side_file_bound_in_sql_is_the_domain_one() {
        let literal = crate::types::SIDE_FILE_LOG_ID.to_string();
        let uses: usize = super::MIGRATIONS
            .iter()
            .map(|m| m.matches(&literal).count())
            .sum();
        assert_eq!(uses, 3);
    }
}
