//! The archiving engine: the `Archiver` the gRPC layer calls. Nothing here
//! knows about protobuf.
//!
//! Each step of a segment's life has its own part, holding only the handles
//! it needs:
//! - `ingest`: a push is recorded RECEIVING with a place on its shard's
//!   queue; its bytes are spooled and hashed; once size and SHA-256 match, the
//!   spool is made durable, the job committed QUEUED and queued;
//! - `compress`: a worker of the `queue` pool streams the spool through the
//!   JSON-lines check and the zstd encoder into the archive store (`encode`),
//!   and commits ARCHIVED; `early` and `pipeline`: when a worker is idle, it
//!   starts on an upload's spool while the upload still writes it;
//!   `watchdog`: jobs that stopped making progress;
//! - `jobs`: reading, watching and cancelling jobs; `restore`: the original
//!   bytes back, verified; `maintenance`: verify and retention; `recovery`:
//!   what a start does with what the last run left; `gauges`: metrics.

mod compress;
mod crash_point;
mod disk;
mod early;
mod encode;
mod error;
mod events;
mod gauges;
mod ingest;
mod jobs;
mod maintenance;
mod pipeline;
mod recovery;
mod reindex;
mod restore;
mod watchdog;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use tokio::sync::Semaphore;

pub use crash_point::CRASH_AT_VARIABLE;
pub use error::EngineError;
pub use gauges::Gauges;
pub use ingest::{Accepted, Begin, Upload};
pub use recovery::RecoveryReport;
pub use reindex::ReindexReport;

use crate::config::Config;
use crate::error::IoError;
use crate::queue::{Interrupt, Scheduler, WorkerPool};
use crate::store::{ArchiveKey, ArchiveStore, DataDirLock, JobDb, ResolveOutcome, Spool};
use crate::types::{
    Job, JobFilter, JobId, LogId, Ownership, Resolution, SegmentRequest, ShardId, ShardStatus,
    VerifyReport,
};
use compress::Compressor;
use events::Events;
use ingest::{Intake, Receiving};
use jobs::Jobs;
use maintenance::Maintenance;
use restore::Restorer;

/// Cheap to clone; every clone drives the same engine.
#[derive(Clone)]
pub struct Archiver {
    parts: Arc<Parts>,
}

struct Parts {
    /// Held for the engine's life: one server per data dir.
    _lock: DataDirLock,
    config: Arc<Config>,
    ownership: Ownership,
    intake: Arc<Intake>,
    jobs: Jobs,
    restorer: Restorer,
    maintenance: Arc<Maintenance>,
    gauges: gauges::Reader,
    store: Arc<dyn ArchiveStore>,
    scheduler: Arc<Scheduler>,
    draining: Arc<AtomicBool>,
    pool: WorkerPool,
}

impl Archiver {
    /// Opens (or creates) the data dir, recovers what a previous run left
    /// with `store` holding the archives, and starts the workers.
    pub fn open(
        config: Config,
        store: Arc<dyn ArchiveStore>,
    ) -> Result<(Archiver, RecoveryReport), EngineError> {
        let config = Arc::new(config);
        let data_dir = &config.data_dir;
        std::fs::create_dir_all(data_dir)
            .map_err(IoError::with(format!("creating {}", data_dir.display())))?;
        // Before anything reads or recovers the data dir.
        let lock = DataDirLock::acquire(data_dir)?;
        let ownership = config
            .ownership()
            .map_err(|e| EngineError::Invalid(e.to_string()))?;
        let db = Arc::new(JobDb::open(&data_dir.join("jobs.db"))?);
        if db.is_fresh() {
            // A new or lost jobs database: the store knows what is archived.
            reindex::reindex(&db, store.as_ref(), &ownership)?;
        }
        let spool = Arc::new(Spool::open(data_dir.join("spool"))?);
        let scheduler = Arc::new(Scheduler::new(config.archive_queue_size));
        let events = Events::new();
        let draining = Arc::new(AtomicBool::new(false));
        let receiving = Arc::new(Receiving::default());
        let streams = Arc::new(pipeline::Streams::default());

        let report = recovery::recover(&config, &db, &spool, store.as_ref(), &scheduler)?;
        let compressor = Arc::new(Compressor {
            config: config.clone(),
            scheduler: scheduler.clone(),
            db: db.clone(),
            spool: spool.clone(),
            store: store.clone(),
            events: events.clone(),
            streams: streams.clone(),
        });
        let pool = WorkerPool::start(
            config.workers(),
            config.small_job_size > 0,
            config.worker_nice,
            scheduler.clone(),
            Arc::new(move |task| compressor.run(task)),
        )
        .map_err(IoError::with("starting archive workers"))?;
        watchdog::spawn(
            scheduler.clone(),
            db.clone(),
            events.clone(),
            Duration::from_secs(config.stall_timeout),
        )
        .map_err(IoError::with("starting the stall watchdog"))?;
        let parts = Parts {
            _lock: lock,
            ownership,
            intake: Arc::new(Intake {
                config: config.clone(),
                db: db.clone(),
                spool: spool.clone(),
                scheduler: scheduler.clone(),
                events: events.clone(),
                uploads: Arc::new(Semaphore::new(config.max_concurrent_uploads)),
                receiving: receiving.clone(),
                draining: draining.clone(),
                disk: Arc::new(disk::DiskBudget::new(
                    config.data_dir.clone(),
                    config.min_free_bytes,
                )),
                store: store.clone(),
                streams,
            }),
            jobs: Jobs {
                idle: Duration::from_secs(config.receive_idle_timeout),
                db: db.clone(),
                spool: spool.clone(),
                scheduler: scheduler.clone(),
                events,
                receiving,
            },
            restorer: Restorer {
                db: db.clone(),
                store: store.clone(),
                chunk_size: config.max_chunk_size.min(restore::MAX_RESTORE_CHUNK),
                slots: Arc::new(Semaphore::new(config.restores())),
                limit: config.restores(),
                idle: Duration::from_secs(config.receive_idle_timeout),
            },
            maintenance: Arc::new(Maintenance {
                db: db.clone(),
                store: store.clone(),
                retain_days: config.retain_days,
                retain_count: config.retain_count,
            }),
            gauges: gauges::Reader { db, spool },
            store,
            scheduler,
            draining,
            pool,
            config,
        };
        Ok((
            Archiver {
                parts: Arc::new(parts),
            },
            report,
        ))
    }

    pub fn config(&self) -> &Config {
        &self.parts.config
    }

    pub fn archive_location(&self, shard_id: ShardId, log_id: LogId) -> String {
        self.parts.store.location(ArchiveKey { shard_id, log_id })
    }

    /// Rebuilds missing ARCHIVED jobs of the owned shards from `store`, on a
    /// data dir no server is using (`wal-archiver reindex`).
    pub fn reindex(
        config: &Config,
        store: &dyn ArchiveStore,
    ) -> Result<ReindexReport, EngineError> {
        std::fs::create_dir_all(&config.data_dir).map_err(IoError::with(format!(
            "creating {}",
            config.data_dir.display()
        )))?;
        let _lock = DataDirLock::acquire(&config.data_dir)?;
        let ownership = config
            .ownership()
            .map_err(|e| EngineError::Invalid(e.to_string()))?;
        let db = JobDb::open(&config.data_dir.join("jobs.db"))?;
        reindex::reindex(&db, store, &ownership)
    }

    /// Refuses a shard another replica serves.
    fn check_owned(&self, shard_id: ShardId) -> Result<(), EngineError> {
        if self.parts.ownership.owns(shard_id) {
            Ok(())
        } else {
            Err(EngineError::NotOwned {
                shard_id,
                ownership: self.parts.ownership.to_string(),
            })
        }
    }

    /// Starts taking a segment in. See `Begin`.
    pub async fn begin(&self, request: SegmentRequest) -> Result<Begin, EngineError> {
        self.check_owned(request.shard_id)?;
        detached(ingest::begin(self.parts.intake.clone(), request)).await
    }

    pub async fn job(&self, id: JobId) -> Result<Job, EngineError> {
        self.parts.jobs.get(id).await
    }

    pub async fn list_jobs(&self, filter: JobFilter) -> Result<Vec<Job>, EngineError> {
        self.parts.jobs.list(filter).await
    }

    pub async fn shard(&self, shard_id: ShardId) -> Result<ShardStatus, EngineError> {
        self.check_owned(shard_id)?;
        self.parts.jobs.shard(shard_id).await
    }

    /// Every shard this server serves and knows, with what holds each one's watermark.
    pub async fn shards(&self) -> Result<Vec<ShardStatus>, EngineError> {
        let (db, ownership) = (self.parts.jobs.db.clone(), self.parts.ownership.clone());
        blocking(move || {
            let mut shards = Vec::new();
            for shard_id in db.shard_ids()?.into_iter().filter(|s| ownership.owns(*s)) {
                shards.extend(db.shard_status(shard_id)?);
            }
            Ok(shards)
        })
        .await
    }

    /// Gives up a segment that is lost or permanently bad, so its shard's
    /// watermark may pass it: recorded with `by` and `reason`.
    pub async fn resolve(
        &self,
        shard_id: ShardId,
        log_id: LogId,
        reason: String,
        by: String,
    ) -> Result<Resolution, EngineError> {
        self.check_owned(shard_id)?;
        if reason.trim().is_empty() {
            return Err(EngineError::Invalid(
                "a resolution needs a reason: it is what the next operator reads".into(),
            ));
        }
        let db = self.parts.jobs.db.clone();
        let outcome = blocking(move || {
            let outcome = db.resolve(shard_id, log_id, &reason, &by)?;
            // Logged with the change, not after the await: a caller gone
            // before its answer must not cost the audit line.
            if let ResolveOutcome::Resolved(resolution) = &outcome {
                tracing::warn!(
                    target: "audit",
                    shard_id,
                    log_id,
                    by = %resolution.by,
                    reason = %resolution.reason,
                    "segment resolved: the watermark may pass it although it was never archived"
                );
            }
            Ok(outcome)
        })
        .await?;
        match outcome {
            ResolveOutcome::Resolved(resolution) => Ok(resolution),
            ResolveOutcome::NotSubmitted => Err(EngineError::NotSubmitted { shard_id, log_id }),
            ResolveOutcome::Archived => Err(EngineError::AlreadyArchived { shard_id, log_id }),
            ResolveOutcome::Active(job_id, state) => Err(EngineError::StillActive {
                shard_id,
                log_id,
                job_id,
                state,
            }),
        }
    }

    /// Every state of a job from now on: its current state first, then each
    /// change, ending after a terminal state.
    pub fn watch(
        &self,
        id: JobId,
    ) -> impl Stream<Item = Result<Job, EngineError>> + Send + 'static {
        self.parts.jobs.watch(id)
    }

    /// Waits until the job reaches a terminal state.
    pub async fn wait_terminal(&self, id: JobId) -> Result<Job, EngineError> {
        self.parts.jobs.wait_terminal(id).await
    }

    /// Cancels a receiving, queued or compressing job.
    pub async fn cancel(&self, id: JobId) -> Result<Job, EngineError> {
        self.parts.jobs.cancel(id).await
    }

    /// Streams a segment's original bytes, verified against its job; the last
    /// chunk is only sent once the whole segment is proven.
    pub async fn restore(
        &self,
        shard_id: ShardId,
        log_id: LogId,
    ) -> Result<impl Stream<Item = Result<Bytes, EngineError>> + Send + 'static, EngineError> {
        self.check_owned(shard_id)?;
        self.parts.restorer.restore(shard_id, log_id).await
    }

    /// Re-reads archives (of one shard or all) and checks them.
    pub async fn verify(&self, shard: Option<ShardId>) -> Result<VerifyReport, EngineError> {
        let maintenance = self.parts.maintenance.clone();
        blocking(move || maintenance.verify(shard)).await
    }

    /// Applies `retain_days` / `retain_count`; returns how many archives went.
    pub async fn apply_retention(&self) -> Result<usize, EngineError> {
        let maintenance = self.parts.maintenance.clone();
        blocking(move || maintenance.apply_retention()).await
    }

    /// What the metrics gauges show.
    pub async fn gauges(&self) -> Result<Gauges, EngineError> {
        let reader = self.parts.gauges.clone();
        blocking(move || reader.read()).await
    }

    /// Stops taking pushes (they get UNAVAILABLE); receiving streams may finish.
    pub fn start_draining(&self) {
        self.parts.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.parts.draining.load(Ordering::SeqCst)
    }

    /// Lets running compressions finish within `grace`, then interrupts them;
    /// their jobs, like every queued one, stay QUEUED for the next start.
    pub async fn shutdown(&self, grace: Duration) {
        self.start_draining();
        self.parts.scheduler.close();
        let parts = self.parts.clone();
        let join = tokio::task::spawn_blocking(move || parts.pool.join());
        tokio::pin!(join);
        if tokio::time::timeout(grace, &mut join).await.is_err() {
            tracing::warn!(
                running = self.parts.scheduler.running_count(),
                "shutdown grace over: interrupting running compressions, their jobs stay queued"
            );
            self.parts.scheduler.interrupt_all(Interrupt::Shutdown);
            let _ = join.await;
        }
    }
}

/// Runs a step that records state on a task of its own and waits for it. A
/// gRPC handler is dropped wherever it awaits when its client resets the
/// stream; a step cut there would leave what it already recorded without its
/// owner (a RECEIVING job no upload will end, a QUEUED job whose spool the
/// upload's drop removed). Detached, the step completes, and what it hands
/// back to no one is dropped, which ends it cleanly.
async fn detached<T: Send + 'static>(
    step: impl Future<Output = Result<T, EngineError>> + Send + 'static,
) -> Result<T, EngineError> {
    tokio::spawn(step)
        .await
        .map_err(|e| EngineError::Internal(format!("engine task failed: {e}")))?
}

/// Runs a blocking closure (database, filesystem) off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, EngineError> + Send + 'static,
) -> Result<T, EngineError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| EngineError::Internal(format!("blocking task failed: {e}")))?
}
