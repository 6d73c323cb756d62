//! A database flush path that hands its closed WAL segments to wal-archiver
//! without ever waiting for compression.
//!
//! The flush path only does `try_send` on a bounded channel: it never blocks.
//! An archiver task pushes each closed segment with ack QUEUED (the reply comes
//! once the bytes are durable in the service's spool, not after compression);
//! a cleaner task deletes local WAL only at or below the shard's archived
//! watermark. A segment that did not fit in the channel stays on disk and is
//! picked up by the next directory sweep.
//!
//! Run a server (`wal-archiver serve`), then:
//! `cargo run --example flush_worker -- [http://127.0.0.1:50051]`

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;
use wal_archiver::client::{Client, PushOptions};
use wal_archiver::types::{ContentKind, LogId};
use wal_archiver::walgen::EventGenerator;

const SHARD: u32 = 1;
const SEGMENTS: u64 = 20;
const SEGMENT_SIZE: usize = 1 << 20;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let server = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let client = Client::connect(&server).await?;
    let wal_dir = tempfile::tempdir()?;
    let (closed_tx, closed_rx) = mpsc::channel::<(LogId, PathBuf)>(8);

    let archiver = tokio::spawn(archive_closed_segments(client.clone(), closed_rx));
    let cleaner = tokio::spawn(delete_archived(
        client.clone(),
        wal_dir.path().to_owned(),
        SEGMENTS,
    ));

    // The database: write a segment, close it, tell the archiver, go on.
    let mut events = EventGenerator::new(7);
    let first_log_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        * 1000;
    for n in 0..SEGMENTS {
        let log_id = first_log_id + n;
        let path = wal_dir.path().join(format!("wal-{log_id}.log"));
        std::fs::write(&path, events.segment(SEGMENT_SIZE))?;
        let started = std::time::Instant::now();
        if closed_tx.try_send((log_id, path)).is_err() {
            println!("flush: archiver busy, wal-{log_id}.log waits on disk for the next sweep");
        }
        println!(
            "flush: closed wal-{log_id}.log, handed off in {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(closed_tx);
    archiver.await??;
    // Sweep what the channel could not take: everything below the next log id.
    let options = PushOptions {
        kind: ContentKind::JsonLines,
        ..PushOptions::default()
    };
    let dir_options = wal_archiver::client::DirOptions::default();
    client
        .push_wal_dir(
            SHARD,
            wal_dir.path(),
            first_log_id + SEGMENTS,
            &options,
            dir_options,
        )
        .await?;
    cleaner.await??;
    println!("all {SEGMENTS} segments archived and deleted locally");
    Ok(())
}

async fn archive_closed_segments(
    client: Client,
    mut closed: mpsc::Receiver<(LogId, PathBuf)>,
) -> anyhow::Result<()> {
    let options = PushOptions {
        kind: ContentKind::JsonLines,
        ..PushOptions::default()
    };
    while let Some((log_id, path)) = closed.recv().await {
        let pushed = client.push_file(SHARD, log_id, &path, &options).await?;
        println!(
            "archiver: wal-{log_id}.log acknowledged {} as job {}",
            pushed.job.state, pushed.job.id
        );
    }
    Ok(())
}

/// Deletes local segments at or below the watermark, until `total` are gone.
async fn delete_archived(client: Client, wal_dir: PathBuf, total: u64) -> anyhow::Result<()> {
    let mut deleted = 0;
    while deleted < total {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Some(watermark) = client
            .shard(SHARD)
            .await
            .ok()
            .and_then(|s| s.archived_watermark)
        else {
            continue;
        };
        for (log_id, path) in Client::wal_files(&wal_dir, watermark.saturating_add(1))? {
            remove(&path)?;
            deleted += 1;
            println!("cleaner: watermark {watermark}, deleted wal-{log_id}.log");
        }
    }
    Ok(())
}

fn remove(path: &Path) -> std::io::Result<()> {
    std::fs::remove_file(path)
}
