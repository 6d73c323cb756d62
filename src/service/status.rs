//! Errors to gRPC statuses: the one table from a kind of failure to a code,
//! and the one place a `Status` is made.

use tonic::{Code, Status};

use crate::error::{Classified, ErrorKind};

pub fn code(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::AlreadyExists => Code::AlreadyExists,
        ErrorKind::Unauthenticated => Code::Unauthenticated,
        ErrorKind::PermissionDenied => Code::PermissionDenied,
        ErrorKind::ResourceExhausted => Code::ResourceExhausted,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        ErrorKind::Aborted => Code::Aborted,
        ErrorKind::Cancelled => Code::Cancelled,
        ErrorKind::DeadlineExceeded => Code::DeadlineExceeded,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::DataLoss => Code::DataLoss,
        ErrorKind::Internal => Code::Internal,
    }
}

/// The status a caller sees for `err`.
pub fn status(err: impl Classified) -> Status {
    let (kind, message) = (err.kind(), err.to_string());
    // Other bytes pushed under an archived segment's name; bytes that do not
    // match their SHA-256 (an upload, a spool, an archive being restored):
    // events an operator must see, not only the caller. (Refused
    // authentication is logged where it is decided.)
    match kind {
        ErrorKind::AlreadyExists => {
            tracing::warn!(target: "security", %message, "push refused: conflicts with an archived segment")
        }
        ErrorKind::DataLoss => {
            tracing::warn!(target: "integrity", %message, "integrity check failed")
        }
        _ => {}
    }
    refusal(kind, message)
}

/// A status for a refusal that is not an error value (a limit, a deadline).
pub fn refusal(kind: ErrorKind, message: impl Into<String>) -> Status {
    Status::new(code(kind), message)
}

/// `NotFound` → `NOT_FOUND`, as gRPC documents its codes.
pub fn code_name(code: Code) -> String {
    let mut name = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}
