//! Per-shard FIFOs and the round-robin choice of the next job.
//!
//! Shards with queued work sit in a ring; a worker takes the front shard's
//! oldest job and puts the shard back at the end if it has more. One busy shard
//! therefore cannot starve the others, and a lone shard with a long queue still
//! keeps every worker busy. A shard's bound counts jobs being received as well
//! as queued ones, so a push is refused before any byte is written.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::types::{JobId, ShardId};

/// Why a running job should stop early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interrupt {
    Cancel,
    Shutdown,
}

#[derive(Default)]
pub struct StopFlag(AtomicU8);

impl StopFlag {
    pub fn raise(&self, why: Interrupt) {
        let code = match why {
            Interrupt::Cancel => 1,
            Interrupt::Shutdown => 2,
        };
        let _ = self
            .0
            .compare_exchange(0, code, Ordering::SeqCst, Ordering::SeqCst);
    }

    pub fn get(&self) -> Option<Interrupt> {
        match self.0.load(Ordering::SeqCst) {
            1 => Some(Interrupt::Cancel),
            2 => Some(Interrupt::Shutdown),
            _ => None,
        }
    }
}

/// A job handed to a worker.
pub struct Task {
    pub job_id: JobId,
    pub stop: Arc<StopFlag>,
    /// The job is the only work: it may use zstd's own threads.
    pub alone: bool,
}

#[derive(Default)]
struct State {
    queues: HashMap<ShardId, VecDeque<JobId>>,
    ring: VecDeque<ShardId>,
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

    /// Appends a job whose place was reserved.
    pub fn enqueue(&self, shard: ShardId, job: JobId) {
        let mut state = self.lock();
        let queue = state.queues.entry(shard).or_default();
        queue.push_back(job);
        if queue.len() == 1 {
            state.ring.push_back(shard);
        }
        state.queued += 1;
        drop(state);
        self.wake.notify_one();
    }

    /// Blocks until a job is ready; `None` once the scheduler is closed.
    pub fn next(&self) -> Option<Task> {
        let mut state = self.lock();
        loop {
            if state.closed {
                return None;
            }
            if let Some(shard) = state.ring.pop_front() {
                let Some(queue) = state.queues.get_mut(&shard) else {
                    continue;
                };
                let Some(job_id) = queue.pop_front() else {
                    state.queues.remove(&shard);
                    continue;
                };
                if queue.is_empty() {
                    state.queues.remove(&shard);
                } else {
                    state.ring.push_back(shard);
                }
                state.queued -= 1;
                release_locked(&mut state, shard);
                let alone = state.queued == 0 && state.running.is_empty();
                let stop = Arc::new(StopFlag::default());
                state.running.insert(job_id, stop.clone());
                return Some(Task {
                    job_id,
                    stop,
                    alone,
                });
            }
            state = self
                .wake
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    pub fn finished(&self, job: JobId) {
        self.lock().running.remove(&job);
    }

    /// Takes a queued job off its queue; `false` if it was not queued.
    pub fn remove_queued(&self, shard: ShardId, job: JobId) -> bool {
        let mut state = self.lock();
        let Some(queue) = state.queues.get_mut(&shard) else {
            return false;
        };
        let Some(pos) = queue.iter().position(|&j| j == job) else {
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

    pub fn interrupt_all(&self, why: Interrupt) {
        for stop in self.lock().running.values() {
            stop.raise(why);
        }
    }

    pub fn running_count(&self) -> usize {
        self.lock().running.len()
    }

    /// Workers finish their current job and exit; queued jobs stay queued.
    pub fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_all();
    }
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
            sched.enqueue(shard, job);
        }
        let order: Vec<u64> = (0..6).map(|_| sched.next().unwrap().job_id.0).collect();
        assert_eq!(order, vec![10, 20, 30, 11, 21, 12]);
    }

    #[test]
    fn bound_counts_reservations_and_cancel_frees_a_place() {
        let sched = Scheduler::new(2);
        assert!(sched.reserve(1));
        assert!(sched.reserve(1));
        assert!(!sched.reserve(1));
        assert!(sched.reserve(2));
        sched.enqueue(1, JobId(5));
        assert!(sched.remove_queued(1, JobId(5)));
        assert!(!sched.remove_queued(1, JobId(5)));
        assert!(sched.reserve(1));
    }
}
