//! What a worker does with a job: stream its spool through the JSON-lines
//! check (for JSON_LINES) and the zstd encoder into the archive store, commit
//! the archive, then record ARCHIVED — or what stopped it.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use super::EngineError;
use super::events::Events;
use crate::archive::{
    ArchiveError, ArchiveHeader, ArchiveReader, ArchiveWriter, FORMAT_VERSION, JsonLinesChecker,
};
use crate::config::Config;
use crate::error::IoError;
use crate::queue::{Interrupt, Scheduler, Task};
use crate::store::{ArchiveKey, ArchiveMeta, ArchiveStore, JobDb, Spool, StoreError, WriteMode};
use crate::telemetry;
use crate::types::{ContentKind, Digest, Job, JobState, JsonStats, now_unix_ms};

/// Spool bytes read per step: large enough to amortize syscalls, small enough
/// that a cancel or shutdown is noticed within milliseconds.
const SPOOL_READ_BUFFER: usize = 1 << 20;

/// A committed archive.
struct Written {
    archive_size: u64,
    json: Option<JsonStats>,
}

/// Why a job's compression stopped before its archive was committed.
enum Stop {
    Interrupted(Interrupt),
    Failed(EngineError),
}

impl From<EngineError> for Stop {
    fn from(e: EngineError) -> Self {
        Stop::Failed(e)
    }
}

pub(super) struct Compressor {
    pub config: Arc<Config>,
    pub scheduler: Arc<Scheduler>,
    pub db: Arc<JobDb>,
    pub spool: Arc<Spool>,
    pub store: Arc<dyn ArchiveStore>,
    pub events: Events,
}

impl Compressor {
    /// Runs one job on the calling worker thread.
    pub fn run(&self, task: &Task) {
        let span = tracing::info_span!(
            "job",
            job_id = task.job_id.0,
            shard_id = task.shard_id,
            log_id = tracing::field::Empty
        );
        let _entered = span.enter();
        let id = task.job_id;
        // COMPRESSING too: a job whose last outcome could not be recorded
        // (the disk full) comes back still marked COMPRESSING.
        let from = [JobState::Queued, JobState::Compressing];
        let job = match self.db.transition(id, &from, JobState::Compressing, "") {
            Ok(Some(job)) => job,
            Ok(None) => return,
            Err(e) => return self.put_off_unrecorded(task, &e.into()),
        };
        span.record("log_id", job.log_id);
        self.events.emit(&job);
        let started = std::time::Instant::now();
        let outcome = self.compress(&job, task);
        let put_off = match &outcome {
            Err(Stop::Interrupted(Interrupt::Stall)) => true,
            Err(Stop::Failed(e)) => e.passes(),
            _ => false,
        };
        let recorded = match &outcome {
            Ok(written) => self
                .db
                .mark_archived(id, written.archive_size, written.json),
            Err(Stop::Interrupted(Interrupt::Cancel)) => self.db.transition(
                id,
                &[JobState::Compressing],
                JobState::Cancelled,
                "cancelled by request",
            ),
            Err(Stop::Interrupted(Interrupt::Shutdown)) => {
                self.db
                    .transition(id, &[JobState::Compressing], JobState::Queued, "")
            }
            Err(Stop::Interrupted(Interrupt::Stall)) => self.db.retry_later(
                id,
                &format!(
                    "retrying: stalled, no progress for {} s",
                    self.config.stall_timeout
                ),
            ),
            Err(Stop::Failed(e)) if e.passes() => {
                self.db.retry_later(id, &format!("retrying: {e}"))
            }
            Err(Stop::Failed(e)) => self.db.fail(
                id,
                &[JobState::Compressing],
                e.failure_kind(),
                &e.to_string(),
            ),
        };
        match recorded {
            Ok(Some(job)) => {
                log_outcome(&job, &outcome, started);
                record_metrics(&job, &outcome);
                match job.state {
                    // Put off: the spool stays for the next try.
                    JobState::Queued if put_off => self.schedule_retry(task, job.attempts),
                    JobState::Queued => {}
                    _ => {
                        if let Err(e) = self.spool.remove(id) {
                            tracing::warn!(error = %e, "spool file left behind; it is removed at the next start");
                        }
                    }
                }
                self.events.emit(&job);
            }
            Ok(None) => tracing::warn!("job changed state under its worker"),
            Err(e) => {
                // The archive may be durable while its row is not: the next
                // try (or recovery) finds and checks it.
                self.put_off_unrecorded(task, &e.into());
            }
        }
    }

    /// The jobs database could not record the job's state (a full disk):
    /// try the job again later rather than leave it stuck until a restart.
    fn put_off_unrecorded(&self, task: &Task, e: &EngineError) {
        if e.passes() {
            tracing::warn!(error = %e, "cannot record the job's state; trying it again later");
            self.schedule_retry(task, 1);
        } else {
            tracing::error!(error = %e, "cannot record the job's state; it is resumed at the next start");
        }
    }

    fn schedule_retry(&self, task: &Task, attempts: u32) {
        let delay = retry_delay(attempts, Duration::from_secs(self.config.retry_max_backoff));
        metrics::counter!(telemetry::JOB_RETRIES).increment(1);
        tracing::info!(attempts, delay_ms = delay.as_millis() as u64, "job put off");
        self.scheduler
            .enqueue_after(task.shard_id, task.job_id, task.small, delay);
    }

    /// Compresses the spool into a committed archive.
    fn compress(&self, job: &Job, task: &Task) -> Result<Written, Stop> {
        let (Some(size), Some(sha), Some(content_xxh3)) = (job.size, job.sha256, job.content_xxh3)
        else {
            return Err(EngineError::Internal(
                "queued job without size, digest or checksum".into(),
            )
            .into());
        };
        let mut spool = self.spool.open_file(job.id).map_err(EngineError::from)?;
        let header = ArchiveHeader {
            format_version: FORMAT_VERSION,
            shard_id: job.shard_id,
            log_id: job.log_id,
            content_kind: job.kind,
            original_size: size,
            sha256: sha.to_hex(),
            zstd_level: job.zstd_level,
            created_unix_ms: now_unix_ms(),
        };
        let threshold = self.config.multithread_min_size;
        let zstd_workers = if task.alone && threshold > 0 && size >= threshold {
            self.config.workers() as u32
        } else {
            0
        };
        let key = ArchiveKey {
            shard_id: job.shard_id,
            log_id: job.log_id,
        };
        let mode = match standing(self.store.as_ref(), key, sha)? {
            Standing::Absent => WriteMode::Create,
            Standing::Ours | Standing::Unreadable => WriteMode::Replace,
        };
        let meta = ArchiveMeta {
            key,
            size,
            sha256: sha,
        };
        let pending = self
            .store
            .create(key, Some(&meta), mode)
            .map_err(EngineError::from)?;
        let mut writer = ArchiveWriter::new(pending, header, content_xxh3, zstd_workers)
            .map_err(EngineError::from)?;
        let mut checker = (job.kind == ContentKind::JsonLines)
            .then(|| JsonLinesChecker::new(self.config.max_json_line_size));
        let mut buf = vec![0u8; SPOOL_READ_BUFFER];
        loop {
            if let Some(why) = task.stop.get() {
                return Err(Stop::Interrupted(why));
            }
            let n = match spool.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(EngineError::from(IoError::new("reading spool file", e)).into());
                }
            };
            if n == 0 {
                break;
            }
            if let Some(checker) = &mut checker {
                checker.feed(&buf[..n]).map_err(EngineError::from)?;
            }
            writer.write_all(&buf[..n]).map_err(spool_damaged)?;
            task.stop.progressed();
        }
        let json = checker
            .map(JsonLinesChecker::finish)
            .transpose()
            .map_err(EngineError::from)?;
        let written = writer.finish(json).map_err(spool_damaged)?;
        if let Some(why) = task.stop.get() {
            return Err(Stop::Interrupted(why));
        }
        let meta = ArchiveMeta {
            key,
            size,
            sha256: sha,
        };
        match written.sink.commit(&meta) {
            // A create-only write lost a race: fine if the winner holds the same bytes.
            Ok(()) | Err(StoreError::Exists { .. }) => {}
            Err(e) => return Err(EngineError::from(e).into()),
        }
        // Whoever wrote last under this key must have written this segment.
        standing(self.store.as_ref(), key, sha)?;
        Ok(Written {
            archive_size: written.archive_size,
            json,
        })
    }
}

/// Watches running jobs: one that made no progress for `stall_timeout` (a
/// hung disk or mount) is reported — log, metric, the job's reason — and
/// flagged, so that when its worker comes back the job is put off and tried
/// again instead of finishing on a write that may have been lost.
pub(super) fn spawn_watchdog(
    scheduler: Arc<Scheduler>,
    db: Arc<JobDb>,
    events: Events,
    stall_timeout: Duration,
) -> std::io::Result<()> {
    let every = (stall_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
    std::thread::Builder::new()
        .name("stall-watchdog".into())
        .spawn(move || {
            while !scheduler.is_closed() {
                for (id, stop) in scheduler.stalled(stall_timeout) {
                    stop.raise(Interrupt::Stall);
                    metrics::counter!(telemetry::JOB_STALLS).increment(1);
                    let reason = format!(
                        "stalled: no progress for {} s; it is tried again when its worker returns",
                        stall_timeout.as_secs()
                    );
                    tracing::warn!(job_id = id.0, "{reason}");
                    match db.note(id, JobState::Compressing, &reason) {
                        Ok(Some(job)) => events.emit(&job),
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(job_id = id.0, error = %e, "cannot record the stall")
                        }
                    }
                }
                std::thread::sleep(every);
            }
        })?;
    Ok(())
}

/// Capped exponential backoff with jitter: about 1, 2, 4 … seconds, at most
/// `max`, so jobs put off together do not come back together.
fn retry_delay(attempts: u32, max: Duration) -> Duration {
    let bound = Duration::from_secs(1)
        .saturating_mul(1 << attempts.saturating_sub(1).min(16))
        .min(max);
    bound.mul_f64(0.5 + rand::random::<f64>() / 2.0)
}

/// What stands under a key before this segment's archive is written there.
enum Standing {
    Absent,
    /// An archive of this very segment (a retried write, a damaged archive
    /// being repaired): it may be replaced.
    Ours,
    /// Something too damaged to say whose it is: it may be replaced.
    Unreadable,
}

/// Refuses to write over, or accept, an archive of other bytes under `key`
/// (another replica claiming the shard, a planted object); says what stands
/// there otherwise. The segment's SHA-256 comes from the store's metadata
/// if it keeps it, else from the archive's header frame.
fn standing(
    store: &dyn ArchiveStore,
    key: ArchiveKey,
    ours: Digest,
) -> Result<Standing, EngineError> {
    let Some(info) = store.stat(key)? else {
        return Ok(Standing::Absent);
    };
    let existing = match info.sha256 {
        Some(sha) => Some(sha),
        None => store
            .open(key)?
            .and_then(|input| ArchiveReader::open(input).ok())
            .and_then(|reader| reader.header().digest().ok()),
    };
    match existing {
        Some(existing) if existing != ours => Err(EngineError::Conflict {
            shard_id: key.shard_id,
            log_id: key.log_id,
            existing,
            pushed: ours,
        }),
        Some(_) => Ok(Standing::Ours),
        None => Ok(Standing::Unreadable),
    }
}

/// A spool that no longer matches what was received and verified was
/// damaged after the acknowledgement (a crash before it was durable, or the disk).
fn spool_damaged(e: ArchiveError) -> Stop {
    let e = match e {
        e @ (ArchiveError::ContentMismatch { .. } | ArchiveError::SizeMismatch { .. }) => {
            EngineError::SpoolDamaged(e)
        }
        other => EngineError::Archive(other),
    };
    Stop::Failed(e)
}

fn log_outcome(job: &Job, outcome: &Result<Written, Stop>, started: std::time::Instant) {
    match outcome {
        Ok(Written { archive_size, .. }) => tracing::info!(
            shard_id = job.shard_id,
            log_id = job.log_id,
            size = job.size.unwrap_or(0),
            archive_size,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "archived"
        ),
        Err(Stop::Failed(e)) if job.state == JobState::Queued => {
            tracing::warn!(shard_id = job.shard_id, log_id = job.log_id, attempts = job.attempts, error = %e, "job put off")
        }
        Err(Stop::Failed(e)) => {
            tracing::warn!(shard_id = job.shard_id, log_id = job.log_id, error = %e, "job failed")
        }
        Err(Stop::Interrupted(why)) => tracing::info!(?why, "job interrupted"),
    }
}

fn record_metrics(job: &Job, outcome: &Result<Written, Stop>) {
    if let Ok(Written { archive_size, .. }) = outcome {
        metrics::counter!(telemetry::ARCHIVED_BYTES).increment(job.size.unwrap_or(0));
        metrics::counter!(telemetry::ARCHIVE_WRITTEN_BYTES).increment(*archive_size);
        let took = (job.updated_unix_ms - job.created_unix_ms).max(0) as f64 / 1000.0;
        metrics::histogram!(telemetry::JOB_DURATION).record(took);
    }
    if job.state.is_terminal() {
        metrics::counter!(telemetry::JOBS_FINISHED, "state" => job.state.as_str()).increment(1);
    }
}
