//! The three contenders, each measured in its own process: the in-database
//! baseline, the zstd CLI, and the service with this process as its client.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;

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
        .args(&workload.files);
    let (wall, cpu_secs, peak_rss) = run_child("in-database baseline", command)?;
    Ok(Raw {
        method: "in-database baseline",
        wall,
        output_bytes: dir_size(&out),
        cpu_secs,
        peak_rss,
        ack: Vec::new(),
        archived: Vec::new(),
    })
}

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
    let parallel = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let queue = Arc::new(std::sync::Mutex::new(jobs));
    let cpu_before = children_cpu_secs();
    let started = Instant::now();
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let workers: Vec<_> = (0..parallel)
        .map(|_| {
            let queue = queue.clone();
            let peak = peak.clone();
            std::thread::spawn(move || -> Result<(), BenchError> {
                loop {
                    let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop();
                    let Some((input, output)) = next else {
                        return Ok(());
                    };
                    let mut command = Command::new("zstd");
                    command
                        .arg(format!("-{level}"))
                        .args(["-q", "-f"])
                        .arg(&input)
                        .arg("-o")
                        .arg(&output);
                    let (_, _, rss) = run_child("zstd", command)?;
                    peak.fetch_max(rss, std::sync::atomic::Ordering::Relaxed);
                    std::fs::File::open(&output)
                        .and_then(|f| f.sync_all())
                        .map_err(io(format!("syncing {}", output.display())))?;
                }
            })
        })
        .collect();
    for worker in workers {
        worker
            .join()
            .map_err(|_| BenchError::Failed("zstd worker panicked".into()))??;
    }
    let wall = started.elapsed();
    Ok(Raw {
        method: "zstd CLI",
        wall,
        output_bytes: dir_size(&out),
        cpu_secs: children_cpu_secs() - cpu_before,
        peak_rss: peak.load(std::sync::atomic::Ordering::Relaxed),
        ack: Vec::new(),
        archived: Vec::new(),
    })
}

pub(super) async fn measure_service(
    workload: &Workload,
    data_dir: &Path,
    options: &BenchOptions,
    input: u64,
) -> Result<Raw, BenchError> {
    reset_dir(data_dir)?;
    let server = ServerProcess::start(data_dir)?;
    let client = Client::connect(&server.url).await?;
    let cpu_before = server.cpu_secs()?;
    let client_cpu_before = self_cpu_secs();
    let push_options = PushOptions {
        kind: ContentKind::JsonLines,
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
                    Ok((acked, pushed_at.elapsed()))
                }
            });
            futures::future::join_all(waits).await
        }));
    }
    let mut ack = Vec::new();
    let mut archived = Vec::new();
    for shard in shards {
        for timing in shard
            .await
            .map_err(|e| BenchError::Failed(format!("shard task: {e}")))?
        {
            let (acked, done) = timing?;
            ack.push(acked);
            archived.push(done);
        }
    }
    let wall = started.elapsed();
    let cpu_secs = server.cpu_secs()? - cpu_before;
    let client_cpu = self_cpu_secs() - client_cpu_before;
    let peak_rss = server.peak_rss()?;
    let output_bytes = dir_size(&data_dir.join("archives"));
    eprintln!(
        "bench:   service {:.2} s ({:.0} MiB/s), server CPU {cpu_secs:.2} s, client CPU {client_cpu:.2} s",
        wall.as_secs_f64(),
        mib(input) / wall.as_secs_f64()
    );
    drop(server);
    Ok(Raw {
        method: "wal-archiver service",
        wall,
        output_bytes,
        cpu_secs,
        peak_rss,
        ack,
        archived,
    })
}

/// A `wal-archiver serve` child on a free loopback port.
pub(super) struct ServerProcess {
    child: std::process::Child,
    pub(super) url: String,
}

impl ServerProcess {
    pub(super) fn start(data_dir: &Path) -> Result<Self, BenchError> {
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
                    if let Some(addr) = line.strip_prefix("wal-archiver listening on ") {
                        break addr.to_owned();
                    }
                }
                _ => {
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

    fn cpu_secs(&self) -> Result<f64, BenchError> {
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

    fn peak_rss(&self) -> Result<u64, BenchError> {
        proc_status_kib(self.child.id(), "VmHWM:").map(|kib| kib * 1024)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// Runs a child to completion; returns wall time, its CPU seconds and peak RSS.
fn run_child(what: &str, mut command: Command) -> Result<(Duration, f64, u64), BenchError> {
    let started = Instant::now();
    let child = command
        .stdin(Stdio::null())
        .spawn()
        .map_err(io(format!("starting {what}")))?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child, with valid out-pointers; it reaps the child.
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = started.elapsed();
    std::mem::forget(child);
    if reaped != pid || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        return Err(BenchError::Failed(format!(
            "{what} failed (wait status {status})"
        )));
    }
    let cpu = timeval_secs(usage.ru_utime) + timeval_secs(usage.ru_stime);
    Ok((wall, cpu, usage.ru_maxrss as u64 * 1024))
}

fn timeval_secs(tv: libc::timeval) -> f64 {
    tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6
}

fn children_cpu_secs() -> f64 {
    rusage_secs(libc::RUSAGE_CHILDREN)
}

fn self_cpu_secs() -> f64 {
    rusage_secs(libc::RUSAGE_SELF)
}

fn rusage_secs(who: libc::c_int) -> f64 {
    // SAFETY: getrusage fills a valid rusage.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut usage) };
    timeval_secs(usage.ru_utime) + timeval_secs(usage.ru_stime)
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

fn proc_status_kib(pid: u32, field: &str) -> Result<u64, BenchError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(io("reading /proc status"))?;
    status
        .lines()
        .find_map(|line| {
            line.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .ok_or_else(|| BenchError::Failed(format!("no {field} in /proc/{pid}/status")))
}
