//! What a run prints and writes: the table, the BENCHMARKS.md results block,
//! and the SVG chart.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::*;

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

pub(super) fn table(results: &[WorkloadResult]) -> String {
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

pub(super) fn markdown(results: &[WorkloadResult], options: &BenchOptions) -> String {
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
