//! Durable state: the jobs database, the spool that holds acknowledged bytes
//! until they are compressed, and the storage the archives land in.
//!
//! The engine is handed an `ArchiveStore` and never knows whether archives
//! land on a disk or in a bucket: a store creates an archive as a stream of
//! bytes that becomes visible under its final name only on `commit`, and
//! reads it back as a stream.

mod db;
mod local;
mod lock;
mod s3;
mod spool;

use std::io::{Read, Write};

pub use db::{FoundArchive, InsertOutcome, JobDb, ResolveOutcome};
pub use local::{ARCHIVE_SUFFIX, LocalStore};
pub use lock::DataDirLock;
pub use s3::{S3Credentials, S3Options, S3Store, UPLOADS_DIR};
pub use spool::{Spool, WriteBack, create_dir_durably, sync_dir};

use crate::error::{Classified, ErrorKind, IoError};
use crate::types::{Digest, LogId, ShardId};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("jobs database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("jobs database holds an invalid row: {0}")]
    Corrupt(String),
    /// The store refused to create an object that exists (a conditional
    /// create); the engine then checks whose it is.
    #[error("{location} exists already")]
    Exists { location: String },
    /// A fault that passes: throttling, a 5xx, a reset connection, a timeout.
    #[error("archive store unavailable: {0}")]
    Unavailable(String),
    /// Any other refusal by the archive store (permissions, a bad bucket).
    #[error("archive store: {0}")]
    Backend(String),
    #[error(
        "the data dir {} is in use by another wal-archiver ({holder}); two servers on one data dir would undo each other's work",
        .data_dir.display()
    )]
    Locked {
        data_dir: std::path::PathBuf,
        holder: String,
    },
}

impl Classified for StoreError {
    fn kind(&self) -> ErrorKind {
        match self {
            StoreError::Io(e) => e.kind(),
            StoreError::Exists { .. } => ErrorKind::AlreadyExists,
            StoreError::Unavailable(_) => ErrorKind::Unavailable,
            StoreError::Locked { .. } => ErrorKind::FailedPrecondition,
            StoreError::Db(_) | StoreError::Corrupt(_) | StoreError::Backend(_) => {
                ErrorKind::Internal
            }
        }
    }
}

impl StoreError {
    pub fn is_out_of_space(&self) -> bool {
        match self {
            StoreError::Io(e) => e.is_out_of_space(),
            StoreError::Db(rusqlite::Error::SqliteFailure(e, _)) => {
                e.code == rusqlite::ErrorCode::DiskFull
            }
            _ => false,
        }
    }
}

/// Where one segment's archive lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ArchiveKey {
    pub shard_id: ShardId,
    pub log_id: LogId,
}

/// What an archive holds, for stores that keep it beside the bytes (object
/// metadata), so the archive can be identified without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArchiveMeta {
    pub key: ArchiveKey,
    /// Size of the original segment.
    pub size: u64,
    pub sha256: Digest,
}

/// Whether a write may replace an object already under its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteMode {
    /// Only if nothing is there (`If-None-Match: *` where the store honours
    /// it): two writers racing for a key cannot both win.
    Create,
    /// The engine proved what is there is this segment's own archive (a
    /// damaged one being repaired, a retried upload): overwrite it.
    Replace,
}

/// What a store knows about an archive without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Size of the archive itself.
    pub size: u64,
    /// The segment's SHA-256, where the store keeps it beside the bytes
    /// (object metadata); `None` means: read the archive's header to know.
    pub sha256: Option<Digest>,
}

/// An archive being written. Dropping it without `commit` discards it: no
/// partial archive is ever visible under its final name.
pub trait PendingArchive: Write + Send {
    /// Makes the archive durable under its final name.
    fn commit(self: Box<Self>, meta: &ArchiveMeta) -> Result<(), StoreError>;
}

/// Archive storage. Workers call it from their own threads, so it is blocking.
///
/// A store never decides whose archive may stand under a key: the engine
/// checks an existing archive's identity (`stat`, else its header) before it
/// writes, so that an archive of other bytes is never overwritten.
pub trait ArchiveStore: Send + Sync + 'static {
    /// Starts writing `key`'s archive. `known` is its identity when it is known
    /// before the bytes (a store that writes metadata first, as a multipart
    /// upload does, needs it then); `commit` always gets it. `commit` may
    /// answer `Exists` when the store honours create-only writes and someone
    /// got there first.
    fn create(
        &self,
        key: ArchiveKey,
        known: Option<&ArchiveMeta>,
        mode: WriteMode,
    ) -> Result<Box<dyn PendingArchive>, StoreError>;
    /// Streams an archive; `None` when there is none.
    fn open(&self, key: ArchiveKey) -> Result<Option<Box<dyn Read + Send>>, StoreError>;
    /// Size (and digest, where kept) of an archive; `None` when there is none.
    fn stat(&self, key: ArchiveKey) -> Result<Option<ObjectInfo>, StoreError>;
    /// Every archive of one shard, or of all shards, in key order.
    fn list(&self, shard: Option<ShardId>) -> Result<Vec<ArchiveKey>, StoreError>;
    fn remove(&self, key: ArchiveKey) -> Result<bool, StoreError>;
    /// Removes what crashed writers left behind; returns how many.
    fn clean_up(&self) -> Result<usize, StoreError>;
    /// Human-readable location, for logs and the CLI.
    fn location(&self, key: ArchiveKey) -> String;
    /// Whether anyone but this server may write under its keys (replicas on
    /// one bucket): then a committed write is checked to be the last one.
    fn shared(&self) -> bool;
}
