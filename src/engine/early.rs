//! A job started while its segment still arrives (see `pipeline`): the worker
//! follows the spool as the upload writes it; its archive counts only once the
//! upload handed over what it verified, and anything short of that gives the
//! job back to the ordinary path.

use std::time::{Duration, Instant};

use super::EngineError;
use super::compress::Compressor;
use super::encode::{self, Source, Stop, Written};
use super::pipeline::{Cut, Feed, FollowedSpool, GiveUp};
use crate::error::IoError;
use crate::queue::{Interrupt, Task};
use crate::types::{JobId, JobState, Received};

/// What the job is once the upload handed it over: QUEUED, or COMPRESSING
/// once the worker recorded it so.
const OURS: [JobState; 2] = [JobState::Queued, JobState::Compressing];

impl Compressor {
    pub(super) fn run_early(&self, task: &Task) {
        let id = task.job_id;
        let Some(feed) = self.streams.take(id) else {
            // The upload registers its feed before it offers the job, so this
            // is a bug; the upload still queues the job when it completes.
            tracing::error!("a job started early has no feed");
            return;
        };
        tracing::Span::current().record("log_id", feed.target.key.log_id);
        let started = Instant::now();
        feed.hold();
        let outcome = self.follow(&feed, task);
        feed.release();
        let stop = match outcome {
            Ok(written) => {
                // The upload committed QUEUED before it handed over its proof.
                return match self.db.transition(id, &OURS, JobState::Compressing, "") {
                    Ok(Some(_)) => self.settle(task, Ok(written), started),
                    Ok(None) => tracing::warn!("job changed state before its archive was recorded"),
                    Err(e) => self.put_off_unrecorded(task, &e.into()),
                };
            }
            Err(stop) => stop,
        };
        match &stop {
            Stop::Failed(e) => tracing::info!(error = %e, "head start given up"),
            Stop::Interrupted(why) => tracing::info!(?why, "job interrupted during its head start"),
            Stop::Abandoned | Stop::Declined => {}
        }
        if feed.give_up() == GiveUp::LeaveToUpload {
            return;
        }
        // The upload completed and left the job to this worker.
        if matches!(stop, Stop::Interrupted(Interrupt::Cancel)) {
            return match self.db.transition(id, &OURS, JobState::Compressing, "") {
                Ok(_) => self.settle(task, Err(stop), started),
                Err(e) => self.put_off_unrecorded(task, &e.into()),
            };
        }
        // Anything else: the ordinary path does the job from its spool.
        match self.db.transition(id, &OURS, JobState::Queued, "") {
            Ok(_) => self
                .scheduler
                .enqueue_after(task.shard_id, id, task.small, Duration::ZERO),
            Err(e) => self.put_off_unrecorded(task, &e.into()),
        }
    }

    /// The upload proved its bytes and committed QUEUED: the job shows as
    /// COMPRESSING, which it is.
    fn mark_compressing(&self, id: JobId) {
        match self
            .db
            .transition(id, &[JobState::Queued], JobState::Compressing, "")
        {
            Ok(Some(job)) => self.events.emit(&job),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot record the job COMPRESSING"),
        }
    }

    fn follow(&self, feed: &Feed, task: &Task) -> Result<Written, Stop> {
        let file = self
            .spool
            .open_file(task.job_id)
            .map_err(EngineError::from)?;
        let others_wait = || self.scheduler.has_waiting();
        let mut source = Following {
            spool: FollowedSpool {
                file,
                feed,
                stop: &task.stop,
                others_wait: &others_wait,
                on_complete: &|| self.mark_compressing(task.job_id),
                read: 0,
                seen_complete: false,
            },
            proof: None,
        };
        encode::encode(
            &self.config,
            self.store.as_ref(),
            &feed.target,
            &mut source,
            task,
        )
    }
}

/// The growing spool as a source, ending with the upload's proof.
struct Following<'a> {
    spool: FollowedSpool<'a>,
    proof: Option<Received>,
}

impl Source for Following<'_> {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Stop> {
        match self.spool.next(buf) {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(proof)) => {
                self.proof = Some(proof);
                Ok(0)
            }
            Err(Cut::Abandoned) => Err(Stop::Abandoned),
            Err(Cut::Yield) => Err(Stop::Declined),
            Err(Cut::Interrupted(why)) => Err(Stop::Interrupted(why)),
            Err(Cut::Io(e)) => Err(EngineError::from(IoError::new("reading spool file", e)).into()),
        }
    }

    fn proof(&self) -> Result<Received, Stop> {
        self.proof
            .ok_or_else(|| EngineError::Internal("the upload ended without a proof".into()).into())
    }
}
