//! Watches running jobs: one that made no progress for `stall_timeout` (a
//! hung disk or mount) is reported — log, metric, the job's reason — and
//! flagged, so that when its worker comes back the job is put off and tried
//! again instead of finishing on a write that may have been lost.

use std::sync::Arc;
use std::time::Duration;

use super::events::Events;
use crate::queue::{Interrupt, Scheduler};
use crate::store::JobDb;
use crate::telemetry;
use crate::types::JobState;

pub(super) fn spawn(
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
