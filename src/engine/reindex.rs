//! Rebuilding the jobs database from the archive store. The store is the
//! truth for what is archived: a replica that starts with an empty data dir
//! (a lost disk, a replacement pod) lists the archives of the shards it owns
//! and records each one ARCHIVED, from its header, so its watermarks and
//! restores come back. `serve` does it when its jobs database is new;
//! `wal-archiver reindex` does it on demand (and adds only what is missing).
//!
//! What the store cannot say is which log_ids were submitted but never
//! archived. A gap between two archived log_ids may be one, and its WAL may
//! still be waiting on the shard: the watermark must not pass it. So the
//! first missing log_id of every gap is recorded pending; the watermark stops
//! there until that segment is pushed again (or deliberately resolved).

use serde::Serialize;

use super::EngineError;
use crate::archive::ArchiveReader;
use crate::store::{ArchiveKey, ArchiveStore, FoundArchive, JobDb};
use crate::types::{LogId, Ownership, SIDE_FILE_LOG_ID, ShardId};

/// What a reindex found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReindexReport {
    /// Archives recorded ARCHIVED.
    pub adopted: usize,
    /// Archives whose segment had a job already.
    pub known: usize,
    /// Archives that could not be read or are not what their key says.
    pub unreadable: Vec<String>,
    /// First log_id of each gap between archived log_ids: held pending.
    pub gaps: Vec<(ShardId, LogId)>,
}

pub(super) fn reindex(
    db: &JobDb,
    store: &dyn ArchiveStore,
    ownership: &Ownership,
) -> Result<ReindexReport, EngineError> {
    let mut report = ReindexReport::default();
    let keys: Vec<ArchiveKey> = store
        .list(None)?
        .into_iter()
        .filter(|key| ownership.owns(key.shard_id))
        .collect();
    for key in &keys {
        match identify(store, *key) {
            Ok(found) => {
                if db.insert_archived(&found)? {
                    report.adopted += 1;
                } else {
                    report.known += 1;
                }
            }
            Err(problem) => report
                .unreadable
                .push(format!("{}: {problem}", store.location(*key))),
        }
    }
    // Keys are sorted by (shard, log_id): a gap is a jump within one shard.
    for pair in keys.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if a.shard_id == b.shard_id && b.log_id < SIDE_FILE_LOG_ID && b.log_id > a.log_id + 1 {
            db.mark_pending(a.shard_id, a.log_id + 1)?;
            report.gaps.push((a.shard_id, a.log_id + 1));
        }
    }
    if report != ReindexReport::default() {
        tracing::info!(
            adopted = report.adopted,
            known = report.known,
            unreadable = report.unreadable.len(),
            gaps = report.gaps.len(),
            "rebuilt jobs from the archive store"
        );
        for problem in &report.unreadable {
            tracing::warn!(%problem, "archive not adopted");
        }
        for (shard_id, log_id) in &report.gaps {
            tracing::warn!(
                shard_id,
                log_id,
                "no archive for this log_id between archived ones: the watermark stops before it until it is pushed again"
            );
        }
    }
    Ok(report)
}

/// An archive's identity from its header (read from the front of the object
/// only), checked against its key; its size from the store.
fn identify(store: &dyn ArchiveStore, key: ArchiveKey) -> Result<FoundArchive, String> {
    let size = store
        .stat(key)
        .map_err(|e| e.to_string())?
        .ok_or("vanished while listed")?
        .size;
    let input = store
        .open(key)
        .map_err(|e| e.to_string())?
        .ok_or("vanished while listed")?;
    let mut reader = ArchiveReader::open(input).map_err(|e| e.to_string())?;
    let header = reader.header().clone();
    if (header.shard_id, header.log_id) != (key.shard_id, key.log_id) {
        return Err(format!(
            "holds shard {} log_id {}, not the segment its name says",
            header.shard_id, header.log_id
        ));
    }
    let (original_size, sha256) = reader.identity().map_err(|e| e.to_string())?;
    Ok(FoundArchive {
        shard_id: key.shard_id,
        log_id: key.log_id,
        size: original_size,
        sha256,
        kind: header.content_kind,
        zstd_level: header.zstd_level,
        archive_size: size,
    })
}
