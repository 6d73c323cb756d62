//! Per-shard scheduling: the FIFOs and the round-robin choice of the next job
//! (`scheduler`), and the fixed pool of OS threads that runs jobs (`pool`).
//! What running a job means is the engine's business: the pool calls the
//! handler it was given, so nothing here knows about archives or storage.

mod pool;
mod scheduler;

pub use pool::WorkerPool;
pub use scheduler::{Interrupt, Lane, Scheduler, StopFlag, Task};
