//! Opaque WAL for the `raw` workload, made from the real PostgreSQL segments
//! of the corpus (`*.zst`, decompressed with the stock `zstd`).
//!
//! The corpus segments, in name order, are one stretch of a real WAL stream
//! (two 16 MiB segments: 32 MiB). Segment `i` of `size` bytes is the slice of
//! that stream starting at `i × size`, read cyclically: with 16 MiB segments
//! the first two are the real ones, byte for byte. Each time the cut wraps
//! around the stream it moves on by `LAP_SHIFT` (37 WAL pages, 296 KiB), so no
//! segment repeats an earlier one (for the first stream ÷ `LAP_SHIFT` laps,
//! about 110 here) and no two archives are alike. Every slice
//! starts at a WAL page boundary, as a real segment does. Nothing is random:
//! the same corpus and size give the same bytes on every machine.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{BenchError, file_size, io};

/// PostgreSQL's WAL page.
const WAL_PAGE: usize = 8 << 10;
/// How far each lap around the corpus stream moves the cut.
const LAP_SHIFT: usize = 37 * WAL_PAGE;

/// Writes `count` raw segments of `size` bytes to `dir` (kept if they are
/// there already) and returns their paths.
pub(super) fn raw_segments(
    corpus: &Path,
    dir: &Path,
    count: u64,
    size: usize,
) -> Result<Vec<PathBuf>, BenchError> {
    let paths: Vec<PathBuf> = (1..=count)
        .map(|id| dir.join(format!("raw-{id:05}.wal")))
        .collect();
    if paths.iter().all(|p| file_size(p) == size as u64) {
        return Ok(paths);
    }
    let stream = corpus_stream(corpus, &dir.join("corpus"))?;
    eprintln!(
        "bench: cutting {count} × {} MiB of raw WAL from {} MiB of PostgreSQL WAL in {}",
        size >> 20,
        stream.len() >> 20,
        corpus.display()
    );
    for (i, path) in paths.iter().enumerate() {
        std::fs::write(path, segment(&stream, i, size))
            .map_err(io(format!("writing {}", path.display())))?;
    }
    Ok(paths)
}

/// Segment `index` of `size` bytes, cut from `stream` as the module says.
fn segment(stream: &[u8], index: usize, size: usize) -> Vec<u8> {
    let start = index * size;
    let lap = start / stream.len();
    let mut at = (start + lap * LAP_SHIFT) % stream.len();
    let mut out = Vec::with_capacity(size);
    while out.len() < size {
        let take = (size - out.len()).min(stream.len() - at);
        out.extend_from_slice(&stream[at..at + take]);
        at = 0;
    }
    out
}

/// The corpus segments decompressed into `cache` and concatenated in name order.
fn corpus_stream(corpus: &Path, cache: &Path) -> Result<Vec<u8>, BenchError> {
    let mut sources: Vec<PathBuf> = std::fs::read_dir(corpus)
        .map_err(io(format!(
            "reading the WAL corpus {} (see --corpus)",
            corpus.display()
        )))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "zst"))
        .collect();
    sources.sort();
    if sources.is_empty() {
        return Err(BenchError::Failed(format!(
            "no *.zst segments in {} (see --corpus)",
            corpus.display()
        )));
    }
    std::fs::create_dir_all(cache).map_err(io(format!("creating {}", cache.display())))?;
    let mut stream = Vec::new();
    for source in sources {
        let out = cache.join(source.file_stem().unwrap_or_default());
        if !out.exists() {
            let status = Command::new("zstd")
                .args(["-d", "-q", "-f"])
                .arg(&source)
                .arg("-o")
                .arg(&out)
                .status()
                .map_err(io("running zstd -d"))?;
            if !status.success() {
                return Err(BenchError::Failed(format!(
                    "zstd -d {} failed",
                    source.display()
                )));
            }
        }
        stream.extend(std::fs::read(&out).map_err(io(format!("reading {}", out.display())))?);
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_the_stream_in_order_then_shifts_each_lap() {
        let stream: Vec<u8> = (0..4 * LAP_SHIFT).map(|i| (i / WAL_PAGE) as u8).collect();
        let size = 2 * LAP_SHIFT;
        // First lap: the stream itself, cut in order.
        assert_eq!(segment(&stream, 0, size), stream[..size]);
        assert_eq!(segment(&stream, 1, size), stream[size..]);
        // Second lap: shifted, so not a repeat.
        let third = segment(&stream, 2, size);
        assert_eq!(third, stream[LAP_SHIFT..LAP_SHIFT + size]);
        assert_ne!(third, segment(&stream, 0, size));
        // A cut that wraps continues at the stream's start.
        let wrapped = segment(&stream, 3, size);
        assert_eq!(wrapped[..LAP_SHIFT], stream[3 * LAP_SHIFT..]);
        assert_eq!(wrapped[LAP_SHIFT..], stream[..LAP_SHIFT]);
    }
}
