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

mod baseline;
mod contenders;
pub mod history;
mod report;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::client::ClientError;

pub use baseline::baseline;
use contenders::{measure_baseline, measure_service, measure_zstd_cli};
use report::{chart, markdown, mib, percentile_ms, splice_results, table};
use serde::Serialize;

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

pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
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

pub(super) fn reset_dir(dir: &Path) -> Result<(), BenchError> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))
}

pub(super) fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

pub(super) fn dir_size(dir: &Path) -> u64 {
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
