//! How failures are classified. Every layer's error enum says what kind of
//! failure each of its variants is (`Classified::kind`); the service turns a
//! kind into a gRPC code in one table (`service::status`), and the client
//! turns a code back into a kind to decide what to retry. So the decision
//! "what does the caller see" is made once per error, next to the error.

use std::fmt;
use std::io;

/// What a failure means to the caller. One variant per gRPC code the service
/// answers with; which code each one is lives in `service::status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request itself is wrong; retrying it unchanged fails again.
    InvalidArgument,
    NotFound,
    /// The segment exists with other bytes.
    AlreadyExists,
    Unauthenticated,
    PermissionDenied,
    /// A bound was hit (queue, uploads, disk space, requests): retry later.
    ResourceExhausted,
    /// The request does not fit the current state (cancel a finished job).
    FailedPrecondition,
    /// A concurrent operation got there first: retry.
    Aborted,
    Cancelled,
    DeadlineExceeded,
    /// Starting, stopping, or a dependency (the object store) is down: retry.
    Unavailable,
    /// Stored or received bytes do not match their digest.
    DataLoss,
    /// A bug or an unexpected I/O failure.
    Internal,
}

/// An error that knows its kind.
pub trait Classified: fmt::Display {
    fn kind(&self) -> ErrorKind;
}

/// An I/O error with what was being done, shared by every layer that touches
/// files, so "disk full" is recognised the same way everywhere.
#[derive(Debug, thiserror::Error)]
#[error("{context}: {source}")]
pub struct IoError {
    pub context: String,
    #[source]
    pub source: io::Error,
}

impl IoError {
    pub fn new(context: impl Into<String>, source: io::Error) -> Self {
        IoError {
            context: context.into(),
            source,
        }
    }

    /// For `map_err`: `.map_err(IoError::with("reading x"))`.
    pub fn with(context: impl Into<String>) -> impl FnOnce(io::Error) -> IoError {
        let context = context.into();
        move |source| IoError { context, source }
    }

    pub fn is_out_of_space(&self) -> bool {
        is_out_of_space(&self.source)
    }
}

impl Classified for IoError {
    fn kind(&self) -> ErrorKind {
        if self.is_out_of_space() {
            ErrorKind::ResourceExhausted
        } else {
            ErrorKind::Internal
        }
    }
}

/// ENOSPC or EDQUOT: the disk (or the quota) is full, which passes.
pub fn is_out_of_space(error: &io::Error) -> bool {
    error
        .raw_os_error()
        .is_some_and(|code| code == libc::ENOSPC || code == libc::EDQUOT)
}
