//! Engine errors to gRPC statuses: the one place a code is chosen.

use tonic::{Code, Status};

use crate::archive::ArchiveError;
use crate::queue::QueueError;
use crate::store::StoreError;
use crate::types::FailureKind;

pub fn status(err: QueueError) -> Status {
    Status::new(code(&err), err.to_string())
}

pub fn code(err: &QueueError) -> Code {
    use QueueError as E;
    if err.is_out_of_space() {
        return Code::ResourceExhausted;
    }
    match err {
        E::QueueFull { .. } | E::TooManyUploads { .. } | E::DiskFull { .. } => {
            Code::ResourceExhausted
        }
        E::JobNotFound(_) | E::SegmentNotFound { .. } | E::ShardNotFound(_) | E::Expired { .. } => {
            Code::NotFound
        }
        E::Conflict { .. } => Code::AlreadyExists,
        E::Busy { .. } => Code::Aborted,
        E::JobFailed(job) => match job.failure {
            Some(FailureKind::InvalidData) => Code::InvalidArgument,
            Some(FailureKind::Integrity) => Code::DataLoss,
            Some(FailureKind::NoSpace) => Code::ResourceExhausted,
            Some(FailureKind::Interrupted) | None => Code::Aborted,
            Some(FailureKind::Internal) => Code::Internal,
        },
        E::NotCancellable { .. } => Code::FailedPrecondition,
        E::Invalid(_) | E::BadJsonLine(_) | E::SizeMismatch { .. } | E::MissingDigest => {
            Code::InvalidArgument
        }
        E::DigestMismatch { .. } | E::ArchiveMissing { .. } => Code::DataLoss,
        E::Archive(ArchiveError::Io(_)) => Code::Internal,
        E::Archive(_) => Code::DataLoss,
        E::Cancelled(_) | E::Interrupted(_) => Code::Cancelled,
        E::ShuttingDown => Code::Unavailable,
        E::Store(StoreError::Db(_) | StoreError::Corrupt(_) | StoreError::Io { .. })
        | E::Io { .. }
        | E::Internal(_) => Code::Internal,
    }
}
