//! Per-shard FIFOs and the round-robin choice of the next job.
//!
//! Shards with queued work sit in a ring; a worker takes the front shard's
//! oldest job and puts the shard back at the end if it has more. One busy shard
//! therefore cannot starve the others, and a lone shard with a long queue still
//! keeps every worker busy. A shard's bound counts jobs being received as well
//! as queued ones, so a push is refused before any byte is written.
//!
//! Two refinements. A job put off by a failure that passes waits in `delayed`
//! until its time, then goes back to the head of its shard's queue. And a
//! worker may serve the small lane only: it takes a shard's next job only if
//! that job is small, so small segments keep flowing while every other worker
//! is busy with large or slow ones.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::types::{JobId, ShardId};

/// Why a running job should stop early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interrupt {
    Cancel,
    Shutdown,
    /// It made no progress for `stall_timeout`: try it again later.
    Stall,
}

/// What a running job shares with whoever watches it: a flag to stop it
/// and the time of its last progress.
pub struct StopFlag {
    why: AtomicU8,
    started: Instant,
    /// Milliseconds after `started` of the last progress.
    progressed_ms: AtomicU64,
}

impl Default for StopFlag {
    fn default() -> Self {
        StopFlag {
            why: AtomicU8::new(0),
            started: Instant::now(),
            progressed_ms: AtomicU64::new(0),
        }
    }
}

impl StopFlag {
    /// The first reason raised wins.
    pub fn raise(&self, why: Interrupt) {
        let code = match why {
            Interrupt::Cancel => 1,
            Interrupt::Shutdown => 2,
            Interrupt::Stall => 3,
        };
        let _ = self
            .why
            .compare_exchange(0, code, Ordering::SeqCst, Ordering::SeqCst);
    }

    pub fn get(&self) -> Option<Interrupt> {
        match self.why.load(Ordering::SeqCst) {
            1 => Some(Interrupt::Cancel),
            2 => Some(Interrupt::Shutdown),
            3 => Some(Interrupt::Stall),
            _ => None,
        }
    }

    /// The job moved forward (a chunk compressed, a part uploaded).
    pub fn progressed(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.progressed_ms.store(now, Ordering::Relaxed);
    }

    /// How long since the job last moved forward.
    pub fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.progressed_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }
}

/// Which jobs a worker takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    Any,
    /// Only jobs enqueued as small.
    Small,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Queued {
    job: JobId,
    small: bool,
}

/// A job handed to a worker.
pub struct Task {
    pub job_id: JobId,
    pub shard_id: ShardId,
    /// Enqueued as small: it goes back to the small lane when put off.
    pub small: bool,
    /// Started while its segment still arrives (`offer_now`).
    pub early: bool,
    pub stop: Arc<StopFlag>,
    /// The job is the only work: it may use zstd's own threads.
    pub alone: bool,
}

#[derive(Default)]
struct State {
    queues: HashMap<ShardId, VecDeque<Queued>>,
    ring: VecDeque<ShardId>,
    /// Put-off jobs and when they may run again.
    delayed: Vec<(Instant, ShardId, Queued)>,
    /// Jobs offered to start at once, while their segment arrives.
    now: VecDeque<(ShardId, Queued)>,
    /// Any-lane workers waiting for work.
    idle: usize,
    reserved: HashMap<ShardId, usize>,
    running: HashMap<JobId, Arc<StopFlag>>,
    queued: usize,
    closed: bool,
}

pub struct Scheduler {
    state: Mutex<State>,
    wake: Condvar,
    per_shard_limit: usize,
}

impl Scheduler {
    pub fn new(per_shard_limit: usize) -> Self {
        Scheduler {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            per_shard_limit,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes a place on the shard's queue; `false` when it is full.
    pub fn reserve(&self, shard: ShardId) -> bool {
        let mut state = self.lock();
        let reserved = state.reserved.entry(shard).or_default();
        if *reserved >= self.per_shard_limit {
            return false;
        }
        *reserved += 1;
        true
    }

    /// Like `reserve`, but never refuses: jobs acknowledged before a restart
    /// are queued even if the configured bound shrank meanwhile.
    pub fn reserve_for_recovery(&self, shard: ShardId) {
        *self.lock().reserved.entry(shard).or_default() += 1;
    }

    pub fn release(&self, shard: ShardId) {
        let mut state = self.lock();
        release_locked(&mut state, shard);
    }

    /// Appends a job whose place was reserved. `small` jobs may also be
    /// taken by small-lane workers.
    pub fn enqueue(&self, shard: ShardId, job: JobId, small: bool) {
        let mut state = self.lock();
        push_locked(&mut state, shard, Queued { job, small }, false);
        drop(state);
        self.wake.notify_all();
    }

    /// Puts a job that a worker had taken back on its shard's queue after
    /// `delay`, at the head (it was there before the jobs behind it). It
    /// takes a place on the queue again, over the bound if need be: the job
    /// was acknowledged long ago.
    pub fn enqueue_after(&self, shard: ShardId, job: JobId, small: bool, delay: Duration) {
        let mut state = self.lock();
        *state.reserved.entry(shard).or_default() += 1;
        state
            .delayed
            .push((Instant::now() + delay, shard, Queued { job, small }));
        drop(state);
        self.wake.notify_all();
    }

    /// Starts a job at once, before its segment has fully arrived, if an
    /// any-lane worker is idle and nothing is waiting: a head start that
    /// never delays a queued job. `false` when it was not taken.
    pub fn offer_now(&self, shard: ShardId, job: JobId, small: bool) -> bool {
        let mut state = self.lock();
        let nothing_waits = state.queued == 0 && state.now.len() < state.idle;
        if state.closed || !nothing_waits {
            return false;
        }
        state.now.push_back((shard, Queued { job, small }));
        drop(state);
        self.wake.notify_all();
        true
    }

    /// Blocks until a job this lane may take is ready; `None` once the
    /// scheduler is closed.
    pub fn next(&self, lane: Lane) -> Option<Task> {
        let mut state = self.lock();
        loop {
            if state.closed {
                return None;
            }
            let wait = promote_due(&mut state);
            let early = match lane {
                Lane::Any => state.now.pop_front(),
                Lane::Small => None,
            };
            let taken = match early {
                // Its queue place stays with the upload, which frees it.
                Some(offered) => Some((offered, true)),
                None => take_locked(&mut state, lane).map(|(shard, queued)| {
                    release_locked(&mut state, shard);
                    ((shard, queued), false)
                }),
            };
            if let Some(((shard, queued), early)) = taken {
                let alone = state.queued == 0 && state.running.is_empty();
                let stop = Arc::new(StopFlag::default());
                state.running.insert(queued.job, stop.clone());
                return Some(Task {
                    job_id: queued.job,
                    shard_id: shard,
                    small: queued.small,
                    early,
                    stop,
                    alone,
                });
            }
            if lane == Lane::Any {
                state.idle += 1;
            }
            state = match wait {
                Some(timeout) => {
                    self.wake
                        .wait_timeout(state, timeout)
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .0
                }
                None => self
                    .wake
                    .wait(state)
                    .unwrap_or_else(|poisoned| poisoned.into_inner()),
            };
            if lane == Lane::Any {
                state.idle -= 1;
            }
        }
    }

    /// Whether jobs wait on their queues for a worker.
    pub fn has_waiting(&self) -> bool {
        self.lock().queued > 0
    }

    /// Jobs waiting for their retry time.
    pub fn delayed_count(&self) -> usize {
        self.lock().delayed.len()
    }

    pub fn finished(&self, job: JobId) {
        self.lock().running.remove(&job);
    }

    /// Takes a queued (or put-off) job off its queue; `false` if it was not queued.
    pub fn remove_queued(&self, shard: ShardId, job: JobId) -> bool {
        let mut state = self.lock();
        if let Some(pos) = state.delayed.iter().position(|(_, _, q)| q.job == job) {
            state.delayed.remove(pos);
            release_locked(&mut state, shard);
            return true;
        }
        let Some(queue) = state.queues.get_mut(&shard) else {
            return false;
        };
        let Some(pos) = queue.iter().position(|q| q.job == job) else {
            return false;
        };
        queue.remove(pos);
        if queue.is_empty() {
            state.queues.remove(&shard);
            state.ring.retain(|&s| s != shard);
        }
        state.queued -= 1;
        release_locked(&mut state, shard);
        true
    }

    /// Asks a running job to stop; `false` if it is not running.
    pub fn interrupt(&self, job: JobId, why: Interrupt) -> bool {
        match self.lock().running.get(&job) {
            Some(stop) => {
                stop.raise(why);
                true
            }
            None => false,
        }
    }

    /// Running jobs that made no progress for `limit`, with their flags.
    pub fn stalled(&self, limit: Duration) -> Vec<(JobId, Arc<StopFlag>)> {
        self.lock()
            .running
            .iter()
            .filter(|(_, stop)| stop.idle_for() >= limit && stop.get().is_none())
            .map(|(job, stop)| (*job, stop.clone()))
            .collect()
    }

    pub fn interrupt_all(&self, why: Interrupt) {
        for stop in self.lock().running.values() {
            stop.raise(why);
        }
    }

    pub fn running_count(&self) -> usize {
        self.lock().running.len()
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Workers finish their current job and exit; queued jobs stay queued.
    pub fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_all();
    }
}

fn push_locked(state: &mut State, shard: ShardId, queued: Queued, at_front: bool) {
    let queue = state.queues.entry(shard).or_default();
    if at_front {
        queue.push_front(queued);
    } else {
        queue.push_back(queued);
    }
    if queue.len() == 1 {
        state.ring.push_back(shard);
    }
    state.queued += 1;
}

/// Moves put-off jobs whose time has come back to their queues; how long
/// until the next one is due.
fn promote_due(state: &mut State) -> Option<Duration> {
    let now = Instant::now();
    let mut i = 0;
    while i < state.delayed.len() {
        if state.delayed[i].0 <= now {
            let (_, shard, queued) = state.delayed.swap_remove(i);
            push_locked(state, shard, queued, true);
        } else {
            i += 1;
        }
    }
    state
        .delayed
        .iter()
        .map(|(due, ..)| due.saturating_duration_since(now))
        .min()
}

/// The next job in round-robin order that `lane` may take: a shard's head
/// job, never one behind it, so each shard stays FIFO.
fn take_locked(state: &mut State, lane: Lane) -> Option<(ShardId, Queued)> {
    let position = match lane {
        Lane::Any => (!state.ring.is_empty()).then_some(0),
        Lane::Small => state.ring.iter().position(|shard| {
            state
                .queues
                .get(shard)
                .and_then(|queue| queue.front())
                .is_some_and(|queued| queued.small)
        }),
    }?;
    let shard = state.ring.remove(position)?;
    let queue = state.queues.get_mut(&shard)?;
    let queued = queue.pop_front()?;
    if queue.is_empty() {
        state.queues.remove(&shard);
    } else {
        state.ring.push_back(shard);
    }
    state.queued -= 1;
    Some((shard, queued))
}

fn release_locked(state: &mut State, shard: ShardId) {
    if let Some(reserved) = state.reserved.get_mut(&shard) {
        *reserved = reserved.saturating_sub(1);
        if *reserved == 0 {
            state.reserved.remove(&shard);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_across_shards_fifo_within() {
        let sched = Scheduler::new(10);
        for (shard, job) in
            [(1, 10), (1, 11), (1, 12), (2, 20), (3, 30), (2, 21)].map(|(s, j)| (s, JobId(j)))
        {
            assert!(sched.reserve(shard));
            sched.enqueue(shard, job, true);
        }
        let order: Vec<u64> = (0..6)
            .map(|_| sched.next(Lane::Any).unwrap().job_id.0)
            .collect();
        assert_eq!(order, vec![10, 20, 30, 11, 21, 12]);
    }

    #[test]
    fn bound_counts_reservations_and_cancel_frees_a_place() {
        let sched = Scheduler::new(2);
        assert!(sched.reserve(1));
        assert!(sched.reserve(1));
        assert!(!sched.reserve(1));
        assert!(sched.reserve(2));
        sched.enqueue(1, JobId(5), false);
        assert!(sched.remove_queued(1, JobId(5)));
        assert!(!sched.remove_queued(1, JobId(5)));
        assert!(sched.reserve(1));
    }

    #[test]
    fn a_job_starts_at_once_only_while_a_worker_is_idle_and_nothing_waits() {
        let sched = Arc::new(Scheduler::new(10));
        assert!(!sched.offer_now(1, JobId(1), false), "no worker waits yet");
        let worker = {
            let sched = sched.clone();
            std::thread::spawn(move || sched.next(Lane::Any).map(|t| (t.job_id, t.early)))
        };
        while sched.lock().idle == 0 {
            std::thread::yield_now();
        }
        assert!(sched.offer_now(1, JobId(2), false));
        assert!(
            !sched.offer_now(1, JobId(3), false),
            "one idle worker, one offer"
        );
        assert_eq!(worker.join().unwrap(), Some((JobId(2), true)));
        assert!(sched.reserve(2));
        sched.enqueue(2, JobId(4), true);
        assert!(
            !sched.offer_now(1, JobId(5), false),
            "a queued job waits: no head start"
        );
    }

    #[test]
    fn the_small_lane_takes_only_small_head_jobs() {
        let sched = Scheduler::new(10);
        for (shard, job, small) in [(1, 10, false), (1, 11, true), (2, 20, true)] {
            assert!(sched.reserve(shard));
            sched.enqueue(shard, JobId(job), small);
        }
        // Shard 1's head is large: the small lane skips the shard, not its FIFO order.
        assert_eq!(sched.next(Lane::Small).unwrap().job_id, JobId(20));
        assert_eq!(sched.next(Lane::Any).unwrap().job_id, JobId(10));
        assert_eq!(sched.next(Lane::Small).unwrap().job_id, JobId(11));
    }

    #[test]
    fn a_put_off_job_comes_back_first_after_its_delay_and_can_be_cancelled() {
        let sched = Scheduler::new(10);
        assert!(sched.reserve(1));
        sched.enqueue(1, JobId(2), true);
        sched.enqueue_after(1, JobId(1), true, Duration::from_millis(30));
        sched.enqueue_after(3, JobId(9), true, Duration::from_secs(3600));
        assert_eq!(sched.delayed_count(), 2);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(sched.next(Lane::Any).unwrap().job_id, JobId(1));
        assert_eq!(sched.next(Lane::Any).unwrap().job_id, JobId(2));
        assert!(sched.remove_queued(3, JobId(9)));
        assert_eq!(sched.delayed_count(), 0);
    }
}
