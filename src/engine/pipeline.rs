//! Compressing a segment while it still arrives. When a push begins and a
//! worker is idle with nothing queued, the worker starts at once and follows
//! the spool as the upload writes it, so the archive is done shortly after
//! the last byte arrives instead of a whole receive-time later.
//!
//! It is only ever a head start. The upload still verifies size and SHA-256,
//! fsyncs the spool and commits QUEUED before it answers; the worker writes
//! nothing ARCHIVED until the upload handed it that proof. If either side
//! fails — the upload is cut or refused, the worker hits an error, a cancel —
//! the worker gives up and the job takes the ordinary path from its spool.
//! `Feed` is where the two sides meet, under one lock, so exactly one of them
//! puts a job given up after its upload completed back on the queue.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::encode::Target;
use crate::queue::{Interrupt, StopFlag};
use crate::types::{JobId, Received};

/// How often a waiting worker looks at its stop flag.
const STOP_POLL: Duration = Duration::from_millis(100);

/// How long a worker waits on a silent upload while queued jobs wait on it
/// before it gives up its head start to them.
const YIELD_AFTER: Duration = Duration::from_secs(1);

/// How long a failed upload waits for its worker to drop what it wrote: on
/// a full disk, that space is what lets the failure be recorded.
const RELEASE_WAIT: Duration = Duration::from_secs(10);

pub(super) struct Feed {
    /// The archive to write, as the upload's header describes it.
    pub target: Target,
    state: Mutex<FeedState>,
    changed: Condvar,
}

#[derive(Default)]
struct FeedState {
    /// Bytes the upload has written to the spool (readable from it).
    written: u64,
    end: Option<End>,
    worker_gave_up: bool,
    /// A worker took the job and has not yet let go of its archive.
    worker_holds: bool,
}

#[derive(Clone, Copy)]
enum End {
    /// Verified and committed QUEUED.
    Complete(Received),
    /// The upload failed or was cancelled: nothing to archive.
    Abandoned,
}

/// What the upload does with a job once it is QUEUED.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Handoff {
    /// The worker carries on: it records ARCHIVED (or puts the job back).
    Pipelined,
    /// The worker gave up: queue the job as usual.
    Enqueue,
}

/// What a worker that gives up must do.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum GiveUp {
    /// Nothing: the upload will queue the job (or fail it).
    LeaveToUpload,
    /// The upload already handed the job over: put it back on the queue.
    Requeue,
}

impl Feed {
    fn new(target: Target) -> Feed {
        Feed {
            target,
            state: Mutex::default(),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, FeedState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Upload: `total` bytes are in the spool.
    pub fn wrote(&self, total: u64) {
        self.lock().written = total;
        self.changed.notify_all();
    }

    /// Upload: the segment is verified and QUEUED.
    pub fn complete(&self, proof: Received) -> Handoff {
        let mut state = self.lock();
        state.end = Some(End::Complete(proof));
        self.changed.notify_all();
        if state.worker_gave_up {
            Handoff::Enqueue
        } else {
            Handoff::Pipelined
        }
    }

    /// Upload: it failed or was cancelled. Waits (on a blocking thread, a
    /// bounded while) until the worker has dropped its unfinished archive.
    pub fn abandon(&self) {
        let mut state = self.lock();
        state.end = Some(End::Abandoned);
        self.changed.notify_all();
        let deadline = Instant::now() + RELEASE_WAIT;
        while state.worker_holds {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!("the worker compressing a failed upload has not stopped yet");
                return;
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Worker: it took the job.
    pub fn hold(&self) {
        self.lock().worker_holds = true;
    }

    /// Worker: its archive, committed or not, is out of its hands.
    pub fn release(&self) {
        self.lock().worker_holds = false;
        self.changed.notify_all();
    }

    /// Worker: it stops following the upload.
    pub fn give_up(&self) -> GiveUp {
        let mut state = self.lock();
        state.worker_gave_up = true;
        match state.end {
            Some(End::Complete(_)) => GiveUp::Requeue,
            _ => GiveUp::LeaveToUpload,
        }
    }
}

/// The jobs being compressed while they arrive, so an upload and its worker
/// find the same `Feed`.
#[derive(Default)]
pub(super) struct Streams(Mutex<HashMap<JobId, Arc<Feed>>>);

impl Streams {
    fn lock(&self) -> MutexGuard<'_, HashMap<JobId, Arc<Feed>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Upload: registers a feed for its job before offering it to a worker.
    pub fn open(&self, id: JobId, target: Target) -> Arc<Feed> {
        let feed = Arc::new(Feed::new(target));
        self.lock().insert(id, feed.clone());
        feed
    }

    /// Worker (or the upload, when no worker took the offer): the feed is
    /// no longer to be found.
    pub fn take(&self, id: JobId) -> Option<Arc<Feed>> {
        self.lock().remove(&id)
    }
}

/// Why following the spool stopped short of a verified end.
pub(super) enum Cut {
    /// The upload failed: the job is not ours to finish.
    Abandoned,
    /// Cancel, shutdown, stall: give up, the ordinary path takes over.
    Interrupted(Interrupt),
    /// The upload went quiet while queued jobs wait for a worker.
    Yield,
    Io(std::io::Error),
}

/// The spool of an upload in progress, read as it grows.
pub(super) struct FollowedSpool<'a> {
    pub file: File,
    pub feed: &'a Feed,
    pub stop: &'a StopFlag,
    /// Whether queued jobs wait for a worker.
    pub others_wait: &'a dyn Fn() -> bool,
    /// Called once, as soon as the upload is seen complete.
    pub on_complete: &'a dyn Fn(),
    pub read: u64,
    pub seen_complete: bool,
}

impl FollowedSpool<'_> {
    /// Fills `buf` from what the upload has written; `Ok(None)` once every
    /// byte is read and the upload proved them — with that proof.
    pub fn next(&mut self, buf: &mut [u8]) -> Result<Result<usize, Received>, Cut> {
        let waiting_since = Instant::now();
        loop {
            if let Some(why) = self.stop.get() {
                return Err(Cut::Interrupted(why));
            }
            let (written, end) = {
                let state = self.feed.lock();
                (state.written, state.end)
            };
            if matches!(end, Some(End::Complete(_))) && !self.seen_complete {
                self.seen_complete = true;
                (self.on_complete)();
            }
            if written > self.read {
                let want = ((written - self.read) as usize).min(buf.len());
                let n = self.file.read(&mut buf[..want]).map_err(Cut::Io)?;
                if n == 0 {
                    return Err(Cut::Io(std::io::Error::other(
                        "the spool is shorter than written",
                    )));
                }
                self.read += n as u64;
                return Ok(Ok(n));
            }
            match end {
                Some(End::Complete(proof)) => return Ok(Err(proof)),
                Some(End::Abandoned) => return Err(Cut::Abandoned),
                None => {
                    // Waiting on the client is not a stall of ours: the
                    // upload has its own idle timeout.
                    self.stop.progressed();
                    if waiting_since.elapsed() >= YIELD_AFTER && (self.others_wait)() {
                        return Err(Cut::Yield);
                    }
                    let state = self.feed.lock();
                    if state.written == self.read && state.end.is_none() {
                        let _ = self
                            .feed
                            .changed
                            .wait_timeout(state, STOP_POLL)
                            .unwrap_or_else(|p| p.into_inner());
                    }
                }
            }
        }
    }
}
