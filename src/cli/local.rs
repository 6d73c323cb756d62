//! Subcommands that work on local files only: inspect an archive, generate
//! WAL to try things out, and the benchmark.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

#[cfg(feature = "bench")]
use super::args::BenchArgs;
use wal_archiver::archive::{ArchiveReader, read_metadata};

pub fn inspect(path: &Path, verify: bool, json: bool) -> anyhow::Result<ExitCode> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let metadata = if verify {
        let mut reader = ArchiveReader::open(file)?;
        reader.copy_to(&mut std::io::sink())?;
        reader
            .metadata()
            .context("archive verified but its footer was not read")?
    } else {
        read_metadata(file)?
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&metadata)?);
    } else {
        let h = &metadata;
        println!("format version   {}", h.format_version);
        println!("shard / log_id   {} / {}", h.shard_id, h.log_id);
        println!("content kind     {}", h.content_kind.as_str());
        println!("original size    {} bytes", h.original_size);
        println!(
            "compressed size  {} bytes (archive file {} bytes)",
            metadata.compressed_size, metadata.archive_size
        );
        println!("sha256           {}", h.sha256);
        println!("zstd level       {}", h.zstd_level);
        println!("created (unix ms) {}", h.created_unix_ms);
        if let Some(stats) = &metadata.json {
            println!("json entries     {}", stats.entries);
            if let (Some(first), Some(last)) = (stats.first_timestamp, stats.last_timestamp) {
                println!("timestamps       {first} .. {last}");
            }
        }
        if verify {
            println!("verified         SHA-256 matches");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn generate(
    dir: &Path,
    segments: u64,
    size: usize,
    first_id: u64,
    seed: u64,
) -> anyhow::Result<ExitCode> {
    let paths = wal_archiver::walgen::write_wal_dir(dir, segments, size, first_id, seed)
        .with_context(|| format!("writing segments to {}", dir.display()))?;
    println!("wrote {} segments to {}", paths.len(), dir.display());
    Ok(ExitCode::SUCCESS)
}

#[cfg(feature = "bench")]
pub async fn bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    use wal_archiver::bench::BenchOptions;
    if let Some(jobs) = args.history {
        let markdown = (!args.quick).then_some(args.out.as_path());
        wal_archiver::bench::history::run(&args.work_dir, jobs, markdown).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let s3 = args.s3.then_some(args.garage_script);
    let options = if args.quick {
        BenchOptions {
            work_dir: args.work_dir,
            segments: 4,
            segment_size: 1 << 20,
            big_segment_size: 16 << 20,
            shard_counts: vec![1, 4],
            level: args.level,
            concurrency: args.concurrency,
            corpus: args.corpus,
            restore_runs: 3,
            s3,
            markdown: None,
            chart: None,
        }
    } else {
        BenchOptions {
            work_dir: args.work_dir,
            segments: args.segments,
            segment_size: args.segment_mib << 20,
            big_segment_size: args.big_mib << 20,
            shard_counts: args.shards,
            level: args.level,
            concurrency: args.concurrency,
            corpus: args.corpus,
            restore_runs: args.restore_runs,
            s3,
            markdown: Some(args.out),
            chart: Some(args.chart),
        }
    };
    wal_archiver::bench::run(options).await?;
    Ok(ExitCode::SUCCESS)
}
