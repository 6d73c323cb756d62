//! `wal-archiver bench`: the service against the two ways a database could
//! archive without it, on the same files, in one run.
//!
//! 1. The in-database baseline (`baseline.rs`): one file at a time, in
//!    directory order, one thread per shard (each shard is its own database).
//!    For JSON-lines WAL it parses every line and re-encodes the entries as
//!    MessagePack before `zstd::encode_all`; for opaque WAL it only reads,
//!    compresses, writes and fsyncs.
//! 2. The stock `zstd` CLI at the same level, as many at once as there are
//!    cores, each output fsynced: the practical limit of the machine.
//! 3. The service, end to end from this process as the client: stream in,
//!    spool, compress, durable archive, job ARCHIVED; with `--s3`, a second
//!    time into a real Garage bucket.
//!
//! Workloads: opaque WAL cut from the real PostgreSQL corpus (`corpus.rs`),
//! and JSON-lines WAL of an event store (`walgen`) with 1, 4 and 16 shards and
//! as one large segment. Restores (`restore.rs`) put `wal-archiver restore`
//! beside `zstd -d` on the same archive. Every contender runs in its own
//! process, so CPU time and peak RSS are its own (`child.rs` says how the
//! peak is read); `report.rs` prints the tables, the targets met or not, and
//! writes the BENCHMARKS.md block and the chart.

mod baseline;
mod child;
mod contenders;
mod corpus;
mod floor;
pub mod history;
mod report;
mod restore;
mod s3;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::client::ClientError;
use crate::types::ContentKind;

pub use baseline::baseline;
use contenders::{Backend, measure_baseline, measure_service, measure_zstd_cli};
use floor::REQUIRED_SHA256_PASSES;
pub use floor::RequiredWork;
use report::{chart, markdown, mib, percentile_ms, splice_results, text};
use restore::measure_restore;
use s3::Garage;
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
    /// Segments of each small workload (raw and JSON lines).
    pub segments: u64,
    pub segment_size: usize,
    /// The single large JSON-lines segment; 0 skips it.
    pub big_segment_size: usize,
    /// Shard counts the small JSON-lines workload runs with.
    pub shard_counts: Vec<usize>,
    pub level: i32,
    /// Segments a shard streams at once to the service.
    pub concurrency: usize,
    /// The PostgreSQL WAL corpus (`*.zst`) the raw workload is cut from.
    pub corpus: PathBuf,
    /// Runs of each small-segment restore (the large one runs once).
    pub restore_runs: usize,
    /// `garage-dev.sh`: also run every service workload against a Garage.
    pub s3: Option<PathBuf>,
    pub markdown: Option<PathBuf>,
    pub chart: Option<PathBuf>,
}

/// Who archives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Contender {
    Baseline,
    ZstdCli,
    Service,
    ServiceS3,
}

#[derive(Clone, Debug, Serialize)]
pub struct Measurement {
    pub contender: Contender,
    pub method: &'static str,
    pub wall_secs: f64,
    /// Wall time ÷ the zstd CLI's on the same workload in the same run.
    pub vs_cli: f64,
    pub mib_per_sec: f64,
    pub ratio: f64,
    pub cpu_secs: f64,
    pub peak_rss_mib: f64,
    pub ack_p50_ms: Option<f64>,
    pub ack_p99_ms: Option<f64>,
    pub archived_p50_ms: Option<f64>,
    pub archived_p99_ms: Option<f64>,
    /// With S3: requests per segment, by S3 operation.
    pub s3_requests: Option<BTreeMap<String, f64>>,
}

#[derive(Clone, Debug, Serialize)]
pub struct WorkloadResult {
    pub name: String,
    pub kind: ContentKind,
    pub shards: usize,
    /// The single large segment, not the small ones.
    pub big: bool,
    pub input_mib: f64,
    /// Segments each shard keeps in flight.
    pub concurrency: usize,
    /// What the service must do beyond the CLI, timed on the same files.
    pub required: RequiredWork,
    pub results: Vec<Measurement>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RestoreMeasurement {
    pub method: &'static str,
    /// The median run's.
    pub wall_secs: f64,
    /// Wall time ÷ `zstd -d`'s.
    pub vs_zstd: f64,
    pub mib_per_sec: f64,
    pub cpu_secs: f64,
    /// The largest of all runs.
    pub peak_rss_mib: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct RestoreResult {
    pub name: String,
    pub kind: ContentKind,
    pub big: bool,
    pub size_mib: f64,
    pub runs: usize,
    pub results: Vec<RestoreMeasurement>,
}

/// Everything one run measured.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub workloads: Vec<WorkloadResult>,
    /// A restore of the first segment of each 1-shard workload: small raw,
    /// small JSON lines, large.
    pub restores: Vec<RestoreResult>,
    /// Garage's own peak RSS over the run, with `--s3`.
    pub garage_peak_rss_mib: Option<f64>,
}

struct Workload {
    name: String,
    kind: ContentKind,
    shards: usize,
    big: bool,
    files: Vec<PathBuf>,
}

pub async fn run(options: BenchOptions) -> Result<BenchReport, BenchError> {
    let work = &options.work_dir;
    std::fs::create_dir_all(work).map_err(io(format!("creating {}", work.display())))?;
    let workloads = workloads(&options)?;
    let garage = options
        .s3
        .as_ref()
        .map(|script| Garage::start(script, &work.join("garage")))
        .transpose()?;

    let mut report = BenchReport {
        workloads: Vec::new(),
        restores: Vec::new(),
        garage_peak_rss_mib: None,
    };
    for (index, workload) in workloads.iter().enumerate() {
        eprintln!("bench: {}", workload.name);
        let input: u64 =
            workload.files.iter().map(|f| file_size(f)).sum::<u64>() * workload.shards as u64;
        let required = floor::measure(workload, work)?;
        let out = work.join("out");
        let baseline = measure_baseline(workload, &out, options.level)?;
        let cli = measure_zstd_cli(workload, &out, options.level)?;
        let _ = std::fs::remove_dir_all(&out);
        let data_dir = work.join("server");
        let (service, server) =
            measure_service(workload, &data_dir, &options, &Backend::Local).await?;
        let restored = |r: &RestoreResult| r.kind == workload.kind && r.big == workload.big;
        if workload.shards == 1 && !report.restores.iter().any(restored) {
            let runs = if workload.big {
                1
            } else {
                options.restore_runs
            };
            report
                .restores
                .push(measure_restore(workload, &server, &data_dir, runs)?);
        }
        drop(server);
        let mut raws = vec![baseline, cli, service];
        if let Some(garage) = &garage {
            let backend = Backend::S3 {
                garage,
                prefix: format!("bench-{index}/"),
            };
            let data_dir = work.join("server-s3");
            let (s3, server) = measure_service(workload, &data_dir, &options, &backend).await?;
            drop(server);
            raws.push(s3);
        }
        let cli_wall = raws[1].wall.as_secs_f64();
        report.workloads.push(WorkloadResult {
            name: workload.name.clone(),
            kind: workload.kind,
            shards: workload.shards,
            big: workload.big,
            input_mib: mib(input),
            concurrency: options.concurrency,
            required,
            results: raws
                .into_iter()
                .map(|raw| finish(raw, input, cli_wall, workload.kind))
                .collect(),
        });
    }
    report.garage_peak_rss_mib = garage.as_ref().and_then(|g| g.peak_rss()).map(mib);
    drop(garage);

    print!("{}", text(&report));
    if let Some(path) = &options.markdown {
        let previous = std::fs::read_to_string(path).unwrap_or_default();
        let updated = splice_results(&previous, &markdown(&report, &options));
        std::fs::write(path, updated).map_err(io(format!("writing {}", path.display())))?;
        eprintln!("bench: wrote {}", path.display());
    }
    if let Some(path) = &options.chart {
        chart(&report.workloads, path)?;
        eprintln!("bench: wrote {}", path.display());
    }
    Ok(report)
}

/// Generates (or finds, from an earlier run) the files, and names the workloads.
fn workloads(options: &BenchOptions) -> Result<Vec<Workload>, BenchError> {
    let work = &options.work_dir;
    let small_name = |kind: ContentKind, shards: usize| {
        format!(
            "{} × {} MiB {}, {shards} shard{}",
            options.segments,
            options.segment_size >> 20,
            kind_name(kind),
            if shards == 1 { "" } else { "s" }
        )
    };
    let raw = corpus::raw_segments(
        &options.corpus,
        &work.join("wal-raw"),
        options.segments,
        options.segment_size,
    )?;
    let mut workloads = vec![Workload {
        name: small_name(ContentKind::Raw, 1),
        kind: ContentKind::Raw,
        shards: 1,
        big: false,
        files: raw,
    }];
    let json = generate(
        &work.join("wal-small"),
        options.segments,
        options.segment_size,
        1,
    )?;
    workloads.extend(options.shard_counts.iter().map(|&shards| Workload {
        name: small_name(ContentKind::JsonLines, shards),
        kind: ContentKind::JsonLines,
        shards,
        big: false,
        files: json.clone(),
    }));
    if options.big_segment_size > 0 {
        let big = generate(&work.join("wal-big"), 1, options.big_segment_size, 2)?;
        workloads.push(Workload {
            name: format!(
                "1 × {} MiB {}, 1 shard",
                options.big_segment_size >> 20,
                kind_name(ContentKind::JsonLines)
            ),
            kind: ContentKind::JsonLines,
            shards: 1,
            big: true,
            files: big,
        });
    }
    Ok(workloads)
}

pub(super) fn kind_name(kind: ContentKind) -> &'static str {
    match kind {
        ContentKind::Raw => "raw",
        ContentKind::JsonLines => "JSON",
    }
}

/// A run before its throughput is derived.
struct Raw {
    contender: Contender,
    wall: Duration,
    output_bytes: u64,
    cpu_secs: f64,
    peak_rss: u64,
    ack: Vec<Duration>,
    archived: Vec<Duration>,
    s3_requests: Option<BTreeMap<String, f64>>,
}

fn finish(raw: Raw, input: u64, cli_wall: f64, kind: ContentKind) -> Measurement {
    let wall = raw.wall.as_secs_f64();
    Measurement {
        contender: raw.contender,
        method: raw.contender.label(kind),
        wall_secs: wall,
        vs_cli: wall / cli_wall,
        mib_per_sec: mib(input) / wall,
        ratio: input as f64 / raw.output_bytes.max(1) as f64,
        cpu_secs: raw.cpu_secs,
        peak_rss_mib: mib(raw.peak_rss),
        ack_p50_ms: percentile_ms(&raw.ack, 0.50),
        ack_p99_ms: percentile_ms(&raw.ack, 0.99),
        archived_p50_ms: percentile_ms(&raw.archived, 0.50),
        archived_p99_ms: percentile_ms(&raw.archived, 0.99),
        s3_requests: raw.s3_requests,
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
