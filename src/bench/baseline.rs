//! The in-database baseline, run as `wal-archiver bench-baseline` in a process
//! of its own: what a database without this service does in its flush path.
//!
//! For JSON-lines WAL (an event store): read the whole file, parse every line
//! into an entry, serialize header + entries as one MessagePack value,
//! `zstd::encode_all`, write, `sync_all`. For opaque WAL (PostgreSQL's), there
//! is nothing to parse: read, `zstd::encode_all`, write, `sync_all`.
//!
//! The content kind comes from the `BASELINE_KIND_ENV` variable (`raw`, or
//! JSON lines when unset), so the hidden subcommand keeps its arguments.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::*;
use crate::types::ContentKind;

/// Names the baseline's content kind for its child process: `raw` or `json_lines`.
pub(super) const BASELINE_KIND_ENV: &str = "WAL_ARCHIVER_BENCH_BASELINE_KIND";

/// The in-database baseline, run by `wal-archiver bench-baseline` in its own
/// process: `shards` threads, each archiving every file one at a time.
pub fn baseline(
    files: &[PathBuf],
    out_dir: &Path,
    level: i32,
    shards: usize,
) -> Result<(), BenchError> {
    let kind = match std::env::var(BASELINE_KIND_ENV) {
        Ok(kind) => kind
            .parse()
            .map_err(|e| BenchError::Failed(format!("{BASELINE_KIND_ENV}: {e}")))?,
        Err(_) => ContentKind::JsonLines,
    };
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..shards)
            .map(|shard| {
                scope.spawn(move || -> Result<(), BenchError> {
                    for (i, file) in files.iter().enumerate() {
                        let output = out_dir.join(format!("{shard}-{i}.zst"));
                        match kind {
                            ContentKind::JsonLines => baseline_json(file, &output, level)?,
                            ContentKind::Raw => baseline_raw(file, &output, level)?,
                        }
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

fn baseline_json(input: &Path, output: &Path, level: i32) -> Result<(), BenchError> {
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
    write_compressed(&packed, output, level)
}

fn baseline_raw(input: &Path, output: &Path, level: i32) -> Result<(), BenchError> {
    let bytes = std::fs::read(input).map_err(io(format!("reading {}", input.display())))?;
    write_compressed(&bytes, output, level)
}

fn write_compressed(bytes: &[u8], output: &Path, level: i32) -> Result<(), BenchError> {
    let compressed = zstd::encode_all(bytes, level).map_err(io("compressing"))?;
    let mut file =
        std::fs::File::create(output).map_err(io(format!("creating {}", output.display())))?;
    std::io::Write::write_all(&mut file, &compressed)
        .map_err(io(format!("writing {}", output.display())))?;
    file.sync_all()
        .map_err(io(format!("syncing {}", output.display())))
}
