//! `wal-archiver bench`: the service against the two ways a database could
//! archive without it, on the same files, in one run.
//!
//! 1. The in-database baseline: one file at a time, in directory order — read
//!    the whole file, parse every JSON line into an entry, serialize header +
//!    entries as one MessagePack value, `zstd::encode_all` at the level, write,
//!    `sync_all`. One thread per shard (each shard is its own database).
//! 2. The stock `zstd` CLI at the same level, as many at once as there are
//!    cores, each output fsynced: the practical limit of the machine.
//! 3. The service, end to end from this process as the client: stream in,
//!    spool, compress, durable archive, job ARCHIVED.
//!
//! Every contender runs in its own process, so CPU time and peak RSS are its own.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::client::{Client, ClientError, PushOptions};
use crate::types::{ContentKind, JobState};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{0}")]
    Failed(String),
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
    let context = context.into();
    move |source| BenchError::Io { context, source }
}

#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Where the generated WAL, the outputs and the server's data dir go.
    pub work_dir: PathBuf,
    pub segments: u64,
    pub segment_size: usize,
    pub big_segment_size: usize,
    pub shard_counts: Vec<usize>,
    pub level: i32,
    /// Segments a shard streams at once to the service.
    pub concurrency: usize,
    pub markdown: Option<PathBuf>,
    pub chart: Option<PathBuf>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Measurement {
    pub method: &'static str,
    pub wall_secs: f64,
    pub mib_per_sec: f64,
    pub ratio: f64,
    pub cpu_secs: f64,
    pub peak_rss_mib: f64,
    pub ack_p50_ms: Option<f64>,
    pub ack_p99_ms: Option<f64>,
    pub archived_p50_ms: Option<f64>,
    pub archived_p99_ms: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct WorkloadResult {
    pub name: String,
    pub input_mib: f64,
    pub results: Vec<Measurement>,
}

struct Workload {
    name: String,
    shards: usize,
    files: Vec<PathBuf>,
}

pub async fn run(options: BenchOptions) -> Result<Vec<WorkloadResult>, BenchError> {
    let work = &options.work_dir;
    std::fs::create_dir_all(work).map_err(io(format!("creating {}", work.display())))?;
    let small = work.join("wal-small");
    let files = generate(&small, options.segments, options.segment_size, 1)?;
    let mut workloads: Vec<Workload> = options
        .shard_counts
        .iter()
        .map(|&shards| Workload {
            name: format!(
                "{} × {} MiB, {shards} shard{}",
                options.segments,
                options.segment_size >> 20,
                if shards == 1 { "" } else { "s" }
            ),
            shards,
            files: files.clone(),
        })
        .collect();
    if options.big_segment_size > 0 {
        let big = generate(&work.join("wal-big"), 1, options.big_segment_size, 2)?;
        workloads.push(Workload {
            name: format!("1 × {} MiB, 1 shard", options.big_segment_size >> 20),
            shards: 1,
            files: big,
        });
    }

    let mut results = Vec::new();
    for workload in &workloads {
        eprintln!("bench: {}", workload.name);
        let input: u64 =
            workload.files.iter().map(|f| file_size(f)).sum::<u64>() * workload.shards as u64;
        let out = work.join("out");
        let baseline = measure_baseline(workload, &out, options.level)?;
        let cli = measure_zstd_cli(workload, &out, options.level)?;
        let service = measure_service(workload, &work.join("server"), &options, input).await?;
        let _ = std::fs::remove_dir_all(&out);
        results.push(WorkloadResult {
            name: workload.name.clone(),
            input_mib: mib(input),
            results: vec![
                finish(baseline, input),
                finish(cli, input),
                finish(service, input),
            ],
        });
    }
    print!("{}", table(&results));
    if let Some(path) = &options.markdown {
        let previous = std::fs::read_to_string(path).unwrap_or_default();
        let updated = splice_results(&previous, &markdown(&results, &options));
        std::fs::write(path, updated).map_err(io(format!("writing {}", path.display())))?;
        eprintln!("bench: wrote {}", path.display());
    }
    if let Some(path) = &options.chart {
        chart(&results, path)?;
        eprintln!("bench: wrote {}", path.display());
    }
    Ok(results)
}

/// A run before its throughput is derived.
struct Raw {
    method: &'static str,
    wall: Duration,
    output_bytes: u64,
    cpu_secs: f64,
    peak_rss: u64,
    ack: Vec<Duration>,
    archived: Vec<Duration>,
}

fn finish(raw: Raw, input: u64) -> Measurement {
    let wall = raw.wall.as_secs_f64();
    Measurement {
        method: raw.method,
        wall_secs: wall,
        mib_per_sec: mib(input) / wall,
        ratio: input as f64 / raw.output_bytes.max(1) as f64,
        cpu_secs: raw.cpu_secs,
        peak_rss_mib: mib(raw.peak_rss),
        ack_p50_ms: percentile_ms(&raw.ack, 0.50),
        ack_p99_ms: percentile_ms(&raw.ack, 0.99),
        archived_p50_ms: percentile_ms(&raw.archived, 0.50),
        archived_p99_ms: percentile_ms(&raw.archived, 0.99),
    }
}

fn generate(dir: &Path, count: u64, size: usize, seed: u64) -> Result<Vec<PathBuf>, BenchError> {
    let expected: Vec<PathBuf> = (1..=count)
        .map(|id| dir.join(format!("wal-{id:05}.log")))
        .collect();
    let ready = expected.iter().all(|p| file_size(p) >= size as u64);
    if ready {
        return Ok(expected);
    }
    eprintln!(
        "bench: generating {count} × {} MiB of JSON-lines WAL in {}",
        size >> 20,
        dir.display()
    );
    crate::walgen::write_wal_dir(dir, count, size, 1, seed)
        .map_err(io(format!("generating WAL in {}", dir.display())))
}

fn measure_baseline(workload: &Workload, out: &Path, level: i32) -> Result<Raw, BenchError> {
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

fn measure_zstd_cli(workload: &Workload, out: &Path, level: i32) -> Result<Raw, BenchError> {
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

async fn measure_service(
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
            let pushed: Vec<Result<(u64, Instant, Duration), ClientError>> =
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
struct ServerProcess {
    child: std::process::Child,
    url: String,
}

impl ServerProcess {
    fn start(data_dir: &Path) -> Result<Self, BenchError> {
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

fn reset_dir(dir: &Path) -> Result<(), BenchError> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let path = e.path();
            if path.is_dir() {
                dir_size(&path)
            } else {
                file_size(&path)
            }
        })
        .sum()
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

fn percentile_ms(samples: &[Duration], q: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted: Vec<Duration> = samples.to_vec();
    sorted.sort();
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1].as_secs_f64() * 1000.0)
}

fn table(results: &[WorkloadResult]) -> String {
    let mut out = String::new();
    for workload in results {
        let _ = writeln!(out, "\n{} ({:.0} MiB)", workload.name, workload.input_mib);
        let _ = writeln!(
            out,
            "  {:<22} {:>8} {:>9} {:>7} {:>8} {:>9} {:>17} {:>17}",
            "method",
            "wall s",
            "MiB/s",
            "ratio",
            "CPU s",
            "peak MiB",
            "ack p50/p99 ms",
            "archived p50/p99"
        );
        for m in &workload.results {
            let cells: Vec<String> = m
                .cells()
                .iter()
                .zip(TEXT_WIDTHS)
                .map(|(cell, width)| format!("{cell:>width$}"))
                .collect();
            let _ = writeln!(out, "  {:<22} {}", m.method, cells.join(" "));
        }
    }
    out
}

/// Widths of the text table's columns after the method.
const TEXT_WIDTHS: [usize; 7] = [8, 9, 7, 8, 9, 17, 17];

impl Measurement {
    /// The table cells after the method, formatted once for text and markdown.
    fn cells(&self) -> [String; 7] {
        [
            format!("{:.2}", self.wall_secs),
            format!("{:.0}", self.mib_per_sec),
            format!("{:.2}", self.ratio),
            format!("{:.2}", self.cpu_secs),
            format!("{:.0}", self.peak_rss_mib),
            pair(self.ack_p50_ms, self.ack_p99_ms),
            pair(self.archived_p50_ms, self.archived_p99_ms),
        ]
    }
}

fn pair(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) => format!("{a:.0} / {b:.0}"),
        _ => "-".into(),
    }
}

fn markdown(results: &[WorkloadResult], options: &BenchOptions) -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let date = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let zstd_version = Command::new("zstd")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let mut md = String::new();
    let _ = writeln!(
        md,
        "## Results of `wal-archiver bench` — {date}, {cores} cores\n"
    );
    let _ = writeln!(
        md,
        "JSON-lines WAL from `wal-archiver generate`, zstd level {}, {} concurrent streams per shard; {}.\n",
        options.level, options.concurrency, zstd_version
    );
    let _ = writeln!(
        md,
        "| workload | method | wall s | MiB/s | ratio | CPU s | peak RSS MiB | ack p50 / p99 ms | archived p50 / p99 ms |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for workload in results {
        for m in &workload.results {
            let _ = writeln!(
                md,
                "| {} | {} | {} |",
                workload.name,
                m.method,
                m.cells().join(" | ")
            );
        }
    }
    let _ = writeln!(
        md,
        "\nRatios (service wall time ÷ other wall time; lower is better for the service):\n"
    );
    for workload in results {
        let wall = |method: &str| {
            workload
                .results
                .iter()
                .find(|m| m.method == method)
                .map(|m| m.wall_secs)
        };
        if let (Some(service), Some(cli), Some(baseline)) = (
            wall("wal-archiver service"),
            wall("zstd CLI"),
            wall("in-database baseline"),
        ) {
            let _ = writeln!(
                md,
                "- {}: service / zstd CLI = {:.2}; baseline / service = {:.2} (service is {:.1}× faster than the baseline)",
                workload.name,
                service / cli,
                baseline / service,
                baseline / service
            );
        }
    }
    md
}

const RESULTS_START: &str = "<!-- bench results: written by `wal-archiver bench` -->";
const RESULTS_END: &str = "<!-- end of bench results -->";

/// Replaces the results block of a hand-written BENCHMARKS.md, keeping the
/// analysis around it; appends the block if there is none.
fn splice_results(previous: &str, results: &str) -> String {
    let block = format!("{RESULTS_START}\n{results}{RESULTS_END}\n");
    match (previous.find(RESULTS_START), previous.find(RESULTS_END)) {
        (Some(start), Some(end)) if end > start => {
            format!(
                "{}{block}{}",
                &previous[..start],
                &previous[end + RESULTS_END.len()..].trim_start_matches('\n')
            )
        }
        _ if previous.is_empty() => format!("# Benchmarks\n\n{block}"),
        _ => format!("{previous}\n{block}"),
    }
}

fn chart(results: &[WorkloadResult], path: &Path) -> Result<(), BenchError> {
    use plotters::prelude::*;
    let methods = ["in-database baseline", "zstd CLI", "wal-archiver service"];
    let colors = [
        RGBColor(200, 90, 80),
        RGBColor(120, 120, 120),
        RGBColor(60, 110, 190),
    ];
    let max = results
        .iter()
        .flat_map(|w| w.results.iter().map(|m| m.mib_per_sec))
        .fold(1.0, f64::max)
        * 1.15;
    let failed =
        |e: &dyn std::fmt::Display| BenchError::Failed(format!("drawing {}: {e}", path.display()));
    let root = SVGBackend::new(path, (860, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| failed(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Throughput, MiB/s of WAL archived (higher is better)",
            ("sans-serif", 18),
        )
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..results.len() as f64, 0f64..max)
        .map_err(|e| failed(&e))?;
    let names: Vec<String> = results.iter().map(|w| w.name.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(results.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - i as f64 - 0.5).abs() < 0.01 {
                names.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("MiB/s")
        .draw()
        .map_err(|e| failed(&e))?;
    for (k, method) in methods.iter().enumerate() {
        let color = colors[k];
        let bars = results.iter().enumerate().filter_map(move |(i, w)| {
            let m = w.results.iter().find(|m| m.method == *method)?;
            let left = i as f64 + 0.12 + k as f64 * 0.25;
            Some(Rectangle::new(
                [(left, 0.0), (left + 0.24, m.mib_per_sec)],
                color.filled(),
            ))
        });
        chart
            .draw_series(bars)
            .map_err(|e| failed(&e))?
            .label(*method)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| failed(&e))?;
    root.present().map_err(|e| failed(&e))?;
    Ok(())
}

/// The in-database baseline, run by `wal-archiver bench-baseline` in its own
/// process: `shards` threads, each archiving every file one at a time.
pub fn baseline(
    files: &[PathBuf],
    out_dir: &Path,
    level: i32,
    shards: usize,
) -> Result<(), BenchError> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..shards)
            .map(|shard| {
                scope.spawn(move || -> Result<(), BenchError> {
                    for (i, file) in files.iter().enumerate() {
                        baseline_one(file, &out_dir.join(format!("{shard}-{i}.mpk.zst")), level)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for handle in handles {
            handle
                .join()
                .map_err(|_| BenchError::Failed("baseline thread panicked".into()))??;
        }
        Ok(())
    })
}

#[derive(Serialize, Deserialize)]
struct BaselineEntry {
    timestamp: i64,
    context_id: String,
    event_type: String,
    payload: serde_json::Value,
    event_id: u64,
}

#[derive(Serialize)]
struct BaselineHeader<'a> {
    source: &'a str,
    entries: usize,
}

fn baseline_one(input: &Path, output: &Path, level: i32) -> Result<(), BenchError> {
    let bytes = std::fs::read(input).map_err(io(format!("reading {}", input.display())))?;
    let entries: Vec<BaselineEntry> = bytes
        .split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .map(serde_json::from_slice)
        .collect::<Result<_, _>>()
        .map_err(|e| BenchError::Failed(format!("{}: {e}", input.display())))?;
    let header = BaselineHeader {
        source: &input.to_string_lossy(),
        entries: entries.len(),
    };
    let packed =
        rmp_serde::to_vec(&(header, entries)).map_err(|e| BenchError::Failed(e.to_string()))?;
    let compressed = zstd::encode_all(&packed[..], level).map_err(io("compressing"))?;
    let mut file =
        std::fs::File::create(output).map_err(io(format!("creating {}", output.display())))?;
    std::io::Write::write_all(&mut file, &compressed)
        .map_err(io(format!("writing {}", output.display())))?;
    file.sync_all()
        .map_err(io(format!("syncing {}", output.display())))
}
