//! Turning a segment's bytes into a committed archive: read a source (a
//! complete spool, or one still growing), check JSON lines, encode, write to
//! the store, check the result against the proof of what was received, commit
//! — and never over an archive of other bytes.

use std::io::Read;

use super::EngineError;
use super::crash_point::{self, CrashPoint};
use crate::archive::{
    ArchiveError, ArchiveHeader, ArchiveReader, ArchiveWriter, FORMAT_VERSION,
    FORMAT_WITH_DIGEST_UP_FRONT, JsonLinesChecker,
};
use crate::config::Config;
use crate::error::IoError;
use crate::queue::{Interrupt, Task};
use crate::store::{ArchiveKey, ArchiveMeta, ArchiveStore, StoreError, WriteMode};
use crate::types::{ContentKind, Digest, Job, JsonStats, Received, now_unix_ms};

/// Bytes read per step: large enough to amortize syscalls, small enough that
/// a cancel or shutdown is noticed within milliseconds.
const READ_BUFFER: usize = 1 << 20;

/// A committed archive.
pub(super) struct Written {
    pub archive_size: u64,
    pub json: Option<JsonStats>,
}

/// Why an archive was not committed.
pub(super) enum Stop {
    Interrupted(Interrupt),
    Failed(EngineError),
    /// The segment's upload failed: there is nothing to archive.
    Abandoned,
    /// A head start that is not worth it here (an object already under the
    /// key): the ordinary path will do the job.
    Declined,
}

impl From<EngineError> for Stop {
    fn from(e: EngineError) -> Self {
        Stop::Failed(e)
    }
}

/// Where a segment's bytes come from.
pub(super) trait Source {
    /// The next bytes; `Ok(0)` at the end.
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Stop>;
    /// After the end: what the bytes must prove to be.
    fn proof(&self) -> Result<Received, Stop>;
}

/// A complete spool file, proven when it was received.
pub(super) struct SpoolFile {
    pub file: std::fs::File,
    pub proof: Received,
}

impl Source for SpoolFile {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Stop> {
        loop {
            match self.file.read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(EngineError::from(IoError::new("reading spool file", e)).into());
                }
            }
        }
    }

    fn proof(&self) -> Result<Received, Stop> {
        Ok(self.proof)
    }
}

/// The archive to write: its key and what is known before its bytes.
pub(super) struct Target {
    pub key: ArchiveKey,
    pub kind: ContentKind,
    pub zstd_level: i32,
    /// Size and SHA-256, when known up front (the header then carries them).
    pub declared: Option<(u64, Digest)>,
    /// The size the client declared, even when its digest comes in the
    /// trailer (as the CLI and `Client::push_file` send it): enough to tell a
    /// large segment worth zstd's own threads.
    pub size_hint: Option<u64>,
}

impl Target {
    /// The archive of `job`'s segment, with what is known of it up front.
    pub fn of(job: &Job, size: Option<u64>, sha256: Option<Digest>) -> Target {
        Target {
            key: ArchiveKey {
                shard_id: job.shard_id,
                log_id: job.log_id,
            },
            kind: job.kind,
            zstd_level: job.zstd_level,
            declared: size.zip(sha256),
            size_hint: size,
        }
    }
}

/// Reads `source` into a committed archive of `target`.
pub(super) fn encode(
    config: &Config,
    store: &dyn ArchiveStore,
    target: &Target,
    source: &mut dyn Source,
    task: &Task,
) -> Result<Written, Stop> {
    let key = target.key;
    let mode = match target.declared {
        Some((_, sha)) => match standing(store, key, sha)? {
            Standing::Absent => WriteMode::Create,
            Standing::Ours | Standing::Unreadable => WriteMode::Replace,
        },
        // Whose an existing object is can only be told at the end.
        None if store.stat(key).map_err(EngineError::from)?.is_some() => {
            return Err(Stop::Declined);
        }
        None => WriteMode::Create,
    };
    let header = ArchiveHeader {
        format_version: if target.declared.is_some() {
            FORMAT_WITH_DIGEST_UP_FRONT
        } else {
            FORMAT_VERSION
        },
        shard_id: key.shard_id,
        log_id: key.log_id,
        content_kind: target.kind,
        original_size: target.declared.map(|(size, _)| size),
        sha256: target.declared.map(|(_, sha)| sha.to_hex()),
        zstd_level: target.zstd_level,
        created_unix_ms: now_unix_ms(),
    };
    let threshold = config.multithread_min_size;
    let big = target.size_hint.is_some_and(|size| size >= threshold);
    let zstd_workers = if task.alone && threshold > 0 && big {
        config.workers() as u32
    } else {
        0
    };
    if zstd_workers > 0 {
        tracing::info!(
            zstd_workers,
            "a lone large segment: compressing on zstd's own threads"
        );
    }
    let known = target
        .declared
        .map(|(size, sha256)| ArchiveMeta { key, size, sha256 });
    let pending = store
        .create(key, known.as_ref(), mode)
        .map_err(EngineError::from)?;
    let mut writer =
        ArchiveWriter::new(pending, header, zstd_workers).map_err(EngineError::from)?;
    let mut checker = (target.kind == ContentKind::JsonLines)
        .then(|| JsonLinesChecker::new(config.max_json_line_size));
    let mut buf = vec![0u8; READ_BUFFER];
    loop {
        if let Some(why) = task.stop.get() {
            return Err(Stop::Interrupted(why));
        }
        let n = source.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if let Some(checker) = &mut checker {
            checker.feed(&buf[..n]).map_err(EngineError::from)?;
        }
        writer.write_all(&buf[..n]).map_err(spool_damaged)?;
        crash_point::reached(CrashPoint::Compressing);
        task.stop.progressed();
    }
    let proof = source.proof()?;
    let json = checker
        .map(JsonLinesChecker::finish)
        .transpose()
        .map_err(EngineError::from)?;
    let written = writer.finish(&proof, json).map_err(spool_damaged)?;
    if let Some(why) = task.stop.get() {
        return Err(Stop::Interrupted(why));
    }
    let meta = ArchiveMeta {
        key,
        size: proof.size,
        sha256: proof.sha256,
    };
    let raced = match written.sink.commit(&meta) {
        Ok(()) => {
            crash_point::reached(CrashPoint::Committed);
            false
        }
        // A create-only write lost a race: fine if the winner holds the same bytes.
        Err(StoreError::Exists { .. }) => true,
        Err(e) => return Err(EngineError::from(e).into()),
    };
    if raced || store.shared() {
        // Whoever wrote last under this key must have written this segment.
        standing(store, key, proof.sha256)?;
    }
    Ok(Written {
        archive_size: written.archive_size,
        json,
    })
}

/// What stands under a key before this segment's archive is written there.
enum Standing {
    Absent,
    /// An archive of this very segment (a retried write, a damaged archive
    /// being repaired): it may be replaced.
    Ours,
    /// Something too damaged to say whose it is: it may be replaced.
    Unreadable,
}

/// Refuses to write over, or accept, an archive of other bytes under `key`
/// (another replica claiming the shard, a planted object); says what stands
/// there otherwise. The segment's SHA-256 comes from the store's metadata
/// if it keeps it, else from the archive's header frame (else its footer).
fn standing(
    store: &dyn ArchiveStore,
    key: ArchiveKey,
    ours: Digest,
) -> Result<Standing, EngineError> {
    let Some(info) = store.stat(key)? else {
        return Ok(Standing::Absent);
    };
    let existing = match info.sha256 {
        Some(sha) => Some(sha),
        None => store.open(key)?.and_then(|input| digest_of(input).ok()),
    };
    match existing {
        Some(existing) if existing != ours => Err(EngineError::Conflict {
            shard_id: key.shard_id,
            log_id: key.log_id,
            existing,
            pushed: ours,
        }),
        Some(_) => Ok(Standing::Ours),
        None => Ok(Standing::Unreadable),
    }
}

/// An archive's segment digest, as the archive records it.
fn digest_of(input: Box<dyn Read + Send>) -> Result<Digest, ArchiveError> {
    Ok(ArchiveReader::open(input)?.identity()?.1)
}

/// A spool that no longer matches what was received and verified was
/// damaged after the acknowledgement (a crash before it was durable, or the disk).
fn spool_damaged(e: ArchiveError) -> Stop {
    let e = match e {
        e @ (ArchiveError::ContentMismatch { .. } | ArchiveError::SizeMismatch { .. }) => {
            EngineError::SpoolDamaged(e)
        }
        other => EngineError::Archive(other),
    };
    Stop::Failed(e)
}
