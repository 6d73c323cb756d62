//! Taking a segment in. The bytes go to a spool file while they are hashed
//! (SHA-256 to verify the client's digest, XXH3-128 so the worker can verify the
//! spool cheaply). Parsing JSON lines is left to the worker's compression pass,
//! off the acknowledgement path. Nothing is committed because the stream ended — a
//! client that aborts mid-upload can look like a clean end of stream — only
//! once the received size and SHA-256 match what was declared.

use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::disk::{DiskBudget, Reservation};
use super::encode::Target;
use super::events::Events;
use super::pipeline::{Feed, Streams};
use super::restore::open_job_archive;
use super::{EngineError, blocking};
use crate::config::Config;
use crate::queue::Scheduler;
use crate::store::{ArchiveStore, InsertOutcome, JobDb, Spool};
use crate::types::{Digest, FailureKind, Job, JobId, JobState, SegmentRequest, ShardId};

/// What an upload holds while it runs: its slot among `max_concurrent_uploads`,
/// and (when it spools) its claim on the data dir's free space.
pub(super) type Holds = (OwnedSemaphorePermit, Option<Reservation>);

mod upload;

pub use upload::Upload;
use upload::{Mode, Sink};

/// What `begin` needs: the handles of the intake path only.
pub(super) struct Intake {
    pub config: Arc<Config>,
    pub db: Arc<JobDb>,
    pub spool: Arc<Spool>,
    pub scheduler: Arc<Scheduler>,
    pub events: Events,
    pub uploads: Arc<Semaphore>,
    pub receiving: Arc<Receiving>,
    pub draining: Arc<AtomicBool>,
    pub disk: Arc<DiskBudget>,
    pub store: Arc<dyn ArchiveStore>,
    pub streams: Arc<Streams>,
}

/// A push the engine took: the job and whether it already existed.
#[derive(Clone, Debug)]
pub struct Accepted {
    pub job: Job,
    pub deduplicated: bool,
}

pub enum Begin {
    /// The same segment was pushed before; nothing more to receive.
    Known(Box<Accepted>),
    /// Send the data with `Upload::write`, then `Upload::finish`.
    Stream(Box<Upload>),
}

/// The uploads in progress, so a cancel can reach the stream that feeds a
/// RECEIVING job, and a RECEIVING row without one is known to be stale.
#[derive(Default)]
pub(super) struct Receiving(Mutex<HashMap<JobId, CancellationToken>>);

impl Receiving {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, CancellationToken>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn cancel(&self, id: JobId) {
        if let Some(token) = self.lock().get(&id) {
            token.cancel();
        }
    }

    fn forget(&self, id: JobId) {
        self.lock().remove(&id);
    }

    /// Registers a live upload for the existing job `id` (a repair); `None`
    /// when one is live already.
    fn claim(&self, id: JobId) -> Option<CancellationToken> {
        let mut live = self.lock();
        if live.contains_key(&id) {
            return None;
        }
        let token = CancellationToken::new();
        live.insert(id, token.clone());
        Some(token)
    }
}

/// A place on a shard's queue, taken when the header arrives so a full queue
/// refuses before any byte is written. Released on drop unless the job was
/// queued (the scheduler then frees it when a worker takes the job).
pub(super) struct QueuePlace {
    scheduler: Arc<Scheduler>,
    shard_id: ShardId,
    held: bool,
}

impl QueuePlace {
    fn take(
        scheduler: &Arc<Scheduler>,
        shard_id: ShardId,
        limit: usize,
    ) -> Result<Self, EngineError> {
        if !scheduler.reserve(shard_id) {
            return Err(EngineError::QueueFull { shard_id, limit });
        }
        Ok(QueuePlace {
            scheduler: scheduler.clone(),
            shard_id,
            held: true,
        })
    }

    pub fn enqueue(mut self, job: JobId, small: bool) {
        self.held = false;
        self.scheduler.enqueue(self.shard_id, job, small);
    }
}

impl Drop for QueuePlace {
    fn drop(&mut self) {
        if self.held {
            self.scheduler.release(self.shard_id);
        }
    }
}

/// What recording the push found in the jobs database.
enum Recorded {
    /// A new RECEIVING job with its spool file, registered as receiving.
    New(Job, File, CancellationToken),
    /// The segment has an active job already.
    Existing(Job),
    /// A RECEIVING job whose upload is gone was failed: record again.
    StaleCleared,
}

pub(super) async fn begin(
    intake: Arc<Intake>,
    request: SegmentRequest,
) -> Result<Begin, EngineError> {
    if intake.draining.load(Ordering::SeqCst) {
        return Err(EngineError::ShuttingDown);
    }
    let level = check_request(&intake.config, &request)?;
    if let Some(sha) = request.sha256 {
        let db = intake.db.clone();
        let (shard, log) = (request.shard_id, request.log_id);
        if let Some(existing) = blocking(move || Ok(db.active_job(shard, log)?)).await?
            && !needs_repair(&intake, &existing, Some(sha)).await
        {
            return known_or_conflict(existing, sha)
                .map(|accepted| Begin::Known(Box::new(accepted)));
        }
    }
    let reservation = intake.disk.reserve(request.size.unwrap_or(0))?;
    let limits = &intake.config;
    let permit =
        intake
            .uploads
            .clone()
            .try_acquire_owned()
            .map_err(|_| EngineError::TooManyUploads {
                limit: limits.max_concurrent_uploads,
            })?;
    loop {
        let place = QueuePlace::take(
            &intake.scheduler,
            request.shard_id,
            limits.archive_queue_size,
        )?;
        match record(&intake, &request, level).await? {
            Recorded::New(job, file, cancel) => {
                intake.events.emit(&job);
                let feed = offer_early(&intake, &job, &request);
                let mut upload = Upload::new(
                    intake.clone(),
                    request,
                    Mode::Spool { job, place },
                    Sink::new(Some(file)),
                    cancel,
                    (permit, Some(reservation)),
                );
                upload.feed = feed;
                return Ok(Begin::Stream(Box::new(upload)));
            }
            Recorded::Existing(existing)
                if needs_repair(&intake, &existing, request.sha256).await =>
            {
                // One repair at a time: a second one would truncate the
                // first one's spool file under it.
                let cancel = intake
                    .receiving
                    .claim(existing.id)
                    .ok_or_else(|| busy(&existing))?;
                let file = match spool_file(&intake, existing.id).await {
                    Ok(file) => file,
                    Err(e) => {
                        intake.receiving.forget(existing.id);
                        return Err(e);
                    }
                };
                return Ok(Begin::Stream(Box::new(Upload::new(
                    intake.clone(),
                    request,
                    Mode::Repair {
                        job: existing,
                        place,
                    },
                    Sink::new(Some(file)),
                    cancel,
                    (permit, Some(reservation)),
                ))));
            }
            Recorded::Existing(existing) => {
                drop(place);
                return match (existing.state, request.sha256) {
                    (JobState::Receiving, _) => Err(busy(&existing)),
                    (_, Some(sha)) => known_or_conflict(existing, sha)
                        .map(|accepted| Begin::Known(Box::new(accepted))),
                    // The digest comes in the trailer: hash the stream to
                    // tell a retry from a conflict, write nothing.
                    (_, None) => Ok(Begin::Stream(Box::new(Upload::new(
                        intake.clone(),
                        request,
                        Mode::Compare { existing },
                        Sink::new(None),
                        CancellationToken::new(),
                        (permit, None),
                    )))),
                };
            }
            Recorded::StaleCleared => continue,
        }
    }
}

/// Offers a new job to a worker at once, to be compressed while it arrives;
/// the feed that connects the two when a worker took it.
fn offer_early(intake: &Intake, job: &Job, request: &SegmentRequest) -> Option<Arc<Feed>> {
    if !intake.config.compress_while_receiving {
        return None;
    }
    let target = Target::of(job, request.size, request.sha256);
    let feed = intake.streams.open(job.id, target);
    let small = request
        .size
        .is_some_and(|size| intake.config.is_small(size));
    if intake.scheduler.offer_now(job.shard_id, job.id, small) {
        Some(feed)
    } else {
        intake.streams.take(job.id);
        None
    }
}

/// An ARCHIVED segment pushed again (same digest, or one still to come in the
/// trailer) whose archive is missing or fails verification: the push repairs
/// it instead of answering `deduplicated`.
async fn needs_repair(intake: &Arc<Intake>, job: &Job, pushed: Option<Digest>) -> bool {
    if job.state != JobState::Archived
        || job.expired_unix_ms.is_some()
        || pushed.is_some_and(|sha| job.sha256 != Some(sha))
    {
        return false;
    }
    let (store, job) = (intake.store.clone(), job.clone());
    let intact = blocking(move || {
        let mut reader = open_job_archive(store.as_ref(), &job)?;
        reader.copy_to(&mut std::io::sink())?;
        Ok(())
    })
    .await;
    if let Err(e) = &intact {
        tracing::warn!(error = %e, "a push of an archived segment finds its archive damaged: repairing it");
    }
    intact.is_err()
}

/// A spool file for a job that has none (a repair).
async fn spool_file(intake: &Arc<Intake>, id: JobId) -> Result<File, EngineError> {
    let spool = intake.spool.clone();
    blocking(move || Ok(spool.create(id)?)).await
}

/// Validates the header; returns the zstd level to use.
fn check_request(config: &Config, request: &SegmentRequest) -> Result<i32, EngineError> {
    if request.log_id > i64::MAX as u64 {
        return Err(EngineError::Invalid(format!(
            "log_id {} is out of range (at most 2^63-1)",
            request.log_id
        )));
    }
    let level = request.zstd_level.unwrap_or(config.compression_level);
    let levels = zstd::zstd_safe::min_c_level()..=config.max_zstd_level;
    if !levels.contains(&level) {
        return Err(EngineError::Invalid(format!(
            "zstd level {level} is out of range ({}..={}, max_zstd_level)",
            levels.start(),
            levels.end()
        )));
    }
    if let Some(size) = request.size
        && size > config.max_segment_size
    {
        return Err(too_large(size, config.max_segment_size));
    }
    Ok(level)
}

/// Records the job RECEIVING and creates its spool file.
async fn record(
    intake: &Arc<Intake>,
    request: &SegmentRequest,
    level: i32,
) -> Result<Recorded, EngineError> {
    let intake = intake.clone();
    let request = request.clone();
    blocking(move || {
        // Insert and register under one lock, so no one sees this RECEIVING
        // row without its live upload (see the staleness check below).
        let mut receiving = intake.receiving.lock();
        let job = match intake.db.insert_receiving(&request, level)? {
            InsertOutcome::New(job) => job,
            InsertOutcome::Existing(existing)
                if existing.state == JobState::Receiving
                    && !receiving.contains_key(&existing.id) =>
            {
                // Its upload ended but recording that failed (a full disk,
                // say): fail it now so the segment can be pushed again.
                let reason = "interrupted: the upload ended but its failure could not be recorded";
                let failed = intake.db.fail(
                    existing.id,
                    &[JobState::Receiving],
                    FailureKind::Interrupted,
                    reason,
                )?;
                // Those watching or cancelling it learn that it ended.
                if let Some(failed) = failed {
                    intake.events.emit(&failed);
                }
                return Ok(Recorded::StaleCleared);
            }
            InsertOutcome::Existing(existing) => return Ok(Recorded::Existing(existing)),
        };
        match intake.spool.create(job.id) {
            Ok(file) => {
                let cancel = CancellationToken::new();
                receiving.insert(job.id, cancel.clone());
                Ok(Recorded::New(job, file, cancel))
            }
            Err(e) => {
                let err = EngineError::from(e);
                intake.db.fail(
                    job.id,
                    &[JobState::Receiving],
                    err.failure_kind(),
                    &err.to_string(),
                )?;
                Err(err)
            }
        }
    })
    .await
}

fn known_or_conflict(existing: Job, pushed: Digest) -> Result<Accepted, EngineError> {
    match existing.sha256 {
        _ if existing.state == JobState::Receiving => Err(busy(&existing)),
        Some(sha) if sha == pushed => Ok(Accepted {
            job: existing,
            deduplicated: true,
        }),
        Some(sha) => Err(EngineError::Conflict {
            shard_id: existing.shard_id,
            log_id: existing.log_id,
            existing: sha,
            pushed,
        }),
        None => Err(busy(&existing)),
    }
}

fn busy(existing: &Job) -> EngineError {
    EngineError::Busy {
        shard_id: existing.shard_id,
        log_id: existing.log_id,
        job_id: existing.id,
    }
}

fn too_large(size: u64, limit: u64) -> EngineError {
    EngineError::Invalid(format!(
        "segment of {size} bytes exceeds max_segment_size ({limit} bytes)"
    ))
}
