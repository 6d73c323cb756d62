//! Jobs as callers see them: read one, list them, a shard's counters and
//! watermark, follow a job's states, cancel it.

use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio::sync::{broadcast, mpsc};

use super::events::Events;
use super::ingest::Receiving;
use super::{EngineError, blocking, detached};
use crate::queue::{Interrupt, Scheduler};
use crate::store::{JobDb, Spool};
use crate::types::{Job, JobFilter, JobId, JobState, ShardId, ShardStatus};

/// How often a cancel of a running job asks its worker again while waiting.
const CANCEL_POLL: Duration = Duration::from_millis(200);

#[derive(Clone)]
pub(super) struct Jobs {
    /// A watcher that reads nothing for this long is dropped.
    pub idle: Duration,
    pub db: Arc<JobDb>,
    pub spool: Arc<Spool>,
    pub scheduler: Arc<Scheduler>,
    pub events: Events,
    pub receiving: Arc<Receiving>,
}

impl Jobs {
    pub async fn get(&self, id: JobId) -> Result<Job, EngineError> {
        let db = self.db.clone();
        blocking(move || db.get(id)?.ok_or(EngineError::JobNotFound(id))).await
    }

    pub async fn list(&self, filter: JobFilter) -> Result<Vec<Job>, EngineError> {
        let db = self.db.clone();
        blocking(move || Ok(db.list(&filter)?)).await
    }

    pub async fn shard(&self, shard_id: ShardId) -> Result<ShardStatus, EngineError> {
        let db = self.db.clone();
        blocking(move || {
            db.shard_status(shard_id)?
                .ok_or(EngineError::ShardNotFound(shard_id))
        })
        .await
    }

    pub fn watch(
        &self,
        id: JobId,
    ) -> impl Stream<Item = Result<Job, EngineError>> + Send + 'static {
        let events = self.events.subscribe();
        let jobs = self.clone();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            if let Err(e) = jobs.forward_states(id, events, &tx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }

    async fn forward_states(
        &self,
        id: JobId,
        mut events: broadcast::Receiver<Job>,
        tx: &mpsc::Sender<Result<Job, EngineError>>,
    ) -> Result<(), EngineError> {
        let mut last = self.get(id).await?;
        if !self.send(tx, Ok(last.clone())).await {
            return Ok(());
        }
        while !last.state.is_terminal() {
            let next = tokio::select! {
                event = events.recv() => match event {
                    Ok(job) if job.id == id => job,
                    Ok(_) => continue,
                    // Missed events: the database has the truth.
                    Err(broadcast::error::RecvError::Lagged(_)) => self.get(id).await?,
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                },
                () = tx.closed() => return Ok(()),
            };
            if next.state != last.state {
                if !self.send(tx, Ok(next.clone())).await {
                    return Ok(());
                }
                last = next;
            }
        }
        Ok(())
    }

    /// `false` when the watcher went away or read nothing for `idle`.
    async fn send(
        &self,
        tx: &mpsc::Sender<Result<Job, EngineError>>,
        item: Result<Job, EngineError>,
    ) -> bool {
        matches!(
            tokio::time::timeout(self.idle, tx.send(item)).await,
            Ok(Ok(()))
        )
    }

    pub async fn wait_terminal(&self, id: JobId) -> Result<Job, EngineError> {
        let mut events = self.events.subscribe();
        let mut job = self.get(id).await?;
        while !job.state.is_terminal() {
            match events.recv().await {
                Ok(event) if event.id == id => job = event,
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => job = self.get(id).await?,
                Err(broadcast::error::RecvError::Closed) => return Err(EngineError::ShuttingDown),
            }
        }
        Ok(job)
    }

    pub async fn cancel(&self, id: JobId) -> Result<Job, EngineError> {
        let job = self.get(id).await?;
        match job.state {
            JobState::Receiving => {
                self.receiving.cancel(id);
                self.wait_terminal(id).await
            }
            // Off its queue now: the rest (row, spool, the event a push
            // waiting for ARCHIVED wakes on) completes if the caller goes away.
            JobState::Queued if self.scheduler.remove_queued(job.shard_id, id) => {
                let jobs = self.clone();
                detached(async move { jobs.cancel_queued(id).await }).await
            }
            // Queued but already taken by a worker, or compressing: the worker
            // owns the job's state, so ask it and wait for what it records.
            JobState::Queued | JobState::Compressing => self.cancel_running(id).await,
            state => Err(EngineError::NotCancellable { id, state }),
        }
    }

    /// A job taken off its queue before any worker saw it.
    async fn cancel_queued(&self, id: JobId) -> Result<Job, EngineError> {
        let (db, spool) = (self.db.clone(), self.spool.clone());
        let (cancelled, spool_removed) = blocking(move || {
            let job = db.transition(
                id,
                &[JobState::Queued],
                JobState::Cancelled,
                "cancelled by request",
            )?;
            Ok((job, spool.remove(id)))
        })
        .await?;
        // The event goes out whatever became of the spool file: a push
        // waiting for ARCHIVED must learn that the job is over.
        if let Some(job) = &cancelled {
            self.events.emit(job);
        }
        spool_removed?;
        match cancelled {
            Some(job) => Ok(job),
            None => self.get(id).await,
        }
    }

    async fn cancel_running(&self, id: JobId) -> Result<Job, EngineError> {
        let mut events = self.events.subscribe();
        if self.scheduler.interrupt(id, Interrupt::Cancel) {
            loop {
                let job = self.get(id).await?;
                if job.state.is_terminal() {
                    return Ok(job);
                }
                let _ = tokio::time::timeout(CANCEL_POLL, events.recv()).await;
                self.scheduler.interrupt(id, Interrupt::Cancel);
            }
        }
        let job = self.get(id).await?;
        if job.state.is_terminal() {
            Ok(job)
        } else {
            Err(EngineError::NotCancellable {
                id,
                state: job.state,
            })
        }
    }
}
