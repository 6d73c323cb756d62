//! The least work any implementation of the service's contract must do beyond
//! the zstd CLI's, timed on the workload's own files in the same run. It
//! turns "the service is slower than the CLI" into "the service is this far
//! above what it cannot avoid": a target below the floor cannot be met on
//! this machine by any implementation of the same contract.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{BenchError, Workload, io};
use crate::archive::JsonLinesChecker;
use crate::types::ContentKind;

/// SHA-256 passes over every byte: the client computes the digest it sends,
/// the server verifies every byte received against it before it acknowledges.
pub(super) const REQUIRED_SHA256_PASSES: f64 = 2.0;
const READ_SIZE: usize = 1 << 20;

/// One-thread CPU seconds over every byte a workload pushes (all shards).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct RequiredWork {
    pub sha256_cpu_secs: f64,
    /// Every byte sent over a loopback TCP connection and received at its
    /// other end (both threads' CPU): the client's bytes reaching the server.
    pub transfer_cpu_secs: f64,
    /// Every byte written to a file, fsynced once per segment: the spool an
    /// acknowledgement promises.
    pub spool_cpu_secs: f64,
    /// The exact check of every JSON line; 0 for raw segments.
    pub json_check_cpu_secs: f64,
    /// Segments pushed, over all shards.
    pub segments: usize,
}

impl RequiredWork {
    /// CPU seconds needed before a segment can be acknowledged, all segments.
    fn before_ack_cpu_secs(&self) -> f64 {
        REQUIRED_SHA256_PASSES * self.sha256_cpu_secs + self.transfer_cpu_secs + self.spool_cpu_secs
    }

    /// CPU seconds the service spends on the workload beyond what the CLI does.
    pub fn extra_cpu_secs(&self) -> f64 {
        self.before_ack_cpu_secs() + self.json_check_cpu_secs
    }

    /// The service's least wall time ÷ the CLI's: the CLI's CPU plus the
    /// extra work spread perfectly over every core, and never less than the
    /// CLI itself.
    pub fn floor_vs_cli(&self, cli_wall_secs: f64, cli_cpu_secs: f64, cores: usize) -> f64 {
        let spread = (cli_cpu_secs + self.extra_cpu_secs()) / cores.max(1) as f64;
        spread.max(cli_wall_secs) / cli_wall_secs
    }

    /// The least mean time from an upload's start to its acknowledgement with
    /// `in_flight` uploads always open (Little's law): each needs its bytes
    /// hashed twice, carried over the socket and written and fsynced in the
    /// spool before the ack, on `cores` cores, even if nothing else ran. The
    /// JSON check is not on this path.
    pub fn ack_floor(&self, in_flight: usize, cores: usize) -> Duration {
        let per_segment = self.before_ack_cpu_secs() / self.segments.max(1) as f64;
        Duration::from_secs_f64(per_segment * in_flight as f64 / cores.max(1) as f64)
    }
}

/// Times the required work over the workload's files (page-cached by then),
/// counting only the CPU of the work itself, not the reads feeding it. The
/// spool's stand-in files go in `scratch` and are removed.
pub(super) fn measure(workload: &Workload, scratch: &Path) -> Result<RequiredWork, BenchError> {
    let mut once = RequiredWork::default();
    let mut buf = vec![0u8; READ_SIZE];
    let (mut sender, receiver) = loopback()?;
    let spool = scratch.join("floor-spool");
    for path in &workload.files {
        let mut file =
            std::fs::File::open(path).map_err(io(format!("opening {}", path.display())))?;
        let mut spooled =
            std::fs::File::create(&spool).map_err(io(format!("creating {}", spool.display())))?;
        let mut hasher = Sha256::new();
        let mut checker =
            (workload.kind == ContentKind::JsonLines).then(|| JsonLinesChecker::new(usize::MAX));
        loop {
            let n = file
                .read(&mut buf)
                .map_err(io(format!("reading {}", path.display())))?;
            if n == 0 {
                break;
            }
            let chunk = &buf[..n];
            once.sha256_cpu_secs += thread_cpu(|| hasher.update(chunk)).1;
            let (sent, cpu) = thread_cpu(|| sender.write_all(chunk));
            once.transfer_cpu_secs += cpu;
            sent.map_err(io("sending over loopback"))?;
            let (written, cpu) = thread_cpu(|| spooled.write_all(chunk));
            once.spool_cpu_secs += cpu;
            written.map_err(io(format!("writing {}", spool.display())))?;
            if let Some(checker) = &mut checker {
                let (fed, cpu) = thread_cpu(|| checker.feed(chunk));
                once.json_check_cpu_secs += cpu;
                fed.map_err(|e| invalid(path, e))?;
            }
        }
        let (synced, cpu) = thread_cpu(|| spooled.sync_all());
        once.spool_cpu_secs += cpu;
        synced.map_err(io(format!("syncing {}", spool.display())))?;
        std::hint::black_box(hasher.finalize());
        if let Some(checker) = checker {
            let (finished, cpu) = thread_cpu(|| checker.finish());
            once.json_check_cpu_secs += cpu;
            finished.map_err(|e| invalid(path, e))?;
        }
    }
    let _ = std::fs::remove_file(&spool);
    drop(sender);
    once.transfer_cpu_secs += receiver
        .join()
        .map_err(|_| BenchError::Failed("the loopback receiver panicked".into()))?
        .map_err(io("receiving over loopback"))?;
    // Every shard pushes the same files.
    let shards = workload.shards as f64;
    Ok(RequiredWork {
        sha256_cpu_secs: once.sha256_cpu_secs * shards,
        transfer_cpu_secs: once.transfer_cpu_secs * shards,
        spool_cpu_secs: once.spool_cpu_secs * shards,
        json_check_cpu_secs: once.json_check_cpu_secs * shards,
        segments: workload.files.len() * workload.shards,
    })
}

/// A connected loopback TCP pair: the sending end, and a thread that reads
/// the other end to its close and returns the CPU seconds it spent.
fn loopback() -> Result<(TcpStream, std::thread::JoinHandle<std::io::Result<f64>>), BenchError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io("binding a loopback socket"))?;
    let addr = listener
        .local_addr()
        .map_err(io("reading the loopback address"))?;
    let sender = TcpStream::connect(addr).map_err(io("connecting over loopback"))?;
    let (mut accepted, _) = listener.accept().map_err(io("accepting over loopback"))?;
    let receiver = std::thread::spawn(move || {
        let mut buf = vec![0u8; READ_SIZE];
        let started = thread_cpu_now();
        while accepted.read(&mut buf)? > 0 {}
        Ok(thread_cpu_now() - started)
    });
    Ok((sender, receiver))
}

fn invalid(path: &Path, error: impl std::fmt::Display) -> BenchError {
    BenchError::Failed(format!(
        "{} is not valid JSON lines: {error}",
        path.display()
    ))
}

/// What `work` returned, and the CPU seconds this thread spent in it.
fn thread_cpu<T>(work: impl FnOnce() -> T) -> (T, f64) {
    let before = thread_cpu_now();
    let value = work();
    (value, thread_cpu_now() - before)
}

fn thread_cpu_now() -> f64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only the timespec we pass it.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    now.tv_sec as f64 + now.tv_nsec as f64 / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    fn work() -> RequiredWork {
        RequiredWork {
            sha256_cpu_secs: 0.06,
            transfer_cpu_secs: 0.02,
            spool_cpu_secs: 0.01,
            json_check_cpu_secs: 0.15,
            segments: 10,
        }
    }

    #[test]
    fn the_extra_work_is_spread_over_the_cores() {
        // 0.4 CPU-s of the CLI + 2 × 0.06 + 0.02 + 0.01 + 0.15 = 0.7 CPU-s
        // on 2 cores: 0.35 s against the CLI's 0.25 s.
        let floor = work().floor_vs_cli(0.25, 0.4, 2);
        assert!((floor - 1.4).abs() < 1e-9, "{floor}");
    }

    #[test]
    fn the_floor_is_never_below_the_cli() {
        // One large file: the CLI runs on one core, the extra fits on the other.
        assert_eq!(work().floor_vs_cli(1.0, 1.0, 2), 1.0);
    }

    #[test]
    fn the_ack_floor_follows_the_uploads_in_flight() {
        // Per segment (2 × 0.06 + 0.02 + 0.01) / 10 = 15 ms of CPU; 8
        // uploads always open on 2 cores: 60 ms from start to ack on average.
        let floor = work().ack_floor(8, 2).as_secs_f64();
        assert!((floor - 0.060).abs() < 1e-9, "{floor}");
    }
}
