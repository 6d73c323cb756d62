//! Job state changes, broadcast to whoever waits or watches. A receiver that
//! falls behind is told it lagged and re-reads the job from the database,
//! which always has the truth; so the buffer bounds memory, not correctness.

use tokio::sync::broadcast;

use crate::types::Job;

const EVENT_BUFFER: usize = 4096;

#[derive(Clone)]
pub(super) struct Events(broadcast::Sender<Job>);

impl Events {
    pub fn new() -> Events {
        Events(broadcast::channel(EVENT_BUFFER).0)
    }

    pub fn emit(&self, job: &Job) {
        tracing::debug!(job_id = job.id.0, shard_id = job.shard_id, log_id = job.log_id, state = %job.state, "job state");
        let _ = self.0.send(job.clone());
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Job> {
        self.0.subscribe()
    }
}
