//! Durable state: the jobs database, the spool that holds acknowledged bytes
//! until they are compressed, and the storage the archives land in.

mod db;
mod local;
mod spool;

use std::io::{Read, Seek, Write};

pub use db::{JobDb, JobFilter, NewJob, Received};
pub use local::LocalStore;
pub use spool::{Spool, sync_dir};

use crate::types::{LogId, ShardId};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("jobs database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("jobs database holds an invalid row: {0}")]
    Corrupt(String),
}

impl StoreError {
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
        let context = context.into();
        move |source| StoreError::Io { context, source }
    }
}

/// Where one segment's archive lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ArchiveKey {
    pub shard_id: ShardId,
    pub log_id: LogId,
}

pub trait ReadSeek: Read + Seek + Send {}
impl<T: Read + Seek + Send> ReadSeek for T {}

/// An archive being written. Dropping it without `commit` discards it: no
/// partial archive is ever visible under its final name.
pub trait PendingArchive: Write + Send {
    /// Makes the archive durable under its final name.
    fn commit(self: Box<Self>) -> Result<(), StoreError>;
}

/// Archive storage. Workers call it from their own threads, so it is blocking.
pub trait ArchiveStore: Send + Sync + 'static {
    fn create(&self, key: ArchiveKey) -> Result<Box<dyn PendingArchive>, StoreError>;
    /// `None` when there is no archive for `key`.
    fn open(&self, key: ArchiveKey) -> Result<Option<Box<dyn ReadSeek>>, StoreError>;
    fn remove(&self, key: ArchiveKey) -> Result<bool, StoreError>;
    /// Removes what crashed writers left behind; returns how many.
    fn remove_temporaries(&self) -> Result<usize, StoreError>;
    /// Human-readable location, for logs and the CLI.
    fn location(&self, key: ArchiveKey) -> String;
}
