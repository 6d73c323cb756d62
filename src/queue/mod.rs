//! The archiving engine: takes segments in, keeps one FIFO per shard, runs
//! compression on a fixed pool of worker threads, and records every state
//! change durably. The gRPC layer above only translates; nothing here knows
//! about protobuf.
//!
//! A segment's life: `begin` records it RECEIVING and reserves a place on its
//! shard's queue; the `Upload` spools chunks (hashing and checking JSON lines
//! as they pass); `finish` verifies size and SHA-256, makes the spool durable,
//! commits QUEUED and enqueues; a worker compresses spool → archive, commits
//! ARCHIVED, and deletes the spool.

mod error;
mod ingest;
mod maintenance;
mod recovery;
mod scheduler;
mod worker;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use tokio::sync::{Semaphore, broadcast, mpsc};

pub use error::QueueError;
pub use ingest::{Accepted, Begin, SegmentRequest, Trailer, Upload};

use crate::archive::ArchiveReader;
use crate::config::Config;
use crate::store::{ArchiveKey, ArchiveStore, JobDb, JobFilter, LocalStore, Spool};
use crate::types::{Job, JobId, JobState, LogId, ShardId, ShardStatus, VerifyReport};
use scheduler::{Interrupt, Scheduler};

/// Cheap to clone; every clone drives the same engine.
#[derive(Clone)]
pub struct Archiver {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    db: JobDb,
    spool: Spool,
    store: Arc<dyn ArchiveStore>,
    scheduler: Scheduler,
    events: broadcast::Sender<Job>,
    uploads: Arc<Semaphore>,
    receiving:
        std::sync::Mutex<std::collections::HashMap<JobId, tokio_util::sync::CancellationToken>>,
    draining: AtomicBool,
    workers: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>,
}

/// What recovery found and did at start.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    pub requeued: usize,
    pub adopted: usize,
    pub interrupted: usize,
    pub lost: usize,
    pub temporaries_removed: usize,
    pub orphan_spools_removed: usize,
}

const EVENT_BUFFER: usize = 4096;

/// A snapshot for the metrics gauges.
#[derive(Debug, Default, Clone)]
pub struct Gauges {
    pub jobs: Vec<(JobState, u64)>,
    pub shards: Vec<ShardStatus>,
    pub spool_bytes: u64,
    pub archived_bytes: u64,
    pub archive_bytes: u64,
}

impl Archiver {
    /// Opens (or creates) the data dir, recovers what a previous run left, and
    /// starts the workers.
    pub fn open(config: Config) -> Result<(Archiver, RecoveryReport), QueueError> {
        let data_dir = config.data_dir.clone();
        std::fs::create_dir_all(&data_dir)
            .map_err(|e| QueueError::io(format!("creating {}", data_dir.display()), e))?;
        let db = JobDb::open(&data_dir.join("jobs.db"))?;
        let spool = Spool::open(data_dir.join("spool"))?;
        let store: Arc<dyn ArchiveStore> = Arc::new(LocalStore::open(data_dir.join("archives"))?);
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let inner = Arc::new(Inner {
            scheduler: Scheduler::new(config.archive_queue_size),
            uploads: Arc::new(Semaphore::new(config.max_concurrent_uploads)),
            config,
            db,
            spool,
            store,
            events,
            receiving: Default::default(),
            draining: AtomicBool::new(false),
            workers: Default::default(),
        });
        let report = recovery::recover(&inner)?;
        let archiver = Archiver { inner };
        archiver.start_workers()?;
        Ok((archiver, report))
    }

    fn start_workers(&self) -> Result<(), QueueError> {
        let mut handles = self.inner.workers.lock().unwrap_or_else(|p| p.into_inner());
        for n in 0..self.inner.config.workers() {
            let inner = self.inner.clone();
            let handle = std::thread::Builder::new()
                .name(format!("archive-worker-{n}"))
                .spawn(move || worker::run(&inner))
                .map_err(|e| QueueError::io("starting archive worker", e))?;
            handles.push(handle);
        }
        Ok(())
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn data_dir(&self) -> &Path {
        &self.inner.config.data_dir
    }

    pub fn archive_location(&self, shard_id: ShardId, log_id: LogId) -> String {
        self.inner.store.location(ArchiveKey { shard_id, log_id })
    }

    /// Starts taking a segment in. See `Begin`.
    pub async fn begin(&self, request: SegmentRequest) -> Result<Begin, QueueError> {
        ingest::begin(self.inner.clone(), request).await
    }

    pub async fn job(&self, id: JobId) -> Result<Job, QueueError> {
        let inner = self.inner.clone();
        blocking(move || inner.db.get(id)?.ok_or(QueueError::JobNotFound(id))).await
    }

    pub async fn list_jobs(&self, filter: JobFilter) -> Result<Vec<Job>, QueueError> {
        let inner = self.inner.clone();
        blocking(move || Ok(inner.db.list(&filter)?)).await
    }

    pub async fn shard(&self, shard_id: ShardId) -> Result<ShardStatus, QueueError> {
        let inner = self.inner.clone();
        blocking(move || {
            inner
                .db
                .shard_status(shard_id)?
                .ok_or(QueueError::ShardNotFound(shard_id))
        })
        .await
    }

    /// Every state of a job from now on: its current state first, then each
    /// change, ending after a terminal state (or when the service drains).
    pub fn watch(&self, id: JobId) -> impl Stream<Item = Result<Job, QueueError>> + Send + 'static {
        let events = self.inner.events.subscribe();
        let archiver = self.clone();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            let result = archiver.forward_states(id, events, &tx).await;
            if let Err(e) = result {
                let _ = tx.send(Err(e)).await;
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }

    async fn forward_states(
        &self,
        id: JobId,
        mut events: broadcast::Receiver<Job>,
        tx: &mpsc::Sender<Result<Job, QueueError>>,
    ) -> Result<(), QueueError> {
        let mut last = self.job(id).await?;
        if tx.send(Ok(last.clone())).await.is_err() {
            return Ok(());
        }
        while !last.state.is_terminal() {
            let next = tokio::select! {
                event = events.recv() => match event {
                    Ok(job) if job.id == id => job,
                    Ok(_) => continue,
                    // Missed events: the database has the truth.
                    Err(broadcast::error::RecvError::Lagged(_)) => self.job(id).await?,
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                },
                () = tx.closed() => return Ok(()),
            };
            if next.state != last.state {
                if tx.send(Ok(next.clone())).await.is_err() {
                    return Ok(());
                }
                last = next;
            }
        }
        Ok(())
    }

    /// Waits until the job reaches a terminal state.
    pub async fn wait_terminal(&self, id: JobId) -> Result<Job, QueueError> {
        let mut events = self.inner.events.subscribe();
        let mut job = self.job(id).await?;
        while !job.state.is_terminal() {
            match events.recv().await {
                Ok(event) if event.id == id => job = event,
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => job = self.job(id).await?,
                Err(broadcast::error::RecvError::Closed) => return Err(QueueError::ShuttingDown),
            }
        }
        Ok(job)
    }

    /// Cancels a receiving, queued or compressing job.
    pub async fn cancel(&self, id: JobId) -> Result<Job, QueueError> {
        let job = self.job(id).await?;
        match job.state {
            JobState::Receiving => {
                let token = self
                    .inner
                    .receiving
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&id)
                    .cloned();
                if let Some(token) = token {
                    token.cancel();
                }
                self.wait_terminal(id).await
            }
            JobState::Queued if self.inner.scheduler.remove_queued(job.shard_id, id) => {
                let inner = self.inner.clone();
                let cancelled = blocking(move || {
                    let job = inner.db.transition(
                        id,
                        &[JobState::Queued],
                        JobState::Cancelled,
                        "cancelled by request",
                    )?;
                    inner.spool.remove(id)?;
                    Ok(job)
                })
                .await?;
                match cancelled {
                    Some(job) => {
                        self.inner.emit(&job);
                        Ok(job)
                    }
                    None => self.job(id).await,
                }
            }
            // Queued but already taken by a worker, or compressing: the worker
            // owns the job's state, so ask it and wait for what it records.
            JobState::Queued | JobState::Compressing => {
                let mut events = self.inner.events.subscribe();
                if self.inner.scheduler.interrupt(id, Interrupt::Cancel) {
                    loop {
                        let job = self.job(id).await?;
                        if job.state.is_terminal() {
                            return Ok(job);
                        }
                        let _ =
                            tokio::time::timeout(Duration::from_millis(200), events.recv()).await;
                        self.inner.scheduler.interrupt(id, Interrupt::Cancel);
                    }
                }
                let job = self.job(id).await?;
                if job.state.is_terminal() {
                    Ok(job)
                } else {
                    Err(QueueError::NotCancellable {
                        id,
                        state: job.state,
                    })
                }
            }
            state => Err(QueueError::NotCancellable { id, state }),
        }
    }

    /// Streams a segment's original bytes, verified against its SHA-256; the
    /// last chunk is only sent once the whole segment is proven.
    pub async fn restore(
        &self,
        shard_id: ShardId,
        log_id: LogId,
    ) -> Result<impl Stream<Item = Result<Bytes, QueueError>> + Send + 'static, QueueError> {
        let inner = self.inner.clone();
        let chunk_size = inner.config.max_chunk_size;
        let key = ArchiveKey { shard_id, log_id };
        let reader = blocking(move || {
            match inner.db.archived_job(shard_id, log_id)? {
                None => return Err(QueueError::SegmentNotFound { shard_id, log_id }),
                Some(job) if job.expired_unix_ms.is_some() => {
                    return Err(QueueError::Expired { shard_id, log_id });
                }
                Some(_) => {}
            }
            let file = inner
                .store
                .open(key)?
                .ok_or_else(|| QueueError::ArchiveMissing {
                    shard_id,
                    log_id,
                    location: inner.store.location(key),
                })?;
            Ok(ArchiveReader::open(file)?)
        })
        .await?;
        let (tx, rx) = mpsc::channel::<Result<Bytes, QueueError>>(4);
        tokio::task::spawn_blocking(move || {
            let mut reader = reader;
            let mut held: Option<Bytes> = None;
            loop {
                let mut buf = vec![0u8; chunk_size];
                match reader.read_chunk(&mut buf) {
                    Ok(0) => {
                        if let Some(last) = held.take() {
                            let _ = tx.blocking_send(Ok(last));
                        }
                        return;
                    }
                    Ok(n) => {
                        buf.truncate(n);
                        if let Some(previous) = held.replace(Bytes::from(buf))
                            && tx.blocking_send(Ok(previous)).is_err()
                        {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e.into()));
                        return;
                    }
                }
            }
        });
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
    }

    /// Stops taking pushes (they get UNAVAILABLE); receiving streams may finish.
    pub fn start_draining(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    /// Lets running compressions finish within `grace`, then interrupts them;
    /// their jobs, like every queued one, stay QUEUED for the next start.
    pub async fn shutdown(&self, grace: Duration) {
        self.start_draining();
        self.inner.scheduler.close();
        let handles: Vec<_> =
            std::mem::take(&mut *self.inner.workers.lock().unwrap_or_else(|p| p.into_inner()));
        let join = tokio::task::spawn_blocking(move || {
            for handle in handles {
                let _ = handle.join();
            }
        });
        tokio::pin!(join);
        if tokio::time::timeout(grace, &mut join).await.is_err() {
            tracing::warn!(
                running = self.inner.scheduler.running_count(),
                "shutdown grace over: interrupting running compressions, their jobs stay queued"
            );
            self.inner.scheduler.interrupt_all(Interrupt::Shutdown);
            let _ = join.await;
        }
    }

    /// What the metrics gauges show, read from the jobs database and the spool.
    pub async fn gauges(&self) -> Result<Gauges, QueueError> {
        let inner = self.inner.clone();
        blocking(move || {
            let mut shards = Vec::new();
            for shard in inner.db.shard_ids()? {
                shards.extend(inner.db.shard_status(shard)?);
            }
            let jobs = inner.db.state_counts()?;
            let spool_bytes = inner
                .spool
                .list()?
                .into_iter()
                .filter_map(|id| std::fs::metadata(inner.spool.path(id)).ok())
                .map(|m| m.len())
                .sum();
            Ok(Gauges {
                archived_bytes: shards.iter().map(|s| s.bytes_in).sum(),
                archive_bytes: shards.iter().map(|s| s.bytes_out).sum(),
                jobs,
                shards,
                spool_bytes,
            })
        })
        .await
    }

    /// Re-reads archives (of one shard or all) and checks them; see `VerifyReport`.
    pub async fn verify(&self, shard: Option<ShardId>) -> Result<VerifyReport, QueueError> {
        let inner = self.inner.clone();
        blocking(move || maintenance::verify(&inner, shard)).await
    }

    /// Applies `retain_days` / `retain_count`; returns how many archives went.
    pub async fn apply_retention(&self) -> Result<usize, QueueError> {
        let inner = self.inner.clone();
        blocking(move || maintenance::apply_retention(&inner)).await
    }

    /// Every job in a non-terminal state, for tests and status.
    pub async fn unfinished_jobs(&self) -> Result<Vec<Job>, QueueError> {
        let inner = self.inner.clone();
        blocking(move || {
            Ok(inner.db.in_states(&[
                JobState::Receiving,
                JobState::Queued,
                JobState::Compressing,
            ])?)
        })
        .await
    }
}

impl Inner {
    fn emit(&self, job: &Job) {
        tracing::debug!(job_id = job.id, shard_id = job.shard_id, log_id = job.log_id, state = %job.state, "job state");
        let _ = self.events.send(job.clone());
    }

    fn enough_free_space(&self, incoming: u64) -> Result<(), QueueError> {
        let free = free_bytes(&self.config.data_dir)
            .map_err(|e| QueueError::io("checking free space of the data dir", e))?;
        let needed = self.config.min_free_bytes.saturating_add(incoming);
        if free < needed {
            return Err(QueueError::DiskFull { free, needed });
        }
        Ok(())
    }
}

/// Runs a blocking closure (database, filesystem) off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, QueueError> + Send + 'static,
) -> Result<T, QueueError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| QueueError::Internal(format!("blocking task failed: {e}")))?
}

fn free_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path =
        std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is a valid NUL-terminated string and stat a valid out-pointer.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stat.f_bavail as u64 * stat.f_frsize as u64)
}
