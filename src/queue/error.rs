use crate::archive::{ArchiveError, JsonLinesError};
use crate::store::StoreError;
use crate::types::{Digest, FailureKind, Job, JobId, JobState, LogId, ShardId};

/// Everything the engine can refuse or fail with. The service maps each to a
/// gRPC status in one place (`service::status`).
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error(
        "shard {shard_id}'s queue is full ({limit} segments received or waiting); keep the WAL and retry later"
    )]
    QueueFull { shard_id: ShardId, limit: usize },
    #[error("{limit} segments are being received already (max_concurrent_uploads); retry later")]
    TooManyUploads { limit: usize },
    #[error(
        "the data dir has {free} bytes free but needs {needed} (min_free_bytes plus the declared segment size); retry later"
    )]
    DiskFull { free: u64, needed: u64 },
    #[error("no job {0}")]
    JobNotFound(JobId),
    #[error("no archive of shard {shard_id} log_id {log_id}")]
    SegmentNotFound { shard_id: ShardId, log_id: LogId },
    #[error(
        "the archive of shard {shard_id} log_id {log_id} is recorded but missing at {location}"
    )]
    ArchiveMissing {
        shard_id: ShardId,
        log_id: LogId,
        location: String,
    },
    #[error("the archive of shard {shard_id} log_id {log_id} was removed by retention")]
    Expired { shard_id: ShardId, log_id: LogId },
    #[error("shard {0} has never pushed a segment")]
    ShardNotFound(ShardId),
    #[error(
        "shard {shard_id} log_id {log_id} was already pushed with SHA-256 {existing}; this push has SHA-256 {pushed}"
    )]
    Conflict {
        shard_id: ShardId,
        log_id: LogId,
        existing: Digest,
        pushed: Digest,
    },
    #[error(
        "shard {shard_id} log_id {log_id} is being received by another stream (job {job_id}); retry when it is done"
    )]
    Busy {
        shard_id: ShardId,
        log_id: LogId,
        job_id: JobId,
    },
    #[error("job {id} is {state}: only RECEIVING, QUEUED or COMPRESSING jobs can be cancelled")]
    NotCancellable { id: JobId, state: JobState },
    #[error("{0}")]
    Invalid(String),
    #[error("JSON-lines segment, {0}")]
    BadJsonLine(#[from] JsonLinesError),
    #[error("size mismatch: {declared} bytes declared, {received} received")]
    SizeMismatch { declared: u64, received: u64 },
    #[error("SHA-256 mismatch: declared {declared}, received bytes hash to {received}")]
    DigestMismatch { declared: Digest, received: Digest },
    #[error("no SHA-256 for the segment: send it in the header or in the trailer")]
    MissingDigest,
    #[error("job {0} was cancelled")]
    Cancelled(JobId),
    #[error("the service is shutting down; retry later")]
    ShuttingDown,
    #[error("upload interrupted: {0}")]
    Interrupted(String),
    #[error("job {} failed: {}", .0.id, .0.reason)]
    JobFailed(Box<Job>),
    #[error("internal error: {0}")]
    Internal(String),
}

impl QueueError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        QueueError::Io {
            context: context.into(),
            source,
        }
    }

    /// The OS error behind this one, if any (to tell a full disk from a bug).
    pub fn os_error(&self) -> Option<&std::io::Error> {
        match self {
            QueueError::Io { source, .. } => Some(source),
            QueueError::Store(StoreError::Io { source, .. }) => Some(source),
            QueueError::Archive(ArchiveError::Io(source)) => Some(source),
            _ => None,
        }
    }

    /// How a job that failed with this error is recorded.
    pub fn failure_kind(&self) -> FailureKind {
        if self.is_out_of_space() {
            return FailureKind::NoSpace;
        }
        match self {
            QueueError::Invalid(_)
            | QueueError::BadJsonLine(_)
            | QueueError::SizeMismatch { .. }
            | QueueError::DigestMismatch { .. }
            | QueueError::MissingDigest => FailureKind::InvalidData,
            QueueError::Archive(
                ArchiveError::ContentMismatch { .. } | ArchiveError::SizeMismatch { .. },
            ) => FailureKind::Integrity,
            QueueError::Interrupted(_) | QueueError::Cancelled(_) | QueueError::ShuttingDown => {
                FailureKind::Interrupted
            }
            _ => FailureKind::Internal,
        }
    }

    pub fn is_out_of_space(&self) -> bool {
        self.os_error()
            .and_then(std::io::Error::raw_os_error)
            .is_some_and(|code| code == libc::ENOSPC || code == libc::EDQUOT)
    }
}
