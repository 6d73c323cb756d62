//! The client a database embeds (and the CLI is built on): push a segment from
//! a file or any async reader, push a WAL directory up to a log_id (`push`),
//! wait, watch, restore. Pushes are idempotent on the server, so the client
//! retries them with jittered backoff on UNAVAILABLE, RESOURCE_EXHAUSTED and
//! ABORTED. It speaks domain types; protobuf stays inside.
//!
//! A WAL file is only ever deleted here after its job is ARCHIVED.
//! `FlushPath` is the flush path a database embeds: hand-offs that never wait,
//! jobs followed to ARCHIVED, retries, and deletion below the watermark.

mod flush;
mod push;
mod restore;
mod router;

pub use flush::{EventHandler, FlushError, FlushEvent, FlushOptions, FlushPath, FlushStats};
pub use push::{
    DEFAULT_CHUNK_SIZE, DirOptions, DirReport, Progress, PushOptions, Pushed, parse_wal_name,
};
pub use router::Router;

use std::path::PathBuf;
use std::time::Duration;

use futures::{Stream, StreamExt, TryStreamExt};
use sha2::{Digest as _, Sha256};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

use crate::api;
use crate::error::IoError;
use crate::proto::{self, wal_archiver_client::WalArchiverClient};
use crate::types::{
    Digest, Job, JobFilter, JobId, JobState, LogId, Resolution, ShardId, ShardStatus, VerifyReport,
};

pub const DEFAULT_SERVER: &str = "http://127.0.0.1:50051";
const MAX_RESPONSE_MESSAGE: usize = 64 << 20;
/// Largest HTTP/2 frame the server may send us (the server accepts the same from us).
const MAX_FRAME_SIZE: u32 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {url}: {source}")]
    Connect {
        url: String,
        source: tonic::transport::Error,
    },
    #[error("{}: {}", .0.code(), .0.message())]
    Rpc(#[from] Status),
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("job {} ended {}: {}", .0.id, .0.state, .0.reason)]
    JobNotArchived(Box<Job>),
    #[error("restored bytes do not match job {job}: {problem}")]
    RestoreMismatch { job: JobId, problem: String },
    #[error("{0}")]
    Invalid(String),
}

impl ClientError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClientError {
        let wrap = IoError::with(context);
        move |source| ClientError::Io(wrap(source))
    }

    /// The gRPC code, for exit statuses and retries.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Rpc(status) => Some(status.code()),
            ClientError::Connect { .. } => Some(Code::Unavailable),
            _ => None,
        }
    }

    /// Whether trying again later may succeed: the server is unreachable,
    /// starting or stopping, busy, or a concurrent push got there first.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Connect { .. } => true,
            ClientError::Rpc(status) => RetryPolicy::is_retryable(status),
            _ => false,
        }
    }
}

/// How pushes are retried.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 10,
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    pub fn none() -> Self {
        RetryPolicy {
            attempts: 1,
            ..RetryPolicy::default()
        }
    }

    fn is_retryable(status: &Status) -> bool {
        matches!(
            status.code(),
            Code::Unavailable | Code::ResourceExhausted | Code::Aborted
        )
    }

    /// Full jitter: a random wait up to the exponential bound, so shards
    /// refused together do not come back together.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let bound = self
            .first_backoff
            .saturating_mul(1 << attempt.min(16))
            .min(self.max_backoff);
        bound.mul_f64(rand::random::<f64>())
    }
}

/// Where and how to connect.
#[derive(Clone, Debug, Default)]
pub struct Connection {
    /// `http://host:port`, or `https://host:port` for TLS.
    pub url: String,
    /// PEM CA that signed the server's certificate (TLS).
    pub ca: Option<PathBuf>,
    /// PEM client certificate and key, when the server verifies clients.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Bearer token, when the server has a tokens file.
    pub token: Option<String>,
}

impl Connection {
    /// A connected channel (TLS when asked for), for services other than ours,
    /// such as grpc.health.v1; it carries no token.
    pub async fn channel(&self) -> Result<Channel, ClientError> {
        let url = &self.url;
        let connect_error = |source| ClientError::Connect {
            url: url.clone(),
            source,
        };
        let mut endpoint = Endpoint::from_shared(url.clone())
            .map_err(connect_error)?
            .connect_timeout(Duration::from_secs(10))
            .initial_stream_window_size(Some(4 << 20))
            .initial_connection_window_size(Some(16 << 20))
            // A restore arrives in frames of this size: with HTTP/2's 16 KiB
            // default a 10 MiB segment is 640 frames, each a wakeup of the
            // connection and stream tasks.
            .max_frame_size(Some(MAX_FRAME_SIZE));
        if url.starts_with("https://") || self.ca.is_some() || self.cert.is_some() {
            endpoint = endpoint
                .tls_config(tls_config(self)?)
                .map_err(connect_error)?;
        }
        endpoint.connect().await.map_err(connect_error)
    }
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(token) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        Ok(request)
    }
}

type Rpc = WalArchiverClient<InterceptedService<Channel, BearerToken>>;

#[derive(Clone)]
pub struct Client {
    rpc: Rpc,
    retry: RetryPolicy,
}

impl Client {
    /// Plain connection without TLS or token.
    pub async fn connect(url: &str) -> Result<Client, ClientError> {
        Client::connect_with(&Connection {
            url: url.to_owned(),
            ..Connection::default()
        })
        .await
    }

    pub async fn connect_with(connection: &Connection) -> Result<Client, ClientError> {
        let channel = connection.channel().await?;
        let token = match &connection.token {
            Some(token) => Some(format!("Bearer {}", token.trim()).parse().map_err(|_| {
                ClientError::Invalid("the token has characters a header cannot carry".into())
            })?),
            None => None,
        };
        Ok(Client::with_channel(channel, token))
    }

    /// Like `connect_with`, but an unreachable server is tried again with
    /// `retry`'s backoff (a server restarting is back within seconds); the
    /// client keeps `retry` for its pushes.
    pub async fn connect_retrying(
        connection: &Connection,
        retry: RetryPolicy,
    ) -> Result<Client, ClientError> {
        let mut attempt = 0;
        loop {
            match Client::connect_with(connection).await {
                Err(e @ ClientError::Connect { .. }) if attempt + 1 < retry.attempts => {
                    tracing::debug!(error = %e, attempt, "connect failed; retrying");
                    tokio::time::sleep(retry.backoff(attempt)).await;
                    attempt += 1;
                }
                other => return other.map(|client| client.retry_policy(retry)),
            }
        }
    }

    fn with_channel(channel: Channel, token: Option<MetadataValue<Ascii>>) -> Client {
        Client {
            rpc: WalArchiverClient::with_interceptor(channel, BearerToken(token))
                .max_decoding_message_size(MAX_RESPONSE_MESSAGE),
            retry: RetryPolicy::default(),
        }
    }

    pub fn retry_policy(mut self, retry: RetryPolicy) -> Client {
        self.retry = retry;
        self
    }

    pub async fn job(&self, job_id: impl Into<JobId>) -> Result<Job, ClientError> {
        let job_id = job_id.into().0;
        let job = self
            .rpc
            .clone()
            .get_job(proto::GetJobRequest { job_id })
            .await?
            .into_inner();
        Ok(Job::from(&job))
    }

    /// One page of jobs (`filter.limit` at most, capped by the server); the
    /// second value is the `after` of the next page, `None` on the last page.
    pub async fn list(&self, filter: &JobFilter) -> Result<(Vec<Job>, Option<JobId>), ClientError> {
        let reply = self
            .rpc
            .clone()
            .list_jobs(proto::ListJobsRequest::from(filter))
            .await?
            .into_inner();
        let next = api::page_after(&reply.next_page_token);
        Ok((reply.jobs.iter().map(Job::from).collect(), next))
    }

    pub async fn watch<J: Into<JobId>>(
        &self,
        job_id: J,
    ) -> Result<impl Stream<Item = Result<Job, ClientError>> + use<J>, ClientError> {
        let job_id = job_id.into().0;
        let stream = self
            .rpc
            .clone()
            .watch_job(proto::WatchJobRequest { job_id })
            .await?
            .into_inner();
        Ok(stream
            .map_ok(|job| Job::from(&job))
            .map_err(ClientError::from))
    }

    /// Waits for the job's terminal state; an error unless it is ARCHIVED.
    pub async fn wait(&self, job_id: impl Into<JobId>) -> Result<Job, ClientError> {
        let job_id = job_id.into();
        let mut states = Box::pin(self.watch(job_id).await?);
        let mut last = None;
        while let Some(job) = states.next().await {
            last = Some(job?);
        }
        match last {
            Some(job) if job.state == JobState::Archived => Ok(job),
            Some(job) if job.state.is_terminal() => Err(ClientError::JobNotArchived(Box::new(job))),
            _ => Err(ClientError::Rpc(Status::unavailable(format!(
                "watch of job {job_id} ended before a terminal state (server stopping?)"
            )))),
        }
    }

    /// Asks the server to re-read archives (one shard's, or all) and check them.
    pub async fn verify(&self, shard_id: Option<ShardId>) -> Result<VerifyReport, ClientError> {
        let reply = self
            .rpc
            .clone()
            .verify(proto::VerifyRequest { shard_id })
            .await?
            .into_inner();
        Ok(reply.into())
    }

    /// The segment's active job — the one not FAILED or CANCELLED, of which
    /// there is at most one — if it has one. An ARCHIVED job may have expired
    /// (see `expired_unix_ms`).
    pub async fn active_job(
        &self,
        shard_id: ShardId,
        log_id: LogId,
    ) -> Result<Option<Job>, ClientError> {
        let mut filter = JobFilter {
            shard_id: Some(shard_id),
            log_id_min: Some(log_id),
            log_id_max: Some(log_id),
            limit: 100,
            ..JobFilter::default()
        };
        loop {
            let (page, next) = self.list(&filter).await?;
            if let Some(job) = page
                .into_iter()
                .find(|job| !matches!(job.state, JobState::Failed | JobState::Cancelled))
            {
                return Ok(Some(job));
            }
            match next {
                Some(next) => filter.after = Some(next),
                None => return Ok(None),
            }
        }
    }

    pub async fn cancel(&self, job_id: impl Into<JobId>) -> Result<Job, ClientError> {
        let job_id = job_id.into().0;
        let job = self
            .rpc
            .clone()
            .cancel_job(proto::CancelJobRequest { job_id })
            .await?
            .into_inner();
        Ok(Job::from(&job))
    }

    /// Every shard the server knows (that this caller may read), with what
    /// holds each one's watermark.
    pub async fn shards(&self) -> Result<Vec<ShardStatus>, ClientError> {
        let reply = self
            .rpc
            .clone()
            .list_shards(proto::ListShardsRequest {})
            .await?
            .into_inner();
        Ok(reply.shards.into_iter().map(Into::into).collect())
    }

    /// Gives up a segment that is lost or permanently bad (admin): the
    /// shard's watermark may then pass it, and its WAL be deleted.
    pub async fn resolve(
        &self,
        shard_id: ShardId,
        log_id: LogId,
        reason: &str,
    ) -> Result<Resolution, ClientError> {
        let resolution = self
            .rpc
            .clone()
            .resolve_segment(proto::ResolveSegmentRequest {
                shard_id,
                log_id,
                reason: reason.to_owned(),
            })
            .await?
            .into_inner();
        Ok(resolution.into())
    }

    pub async fn shard(&self, shard_id: ShardId) -> Result<ShardStatus, ClientError> {
        let shard = self
            .rpc
            .clone()
            .get_shard(proto::GetShardRequest { shard_id })
            .await?
            .into_inner();
        Ok(shard.into())
    }
}

fn tls_config(connection: &Connection) -> Result<ClientTlsConfig, ClientError> {
    let invalid = |e: crate::tls::TlsFileError| ClientError::Invalid(format!("TLS: {e}"));
    let mut tls = ClientTlsConfig::new();
    if let Some(ca) = &connection.ca {
        tls = tls.ca_certificate(Certificate::from_pem(
            crate::tls::read_certificates(ca).map_err(invalid)?,
        ));
    }
    match (&connection.cert, &connection.key) {
        (Some(cert), Some(key)) => {
            let (cert_pem, key_pem) = crate::tls::read_identity(cert, key).map_err(invalid)?;
            tls = tls.identity(Identity::from_pem(cert_pem, key_pem));
        }
        (None, None) => {}
        _ => return Err(ClientError::Invalid("--cert and --key go together".into())),
    }
    Ok(tls)
}
