//! Reading an Archive stream: the header first, then data chunks and an
//! optional trailer into the engine's `Upload`. Any way the stream can end
//! other than a complete, verified segment fails the job — in particular a
//! stream that simply stops, because tonic presents a client that aborted
//! mid-upload as a clean end of stream; only the size and digest check in
//! `Upload::finish` commits anything.

use std::time::Duration;

use tonic::{Status, Streaming};

use super::auth::AuthError;
use crate::engine::{Accepted, EngineError, Upload};
use crate::error::{Classified, ErrorKind};
use crate::proto::{self, archive_request::Msg};
use crate::types::Trailer;

/// Why a push was refused while its stream was read.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// Messages in the wrong order or shape.
    #[error("{0}")]
    Protocol(String),
    /// The stream broke; `kind` says whose fault it was.
    #[error("{message}")]
    Broken { kind: ErrorKind, message: String },
    #[error("no segment header within {0} s (receive_idle_timeout)")]
    NoHeader(u64),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Auth(#[from] AuthError),
}

impl Classified for ReceiveError {
    fn kind(&self) -> ErrorKind {
        match self {
            ReceiveError::Protocol(_) => ErrorKind::InvalidArgument,
            ReceiveError::Broken { kind, .. } => *kind,
            ReceiveError::NoHeader(_) => ErrorKind::DeadlineExceeded,
            ReceiveError::Engine(e) => e.kind(),
            ReceiveError::Auth(e) => e.kind(),
        }
    }
}

impl From<Status> for ReceiveError {
    /// tonic reports bytes that do not decode as a message (and HTTP/2
    /// protocol errors) as INTERNAL: on a request stream that is the
    /// client's fault. Anything else (a cancel, a reset) keeps its code.
    fn from(status: Status) -> Self {
        if status.code() == tonic::Code::Internal {
            return ReceiveError::Broken {
                kind: ErrorKind::InvalidArgument,
                message: format!("malformed request message: {}", status.message()),
            };
        }
        let kind = match status.code() {
            tonic::Code::Cancelled => ErrorKind::Cancelled,
            tonic::Code::ResourceExhausted => ErrorKind::ResourceExhausted,
            tonic::Code::DeadlineExceeded => ErrorKind::DeadlineExceeded,
            tonic::Code::InvalidArgument | tonic::Code::OutOfRange => ErrorKind::InvalidArgument,
            _ => ErrorKind::Unavailable,
        };
        ReceiveError::Broken {
            kind,
            message: status.message().to_owned(),
        }
    }
}

/// The first message, which must be the segment header, within `idle`.
pub async fn header(
    stream: &mut Streaming<proto::ArchiveRequest>,
    idle: Duration,
) -> Result<proto::SegmentHeader, ReceiveError> {
    let first = tokio::time::timeout(idle, stream.message())
        .await
        .map_err(|_| ReceiveError::NoHeader(idle.as_secs()))?;
    match first? {
        Some(proto::ArchiveRequest {
            msg: Some(Msg::Header(header)),
        }) => Ok(header),
        Some(_) => Err(ReceiveError::Protocol(
            "the first message must be the segment header".into(),
        )),
        None => Err(ReceiveError::Protocol(
            "empty stream: no segment header".into(),
        )),
    }
}

/// Reads data chunks and the optional trailer into `upload`, then finishes
/// it — if `still_allowed` says the caller may still push. A stream that
/// sends nothing for `idle` is cut.
pub async fn segment(
    mut upload: Upload,
    mut stream: Streaming<proto::ArchiveRequest>,
    idle: Duration,
    still_allowed: impl FnOnce() -> Result<(), AuthError>,
) -> Result<Accepted, ReceiveError> {
    let mut trailer: Option<Trailer> = None;
    loop {
        let message = tokio::select! {
            message = tokio::time::timeout(idle, stream.message()) => match message {
                Ok(message) => message,
                Err(_) => return Err(upload.abort(EngineError::Idle(idle.as_secs())).await.into()),
            },
            () = upload.cancelled() => {
                let id = upload.job().map(|job| job.id).unwrap_or_default();
                return Err(upload.abort(EngineError::Cancelled(id)).await.into());
            }
        };
        let protocol_error = match message {
            Ok(None) => break,
            Err(err) => {
                let broken = ReceiveError::from(err);
                upload
                    .abort(EngineError::Interrupted(broken.to_string()))
                    .await;
                return Err(broken);
            }
            Ok(Some(proto::ArchiveRequest {
                msg: Some(Msg::Data(data)),
            })) if trailer.is_none() => {
                upload.write(data).await?;
                continue;
            }
            Ok(Some(proto::ArchiveRequest {
                msg: Some(Msg::Trailer(sent)),
            })) if trailer.is_none() => match Trailer::try_from(sent) {
                Ok(sent) => {
                    trailer = Some(sent);
                    continue;
                }
                Err(bad) => bad.to_string(),
            },
            Ok(Some(proto::ArchiveRequest {
                msg: Some(Msg::Data(_)),
            })) => "data after the trailer".to_owned(),
            Ok(Some(proto::ArchiveRequest {
                msg: Some(Msg::Trailer(_)),
            })) => "trailer sent twice".to_owned(),
            Ok(Some(proto::ArchiveRequest {
                msg: Some(Msg::Header(_)),
            })) => "segment header sent twice".to_owned(),
            Ok(Some(proto::ArchiveRequest { msg: None })) => {
                "empty message: set header, data or trailer".to_owned()
            }
        };
        return Err(upload
            .abort(EngineError::Invalid(protocol_error))
            .await
            .into());
    }
    if let Err(refused) = still_allowed() {
        let reason = format!("not committed: {refused}");
        upload.abort(EngineError::Interrupted(reason)).await;
        return Err(refused.into());
    }
    Ok(upload.finish(trailer.unwrap_or_default()).await?)
}
