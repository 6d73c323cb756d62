//! The compression workers: plain OS threads, so compression never runs on
//! the async runtime and their number bounds CPU and memory exactly (tokio's
//! blocking pool is effectively unbounded).

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::scheduler::{Lane, Scheduler, Task};

pub struct WorkerPool {
    handles: Mutex<Vec<JoinHandle<()>>>,
}

impl WorkerPool {
    /// Starts `workers` threads that take any job, plus one that takes only
    /// small jobs when `small_lane` is set, all at CPU priority `nice`, each
    /// running `handler` on the tasks `scheduler` hands out until it closes.
    pub fn start(
        workers: usize,
        small_lane: bool,
        nice: i32,
        scheduler: Arc<Scheduler>,
        handler: Arc<dyn Fn(&Task) + Send + Sync>,
    ) -> std::io::Result<WorkerPool> {
        let lanes = std::iter::repeat_n(Lane::Any, workers)
            .chain(small_lane.then_some(Lane::Small))
            .enumerate();
        let mut handles = Vec::with_capacity(workers + 1);
        for (n, lane) in lanes {
            let scheduler = scheduler.clone();
            let handler = handler.clone();
            let name = match lane {
                Lane::Any => format!("archive-worker-{n}"),
                Lane::Small => "archive-worker-small".to_owned(),
            };
            let handle = std::thread::Builder::new().name(name).spawn(move || {
                lower_priority(nice);
                while let Some(task) = scheduler.next(lane) {
                    handler(&task);
                    scheduler.finished(task.job_id);
                }
            })?;
            handles.push(handle);
        }
        Ok(WorkerPool {
            handles: Mutex::new(handles),
        })
    }

    /// Waits for every worker to exit (after the scheduler was closed).
    pub fn join(&self) {
        let handles = std::mem::take(&mut *self.handles.lock().unwrap_or_else(|p| p.into_inner()));
        for handle in handles {
            let _ = handle.join();
        }
    }
}

/// Compression is background work: at a lower CPU priority it yields to the
/// threads that receive segments, so acknowledgements stay fast while the
/// workers keep every idle cycle.
fn lower_priority(nice: i32) {
    if nice == 0 {
        return;
    }
    // SAFETY: gettid and setpriority have no memory-safety preconditions; on
    // Linux PRIO_PROCESS with a thread id sets that one thread's nice value.
    let rc = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, nice)
    };
    if rc != 0 {
        tracing::warn!(nice, error = %std::io::Error::last_os_error(), "cannot lower the worker's CPU priority");
    }
}
