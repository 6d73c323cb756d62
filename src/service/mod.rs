//! gRPC handlers: read the wire, call the engine, map errors once (`status`).

pub mod auth;
mod guard;
mod server;
mod status;

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use futures::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

pub use guard::code_name;
pub use server::{ServeError, serve};
pub use status::{code, status};

use crate::api;
use crate::proto::{self, archive_request::Msg, wal_archiver_server::WalArchiver};
use crate::queue::{Accepted, Archiver, Begin, QueueError, Trailer, Upload};
use crate::store::JobFilter;
use crate::types::{AckLevel, JobState};
use auth::{Access, Tokens};

const DEFAULT_PAGE_SIZE: usize = 100;
const MAX_PAGE_SIZE: usize = 1000;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

pub struct WalArchiverService {
    /// Set once recovery is done; until then calls get UNAVAILABLE.
    archiver: Arc<OnceLock<Archiver>>,
    /// Fires when the service stops: ends watch streams and waits for ARCHIVED.
    stopping: CancellationToken,
    tokens: Tokens,
}

impl WalArchiverService {
    pub fn new(
        archiver: Arc<OnceLock<Archiver>>,
        stopping: CancellationToken,
        tokens: Tokens,
    ) -> Self {
        WalArchiverService {
            archiver,
            stopping,
            tokens,
        }
    }

    #[allow(clippy::result_large_err)]
    fn archiver(&self) -> Result<&Archiver, Status> {
        self.archiver
            .get()
            .ok_or_else(|| Status::unavailable("recovering from the previous run; retry shortly"))
    }

    /// The job, if the caller may read its shard.
    async fn readable_job<T>(
        &self,
        request: &Request<T>,
        id: u64,
    ) -> Result<crate::types::Job, Status> {
        let job = self.archiver()?.job(id).await.map_err(status)?;
        self.tokens
            .authorize(request.extensions(), Access::Read(job.shard_id))?;
        Ok(job)
    }
}

#[tonic::async_trait]
impl WalArchiver for WalArchiverService {
    async fn archive(
        &self,
        request: Request<Streaming<proto::ArchiveRequest>>,
    ) -> Result<Response<proto::ArchiveReply>, Status> {
        let started = Instant::now();
        let (_, extensions, mut stream) = request.into_parts();
        let header = match stream.message().await.map_err(stream_error)? {
            Some(proto::ArchiveRequest {
                msg: Some(Msg::Header(header)),
            }) => header,
            Some(_) => {
                return Err(Status::invalid_argument(
                    "the first message must be the segment header",
                ));
            }
            None => return Err(Status::invalid_argument("empty stream: no segment header")),
        };
        let segment = api::segment_request(header)?;
        self.tokens
            .authorize(&extensions, Access::Push(segment.shard_id))?;
        let ack = segment.ack;
        let accepted = match self.archiver()?.begin(segment).await.map_err(status)? {
            Begin::Known(accepted) => *accepted,
            Begin::Stream(upload) => receive(*upload, stream).await?,
        };
        let mut job = accepted.job;
        if ack == AckLevel::Archived && !job.state.is_terminal() {
            job = tokio::select! {
                waited = self.archiver()?.wait_terminal(job.id) => waited.map_err(status)?,
                () = self.stopping.cancelled() => return Err(Status::unavailable(format!(
                    "the service is shutting down before job {} was archived; it stays queued for the next start", job.id
                ))),
            };
        }
        if ack == AckLevel::Archived && job.state != JobState::Archived {
            return Err(status(QueueError::JobFailed(Box::new(job))));
        }
        metrics::histogram!(crate::telemetry::ACK_LATENCY, "ack" => ack.as_str())
            .record(started.elapsed().as_secs_f64());
        Ok(Response::new(proto::ArchiveReply {
            job: Some(api::job(job)),
            deduplicated: accepted.deduplicated,
        }))
    }

    async fn get_job(
        &self,
        request: Request<proto::GetJobRequest>,
    ) -> Result<Response<proto::Job>, Status> {
        let job = self
            .readable_job(&request, request.get_ref().job_id)
            .await?;
        Ok(Response::new(api::job(job)))
    }

    async fn list_jobs(
        &self,
        request: Request<proto::ListJobsRequest>,
    ) -> Result<Response<proto::ListJobsReply>, Status> {
        let access = match request.get_ref().shard_id {
            Some(shard) => Access::Read(shard),
            None => Access::ReadAll,
        };
        self.tokens.authorize(request.extensions(), access)?;
        let request = request.into_inner();
        let limit = match request.page_size as usize {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let after = match request.page_token.as_str() {
            "" => None,
            token => Some(
                token
                    .parse()
                    .map_err(|_| Status::invalid_argument(format!("bad page_token {token:?}")))?,
            ),
        };
        let filter = JobFilter {
            shard_id: request.shard_id,
            state: api::state_filter(request.state)?,
            log_id_min: request.log_id_min,
            log_id_max: request.log_id_max,
            after,
            limit,
        };
        let jobs = self.archiver()?.list_jobs(filter).await.map_err(status)?;
        let next_page_token = match jobs.last() {
            Some(last) if jobs.len() == limit => last.id.to_string(),
            _ => String::new(),
        };
        Ok(Response::new(proto::ListJobsReply {
            jobs: jobs.into_iter().map(api::job).collect(),
            next_page_token,
        }))
    }

    type WatchJobStream = BoxStream<proto::Job>;

    async fn watch_job(
        &self,
        request: Request<proto::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let id = request.get_ref().job_id;
        // Refuse an unknown job with a status rather than a stream that errors.
        self.readable_job(&request, id).await?;
        let states = self
            .archiver()?
            .watch(id)
            .map(|item| item.map(api::job).map_err(status))
            .take_until(self.stopping.clone().cancelled_owned());
        Ok(Response::new(Box::pin(states)))
    }

    async fn cancel_job(
        &self,
        request: Request<proto::CancelJobRequest>,
    ) -> Result<Response<proto::Job>, Status> {
        self.tokens
            .authorize(request.extensions(), Access::Cancel)?;
        let id = request.into_inner().job_id;
        let job = self.archiver()?.cancel(id).await.map_err(status)?;
        if job.state != JobState::Cancelled {
            // It finished before the cancel took hold.
            return Err(status(QueueError::NotCancellable {
                id,
                state: job.state,
            }));
        }
        Ok(Response::new(api::job(job)))
    }

    async fn get_shard(
        &self,
        request: Request<proto::GetShardRequest>,
    ) -> Result<Response<proto::Shard>, Status> {
        let shard_id = request.get_ref().shard_id;
        self.tokens
            .authorize(request.extensions(), Access::Read(shard_id))?;
        let shard = self.archiver()?.shard(shard_id).await.map_err(status)?;
        Ok(Response::new(api::shard(shard)))
    }

    type RestoreStream = BoxStream<proto::RestoreChunk>;

    async fn restore(
        &self,
        request: Request<proto::RestoreRequest>,
    ) -> Result<Response<Self::RestoreStream>, Status> {
        self.tokens.authorize(
            request.extensions(),
            Access::Restore(request.get_ref().shard_id),
        )?;
        let request = request.into_inner();
        let chunks = self
            .archiver()?
            .restore(request.shard_id, request.log_id)
            .await
            .map_err(status)?;
        let chunks = chunks.map(|item| {
            item.map(|data| proto::RestoreChunk { data })
                .map_err(status)
        });
        Ok(Response::new(Box::pin(chunks)))
    }

    async fn verify(
        &self,
        request: Request<proto::VerifyRequest>,
    ) -> Result<Response<proto::VerifyReply>, Status> {
        let shard = request.get_ref().shard_id;
        let access = shard.map_or(Access::ReadAll, Access::Read);
        self.tokens.authorize(request.extensions(), access)?;
        let report = self.archiver()?.verify(shard).await.map_err(status)?;
        Ok(Response::new(api::verify_reply(report)))
    }
}

/// Reads data chunks and the optional trailer into the upload. Any way the
/// stream can end other than a complete, verified segment fails the job.
async fn receive(
    mut upload: Upload,
    mut stream: Streaming<proto::ArchiveRequest>,
) -> Result<Accepted, Status> {
    let mut trailer: Option<Trailer> = None;
    loop {
        let message = tokio::select! {
            message = stream.message() => message,
            () = upload.cancelled() => {
                let id = upload.job().map(|job| job.id).unwrap_or_default();
                return Err(status(upload.abort(QueueError::Cancelled(id)).await));
            }
        };
        let protocol_error = match message {
            Ok(None) => break,
            Err(err) => {
                let broken = stream_error(err);
                let reason = QueueError::Interrupted(broken.message().to_owned());
                upload.abort(reason).await;
                return Err(broken);
            }
            Ok(Some(proto::ArchiveRequest {
                msg: Some(Msg::Data(data)),
            })) if trailer.is_none() => {
                upload.write(data).await.map_err(status)?;
                continue;
            }
            Ok(Some(proto::ArchiveRequest {
                msg: Some(Msg::Trailer(sent)),
            })) if trailer.is_none() => match api::trailer(sent) {
                Ok(sent) => {
                    trailer = Some(sent);
                    continue;
                }
                Err(bad) => bad.message().to_owned(),
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
        return Err(status(
            upload.abort(QueueError::Invalid(protocol_error)).await,
        ));
    }
    upload
        .finish(trailer.unwrap_or_default())
        .await
        .map_err(status)
}

/// A broken request stream: undecodable bytes are the client's fault.
fn stream_error(err: Status) -> Status {
    if err.code() == tonic::Code::Internal && err.message().contains("decode") {
        Status::invalid_argument(format!("malformed request message: {}", err.message()))
    } else {
        err
    }
}
