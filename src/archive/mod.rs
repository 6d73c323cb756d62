//! The archive file: format, streaming encoder and verifying decoder, and the
//! JSON-lines check that runs while a segment is compressed.
//!
//! An archive is a valid zstd stream: a skippable frame with the header, the
//! segment as zstd frame(s), a skippable frame with the footer. Stock `zstd -d`
//! skips the metadata and yields the original bytes. See docs/ARCHIVE_FORMAT.md.

mod format;
mod hashing;
mod jsonl;
mod reader;
mod writer;

pub use format::{
    ArchiveFooter, ArchiveHeader, ArchiveMetadata, FORMAT_VERSION, FORMAT_WITH_DIGEST_UP_FRONT,
};
pub use jsonl::{JsonLinesChecker, JsonLinesError};
pub use reader::{ArchiveReader, Expected, read_metadata};

use crate::error::{Classified, ErrorKind};
pub use writer::{ArchiveWriter, WrittenArchive};

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not a wal-archiver archive: {0}")]
    NotAnArchive(String),
    #[error("archive metadata is corrupt: {0}")]
    CorruptMetadata(String),
    #[error("archive format version {0} is newer than this build understands ({FORMAT_VERSION})")]
    UnsupportedVersion(u32),
    #[error("archive data is corrupt: {0}")]
    CorruptData(String),
    #[error("SHA-256 mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("content differs from the segment as received: XXH3-128 {actual}, expected {expected}")]
    ContentMismatch { expected: String, actual: String },
    #[error("size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch { expected: u64, actual: u64 },
    #[error("wrong archive: {0}")]
    WrongSegment(String),
}

impl Classified for ArchiveError {
    fn kind(&self) -> ErrorKind {
        match self {
            ArchiveError::Io(e) if crate::error::is_out_of_space(e) => ErrorKind::ResourceExhausted,
            ArchiveError::Io(_) => ErrorKind::Internal,
            // Bytes that do not match what was stored or received: data loss.
            _ => ErrorKind::DataLoss,
        }
    }
}
