//! What a worker does with a job: stream its spool through the JSON-lines
//! check (for JSON_LINES) and the zstd encoder into the archive store, commit
//! the archive, then record ARCHIVED — or what stopped it. A job started while
//! its segment still arrives is in `early`.

use std::sync::Arc;
use std::time::Duration;

use super::EngineError;
use super::crash_point::{self, CrashPoint};
use super::encode::{self, SpoolFile, Stop, Target, Written};
use super::events::Events;
use super::pipeline::Streams;
use crate::config::Config;
use crate::queue::{Interrupt, Scheduler, Task};
use crate::store::{ArchiveStore, JobDb, Spool};
use crate::telemetry;
use crate::types::{Job, JobId, JobState, Received};

pub(super) struct Compressor {
    pub config: Arc<Config>,
    pub scheduler: Arc<Scheduler>,
    pub db: Arc<JobDb>,
    pub spool: Arc<Spool>,
    pub store: Arc<dyn ArchiveStore>,
    pub events: Events,
    pub streams: Arc<Streams>,
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
        if task.early {
            return self.run_early(task);
        }
        // COMPRESSING too: a job whose last outcome could not be recorded
        // (the disk full) comes back still marked COMPRESSING.
        let from = [JobState::Queued, JobState::Compressing];
        let job = match self
            .db
            .transition(task.job_id, &from, JobState::Compressing, "")
        {
            Ok(Some(job)) => job,
            Ok(None) => return,
            Err(e) => return self.put_off_unrecorded(task, &e.into()),
        };
        span.record("log_id", job.log_id);
        self.events.emit(&job);
        let started = std::time::Instant::now();
        let outcome = self.compress(&job, task);
        self.settle(task, outcome, started);
    }

    /// Records how a COMPRESSING job's run ended, and what follows: its
    /// spool removed, or the job put off and tried again.
    pub(super) fn settle(
        &self,
        task: &Task,
        outcome: Result<Written, Stop>,
        started: std::time::Instant,
    ) {
        let id = task.job_id;
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
            // Neither comes from a spool that was complete when the run began.
            Err(Stop::Interrupted(Interrupt::Shutdown) | Stop::Abandoned | Stop::Declined) => self
                .db
                .transition(id, &[JobState::Compressing], JobState::Queued, ""),
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
                        if job.state == JobState::Archived {
                            crash_point::reached(CrashPoint::Archived);
                        }
                        self.remove_spool(id)
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

    fn remove_spool(&self, id: JobId) {
        if let Err(e) = self.spool.remove(id) {
            tracing::warn!(error = %e, "spool file left behind; it is removed at the next start");
        }
    }

    /// The jobs database could not record the job's state (a full disk):
    /// try the job again later rather than leave it stuck until a restart.
    pub(super) fn put_off_unrecorded(&self, task: &Task, e: &EngineError) {
        if e.passes() {
            tracing::warn!(error = %e, "cannot record the job's state; trying it again later");
            self.schedule_retry(task, 1);
        } else {
            tracing::error!(error = %e, "cannot record the job's state; it is resumed at the next start");
        }
    }

    pub(super) fn schedule_retry(&self, task: &Task, attempts: u32) {
        let delay = retry_delay(attempts, Duration::from_secs(self.config.retry_max_backoff));
        metrics::counter!(telemetry::JOB_RETRIES).increment(1);
        tracing::info!(attempts, delay_ms = delay.as_millis() as u64, "job put off");
        self.scheduler
            .enqueue_after(task.shard_id, task.job_id, task.small, delay);
    }

    /// Compresses the spool into a committed archive.
    fn compress(&self, job: &Job, task: &Task) -> Result<Written, Stop> {
        let (Some(size), Some(sha256), Some(content_xxh3)) =
            (job.size, job.sha256, job.content_xxh3)
        else {
            return Err(EngineError::Internal(
                "queued job without size, digest or checksum".into(),
            )
            .into());
        };
        let file = self.spool.open_file(job.id).map_err(EngineError::from)?;
        let mut source = SpoolFile {
            file,
            proof: Received {
                size,
                sha256,
                content_xxh3,
            },
        };
        let target = Target::of(job, Some(size), Some(sha256));
        encode::encode(
            &self.config,
            self.store.as_ref(),
            &target,
            &mut source,
            task,
        )
    }
}

/// Capped exponential backoff with jitter: about 1, 2, 4 … seconds, at most
/// `max`, so jobs put off together do not come back together.
fn retry_delay(attempts: u32, max: Duration) -> Duration {
    let bound = Duration::from_secs(1)
        .saturating_mul(1 << attempts.saturating_sub(1).min(16))
        .min(max);
    bound.mul_f64(0.5 + rand::random::<f64>() / 2.0)
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
        Err(Stop::Abandoned | Stop::Declined) => tracing::info!("job put back on its queue"),
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
