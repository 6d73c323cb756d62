//! What a run prints and writes: the table, the BENCHMARKS.md results block,
//! and the SVG chart.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::*;
use crate::config::available_cores;

pub(super) fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

pub(super) fn percentile_ms(samples: &[Duration], q: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted: Vec<Duration> = samples.to_vec();
    sorted.sort();
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1].as_secs_f64() * 1000.0)
}

/// What the targets ask, and what the run measured against each.
struct Target {
    target: String,
    measured: String,
    /// The least any implementation of the contract could measure here (see
    /// `floor`); None where no such bound is computed.
    floor: Option<String>,
    /// None when the workload did not run.
    met: Option<bool>,
}

/// Targets on a workload's service wall time ÷ the zstd CLI's.
const WALL_TARGETS: [(ContentKind, usize, bool, f64); 5] = [
    (ContentKind::Raw, 1, false, 1.15),
    (ContentKind::JsonLines, 1, false, 1.3),
    (ContentKind::JsonLines, 4, false, 1.5),
    (ContentKind::JsonLines, 16, false, 1.5),
    (ContentKind::JsonLines, 1, true, 1.4),
];
/// ack QUEUED p99 with 4 shards pushing small segments.
const ACK_P99_TARGET_MS: f64 = 50.0;
const ACK_TARGET_SHARDS: usize = 4;
/// Server peak RSS with 16 shards pushing small segments.
const RSS_TARGET_MIB: f64 = 64.0;
const RSS_TARGET_SHARDS: usize = 16;
/// Restores, wall time ÷ `zstd -d`'s.
const RESTORE_TARGET: f64 = 1.3;

fn targets(report: &BenchReport) -> Vec<Target> {
    let cores = available_cores();
    let find = |kind: ContentKind, shards: usize, big: bool| {
        report
            .workloads
            .iter()
            .find(|w| w.kind == kind && w.shards == shards && w.big == big)
    };
    let service = |w: &WorkloadResult| {
        w.results
            .iter()
            .find(|m| m.contender == Contender::Service)
            .cloned()
    };
    let cli = |w: &WorkloadResult| {
        w.results
            .iter()
            .find(|m| m.contender == Contender::ZstdCli)
            .cloned()
    };
    let describe = |kind: ContentKind, shards: usize, big: bool| {
        let size = if big {
            "one large segment"
        } else {
            "small segments"
        };
        format!(
            "{} {size}, {shards} shard{}",
            kind_name(kind),
            if shards == 1 { "" } else { "s" }
        )
    };
    let mut out = Vec::new();
    for (kind, shards, big, limit) in WALL_TARGETS {
        let workload = find(kind, shards, big);
        let measured = workload.and_then(|w| Some((w, service(w)?, cli(w)?)));
        out.push(match measured {
            Some((w, service, cli)) => Target {
                target: format!("{}: service ≤ {limit} × zstd CLI", w.name),
                measured: format!(
                    "{:.2} s vs {:.2} s = {:.2}×",
                    service.wall_secs, cli.wall_secs, service.vs_cli
                ),
                floor: Some(format!(
                    "{:.2}×",
                    w.required.floor_vs_cli(cli.wall_secs, cli.cpu_secs, cores)
                )),
                met: Some(service.vs_cli <= limit),
            },
            None => not_run(format!(
                "{}: service ≤ {limit} × zstd CLI",
                describe(kind, shards, big)
            )),
        });
    }
    let ack = find(ContentKind::JsonLines, ACK_TARGET_SHARDS, false);
    let ack_target = |name: &str| format!("ack QUEUED p99 ≤ {ACK_P99_TARGET_MS} ms, {name}");
    out.push(match ack.and_then(|w| Some((w, service(w)?))) {
        Some((w, m)) => match (m.ack_p50_ms, m.ack_p99_ms) {
            (Some(p50), Some(p99)) => Target {
                target: ack_target(&w.name),
                measured: format!("p99 {p99:.0} ms (p50 {p50:.0} ms)"),
                floor: Some(format!(
                    "mean {:.0} ms",
                    w.required
                        .ack_floor((w.shards * w.concurrency).min(w.required.segments), cores)
                        .as_secs_f64()
                        * 1000.0
                )),
                met: Some(p99 <= ACK_P99_TARGET_MS),
            },
            _ => not_run(ack_target(&w.name)),
        },
        None => not_run(ack_target(&describe(
            ContentKind::JsonLines,
            ACK_TARGET_SHARDS,
            false,
        ))),
    });
    let rss = find(ContentKind::JsonLines, RSS_TARGET_SHARDS, false);
    let rss_target = |name: &str| format!("server peak RSS ≤ {RSS_TARGET_MIB} MiB, {name}");
    out.push(match rss.and_then(|w| Some((w, service(w)?))) {
        Some((w, m)) => Target {
            target: rss_target(&w.name),
            measured: format!("{:.0} MiB", m.peak_rss_mib),
            floor: None,
            met: Some(m.peak_rss_mib <= RSS_TARGET_MIB),
        },
        None => not_run(rss_target(&describe(
            ContentKind::JsonLines,
            RSS_TARGET_SHARDS,
            false,
        ))),
    });
    for restore in &report.restores {
        let target = format!("restore, {}: ≤ {RESTORE_TARGET} × zstd -d", restore.name);
        let by = |method: &str| restore.results.iter().find(|m| m.method == method);
        out.push(match (by(RESTORE_SERVICE), by(RESTORE_ZSTD)) {
            (Some(service), Some(zstd)) => Target {
                target,
                measured: format!(
                    "{:.3} s vs {:.3} s = {:.2}×",
                    service.wall_secs, zstd.wall_secs, service.vs_zstd
                ),
                floor: None,
                met: Some(service.vs_zstd <= RESTORE_TARGET),
            },
            _ => not_run(target),
        });
    }
    out
}

impl Target {
    fn cells(&self) -> [&str; 4] {
        [
            &self.target,
            &self.measured,
            self.floor.as_deref().unwrap_or("-"),
            met(self.met),
        ]
    }
}

fn not_run(target: String) -> Target {
    Target {
        target,
        measured: "not run".into(),
        floor: None,
        met: None,
    }
}

fn met(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => "-",
    }
}

/// What `bench` prints: every workload, the restores, the targets.
pub(super) fn text(report: &BenchReport) -> String {
    let mut out = String::new();
    for workload in &report.workloads {
        let _ = writeln!(out, "\n{} ({:.0} MiB)", workload.name, workload.input_mib);
        let _ = writeln!(
            out,
            "  {:<METHOD_WIDTH$} {:>7} {:>6} {:>6} {:>6} {:>7} {:>8} {:>15} {:>17}",
            "method",
            "wall s",
            "÷ CLI",
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
            let _ = writeln!(out, "  {:<METHOD_WIDTH$} {}", m.method, cells.join(" "));
        }
        let required = &workload.required;
        let _ = writeln!(
            out,
            "  required beyond the CLI, one-thread CPU s: SHA-256 {:.3} (× {}), loopback TCP send + receive {:.3}, spool write + fsync {:.3}, JSON check {:.3}",
            required.sha256_cpu_secs,
            REQUIRED_SHA256_PASSES,
            required.transfer_cpu_secs,
            required.spool_cpu_secs,
            required.json_check_cpu_secs
        );
        for m in &workload.results {
            if let Some(requests) = &m.s3_requests {
                let _ = writeln!(
                    out,
                    "  S3 requests per segment: {}",
                    requests_text(requests)
                );
            }
        }
    }
    if !report.restores.is_empty() {
        let _ = writeln!(
            out,
            "\nRestore, output fsynced (median of {} runs; a large segment once)",
            report.restores.first().map(|r| r.runs).unwrap_or_default()
        );
        let _ = writeln!(
            out,
            "  {:<22} {:<22} {:>8} {:>9} {:>7} {:>7} {:>8}",
            "segment", "method", "wall s", "÷ zstd -d", "MiB/s", "CPU s", "peak MiB"
        );
        for restore in &report.restores {
            for m in &restore.results {
                let cells: Vec<String> = m
                    .cells()
                    .iter()
                    .zip(RESTORE_WIDTHS)
                    .map(|(cell, width)| format!("{cell:>width$}"))
                    .collect();
                let _ = writeln!(
                    out,
                    "  {:<22} {:<22} {}",
                    restore.name,
                    m.method,
                    cells.join(" ")
                );
            }
        }
    }
    if let Some(garage) = report.garage_peak_rss_mib {
        let _ = writeln!(out, "\nGarage's own peak RSS: {garage:.0} MiB");
    }
    let _ = writeln!(out, "\nTargets (floor: see BENCHMARKS.md)");
    let _ = writeln!(
        out,
        "  {:<64} {:<30} {:<13} met?",
        "target", "measured", "floor"
    );
    for t in targets(report) {
        let [target, measured, floor, met] = t.cells();
        let _ = writeln!(
            out,
            "  {target:<64} {measured:<30} {floor:<13} {}",
            met.trim_matches('*')
        );
    }
    out
}

const METHOD_WIDTH: usize = 40;
/// Widths of the text table's columns after the method.
const TEXT_WIDTHS: [usize; 8] = [7, 6, 6, 6, 7, 8, 15, 17];
pub(super) const RESTORE_SERVICE: &str = "wal-archiver restore";
pub(super) const RESTORE_ZSTD: &str = "zstd -d";

impl Measurement {
    /// The table cells after the method, formatted once for text and markdown.
    fn cells(&self) -> [String; 8] {
        [
            format!("{:.2}", self.wall_secs),
            format!("{:.2}", self.vs_cli),
            format!("{:.0}", self.mib_per_sec),
            format!("{:.2}", self.ratio),
            format!("{:.2}", self.cpu_secs),
            format!("{:.0}", self.peak_rss_mib),
            pair(self.ack_p50_ms, self.ack_p99_ms),
            pair(self.archived_p50_ms, self.archived_p99_ms),
        ]
    }
}

/// Widths of the text restore table's columns after the method.
const RESTORE_WIDTHS: [usize; 5] = [8, 9, 7, 7, 8];

impl RestoreMeasurement {
    fn cells(&self) -> [String; 5] {
        [
            format!("{:.3}", self.wall_secs),
            format!("{:.2}", self.vs_zstd),
            format!("{:.0}", self.mib_per_sec),
            format!("{:.2}", self.cpu_secs),
            format!("{:.0}", self.peak_rss_mib),
        ]
    }
}

fn requests_text(requests: &BTreeMap<String, f64>) -> String {
    let total: f64 = requests.values().sum();
    let each: Vec<String> = requests
        .iter()
        .map(|(op, n)| format!("{op} {n:.1}"))
        .collect();
    format!("{total:.1} ({})", each.join(", "))
}

fn pair(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) => format!("{a:.0} / {b:.0}"),
        _ => "-".into(),
    }
}

pub(super) fn markdown(report: &BenchReport, options: &BenchOptions) -> String {
    let cores = available_cores();
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
        "zstd level {}, {} concurrent streams per shard; {zstd_version}. \
         **raw**: opaque PostgreSQL WAL cut from the real segments of `{}`; its in-database baseline \
         reads, compresses (`zstd::encode_all`), writes and fsyncs each file, since there is nothing to parse. \
         **JSON**: JSON-lines WAL from `wal-archiver generate`; its baseline parses every line and \
         re-encodes the entries as MessagePack first. Peak RSS is each process's own (`VmHWM` at its exit); \
         for the zstd CLI, the sum over its {cores} concurrent processes; for the service, the server's. \
         ÷ zstd CLI is wall time ÷ the zstd CLI's on the same workload in this run.\n",
        options.level,
        options.concurrency,
        options.corpus.display()
    );
    let _ = writeln!(
        md,
        "Floor: the least any implementation of the same contract could measure on this machine, from the \
         work the CLI does not do, timed on the same files in this run (2 SHA-256 passes, the bytes sent and \
         received over loopback TCP, written and fsynced as the spool, the JSON check; see \"Floors\" above).\n"
    );
    let _ = writeln!(
        md,
        "| target | measured | floor | met? |\n|---|---|---|---|"
    );
    for t in targets(report) {
        let _ = writeln!(md, "| {} |", t.cells().join(" | "));
    }
    let _ = writeln!(
        md,
        "\n| workload | method | wall s | ÷ zstd CLI | MiB/s | ratio | CPU s | peak RSS MiB | ack p50 / p99 ms | archived p50 / p99 ms |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for workload in &report.workloads {
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
    if !report.restores.is_empty() {
        let runs = report.restores.first().map(|r| r.runs).unwrap_or_default();
        let _ = writeln!(
            md,
            "\nRestores: `wal-archiver restore` (a child process) beside `zstd -d` of the same archive \
             file, both outputs fsynced; median of {runs} runs, a large segment once. The restore's CPU \
             includes the server's; its peak RSS is the restore process's.\n"
        );
        let _ = writeln!(
            md,
            "| segment | method | wall s | ÷ zstd -d | MiB/s | CPU s | peak RSS MiB |\n|---|---|---:|---:|---:|---:|---:|"
        );
        for restore in &report.restores {
            for m in &restore.results {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} |",
                    restore.name,
                    m.method,
                    m.cells().join(" | ")
                );
            }
        }
    }
    let s3: Vec<(&str, &BTreeMap<String, f64>)> = report
        .workloads
        .iter()
        .flat_map(|w| {
            w.results
                .iter()
                .filter_map(|m| Some((w.name.as_str(), m.s3_requests.as_ref()?)))
        })
        .collect();
    if !s3.is_empty() {
        let _ = writeln!(
            md,
            "\nS3 requests per segment, counted by Garage (`api_s3_request_counter` of its admin \
             `/metrics`, read before and after each run){}:\n",
            report
                .garage_peak_rss_mib
                .map(|m| format!("; Garage's own peak RSS was {m:.0} MiB, not in the server's"))
                .unwrap_or_default()
        );
        for (name, requests) in s3 {
            let _ = writeln!(md, "- {name}: {}", requests_text(requests));
        }
    }
    md
}

const RESULTS_START: &str = "<!-- bench results: written by `wal-archiver bench` -->";
const RESULTS_END: &str = "<!-- end of bench results -->";

/// Replaces the results block of a hand-written BENCHMARKS.md, keeping the
/// analysis around it; appends the block if there is none.
pub(super) fn splice_results(previous: &str, results: &str) -> String {
    splice(previous, RESULTS_START, RESULTS_END, results)
}

/// Replaces the block between `start` and `end` in `previous`.
pub(super) fn splice(previous: &str, start: &str, end: &str, results: &str) -> String {
    let block = format!("{start}\n{results}{end}\n");
    match (previous.find(start), previous.find(end)) {
        (Some(from), Some(to)) if to > from => {
            format!(
                "{}{block}{}",
                &previous[..from],
                &previous[to + end.len()..].trim_start_matches('\n')
            )
        }
        _ if previous.is_empty() => format!("# Benchmarks\n\n{block}"),
        _ => format!("{previous}\n{block}"),
    }
}

pub(super) fn chart(results: &[WorkloadResult], path: &Path) -> Result<(), BenchError> {
    use plotters::prelude::*;
    let contenders: Vec<(Contender, &str, RGBColor)> = [
        (
            Contender::Baseline,
            "in-database baseline",
            RGBColor(200, 90, 80),
        ),
        (Contender::ZstdCli, "zstd CLI", RGBColor(120, 120, 120)),
        (
            Contender::Service,
            "wal-archiver service",
            RGBColor(60, 110, 190),
        ),
        (
            Contender::ServiceS3,
            "wal-archiver service, S3",
            RGBColor(90, 170, 120),
        ),
    ]
    .into_iter()
    .filter(|(c, _, _)| {
        results
            .iter()
            .any(|w| w.results.iter().any(|m| m.contender == *c))
    })
    .collect();
    let max = results
        .iter()
        .flat_map(|w| w.results.iter().map(|m| m.mib_per_sec))
        .fold(1.0, f64::max)
        * 1.15;
    let failed =
        |e: &dyn std::fmt::Display| BenchError::Failed(format!("drawing {}: {e}", path.display()));
    let root = SVGBackend::new(path, (1040, 420)).into_drawing_area();
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
    let width = 0.76 / contenders.len().max(1) as f64;
    for (k, &(contender, label, color)) in contenders.iter().enumerate() {
        let bars = results.iter().enumerate().filter_map(move |(i, w)| {
            let m = w.results.iter().find(|m| m.contender == contender)?;
            let left = i as f64 + 0.12 + k as f64 * width;
            Some(Rectangle::new(
                [(left, 0.0), (left + width * 0.96, m.mib_per_sec)],
                color.filled(),
            ))
        });
        chart
            .draw_series(bars)
            .map_err(|e| failed(&e))?
            .label(label)
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
