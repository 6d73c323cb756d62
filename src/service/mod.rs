//! gRPC handlers: read the wire, call the engine, turn errors into statuses
//! (`status`, the one place that does). `server` assembles and runs the
//! server; `auth` and `guard` stand in front of every call.

pub mod auth;
mod background;
mod guard;
mod handshake;
mod receive;
mod server;
mod status;

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

pub use server::{ServeError, listening_address, listening_line, open_store, serve};
pub use status::{code, code_name, status};

use crate::api;
use crate::engine::{Archiver, Begin, EngineError};
use crate::error::ErrorKind;
use crate::proto::{self, wal_archiver_server::WalArchiver};
use crate::types::{AckLevel, Job, JobFilter, JobId, JobState, SegmentRequest};
use auth::{Access, AuthError, Tokens};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

pub struct WalArchiverService {
    /// Set once recovery is done; until then calls get UNAVAILABLE.
    archiver: Arc<OnceLock<Archiver>>,
    /// Fires when draining starts: ends watch streams.
    draining: CancellationToken,
    /// Fires when the service stops: ends waits for ARCHIVED.
    stopping: CancellationToken,
    tokens: Tokens,
    /// How long a stream may stay quiet (receive_idle_timeout).
    idle: Duration,
}

impl WalArchiverService {
    pub fn new(
        archiver: Arc<OnceLock<Archiver>>,
        draining: CancellationToken,
        stopping: CancellationToken,
        tokens: Tokens,
        idle: Duration,
    ) -> Self {
        WalArchiverService {
            archiver,
            draining,
            stopping,
            tokens,
            idle,
        }
    }

    #[allow(clippy::result_large_err)]
    fn archiver(&self) -> Result<&Archiver, Status> {
        self.archiver.get().ok_or_else(|| {
            status::refusal(
                ErrorKind::Unavailable,
                "recovering from the previous run; retry shortly",
            )
        })
    }

    #[allow(clippy::result_large_err)]
    fn authorize(&self, extensions: &tonic::Extensions, access: Access) -> Result<(), Status> {
        self.tokens.authorize(extensions, access).map_err(status)
    }

    /// The job, if the caller may read its shard. A job the caller may not
    /// read is answered like one that does not exist, so that ids of other
    /// shards' jobs cannot be probed.
    async fn readable_job<T>(&self, request: &Request<T>, id: JobId) -> Result<Job, Status> {
        let job = self.archiver()?.job(id).await.map_err(status)?;
        match self
            .tokens
            .authorize(request.extensions(), Access::Read(job.shard_id))
        {
            Ok(()) => Ok(job),
            Err(AuthError::Denied { .. }) => Err(status(EngineError::JobNotFound(id))),
            Err(other) => Err(status(other)),
        }
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
        let header = receive::header(&mut stream, self.idle)
            .await
            .map_err(status)?;
        let segment = SegmentRequest::try_from(header).map_err(status)?;
        self.authorize(&extensions, Access::Push(segment.shard_id))?;
        let (ack, shard_id) = (segment.ack, segment.shard_id);
        let accepted = match self.archiver()?.begin(segment).await.map_err(status)? {
            Begin::Known(accepted) => *accepted,
            Begin::Stream(upload) => {
                let still_allowed = || self.tokens.recheck(&extensions, Access::Push(shard_id));
                receive::segment(*upload, stream, self.idle, still_allowed)
                    .await
                    .map_err(status)?
            }
        };
        let mut job = accepted.job;
        if ack == AckLevel::Archived && !job.state.is_terminal() {
            job = tokio::select! {
                waited = self.archiver()?.wait_terminal(job.id) => waited.map_err(status)?,
                () = self.stopping.cancelled() => return Err(status::refusal(
                    ErrorKind::Unavailable,
                    format!("the service is shutting down before job {} was archived; it stays queued for the next start", job.id),
                )),
            };
        }
        if ack == AckLevel::Archived && job.state != JobState::Archived {
            return Err(status(EngineError::JobFailed(Box::new(job))));
        }
        metrics::histogram!(crate::telemetry::ACK_LATENCY, "ack" => ack.as_str())
            .record(started.elapsed().as_secs_f64());
        Ok(Response::new(proto::ArchiveReply {
            job: Some(job.into()),
            deduplicated: accepted.deduplicated,
        }))
    }

    async fn get_job(
        &self,
        request: Request<proto::GetJobRequest>,
    ) -> Result<Response<proto::Job>, Status> {
        let id = JobId(request.get_ref().job_id);
        let job = self.readable_job(&request, id).await?;
        Ok(Response::new(job.into()))
    }

    async fn list_jobs(
        &self,
        request: Request<proto::ListJobsRequest>,
    ) -> Result<Response<proto::ListJobsReply>, Status> {
        let access = match request.get_ref().shard_id {
            Some(shard) => Access::Read(shard),
            None => Access::ReadAll,
        };
        self.authorize(request.extensions(), access)?;
        let filter = JobFilter::try_from(request.into_inner()).map_err(status)?;
        let limit = filter.limit;
        let jobs = self.archiver()?.list_jobs(filter).await.map_err(status)?;
        let next_page_token = api::next_page_token(&jobs, limit);
        Ok(Response::new(proto::ListJobsReply {
            jobs: jobs.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    type WatchJobStream = BoxStream<proto::Job>;

    async fn watch_job(
        &self,
        request: Request<proto::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let id = JobId(request.get_ref().job_id);
        // Refuse an unknown job with a status rather than a stream that errors.
        self.readable_job(&request, id).await?;
        let draining = self.draining.clone();
        let states = self
            .archiver()?
            .watch(id)
            .map(|item| item.map(Into::into).map_err(status))
            .take_until(draining.clone().cancelled_owned());
        // A watch cut by the shutdown says so, rather than just ending.
        let why_ended = futures::stream::once(async move {
            draining.is_cancelled().then(|| {
                Err(status::refusal(
                    ErrorKind::Unavailable,
                    "the server is stopping; watch the job again once it is back",
                ))
            })
        })
        .filter_map(std::future::ready);
        Ok(Response::new(Box::pin(states.chain(why_ended))))
    }

    async fn cancel_job(
        &self,
        request: Request<proto::CancelJobRequest>,
    ) -> Result<Response<proto::Job>, Status> {
        self.authorize(request.extensions(), Access::Cancel)?;
        let id = JobId(request.into_inner().job_id);
        let job = self.archiver()?.cancel(id).await.map_err(status)?;
        if job.state != JobState::Cancelled {
            // It finished before the cancel took hold.
            return Err(status(EngineError::NotCancellable {
                id,
                state: job.state,
            }));
        }
        Ok(Response::new(job.into()))
    }

    async fn get_shard(
        &self,
        request: Request<proto::GetShardRequest>,
    ) -> Result<Response<proto::Shard>, Status> {
        let shard_id = request.get_ref().shard_id;
        self.authorize(request.extensions(), Access::Read(shard_id))?;
        let shard = self.archiver()?.shard(shard_id).await.map_err(status)?;
        Ok(Response::new(shard.into()))
    }

    type RestoreStream = BoxStream<proto::RestoreChunk>;

    async fn restore(
        &self,
        request: Request<proto::RestoreRequest>,
    ) -> Result<Response<Self::RestoreStream>, Status> {
        self.authorize(
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

    async fn list_shards(
        &self,
        request: Request<proto::ListShardsRequest>,
    ) -> Result<Response<proto::ListShardsReply>, Status> {
        let shards = self.archiver()?.shards().await.map_err(status)?;
        // A shard token sees its own shards; observers and admins all of them.
        let everything = self
            .tokens
            .authorize(request.extensions(), Access::ReadAll)
            .is_ok();
        let shards = shards
            .into_iter()
            .filter(|shard| {
                everything
                    || self
                        .tokens
                        .authorize(request.extensions(), Access::Read(shard.shard_id))
                        .is_ok()
            })
            .map(Into::into)
            .collect();
        Ok(Response::new(proto::ListShardsReply { shards }))
    }

    async fn resolve_segment(
        &self,
        request: Request<proto::ResolveSegmentRequest>,
    ) -> Result<Response<proto::Resolution>, Status> {
        self.authorize(request.extensions(), Access::Resolve)?;
        let by = Tokens::caller_name(request.extensions());
        let request = request.into_inner();
        let resolution = self
            .archiver()?
            .resolve(request.shard_id, request.log_id, request.reason, by)
            .await
            .map_err(status)?;
        Ok(Response::new(resolution.into()))
    }

    async fn verify(
        &self,
        request: Request<proto::VerifyRequest>,
    ) -> Result<Response<proto::VerifyReply>, Status> {
        let shard = request.get_ref().shard_id;
        let access = shard.map_or(Access::ReadAll, Access::Read);
        self.authorize(request.extensions(), access)?;
        let report = self.archiver()?.verify(shard).await.map_err(status)?;
        metrics::gauge!(crate::telemetry::LAST_VERIFY).set(crate::telemetry::unix_seconds());
        let problems = report.problems.len() + report.gaps.len();
        metrics::gauge!(crate::telemetry::VERIFY_PROBLEMS).set(problems as f64);
        if problems > 0 {
            tracing::warn!(
                target: "integrity",
                problems = report.problems.len(),
                gaps = report.gaps.len(),
                "verify found damaged, missing or unaccounted archives"
            );
        }
        Ok(Response::new(report.into()))
    }
}
