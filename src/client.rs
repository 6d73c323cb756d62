//! The client a database embeds (and the CLI is built on): push a segment from
//! a file or any async reader, push a WAL directory up to a log_id, wait,
//! watch, restore. Pushes are idempotent on the server, so the client retries
//! them with jittered backoff on UNAVAILABLE, RESOURCE_EXHAUSTED and ABORTED.
//!
//! A WAL file is only ever deleted here after its job is ARCHIVED.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt, TryStreamExt};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

use crate::api;
use crate::proto::{self, archive_request::Msg, wal_archiver_client::WalArchiverClient};
use crate::types::{
    AckLevel, ContentKind, Job, JobState, LogId, ShardId, ShardStatus, VerifyReport,
};

pub const DEFAULT_SERVER: &str = "http://127.0.0.1:50051";
/// Data per request message: well under the server's max_chunk_size default (1 MiB).
pub const DEFAULT_CHUNK_SIZE: usize = 512 << 10;
const MAX_RESPONSE_MESSAGE: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {url}: {source}")]
    Connect {
        url: String,
        source: tonic::transport::Error,
    },
    #[error("{}: {}", .0.code(), .0.message())]
    Rpc(#[from] Status),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("job {} ended {}: {}", .0.id, .0.state, .0.reason)]
    JobNotArchived(Box<Job>),
    #[error("{0}")]
    Invalid(String),
}

impl ClientError {
    fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClientError {
        let context = context.into();
        move |source| ClientError::Io { context, source }
    }

    /// The gRPC code, for exit statuses and retries.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Rpc(status) => Some(status.code()),
            ClientError::Connect { .. } => Some(Code::Unavailable),
            _ => None,
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
    fn backoff(&self, attempt: u32) -> Duration {
        let bound = self
            .first_backoff
            .saturating_mul(1 << attempt.min(16))
            .min(self.max_backoff);
        bound.mul_f64(rand::random::<f64>())
    }
}

/// Called with the number of bytes sent or received so far.
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

#[derive(Clone)]
pub struct PushOptions {
    pub kind: ContentKind,
    pub ack: AckLevel,
    pub zstd_level: Option<i32>,
    pub chunk_size: usize,
    pub progress: Option<Progress>,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            kind: ContentKind::Raw,
            ack: AckLevel::Queued,
            zstd_level: None,
            chunk_size: DEFAULT_CHUNK_SIZE,
            progress: None,
        }
    }
}

/// What the server answered to a push.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Pushed {
    pub job: Job,
    pub deduplicated: bool,
}

/// How a WAL directory is pushed.
#[derive(Clone, Copy, Debug)]
pub struct DirOptions {
    /// Wait for each job to be ARCHIVED.
    pub wait: bool,
    /// Delete the files once every one is ARCHIVED (implies `wait`).
    pub delete: bool,
    /// Segments streamed at once.
    pub concurrency: usize,
}

impl Default for DirOptions {
    fn default() -> Self {
        DirOptions {
            wait: false,
            delete: false,
            concurrency: 4,
        }
    }
}

/// Outcome of pushing a WAL directory.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct DirReport {
    pub pushed: Vec<(LogId, Job)>,
    pub failed: Vec<(LogId, String)>,
    pub deleted: Vec<PathBuf>,
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
        let url = &connection.url;
        let connect_error = |source| ClientError::Connect {
            url: url.clone(),
            source,
        };
        let mut endpoint = Endpoint::from_shared(url.clone())
            .map_err(connect_error)?
            .connect_timeout(Duration::from_secs(10))
            .initial_stream_window_size(Some(4 << 20))
            .initial_connection_window_size(Some(16 << 20));
        if url.starts_with("https://") || connection.ca.is_some() || connection.cert.is_some() {
            endpoint = endpoint
                .tls_config(tls_config(connection)?)
                .map_err(connect_error)?;
        }
        let channel = endpoint.connect().await.map_err(connect_error)?;
        let token = match &connection.token {
            Some(token) => Some(format!("Bearer {}", token.trim()).parse().map_err(|_| {
                ClientError::Invalid("the token has characters a header cannot carry".into())
            })?),
            None => None,
        };
        Ok(Client::with_channel(channel, token))
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

    /// Pushes one segment from a file: size in the header, SHA-256 computed
    /// while streaming and sent in the trailer, so the file is read once per
    /// attempt. Retried from the start on retryable refusals.
    pub async fn push_file(
        &self,
        shard_id: ShardId,
        log_id: LogId,
        path: &Path,
        options: &PushOptions,
    ) -> Result<Pushed, ClientError> {
        let mut attempt = 0;
        loop {
            let file = tokio::fs::File::open(path)
                .await
                .map_err(ClientError::io(format!("opening {}", path.display())))?;
            let size = file
                .metadata()
                .await
                .map_err(ClientError::io(format!("reading {}", path.display())))?
                .len();
            match self
                .push_once(shard_id, log_id, Some(size), file, options)
                .await
            {
                Err(ClientError::Rpc(status))
                    if RetryPolicy::is_retryable(&status) && attempt + 1 < self.retry.attempts =>
                {
                    tokio::time::sleep(self.retry.backoff(attempt)).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Pushes one segment from any reader, once (a reader cannot be rewound
    /// for a retry). The SHA-256 goes in the trailer.
    pub async fn push_reader(
        &self,
        shard_id: ShardId,
        log_id: LogId,
        size: Option<u64>,
        reader: impl AsyncRead + Unpin + Send + 'static,
        options: &PushOptions,
    ) -> Result<Pushed, ClientError> {
        self.push_once(shard_id, log_id, size, reader, options)
            .await
    }

    async fn push_once(
        &self,
        shard_id: ShardId,
        log_id: LogId,
        size: Option<u64>,
        reader: impl AsyncRead + Unpin + Send + 'static,
        options: &PushOptions,
    ) -> Result<Pushed, ClientError> {
        let header = proto::SegmentHeader {
            shard_id,
            log_id,
            size,
            sha256: Bytes::new(),
            kind: match options.kind {
                ContentKind::Raw => proto::ContentKind::Raw,
                ContentKind::JsonLines => proto::ContentKind::JsonLines,
            } as i32,
            ack: match options.ack {
                AckLevel::Queued => proto::AckLevel::Queued,
                AckLevel::Archived => proto::AckLevel::Archived,
            } as i32,
            zstd_level: options.zstd_level,
        };
        let (failure_tx, mut failure_rx) = tokio::sync::oneshot::channel();
        let requests = segment_stream(
            header,
            reader,
            options.chunk_size,
            options.progress.clone(),
            failure_tx,
        );
        let reply = self.rpc.clone().archive(requests).await;
        // A local read error ends the request stream early: the server sees a
        // short segment and refuses it; report the real cause.
        if let Ok(read_error) = failure_rx.try_recv() {
            return Err(read_error);
        }
        let reply = reply?.into_inner();
        let job = reply
            .job
            .as_ref()
            .map(api::job_from_proto)
            .ok_or_else(|| ClientError::Invalid("server replied without a job".into()))?;
        Ok(Pushed {
            job,
            deduplicated: reply.deduplicated,
        })
    }

    /// Every `wal-<id>.log` in `dir` with id below `up_to`, in numeric order.
    pub fn wal_files(dir: &Path, up_to: LogId) -> Result<Vec<(LogId, PathBuf)>, ClientError> {
        let entries = std::fs::read_dir(dir)
            .map_err(ClientError::io(format!("listing {}", dir.display())))?;
        let mut files: Vec<(LogId, PathBuf)> = entries
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name();
                let id = parse_wal_name(name.to_str()?)?;
                (id < up_to && entry.file_type().ok()?.is_file()).then(|| (id, entry.path()))
            })
            .collect();
        files.sort_by_key(|(id, _)| *id);
        Ok(files)
    }

    /// Pushes every WAL file below `up_to`, `dir_options.concurrency` at a
    /// time. With `delete`, files are removed only if every one of them
    /// reached ARCHIVED.
    pub async fn push_wal_dir(
        &self,
        shard_id: ShardId,
        dir: &Path,
        up_to: LogId,
        options: &PushOptions,
        dir_options: DirOptions,
    ) -> Result<DirReport, ClientError> {
        let files = Client::wal_files(dir, up_to)?;
        let DirOptions {
            wait,
            delete,
            concurrency,
        } = dir_options;
        let wait = wait || delete;
        let results: Vec<(LogId, PathBuf, Result<Job, ClientError>)> = futures::stream::iter(files)
            .map(|(log_id, path)| async move {
                let pushed = self.push_file(shard_id, log_id, &path, options).await;
                let job = match pushed {
                    Ok(pushed) if wait => self.wait(pushed.job.id).await,
                    Ok(pushed) => Ok(pushed.job),
                    Err(e) => Err(e),
                };
                (log_id, path, job)
            })
            .buffered(concurrency.max(1))
            .collect()
            .await;
        let mut report = DirReport::default();
        let mut archived = Vec::new();
        for (log_id, path, result) in results {
            match result {
                Ok(job) => {
                    if job.state == JobState::Archived {
                        archived.push(path);
                    }
                    report.pushed.push((log_id, job));
                }
                Err(e) => report.failed.push((log_id, e.to_string())),
            }
        }
        if delete && report.failed.is_empty() && archived.len() == report.pushed.len() {
            for path in archived {
                tokio::fs::remove_file(&path)
                    .await
                    .map_err(ClientError::io(format!("deleting {}", path.display())))?;
                report.deleted.push(path);
            }
        }
        Ok(report)
    }

    pub async fn job(&self, job_id: u64) -> Result<Job, ClientError> {
        let job = self
            .rpc
            .clone()
            .get_job(proto::GetJobRequest { job_id })
            .await?
            .into_inner();
        Ok(api::job_from_proto(&job))
    }

    /// One page of jobs; the token is `None` on the last page.
    pub async fn list(
        &self,
        request: proto::ListJobsRequest,
    ) -> Result<(Vec<Job>, Option<String>), ClientError> {
        let reply = self.rpc.clone().list_jobs(request).await?.into_inner();
        let token = (!reply.next_page_token.is_empty()).then_some(reply.next_page_token);
        Ok((reply.jobs.iter().map(api::job_from_proto).collect(), token))
    }

    pub async fn watch(
        &self,
        job_id: u64,
    ) -> Result<impl Stream<Item = Result<Job, ClientError>> + use<>, ClientError> {
        let stream = self
            .rpc
            .clone()
            .watch_job(proto::WatchJobRequest { job_id })
            .await?
            .into_inner();
        Ok(stream
            .map_ok(|job| api::job_from_proto(&job))
            .map_err(ClientError::from))
    }

    /// Waits for the job's terminal state; an error unless it is ARCHIVED.
    pub async fn wait(&self, job_id: u64) -> Result<Job, ClientError> {
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
        Ok(api::verify_report(reply))
    }

    pub async fn cancel(&self, job_id: u64) -> Result<Job, ClientError> {
        let job = self
            .rpc
            .clone()
            .cancel_job(proto::CancelJobRequest { job_id })
            .await?
            .into_inner();
        Ok(api::job_from_proto(&job))
    }

    pub async fn shard(&self, shard_id: ShardId) -> Result<ShardStatus, ClientError> {
        let shard = self
            .rpc
            .clone()
            .get_shard(proto::GetShardRequest { shard_id })
            .await?
            .into_inner();
        Ok(ShardStatus {
            shard_id: shard.shard_id,
            receiving: shard.receiving,
            queued: shard.queue_depth,
            running: shard.running,
            archived: shard.archived,
            failed: shard.failed,
            bytes_in: shard.bytes_in,
            bytes_out: shard.bytes_out,
            archived_watermark: shard.archived_watermark,
        })
    }

    /// Writes the original bytes to `out`; returns how many. The server
    /// verifies the SHA-256 and ends with DATA_LOSS on a mismatch.
    pub async fn restore_to(
        &self,
        shard_id: ShardId,
        log_id: LogId,
        out: &mut (impl tokio::io::AsyncWrite + Unpin),
        progress: Option<Progress>,
    ) -> Result<u64, ClientError> {
        let mut chunks = self
            .rpc
            .clone()
            .restore(proto::RestoreRequest { shard_id, log_id })
            .await?
            .into_inner();
        let mut written = 0u64;
        while let Some(chunk) = chunks.message().await? {
            out.write_all(&chunk.data)
                .await
                .map_err(ClientError::io("writing restored bytes"))?;
            written += chunk.data.len() as u64;
            if let Some(progress) = &progress {
                progress(written);
            }
        }
        out.flush()
            .await
            .map_err(ClientError::io("writing restored bytes"))?;
        Ok(written)
    }

    /// Restores into `path` through a temporary file renamed into place only
    /// once the whole segment arrived verified: no partial file on failure.
    pub async fn restore_to_file(
        &self,
        shard_id: ShardId,
        log_id: LogId,
        path: &Path,
        progress: Option<Progress>,
    ) -> Result<u64, ClientError> {
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temp = path.with_file_name(format!(".{file_name}.restoring"));
        let mut file = tokio::fs::File::create(&temp)
            .await
            .map_err(ClientError::io(format!("creating {}", temp.display())))?;
        let written = match self.restore_to(shard_id, log_id, &mut file, progress).await {
            Ok(written) => written,
            Err(e) => {
                drop(file);
                let _ = tokio::fs::remove_file(&temp).await;
                return Err(e);
            }
        };
        file.sync_all()
            .await
            .map_err(ClientError::io(format!("syncing {}", temp.display())))?;
        tokio::fs::rename(&temp, path)
            .await
            .map_err(ClientError::io(format!("renaming into {}", path.display())))?;
        Ok(written)
    }
}

fn tls_config(connection: &Connection) -> Result<ClientTlsConfig, ClientError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(ClientError::io(format!("reading {}", path.display())))
    };
    let mut tls = ClientTlsConfig::new();
    if let Some(ca) = &connection.ca {
        tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
    }
    match (&connection.cert, &connection.key) {
        (Some(cert), Some(key)) => tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?)),
        (None, None) => {}
        _ => return Err(ClientError::Invalid("--cert and --key go together".into())),
    }
    Ok(tls)
}

/// `wal-42.log` or `wal-00042.log` → 42.
pub fn parse_wal_name(name: &str) -> Option<LogId> {
    let digits = name.strip_prefix("wal-")?.strip_suffix(".log")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Header, data chunks, trailer with the size and SHA-256 of what was sent.
fn segment_stream(
    header: proto::SegmentHeader,
    reader: impl AsyncRead + Unpin + Send + 'static,
    chunk_size: usize,
    progress: Option<Progress>,
    failure: tokio::sync::oneshot::Sender<ClientError>,
) -> impl Stream<Item = proto::ArchiveRequest> + Send + 'static {
    enum Phase<R> {
        Header(proto::SegmentHeader, R),
        Data(R),
        Done,
    }
    struct State<R> {
        phase: Phase<R>,
        hasher: Sha256,
        sent: u64,
        failure: Option<tokio::sync::oneshot::Sender<ClientError>>,
    }
    let state = State {
        phase: Phase::Header(header, reader),
        hasher: Sha256::new(),
        sent: 0,
        failure: Some(failure),
    };
    futures::stream::unfold(state, move |mut state| {
        let progress = progress.clone();
        async move {
            match std::mem::replace(&mut state.phase, Phase::Done) {
                Phase::Header(header, reader) => {
                    state.phase = Phase::Data(reader);
                    Some((message(Msg::Header(header)), state))
                }
                Phase::Data(mut reader) => {
                    let mut buf = BytesMut::zeroed(chunk_size);
                    let mut filled = 0;
                    while filled < chunk_size {
                        match reader.read(&mut buf[filled..]).await {
                            Ok(0) => break,
                            Ok(n) => filled += n,
                            Err(e) => {
                                if let Some(failure) = state.failure.take() {
                                    let _ = failure.send(ClientError::Io {
                                        context: "reading the segment".into(),
                                        source: e,
                                    });
                                }
                                return None;
                            }
                        }
                    }
                    if filled == 0 {
                        let trailer = proto::SegmentTrailer {
                            size: Some(state.sent),
                            sha256: Bytes::copy_from_slice(
                                &std::mem::take(&mut state.hasher).finalize(),
                            ),
                        };
                        return Some((message(Msg::Trailer(trailer)), state));
                    }
                    buf.truncate(filled);
                    state.hasher.update(&buf);
                    state.sent += filled as u64;
                    if let Some(progress) = &progress {
                        progress(state.sent);
                    }
                    state.phase = Phase::Data(reader);
                    Some((message(Msg::Data(buf.freeze())), state))
                }
                Phase::Done => None,
            }
        }
    })
}

fn message(msg: Msg) -> proto::ArchiveRequest {
    proto::ArchiveRequest { msg: Some(msg) }
}

#[cfg(test)]
mod tests {
    use super::parse_wal_name;

    #[test]
    fn wal_names() {
        assert_eq!(parse_wal_name("wal-42.log"), Some(42));
        assert_eq!(parse_wal_name("wal-00042.log"), Some(42));
        assert_eq!(parse_wal_name("wal-.log"), None);
        assert_eq!(parse_wal_name("wal-4x.log"), None);
        assert_eq!(parse_wal_name("wal-42.log.tmp"), None);
    }
}
