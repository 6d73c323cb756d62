//! Durable state: the jobs database, the spool that holds acknowledged bytes
//! until they are compressed, and the storage the archives land in.
//!
//! The engine is handed an `ArchiveStore` and never knows whether archives
//! land on a disk or in a bucket: a store creates an archive as a stream of
//! bytes that becomes visible under its final name only on `commit`, and
//! reads it back as a stream.

mod db;
mod local;
mod spool;

use std::io::{Read, Write};

pub use db::{InsertOutcome, JobDb, Received};
pub use local::{ARCHIVE_SUFFIX, LocalStore};
pub use spool::{Spool, sync_dir};

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
}

impl Classified for StoreError {
    fn kind(&self) -> ErrorKind {
        match self {
            StoreError::Io(e) => e.kind(),
            StoreError::Db(_) | StoreError::Corrupt(_) => ErrorKind::Internal,
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

/// An archive being written. Dropping it without `commit` discards it: no
/// partial archive is ever visible under its final name.
pub trait PendingArchive: Write + Send {
    /// Makes the archive durable under its final name.
    fn commit(self: Box<Self>, meta: &ArchiveMeta) -> Result<(), StoreError>;
}

/// Archive storage. Workers call it from their own threads, so it is blocking.
pub trait ArchiveStore: Send + Sync + 'static {
    fn create(&self, key: ArchiveKey) -> Result<Box<dyn PendingArchive>, StoreError>;
    /// Streams an archive; `None` when there is none.
    fn open(&self, key: ArchiveKey) -> Result<Option<Box<dyn Read + Send>>, StoreError>;
    fn remove(&self, key: ArchiveKey) -> Result<bool, StoreError>;
    /// Removes what crashed writers left behind; returns how many.
    fn clean_up(&self) -> Result<usize, StoreError>;
    /// Human-readable location, for logs and the CLI.
    fn location(&self, key: ArchiveKey) -> String;
}
