//! The three contenders, each measured in its own process: the in-database
//! baseline, the zstd CLI, and the service with this process as its client.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::baseline::BASELINE_KIND_ENV;
use super::child::{run_measured, self_cpu_secs, vm_hwm};
use super::s3::{self, Garage};
use super::*;
use crate::client::{Client, ClientError, PushOptions};
use crate::types::{ContentKind, JobId, JobState};

pub(super) fn measure_baseline(
    workload: &Workload,
    out: &Path,
    level: i32,
) -> Result<Raw, BenchError> {
    let out = out.join("baseline");
    reset_dir(&out)?;
    let exe = std::env::current_exe().map_err(io("finding the wal-archiver binary"))?;
    let mut command = Command::new(exe);
    command
        .arg("bench-baseline")
        .arg("--out-dir")
        .arg(&out)
        .arg("--level")
        .arg(level.to_string())
        .arg("--shards")
        .arg(workload.shards.to_string())
        .args(&workload.files)
        .env(BASELINE_KIND_ENV, workload.kind.as_str());
    let usage = run_measured("in-database baseline", command)?;
    Ok(Raw {
        contender: Contender::Baseline,
        wall: usage.wall,
        output_bytes: dir_size(&out),
        cpu_secs: usage.cpu_secs,
        peak_rss: usage.peak_rss,
        ack: Vec::new(),
        archived: Vec::new(),
        s3_requests: None,
    })
}

/// `zstd -<level>` on every file (once per shard), as many processes at once
/// as there are cores, each output fsynced. Its peak RSS is what the machine
/// needed for them at once: the sum, over the concurrent slots, of the largest
/// peak among the processes each slot ran (a process's peak is reached as it
/// starts, when zstd allocates its context, so the slots' peaks overlap).
pub(super) fn measure_zstd_cli(
    workload: &Workload,
    out: &Path,
    level: i32,
) -> Result<Raw, BenchError> {
    let out = out.join("zstd-cli");
    reset_dir(&out)?;
    let jobs: Vec<(PathBuf, PathBuf)> = (0..workload.shards)
        .flat_map(|shard| {
            let out = &out;
            workload
                .files
                .iter()
                .enumerate()
                .map(move |(i, file)| (file.clone(), out.join(format!("{shard}-{i}.zst"))))
        })
        .collect();
    let parallel = crate::config::available_cores();
    let queue = Arc::new(std::sync::Mutex::new(jobs));
    let cpu_micros = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let slots: Vec<_> = (0..parallel)
        .map(|_| {
            let queue = queue.clone();
            let cpu_micros = cpu_micros.clone();
            std::thread::spawn(move || -> Result<u64, BenchError> {
                let mut slot_peak = 0;
                loop {
                    let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop();
                    let Some((input, output)) = next else {
                        return Ok(slot_peak);
                    };
                    let mut command = Command::new("zstd");
                    command
                        .arg(format!("-{level}"))
                        .args(["-q", "-f"])
                        .arg(&input)
                        .arg("-o")
                        .arg(&output);
                    let usage = run_measured("zstd", command)?;
                    slot_peak = slot_peak.max(usage.peak_rss);
                    cpu_micros.fetch_add((usage.cpu_secs * 1e6) as u64, Ordering::Relaxed);
                    sync_file(&output)?;
                }
            })
        })
        .collect();
    let mut peak_rss = 0;
    for slot in slots {
        peak_rss += slot
            .join()
            .map_err(|_| BenchError::Failed("zstd worker panicked".into()))??;
    }
    Ok(Raw {
        contender: Contender::ZstdCli,
        wall: started.elapsed(),
        output_bytes: dir_size(&out),
        cpu_secs: cpu_micros.load(Ordering::Relaxed) as f64 / 1e6,
        peak_rss,
        ack: Vec::new(),
        archived: Vec::new(),
        s3_requests: None,
    })
}

pub(super) fn sync_file(path: &Path) -> Result<(), BenchError> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io(format!("syncing {}", path.display())))
}

/// Where the measured server keeps its archives.
pub(super) enum Backend<'a> {
    /// Below its data dir.
    Local,
    /// In the bench's Garage, under this key prefix.
    S3 { garage: &'a Garage, prefix: String },
}

/// Runs the workload through a fresh server; returns the measurement and the
/// server, still running, to restore from.
pub(super) async fn measure_service(
    workload: &Workload,
    data_dir: &Path,
    options: &BenchOptions,
    backend: &Backend<'_>,
) -> Result<(Raw, ServerProcess), BenchError> {
    reset_dir(data_dir)?;
    let (contender, server) = match backend {
        Backend::Local => (Contender::Service, ServerProcess::start(data_dir)?),
        Backend::S3 { garage, prefix } => (
            Contender::ServiceS3,
            ServerProcess::start_with(data_dir, &garage.server_args(prefix), &garage.env())?,
        ),
    };
    let client = Client::connect(&server.url).await?;
    let garage = match backend {
        Backend::S3 { garage, .. } => Some(*garage),
        Backend::Local => None,
    };
    // After the server's start-up listing: only the workload's requests count.
    let requests_before = garage.map(Garage::requests).transpose()?;
    let cpu_before = server.cpu_secs()?;
    let client_cpu_before = self_cpu_secs();
    let push_options = PushOptions {
        kind: workload.kind,
        zstd_level: Some(options.level),
        ..PushOptions::default()
    };
    let started = Instant::now();
    let mut shards = Vec::new();
    for shard in 0..workload.shards {
        let client = client.clone();
        let files = workload.files.clone();
        let push_options = push_options.clone();
        let concurrency = options.concurrency;
        shards.push(tokio::spawn(async move {
            // Like a flush path: hand segments off as fast as they are
            // acknowledged; waiting for ARCHIVED holds no push slot.
            let pushed: Vec<Result<(JobId, Instant, Duration), ClientError>> =
                futures::stream::iter(files.into_iter().enumerate())
                    .map(|(i, file)| {
                        let client = client.clone();
                        let push_options = push_options.clone();
                        async move {
                            let pushed_at = Instant::now();
                            let pushed = client
                                .push_file(shard as u32 + 1, i as u64 + 1, &file, &push_options)
                                .await?;
                            Ok((pushed.job.id, pushed_at, pushed_at.elapsed()))
                        }
                    })
                    .buffer_unordered(concurrency.max(1))
                    .collect()
                    .await;
            let waits = pushed.into_iter().map(|pushed| {
                let client = client.clone();
                async move {
                    let (job_id, pushed_at, acked) = pushed?;
                    let job = client.wait(job_id).await?;
                    if job.state != JobState::Archived {
                        return Err(ClientError::JobNotArchived(Box::new(job)));
                    }
                    Ok((acked, pushed_at.elapsed(), job.archive_size.unwrap_or(0)))
                }
            });
            futures::future::join_all(waits).await
        }));
    }
    let mut ack = Vec::new();
    let mut archived = Vec::new();
    let mut output_bytes = 0;
    for shard in shards {
        for timing in shard
            .await
            .map_err(|e| BenchError::Failed(format!("shard task: {e}")))?
        {
            let (acked, done, size) = timing?;
            ack.push(acked);
            archived.push(done);
            output_bytes += size;
        }
    }
    let wall = started.elapsed();
    let cpu_secs = server.cpu_secs()? - cpu_before;
    let client_cpu = self_cpu_secs() - client_cpu_before;
    let peak_rss = server.peak_rss()?;
    let s3_requests = match (garage, requests_before) {
        (Some(garage), Some(before)) => {
            Some(s3::per_segment(&before, &garage.requests()?, ack.len()))
        }
        _ => None,
    };
    eprintln!(
        "bench:   {} {:.2} s, server CPU {cpu_secs:.2} s, client CPU {client_cpu:.2} s",
        contender.label(workload.kind),
        wall.as_secs_f64(),
    );
    let raw = Raw {
        contender,
        wall,
        output_bytes,
        cpu_secs,
        peak_rss,
        ack,
        archived,
        s3_requests,
    };
    Ok((raw, server))
}

/// A `wal-archiver serve` child on a free loopback port.
pub(super) struct ServerProcess {
    child: std::process::Child,
    pub(super) url: String,
}

impl ServerProcess {
    pub(super) fn start(data_dir: &Path) -> Result<Self, BenchError> {
        Self::start_with(data_dir, &[], &[])
    }

    /// With extra `serve` flags and environment variables.
    pub(super) fn start_with(
        data_dir: &Path,
        args: &[String],
        env: &[(&str, String)],
    ) -> Result<Self, BenchError> {
        use std::io::BufRead;
        let exe = std::env::current_exe().map_err(io("finding the wal-archiver binary"))?;
        let mut child = Command::new(exe)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--min-free-bytes",
                "0",
                "--data-dir",
            ])
            .arg(data_dir)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(io("starting wal-archiver serve"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| BenchError::Failed("no server stdout".into()))?;
        let mut lines = std::io::BufReader::new(stdout).lines();
        let addr = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(addr) = crate::service::listening_address(&line) {
                        break addr.to_string();
                    }
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(BenchError::Failed(
                        "the server exited before listening".into(),
                    ));
                }
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Ok(ServerProcess {
            child,
            url: format!("http://{addr}"),
        })
    }

    pub(super) fn cpu_secs(&self) -> Result<f64, BenchError> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .map_err(io("reading server CPU time"))?;
        // Fields after the command name (which may hold spaces) start at ')'.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // utime and stime are fields 14 and 15 of stat(5); index 11 and 12 here.
        Ok((ticks(11) + ticks(12)) / clock_ticks())
    }

    /// The server's own high-water mark so far (its memory since its exec,
    /// not the bench's: `VmHWM`, unlike a child's `ru_maxrss`).
    fn peak_rss(&self) -> Result<u64, BenchError> {
        vm_hwm(self.child.id())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

impl Contender {
    /// The method column: the baseline says what it does for opaque WAL.
    pub(super) fn label(self, kind: ContentKind) -> &'static str {
        match (self, kind) {
            (Contender::Baseline, ContentKind::JsonLines) => "in-database baseline",
            (Contender::Baseline, ContentKind::Raw) => "in-database baseline (read, zstd, fsync)",
            (Contender::ZstdCli, _) => "zstd CLI",
            (Contender::Service, _) => "wal-archiver service",
            (Contender::ServiceS3, _) => "wal-archiver service, S3 (Garage)",
        }
    }
}
