//! A database flush path on `client::FlushPath`: closed WAL segments are handed
//! off without waiting (not even for the network), followed to ARCHIVED,
//! pushed again when they fail for a reason that passes, reported when they
//! cannot be archived, and deleted only at or below the shard's watermark as
//! the server reports it.
//!
//! With `--wal-dir`, it watches a real WAL directory: every `wal-<id>.log`
//! below the newest (the one still being written) is closed and handed off;
//! Ctrl-C stops it and lists what was not archived yet. Without, it plays the
//! database itself, writing segments into a temporary directory.
//!
//! Run a server (`wal-archiver serve`), then:
//! `cargo run --example flush_worker -- [--server URL] [--shard N] [--wal-dir DIR]
//!  [--token T | WAL_ARCHIVER_TOKEN] [--ca PEM] [--cert PEM --key PEM]`

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use wal_archiver::client::{
    Client, Connection, DEFAULT_SERVER, FlushEvent, FlushOptions, FlushPath,
};
use wal_archiver::types::{ContentKind, LogId};
use wal_archiver::walgen::EventGenerator;

#[derive(Parser)]
struct Args {
    /// Server URL (https:// for TLS).
    #[arg(long, env = "WAL_ARCHIVER_SERVER", default_value = DEFAULT_SERVER)]
    server: String,
    #[arg(long, default_value_t = 1)]
    shard: u32,
    /// WAL directory to watch; without it, a demo writes segments itself.
    #[arg(long)]
    wal_dir: Option<PathBuf>,
    /// Seconds between scans of the WAL directory.
    #[arg(long, default_value_t = 2)]
    scan_interval: u64,
    /// Keep WAL files after they are archived.
    #[arg(long)]
    keep: bool,
    /// Bearer token, when the server has a tokens file.
    #[arg(long, env = "WAL_ARCHIVER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// PEM CA of the server's certificate.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// PEM client certificate, when the server verifies clients.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// PEM key of the client certificate.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
}

const DEMO_SEGMENTS: u64 = 20;
const DEMO_SEGMENT_SIZE: usize = 1 << 20;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let connection = Connection {
        url: args.server.clone(),
        ca: args.ca.clone(),
        cert: args.cert.clone(),
        key: args.key.clone(),
        token: args.token.clone(),
    };
    let (wal_dir, demo) = match &args.wal_dir {
        Some(dir) => (dir.clone(), None),
        None => {
            let temp = tempfile::tempdir()?;
            (temp.path().to_owned(), Some(temp))
        }
    };
    let options = FlushOptions {
        kind: ContentKind::JsonLines,
        delete_archived: !args.keep,
        on_event: Some(Arc::new(print_event)),
        ..FlushOptions::default()
    };
    let flush = FlushPath::connect(&connection, args.shard, &wal_dir, options).await?;

    if demo.is_some() {
        write_demo_segments(&flush).await?;
    } else {
        let mut scan = tokio::time::interval(Duration::from_secs(args.scan_interval.max(1)));
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = scan.tick() => {
                    // The newest segment is still being written.
                    let newest = Client::wal_files(&wal_dir, LogId::MAX)?.last().map(|(id, _)| *id);
                    if let Some(newest) = newest {
                        flush.hand_off_dir(newest)?;
                    }
                }
            }
        }
    }
    println!("stats: {:?}", flush.stats());
    for (log_id, path) in flush.shutdown().await {
        println!("not archived yet: wal-{log_id}.log ({})", path.display());
    }
    Ok(())
}

/// The database: write a segment, close it, hand it off, go on; then wait
/// (at most a minute) for the flush path to settle them all.
async fn write_demo_segments(flush: &FlushPath) -> anyhow::Result<()> {
    let mut events = EventGenerator::new(7);
    let first_log_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        * 1000;
    for n in 0..DEMO_SEGMENTS {
        let log_id = first_log_id + n;
        let path = flush.wal_dir().join(format!("wal-{log_id}.log"));
        std::fs::write(&path, events.segment(DEMO_SEGMENT_SIZE))?;
        let started = std::time::Instant::now();
        flush.hand_off(log_id, path)?;
        println!(
            "flush: closed wal-{log_id}.log, handed off in {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while tokio::time::Instant::now() < deadline {
        let stats = flush.stats();
        if stats.pending == 0 && stats.deleted + stats.held == DEMO_SEGMENTS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

fn print_event(event: &FlushEvent) {
    match event {
        FlushEvent::Archived { log_id, job_id } => {
            println!("archiver: wal-{log_id}.log ARCHIVED (job {job_id})")
        }
        FlushEvent::Retrying {
            log_id,
            reason,
            attempt,
        } => println!("archiver: wal-{log_id}.log retry {attempt}: {reason}"),
        FlushEvent::Permanent { log_id, reason } => {
            println!("archiver: wal-{log_id}.log CANNOT BE ARCHIVED, kept on disk: {reason}")
        }
        FlushEvent::Deleted { log_id, .. } => {
            println!("cleaner: wal-{log_id}.log deleted (at or below the watermark)")
        }
    }
}
