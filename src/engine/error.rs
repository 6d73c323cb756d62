use crate::archive::{ArchiveError, JsonLinesError};
use crate::error::{Classified, ErrorKind, IoError};
use crate::store::StoreError;
use crate::types::{Digest, FailureKind, Job, JobId, JobState, LogId, ShardId};

/// Everything the engine can refuse or fail with. Each variant says what kind
/// of failure it is (`kind`); the service turns kinds into gRPC codes.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Io(#[from] IoError),
    #[error(
        "shard {shard_id}'s queue is full ({limit} segments received or waiting); keep the WAL and retry later"
    )]
    QueueFull { shard_id: ShardId, limit: usize },
    #[error("{limit} segments are being received already (max_concurrent_uploads); retry later")]
    TooManyUploads { limit: usize },
    #[error("{limit} restores are streaming already (max_concurrent_restores); retry later")]
    TooManyRestores { limit: usize },
    #[error(
        "the data dir has {free} bytes free but needs {needed} (min_free_bytes, plus the space uploads in progress reserved, plus the declared segment size); retry later"
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
    #[error("shard {shard_id} is not served here: this server serves {ownership}")]
    NotOwned {
        shard_id: ShardId,
        ownership: String,
    },
    #[error("shard {shard_id} never submitted log_id {log_id}: there is nothing to resolve")]
    NotSubmitted { shard_id: ShardId, log_id: LogId },
    #[error("shard {shard_id} log_id {log_id} is archived: there is nothing to resolve")]
    AlreadyArchived { shard_id: ShardId, log_id: LogId },
    #[error(
        "shard {shard_id} log_id {log_id} has job {job_id}, {state}: cancel it (or let it end) before resolving"
    )]
    StillActive {
        shard_id: ShardId,
        log_id: LogId,
        job_id: JobId,
        state: JobState,
    },
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
    /// The stream that fed an upload broke.
    #[error("upload interrupted: {0}")]
    Interrupted(String),
    /// The stream that fed an upload went quiet.
    #[error("no data for {0} s (receive_idle_timeout): the upload was cut; push the segment again")]
    Idle(u64),
    #[error("job {} failed: {}", .0.id, .0.reason)]
    JobFailed(Box<Job>),
    /// The spool no longer holds what was received and verified.
    #[error("spool file no longer matches the received segment: {0}")]
    SpoolDamaged(ArchiveError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl Classified for EngineError {
    fn kind(&self) -> ErrorKind {
        use EngineError as E;
        match self {
            E::Store(e) => e.kind(),
            E::Archive(e) => e.kind(),
            E::Io(e) => e.kind(),
            E::QueueFull { .. }
            | E::TooManyUploads { .. }
            | E::TooManyRestores { .. }
            | E::DiskFull { .. } => ErrorKind::ResourceExhausted,
            E::JobNotFound(_)
            | E::SegmentNotFound { .. }
            | E::ShardNotFound(_)
            | E::Expired { .. } => ErrorKind::NotFound,
            E::Conflict { .. } => ErrorKind::AlreadyExists,
            E::Busy { .. } => ErrorKind::Aborted,
            E::JobFailed(job) => job
                .failure
                .map_or(ErrorKind::Aborted, FailureKind::error_kind),
            E::NotSubmitted { .. } => ErrorKind::NotFound,
            E::NotCancellable { .. }
            | E::NotOwned { .. }
            | E::AlreadyArchived { .. }
            | E::StillActive { .. } => ErrorKind::FailedPrecondition,
            E::Invalid(_) | E::BadJsonLine(_) | E::SizeMismatch { .. } | E::MissingDigest => {
                ErrorKind::InvalidArgument
            }
            E::DigestMismatch { .. } | E::ArchiveMissing { .. } | E::SpoolDamaged(_) => {
                ErrorKind::DataLoss
            }
            E::Cancelled(_) | E::Interrupted(_) => ErrorKind::Cancelled,
            E::Idle(_) => ErrorKind::DeadlineExceeded,
            E::ShuttingDown => ErrorKind::Unavailable,
            E::Internal(_) => ErrorKind::Internal,
        }
    }
}

impl EngineError {
    /// The disk (or quota) is full: a condition that passes.
    pub fn is_out_of_space(&self) -> bool {
        match self {
            EngineError::Io(e) => e.is_out_of_space(),
            EngineError::Store(e) => e.is_out_of_space(),
            EngineError::Archive(ArchiveError::Io(e)) => crate::error::is_out_of_space(e),
            _ => false,
        }
    }

    /// A failure that passes by itself: a full disk, a disk error on write,
    /// the archive store unreachable. A job that hits one is tried again later
    /// rather than failed, because it was acknowledged.
    pub fn passes(&self) -> bool {
        // A store's own failure can arrive wrapped in the io::Error of a
        // write (a part upload failing inside `Write::write`).
        let os_error_passes = |e: &std::io::Error| {
            crate::error::is_out_of_space(e)
                || e.raw_os_error() == Some(libc::EIO)
                || e.get_ref()
                    .and_then(|inner| inner.downcast_ref::<StoreError>())
                    .is_some_and(|store| {
                        matches!(store, StoreError::Unavailable(_)) || store.is_out_of_space()
                    })
        };
        match self {
            EngineError::Io(e) => os_error_passes(&e.source),
            EngineError::Store(StoreError::Io(e)) => os_error_passes(&e.source),
            EngineError::Store(StoreError::Unavailable(_)) => true,
            EngineError::Store(e) => e.is_out_of_space(),
            EngineError::Archive(ArchiveError::Io(e)) => os_error_passes(e),
            _ => false,
        }
    }

    /// How a job that failed with this error is recorded.
    pub fn failure_kind(&self) -> FailureKind {
        if self.is_out_of_space() {
            return FailureKind::NoSpace;
        }
        match self {
            EngineError::Invalid(_)
            | EngineError::BadJsonLine(_)
            | EngineError::SizeMismatch { .. }
            | EngineError::DigestMismatch { .. }
            | EngineError::MissingDigest => FailureKind::InvalidData,
            EngineError::Conflict { .. } => FailureKind::Conflict,
            EngineError::SpoolDamaged(_)
            | EngineError::Archive(
                ArchiveError::ContentMismatch { .. } | ArchiveError::SizeMismatch { .. },
            ) => FailureKind::Integrity,
            EngineError::Cancelled(_)
            | EngineError::ShuttingDown
            | EngineError::Interrupted(_)
            | EngineError::Idle(_) => FailureKind::Interrupted,
            _ => FailureKind::Internal,
        }
    }
}
