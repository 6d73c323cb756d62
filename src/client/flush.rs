//! The flush path a database embeds: hand each closed WAL segment off without
//! waiting, and let `FlushPath` see it ARCHIVED, re-push it when that failed
//! for a reason that passes, report it loudly when it cannot pass, and delete
//! WAL only where the server's watermark says it may.
//!
//! Shaped as one background task that owns every segment's journey (push →
//! follow the job → settle) so the database's own thread only records a
//! path and returns. Three decisions, each for safety:
//! - A segment is settled only by the server's word: its job ARCHIVED (seen on
//!   WatchJob, or GetJob when a watch breaks), or a permanent failure class.
//!   A job the server no longer knows (its jobs database was lost), or that
//!   now names another segment, is pushed again; pushes of the same bytes are
//!   idempotent, so a segment archived already comes back deduplicated.
//! - A WAL file is deleted only at or below the watermark GetShard reports,
//!   only once its own job was seen ARCHIVED, and only as a prefix: nothing
//!   above a segment still on its way, or failed permanently, is deleted, so
//!   the WAL directory never has holes. A permanently failed segment holds
//!   the prefix until the server's watermark passes it (an operator resolved
//!   it), and is itself never deleted.
//! - Every wait is bounded (unary calls by `rpc_timeout`, a quiet watch by
//!   `watch_idle`, retries by the backoff) or ends at `shutdown`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tonic::Code;

use super::{Client, ClientError, Connection, PushOptions, RetryPolicy};
use crate::types::{
    AckLevel, ContentKind, FailureClass, Job, JobFilter, JobId, JobState, LogId, ShardId,
};

/// What happened to a segment handed off, as it happens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FlushEvent {
    /// Its job is ARCHIVED: durable in the archive store.
    Archived { log_id: LogId, job_id: JobId },
    /// A push or its job failed for a reason that passes (the server down or
    /// busy, a full disk, an interrupted upload, a job lost in a restart); it
    /// is pushed again after a backoff. `attempt` counts from 1.
    Retrying {
        log_id: LogId,
        reason: String,
        attempt: u32,
    },
    /// It cannot be archived as it is (a bad JSON line, other bytes archived
    /// under its log_id, the file unreadable, its job cancelled). It stays on
    /// disk and holds the shard's watermark until it is fixed and handed off
    /// again, or resolved by an operator (`wal-archiver resolve`).
    Permanent { log_id: LogId, reason: String },
    /// Its WAL file was deleted: it is ARCHIVED and at or below the watermark.
    Deleted { log_id: LogId, path: PathBuf },
}

/// Called with every event, from the background task: keep it quick (send it
/// into a channel, count it, log it).
pub type EventHandler = Arc<dyn Fn(&FlushEvent) + Send + Sync>;

/// How a `FlushPath` pushes, retries and deletes.
#[derive(Clone)]
pub struct FlushOptions {
    pub kind: ContentKind,
    /// QUEUED (the default) answers a push once the bytes are spooled, so
    /// uploads are short; the job is followed to ARCHIVED either way.
    pub ack: AckLevel,
    /// The server's `compression_level` when `None`.
    pub zstd_level: Option<i32>,
    /// Segments uploaded at once.
    pub concurrency: usize,
    /// Segments pushed and not yet settled at once, each followed by one
    /// watch; keep it below the server's `archive_queue_size`.
    pub max_in_flight: usize,
    /// First wait before a retry; doubled per attempt up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// Delete WAL files once archived and at or below the watermark.
    pub delete_archived: bool,
    /// How often the watermark is asked for while archived WAL waits for it.
    pub sweep_interval: Duration,
    /// Longest wait for a unary call (GetJob, GetShard, opening a watch).
    pub rpc_timeout: Duration,
    /// A watch that brings nothing for this long is checked with GetJob.
    pub watch_idle: Duration,
    pub on_event: Option<EventHandler>,
}

impl Default for FlushOptions {
    fn default() -> Self {
        FlushOptions {
            kind: ContentKind::Raw,
            ack: AckLevel::Queued,
            zstd_level: None,
            concurrency: 4,
            max_in_flight: 32,
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            delete_archived: true,
            sweep_interval: Duration::from_secs(2),
            rpc_timeout: Duration::from_secs(30),
            watch_idle: Duration::from_secs(30),
            on_event: None,
        }
    }
}

impl fmt::Debug for FlushOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlushOptions")
            .field("kind", &self.kind)
            .field("ack", &self.ack)
            .field("zstd_level", &self.zstd_level)
            .field("concurrency", &self.concurrency)
            .field("max_in_flight", &self.max_in_flight)
            .field("min_backoff", &self.min_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("delete_archived", &self.delete_archived)
            .field("sweep_interval", &self.sweep_interval)
            .field("rpc_timeout", &self.rpc_timeout)
            .field("watch_idle", &self.watch_idle)
            .field("on_event", &self.on_event.is_some())
            .finish()
    }
}

/// Counters since start, and what is outstanding now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct FlushStats {
    pub handed_off: u64,
    /// Upload attempts, first ones and retries.
    pub pushes: u64,
    pub archived: u64,
    pub retries: u64,
    pub permanent: u64,
    pub deleted: u64,
    /// Handed off, neither archived nor failed permanently yet.
    pub pending: u64,
    /// Failed permanently, on disk, waiting for the operator.
    pub held: u64,
    /// The shard's watermark as the server last reported it.
    pub watermark: Option<LogId>,
}

#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    #[error("the flush path is shut down")]
    Closed,
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// A segment handed off and not settled for good: archived but not yet
/// deleted, on its way, or failed permanently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Pending,
    Archived,
    Permanent,
}

struct Entry {
    path: PathBuf,
    stage: Stage,
}

#[derive(Default)]
struct Book {
    segments: BTreeMap<LogId, Entry>,
    stats: FlushStats,
}

impl Book {
    /// Archived files the watermark covers, as a prefix of what was handed
    /// off: a segment still on its way ends it; so does one that failed
    /// permanently, returned second, which the caller checks on the server.
    fn deletable(&self, watermark: LogId) -> (Vec<(LogId, PathBuf)>, Option<LogId>) {
        let mut files = Vec::new();
        for (&log_id, entry) in self.segments.range(..=watermark) {
            match entry.stage {
                Stage::Pending => return (files, None),
                Stage::Archived => files.push((log_id, entry.path.clone())),
                Stage::Permanent => return (files, Some(log_id)),
            }
        }
        (files, None)
    }
}

/// Why a push or a job did not end ARCHIVED.
enum Failure {
    Retryable(String),
    Permanent(String),
}

struct Shared {
    client: Client,
    shard: ShardId,
    options: FlushOptions,
    push: PushOptions,
    book: Mutex<Book>,
    uploads: Semaphore,
    in_flight: Semaphore,
    /// Wakes the cleaner when a segment is archived.
    archived: Notify,
}

/// Hands a shard's closed WAL segments to wal-archiver and deletes them once
/// the server's watermark covers them. See the module doc for the rules.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use wal_archiver::client::{Client, FlushOptions, FlushPath};
/// let client = Client::connect("http://127.0.0.1:50051").await?;
/// let flush = FlushPath::start(client, 1, "wal", FlushOptions::default());
/// flush.hand_off(42, "wal/wal-42.log")?; // returns at once
/// // ...
/// let unfinished = flush.shutdown().await;
/// # Ok(()) }
/// ```
pub struct FlushPath {
    shared: Arc<Shared>,
    wal_dir: PathBuf,
    handoffs: mpsc::UnboundedSender<(LogId, PathBuf)>,
    cancel: CancellationToken,
    runner: Option<JoinHandle<()>>,
}

impl FlushPath {
    /// Starts the background task on the current tokio runtime. The client's
    /// own push retries are turned off: `FlushPath` retries, with events.
    pub fn start(
        client: Client,
        shard: ShardId,
        wal_dir: impl Into<PathBuf>,
        options: FlushOptions,
    ) -> FlushPath {
        let push = PushOptions {
            kind: options.kind,
            ack: options.ack,
            zstd_level: options.zstd_level,
            ..PushOptions::default()
        };
        let shared = Arc::new(Shared {
            client: client.retry_policy(RetryPolicy::none()),
            shard,
            push,
            book: Mutex::default(),
            uploads: Semaphore::new(options.concurrency.max(1)),
            in_flight: Semaphore::new(options.max_in_flight.max(1)),
            archived: Notify::new(),
            options,
        });
        // Unbounded in count so a hand-off never blocks or fails while the
        // server is away; each entry is a path, and the WAL files themselves
        // are the real bound.
        let (handoffs, received) = mpsc::unbounded_channel();
        let cancel = CancellationToken::new();
        let runner = tokio::spawn(run(shared.clone(), received, cancel.clone()));
        FlushPath {
            shared,
            wal_dir: wal_dir.into(),
            handoffs,
            cancel,
            runner: Some(runner),
        }
    }

    /// Connects (retrying while the server is unreachable, with the options'
    /// backoff) and starts.
    pub async fn connect(
        connection: &Connection,
        shard: ShardId,
        wal_dir: impl Into<PathBuf>,
        options: FlushOptions,
    ) -> Result<FlushPath, ClientError> {
        let retry = RetryPolicy {
            first_backoff: options.min_backoff,
            max_backoff: options.max_backoff,
            ..RetryPolicy::default()
        };
        let client = Client::connect_retrying(connection, retry).await?;
        Ok(FlushPath::start(client, shard, wal_dir, options))
    }

    /// Queues a closed segment and returns at once. `Ok(false)` if it is
    /// already on its way (or archived and waiting for the watermark); a
    /// segment that failed permanently is taken again (fixed, presumably).
    /// Hand segments off in log_id order: deletion follows that order.
    pub fn hand_off(&self, log_id: LogId, path: impl Into<PathBuf>) -> Result<bool, FlushError> {
        if self.cancel.is_cancelled() {
            return Err(FlushError::Closed);
        }
        let path = path.into();
        {
            let mut book = self.shared.book();
            match book.segments.get(&log_id).map(|entry| entry.stage) {
                Some(Stage::Pending | Stage::Archived) => return Ok(false),
                Some(Stage::Permanent) => book.stats.held = book.stats.held.saturating_sub(1),
                None => {}
            }
            book.segments.insert(
                log_id,
                Entry {
                    path: path.clone(),
                    stage: Stage::Pending,
                },
            );
            book.stats.handed_off += 1;
            book.stats.pending += 1;
        }
        self.handoffs
            .send((log_id, path))
            .map_err(|_| FlushError::Closed)?;
        Ok(true)
    }

    /// Hands off every `wal-<id>.log` of the WAL directory with id below
    /// `up_to` (the segment still being written), in order; for a start
    /// after a crash, or a periodic sweep. Returns how many were new.
    pub fn hand_off_dir(&self, up_to: LogId) -> Result<usize, FlushError> {
        let mut new = 0;
        for (log_id, path) in Client::wal_files(&self.wal_dir, up_to)? {
            new += usize::from(self.hand_off(log_id, path)?);
        }
        Ok(new)
    }

    pub fn wal_dir(&self) -> &Path {
        &self.wal_dir
    }

    pub fn stats(&self) -> FlushStats {
        self.shared.book().stats
    }

    /// Stops at once: uploads in progress are abandoned (the server never
    /// commits a cut upload), follows and retries end. Returns the segments
    /// not archived — on their way, or failed permanently — in log_id order;
    /// hand them off again to a new `FlushPath` (pushes are idempotent).
    pub async fn shutdown(mut self) -> Vec<(LogId, PathBuf)> {
        self.cancel.cancel();
        if let Some(runner) = self.runner.take()
            && let Err(e) = runner.await
        {
            tracing::error!(error = %e, "the flush path's task ended abnormally");
        }
        self.shared
            .book()
            .segments
            .iter()
            .filter(|(_, entry)| entry.stage != Stage::Archived)
            .map(|(&log_id, entry)| (log_id, entry.path.clone()))
            .collect()
    }
}

impl Drop for FlushPath {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Takes hand-offs and gives each segment a task; the cleaner is one more.
async fn run(
    shared: Arc<Shared>,
    mut handoffs: mpsc::UnboundedReceiver<(LogId, PathBuf)>,
    cancel: CancellationToken,
) {
    let mut tasks = JoinSet::new();
    if shared.options.delete_archived {
        tasks.spawn(clean(shared.clone()));
    }
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            handoff = handoffs.recv() => match handoff {
                Some((log_id, path)) => {
                    tasks.spawn(carry(shared.clone(), log_id, path));
                }
                None => break,
            },
            Some(ended) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = ended {
                    tracing::error!(error = %e, "a flush path task panicked; its segment stays pending");
                }
            }
        }
    }
    // Aborts every task at its current await: an upload, a watch, a backoff.
    tasks.shutdown().await;
}

/// One segment's journey: push, follow, settle; retried until it is archived
/// or fails permanently.
async fn carry(shared: Arc<Shared>, log_id: LogId, path: PathBuf) {
    // Never closed, so this only waits.
    let Ok(_in_flight) = shared.in_flight.acquire().await else {
        return;
    };
    let mut attempt: u32 = 0;
    loop {
        let reason = match shared.push(log_id, &path).await {
            Ok(job) => match shared.follow(log_id, job).await {
                Ok(job) => return shared.archived(log_id, job.id),
                Err(Failure::Permanent(reason)) => return shared.permanent(log_id, &path, reason),
                Err(Failure::Retryable(reason)) => reason,
            },
            Err(Failure::Permanent(reason)) => return shared.permanent(log_id, &path, reason),
            Err(Failure::Retryable(reason)) => reason,
        };
        attempt += 1;
        shared.retrying(log_id, reason, attempt);
        tokio::time::sleep(shared.backoff(attempt - 1)).await;
    }
}

/// Deletes archived WAL the watermark covers, when a segment is archived or
/// every `sweep_interval` while some waits (the watermark also moves when a
/// lower segment is archived or resolved).
async fn clean(shared: Arc<Shared>) {
    loop {
        tokio::select! {
            _ = shared.archived.notified() => {}
            _ = tokio::time::sleep(shared.options.sweep_interval) => {}
        }
        let waiting = shared
            .book()
            .segments
            .values()
            .any(|entry| entry.stage != Stage::Pending);
        if !waiting {
            continue;
        }
        let status = match tokio::time::timeout(
            shared.options.rpc_timeout,
            shared.client.shard(shared.shard),
        )
        .await
        {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, shard = shared.shard, "cannot read the watermark; trying later");
                continue;
            }
            Err(_) => {
                tracing::warn!(
                    shard = shared.shard,
                    "reading the watermark timed out; trying later"
                );
                continue;
            }
        };
        let watermark = status.archived_watermark;
        shared.book().stats.watermark = watermark;
        if let Some(watermark) = watermark {
            shared.delete_up_to(watermark).await;
        }
    }
}

impl Shared {
    fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn emit(&self, event: FlushEvent) {
        if let Some(handler) = &self.options.on_event {
            handler(&event);
        }
    }

    /// Exponential with jitter: at least half the bound, so a retry never
    /// comes at once, and shards refused together do not return together.
    fn backoff(&self, attempt: u32) -> Duration {
        let bound = self
            .options
            .min_backoff
            .saturating_mul(1 << attempt.min(16))
            .min(self.options.max_backoff);
        bound.mul_f64(0.5 + rand::random::<f64>() / 2.0)
    }

    async fn push(&self, log_id: LogId, path: &Path) -> Result<Job, Failure> {
        let Ok(_upload) = self.uploads.acquire().await else {
            return Err(Failure::Retryable("the flush path is closing".into()));
        };
        self.book().stats.pushes += 1;
        match self
            .client
            .push_file(self.shard, log_id, path, &self.push)
            .await
        {
            Ok(pushed) => Ok(pushed.job),
            Err(e) => Err(push_failure(&e)),
        }
    }

    /// Follows the job to a terminal state: a watch while it lasts, GetJob
    /// when it breaks (the server restarting) or goes quiet.
    async fn follow(&self, log_id: LogId, mut job: Job) -> Result<Job, Failure> {
        let mut quiet: u32 = 0;
        loop {
            if job.shard_id != self.shard || job.log_id != log_id {
                return Err(Failure::Retryable(format!(
                    "job {} is now shard {} log_id {}: the server lost its jobs",
                    job.id, job.shard_id, job.log_id
                )));
            }
            match job.state {
                JobState::Archived => return Ok(job),
                JobState::Failed => {
                    let reason = format!("job {} FAILED: {}", job.id, job.reason);
                    return Err(match job.failure_class {
                        Some(FailureClass::Permanent) => Failure::Permanent(reason),
                        _ => Failure::Retryable(reason),
                    });
                }
                JobState::Cancelled => {
                    return Err(Failure::Permanent(format!(
                        "job {} was cancelled: {}",
                        job.id, job.reason
                    )));
                }
                JobState::Receiving | JobState::Queued | JobState::Compressing => {}
            }
            match self.watch(log_id, job.id).await {
                Ok(Some(latest)) => {
                    job = latest;
                    continue;
                }
                Ok(None) => {}
                Err(failure) => return Err(failure),
            }
            tokio::time::sleep(self.backoff(quiet)).await;
            quiet = quiet.saturating_add(1);
            match tokio::time::timeout(self.options.rpc_timeout, self.client.job(job.id)).await {
                Ok(Ok(latest)) => {
                    job = latest;
                    quiet = 0;
                }
                Ok(Err(e)) if e.code() == Some(Code::NotFound) => return Err(lost(job.id)),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, job = %job.id, "cannot read the job; trying again");
                }
                Err(_) => tracing::debug!(job = %job.id, "reading the job timed out"),
            }
        }
    }

    /// The job's first terminal state (or a state naming another segment)
    /// on a watch; `None` when the watch could not open, broke, ended or
    /// stayed quiet for `watch_idle`.
    async fn watch(&self, log_id: LogId, job_id: JobId) -> Result<Option<Job>, Failure> {
        let opened =
            tokio::time::timeout(self.options.rpc_timeout, self.client.watch(job_id)).await;
        let mut states = match opened {
            Ok(Ok(states)) => Box::pin(states),
            Ok(Err(e)) if e.code() == Some(Code::NotFound) => return Err(lost(job_id)),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, job = %job_id, "cannot watch the job");
                return Ok(None);
            }
            Err(_) => return Ok(None),
        };
        loop {
            match tokio::time::timeout(self.options.watch_idle, states.next()).await {
                Ok(Some(Ok(job)))
                    if job.state.is_terminal()
                        || job.shard_id != self.shard
                        || job.log_id != log_id =>
                {
                    return Ok(Some(job));
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) if e.code() == Some(Code::NotFound) => return Err(lost(job_id)),
                Ok(Some(Err(_)) | None) | Err(_) => return Ok(None),
            }
        }
    }

    fn archived(&self, log_id: LogId, job_id: JobId) {
        {
            let mut book = self.book();
            book.stats.archived += 1;
            book.stats.pending = book.stats.pending.saturating_sub(1);
            if self.options.delete_archived {
                if let Some(entry) = book.segments.get_mut(&log_id) {
                    entry.stage = Stage::Archived;
                }
            } else {
                book.segments.remove(&log_id);
            }
        }
        tracing::debug!(shard = self.shard, log_id, job = %job_id, "segment archived");
        self.emit(FlushEvent::Archived { log_id, job_id });
        self.archived.notify_one();
    }

    fn permanent(&self, log_id: LogId, path: &Path, reason: String) {
        {
            let mut book = self.book();
            book.stats.permanent += 1;
            book.stats.pending = book.stats.pending.saturating_sub(1);
            book.stats.held += 1;
            if let Some(entry) = book.segments.get_mut(&log_id) {
                entry.stage = Stage::Permanent;
            }
        }
        tracing::error!(
            shard = self.shard,
            log_id,
            path = %path.display(),
            %reason,
            "WAL segment cannot be archived: it stays on disk and holds the shard's watermark; fix it and hand it off again, or resolve it (wal-archiver resolve)"
        );
        self.emit(FlushEvent::Permanent { log_id, reason });
    }

    fn retrying(&self, log_id: LogId, reason: String, attempt: u32) {
        self.book().stats.retries += 1;
        tracing::warn!(shard = self.shard, log_id, attempt, %reason, "segment not archived; pushing it again after a backoff");
        self.emit(FlushEvent::Retrying {
            log_id,
            reason,
            attempt,
        });
    }

    async fn delete_up_to(&self, watermark: LogId) {
        loop {
            let (files, failed) = self.book().deletable(watermark);
            for (log_id, path) in files {
                match tokio::fs::remove_file(&path).await {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::warn!(error = %e, path = %path.display(), "cannot delete archived WAL; trying later");
                        return;
                    }
                }
                {
                    let mut book = self.book();
                    book.segments.remove(&log_id);
                    book.stats.deleted += 1;
                }
                self.emit(FlushEvent::Deleted { log_id, path });
            }
            let Some(log_id) = failed else {
                return;
            };
            // A watermark past a segment the server recorded means an
            // operator resolved it (or it was archived since); past one it
            // never recorded (refused before a job existed), it means nothing.
            if !self.recorded(log_id).await {
                return;
            }
            {
                let mut book = self.book();
                if book.segments.remove(&log_id).is_some() {
                    book.stats.held = book.stats.held.saturating_sub(1);
                }
            }
            tracing::warn!(
                shard = self.shard,
                log_id,
                watermark,
                "the watermark passed a segment that failed permanently (resolved by an operator?): its WAL file is left on disk"
            );
        }
    }

    /// Whether the server has a job for the segment.
    async fn recorded(&self, log_id: LogId) -> bool {
        let filter = JobFilter {
            shard_id: Some(self.shard),
            log_id_min: Some(log_id),
            log_id_max: Some(log_id),
            limit: 1,
            ..JobFilter::default()
        };
        match tokio::time::timeout(self.options.rpc_timeout, self.client.list(&filter)).await {
            Ok(Ok((jobs, _))) => !jobs.is_empty(),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, log_id, "cannot list the segment's jobs; trying later");
                false
            }
            Err(_) => false,
        }
    }
}

fn lost(job_id: JobId) -> Failure {
    Failure::Retryable(format!(
        "job {job_id} is unknown to the server (its jobs database was lost?)"
    ))
}

/// Whether pushing the same file again can succeed.
fn push_failure(error: &ClientError) -> Failure {
    let reason = error.to_string();
    match error {
        // The file is gone or unreadable: nothing to push again.
        ClientError::Io(_) => Failure::Permanent(reason),
        // Bad bytes (INVALID_ARGUMENT), other bytes archived under the log_id
        // (ALREADY_EXISTS), a shard this server does not serve or a token
        // that may not push: the same push gets the same answer.
        ClientError::Rpc(status)
            if matches!(
                status.code(),
                Code::InvalidArgument
                    | Code::AlreadyExists
                    | Code::FailedPrecondition
                    | Code::PermissionDenied
                    | Code::Unauthenticated
                    | Code::OutOfRange
                    | Code::Unimplemented
            ) =>
        {
            Failure::Permanent(reason)
        }
        ClientError::JobNotArchived(job) if job.failure_class == Some(FailureClass::Permanent) => {
            Failure::Permanent(reason)
        }
        _ => Failure::Retryable(reason),
    }
}
