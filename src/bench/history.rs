//! `wal-archiver bench --history N`: what a long history costs. The same
//! load — one client polling GetShard of a shard with N archived jobs while
//! another shard pushes 1 MiB segments — on an empty jobs database and on one
//! seeded with N archived jobs. Reading a shard's status must cost the same
//! whatever its history, and must not hold up other shards' acknowledgements.

use std::path::Path;
use std::time::{Duration, Instant};

use super::contenders::ServerProcess;
use super::report::{percentile_ms, splice};
use super::{BenchError, io, reset_dir};
use crate::client::{Client, PushOptions, RetryPolicy};
use crate::store::JobDb;

const START: &str = "<!-- bench history results: written by `wal-archiver bench --history` -->";
const END: &str = "<!-- end of bench history results -->";
/// Pushes measured per run: 1 MiB segments on a second shard.
const PUSHES: u64 = 60;
/// Clients polling GetShard meanwhile.
const POLLERS: usize = 4;

struct Run {
    history: u64,
    shard_p50: f64,
    shard_p99: f64,
    shard_calls: usize,
    ack_p50: f64,
    ack_p99: f64,
}

/// Runs both cases, prints them, and writes them into `markdown` if given.
pub async fn run(work_dir: &Path, history: u64, markdown: Option<&Path>) -> Result<(), BenchError> {
    let segment = work_dir.join("history-segment.wal");
    std::fs::create_dir_all(work_dir).map_err(io("creating the work dir"))?;
    std::fs::write(
        &segment,
        crate::walgen::EventGenerator::new(7).segment(1 << 20),
    )
    .map_err(io("writing the segment"))?;
    let mut runs = Vec::new();
    for jobs in [0, history] {
        eprintln!("bench: GetShard and acks with {jobs} archived jobs on shard 1");
        runs.push(one(work_dir, jobs, &segment).await?);
    }
    let text = report(&runs);
    println!("\n{text}");
    if let Some(path) = markdown {
        let previous = std::fs::read_to_string(path).unwrap_or_default();
        std::fs::write(path, splice(&previous, START, END, &text))
            .map_err(io(format!("writing {}", path.display())))?;
    }
    Ok(())
}

async fn one(work_dir: &Path, history: u64, segment: &Path) -> Result<Run, BenchError> {
    let data_dir = work_dir.join(format!("history-{history}"));
    reset_dir(&data_dir)?;
    seed(&data_dir, history)?;
    let server = ServerProcess::start(&data_dir)?;
    let client = Client::connect(&server.url)
        .await?
        .retry_policy(RetryPolicy::none());
    // Shard 1 exists in both runs.
    client
        .push_file(1, history + 1, segment, &PushOptions::default())
        .await?;

    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pollers: Vec<_> = (0..POLLERS)
        .map(|_| {
            let (client, done) = (client.clone(), done.clone());
            tokio::spawn(async move {
                let mut samples = Vec::new();
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    let started = Instant::now();
                    client.shard(1).await?;
                    samples.push(started.elapsed());
                }
                Ok::<_, BenchError>(samples)
            })
        })
        .collect();
    let mut acks = Vec::new();
    for log_id in 1..=PUSHES {
        let started = Instant::now();
        client
            .push_file(2, log_id, segment, &PushOptions::default())
            .await?;
        acks.push(started.elapsed());
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut shard_calls: Vec<Duration> = Vec::new();
    for poller in pollers {
        shard_calls.extend(
            poller
                .await
                .map_err(|e| BenchError::Failed(e.to_string()))??,
        );
    }
    shard_calls.sort();
    acks.sort();
    Ok(Run {
        history,
        shard_p50: percentile_ms(&shard_calls, 0.50).unwrap_or(0.0),
        shard_p99: percentile_ms(&shard_calls, 0.99).unwrap_or(0.0),
        shard_calls: shard_calls.len(),
        ack_p50: percentile_ms(&acks, 0.50).unwrap_or(0.0),
        ack_p99: percentile_ms(&acks, 0.99).unwrap_or(0.0),
    })
}

/// A jobs database whose shard 1 archived `jobs` segments (log_ids 1..=jobs),
/// written through the real schema, so its triggers keep the counters as a
/// running server would have.
fn seed(data_dir: &Path, jobs: u64) -> Result<(), BenchError> {
    let path = data_dir.join("jobs.db");
    drop(JobDb::open(&path).map_err(|e| BenchError::Failed(e.to_string()))?);
    let failed =
        |e: rusqlite::Error| BenchError::Failed(format!("seeding {}: {e}", path.display()));
    let mut conn = rusqlite::Connection::open(&path).map_err(failed)?;
    let tx = conn.transaction().map_err(failed)?;
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO jobs (shard_id, log_id, state, size, sha256, kind, ack, zstd_level, archive_size,
                                   created_ms, updated_ms)
                 VALUES (1, ?1, 'ARCHIVED', 16777216, ?2, 'raw', 'queued', 3, 2097152, ?3, ?3)",
            )
            .map_err(failed)?;
        for log_id in 1..=jobs {
            let sha = crate::types::Digest::of(&log_id.to_le_bytes());
            insert
                .execute(rusqlite::params![
                    log_id as i64,
                    sha.0.to_vec(),
                    log_id as i64
                ])
                .map_err(failed)?;
        }
    }
    tx.commit().map_err(failed)
}

fn report(runs: &[Run]) -> String {
    let mut text = String::from(
        "| archived jobs on shard 1 | GetShard(1) p50 / p99 ms (calls) | shard 2 push ack p50 / p99 ms |\n\
         |---:|---:|---:|\n",
    );
    for run in runs {
        text.push_str(&format!(
            "| {} | {:.2} / {:.2} ({}) | {:.1} / {:.1} |\n",
            run.history, run.shard_p50, run.shard_p99, run.shard_calls, run.ack_p50, run.ack_p99
        ));
    }
    text
}
