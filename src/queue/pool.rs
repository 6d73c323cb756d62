//! The compression workers: plain OS threads, so compression never runs on
//! the async runtime and their number bounds CPU and memory exactly (tokio's
//! blocking pool is effectively unbounded).

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::scheduler::{Scheduler, Task};

pub struct WorkerPool {
    handles: Mutex<Vec<JoinHandle<()>>>,
}

impl WorkerPool {
    /// Starts `workers` threads at CPU priority `nice`, each taking tasks from
    /// `scheduler` and running `handler` on them until the scheduler closes.
    pub fn start(
        workers: usize,
        nice: i32,
        scheduler: Arc<Scheduler>,
        handler: Arc<dyn Fn(&Task) + Send + Sync>,
    ) -> std::io::Result<WorkerPool> {
        let mut handles = Vec::with_capacity(workers);
        for n in 0..workers {
            let scheduler = scheduler.clone();
            let handler = handler.clone();
            let handle = std::thread::Builder::new()
                .name(format!("archive-worker-{n}"))
                .spawn(move || {
                    lower_priority(nice);
                    while let Some(task) = scheduler.next() {
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
