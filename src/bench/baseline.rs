//! The in-database baseline, run as `wal-archiver bench-baseline` in a process
//! of its own: what an event database does in its flush path today.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::*;

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
