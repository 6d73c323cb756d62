//! Restore rows: getting a segment back through the service against the stock
//! `zstd -d` on the same archive file.
//!
//! Both run as child processes and both outputs are fsynced: `wal-archiver
//! restore` (which writes a temporary file, fsyncs it, renames it into place
//! and fsyncs the directory) against `zstd -d ARCHIVE -o OUT` followed by an
//! fsync of OUT from here. The archive is read from the page cache either way.
//! The two alternate, run after run, so a noisy moment hits both; each row is
//! the median run. The service's CPU is the restore process's plus what the
//! server spent meanwhile; its peak RSS is the restore process's own.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::child::{ChildUsage, run_measured};
use super::contenders::{ServerProcess, sync_file};
use super::report::{RESTORE_SERVICE, RESTORE_ZSTD, mib};
use super::{BenchError, RestoreMeasurement, RestoreResult, Workload, file_size, kind_name};

/// Restores the workload's first segment (shard 1, log_id 1) from `server`
/// (whose data dir is `data_dir`) `runs` times, and decodes its archive with
/// `zstd -d` as often.
pub(super) fn measure_restore(
    workload: &Workload,
    server: &ServerProcess,
    data_dir: &Path,
    runs: usize,
) -> Result<RestoreResult, BenchError> {
    let log_id = 1u64;
    let name = format!(
        "{} MiB {} segment",
        file_size(&workload.files[0]) >> 20,
        kind_name(workload.kind)
    );
    eprintln!("bench: restore, {name}");
    let archive = data_dir
        .join("archives")
        .join("shard-1")
        .join(format!("{log_id:020}{}", crate::store::ARCHIVE_SUFFIX));
    if !archive.exists() {
        return Err(BenchError::Failed(format!(
            "no archive at {}",
            archive.display()
        )));
    }
    let out_dir = data_dir.join("restored");
    super::reset_dir(&out_dir)?;
    let restored = out_dir.join("by-service.wal");
    let decoded = out_dir.join("by-zstd.wal");
    let exe =
        std::env::current_exe().map_err(crate::bench::io("finding the wal-archiver binary"))?;

    let mut service = Vec::new();
    let mut zstd = Vec::new();
    // Each output is removed once measured: a large segment's two copies
    // need not share the disk.
    let (mut restored_size, mut decoded_size) = (0, 0);
    for _ in 0..runs.max(1) {
        let mut command = Command::new(&exe);
        command
            .args(["restore", "--shard", "1", "--log-id", &log_id.to_string()])
            .arg("-o")
            .arg(&restored)
            .args(["--server", &server.url])
            .stderr(Stdio::null());
        let server_cpu = server.cpu_secs()?;
        let mut usage = run_then_sync("wal-archiver restore", command, &restored)?;
        usage.cpu_secs += server.cpu_secs()? - server_cpu;
        service.push(usage);
        restored_size = file_size(&restored);
        let _ = std::fs::remove_file(&restored);

        let mut command = Command::new("zstd");
        command
            .args(["-d", "-q", "-f"])
            .arg(&archive)
            .arg("-o")
            .arg(&decoded);
        zstd.push(run_then_sync("zstd -d", command, &decoded)?);
        decoded_size = file_size(&decoded);
        let _ = std::fs::remove_file(&decoded);
    }
    let _ = std::fs::remove_dir_all(&out_dir);
    if restored_size == 0 || restored_size != decoded_size {
        return Err(BenchError::Failed(format!(
            "restore wrote {restored_size} bytes, zstd -d {decoded_size}"
        )));
    }
    let size = restored_size;
    let zstd = median(&zstd, size, None);
    let service = median(&service, size, Some(zstd.wall_secs));
    Ok(RestoreResult {
        name,
        kind: workload.kind,
        big: workload.big,
        size_mib: mib(size),
        runs: runs.max(1),
        results: vec![zstd, service],
    })
}

/// Runs a restoring child, then fsyncs what it wrote (a no-op for
/// `wal-archiver restore`, which has), inside the timed span.
fn run_then_sync(what: &str, command: Command, output: &Path) -> Result<ChildUsage, BenchError> {
    let started = std::time::Instant::now();
    let mut usage = run_measured(what, command)?;
    sync_file(output)?;
    usage.wall = started.elapsed();
    Ok(usage)
}

/// The median run by wall time; the largest peak RSS of all runs.
fn median(runs: &[ChildUsage], size: u64, zstd_wall: Option<f64>) -> RestoreMeasurement {
    let mut by_wall: Vec<&ChildUsage> = runs.iter().collect();
    by_wall.sort_by_key(|u| u.wall);
    let middle = by_wall[(by_wall.len() - 1) / 2];
    let wall = middle.wall.max(Duration::from_micros(1)).as_secs_f64();
    RestoreMeasurement {
        method: if zstd_wall.is_some() {
            RESTORE_SERVICE
        } else {
            RESTORE_ZSTD
        },
        wall_secs: wall,
        vs_zstd: wall / zstd_wall.unwrap_or(wall),
        mib_per_sec: mib(size) / wall,
        cpu_secs: middle.cpu_secs,
        peak_rss_mib: mib(runs.iter().map(|u| u.peak_rss).max().unwrap_or(0)),
    }
}
