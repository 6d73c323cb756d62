//! The kill test: shards push while the real server is SIGKILLed at random
//! moments (receiving, queued, compressing, renaming), then restarted on the
//! same data dir. Every acknowledged segment must end ARCHIVED and restore
//! byte-exact; nothing is archived twice; no temporary or spool file outlives
//! the queue; an unacknowledged segment pushed again succeeds.
//!
//! `WAL_ARCHIVER_KILL_ROUNDS` (default 30) and `WAL_ARCHIVER_KILL_SEED` vary it.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::Cursor;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use wal_archiver::client::{Client, PushOptions, RetryPolicy};
use wal_archiver::types::{AckLevel, ContentKind, Digest, JobFilter, JobState};

const SHARDS: u32 = 4;

/// A segment is a pure function of (shard, log_id): nothing needs keeping.
fn segment(shard: u32, log_id: u64) -> Vec<u8> {
    let mix = (shard as u64)
        .wrapping_mul(0x9E37_79B9)
        .wrapping_add(log_id.wrapping_mul(0x85EB_CA6B));
    let size = (32 << 10) + (mix % (480 << 10)) as usize;
    json_segment(shard as u64 * 1_000_000 + log_id, size)
}

fn options(shard: u32, log_id: u64) -> PushOptions {
    PushOptions {
        kind: ContentKind::JsonLines,
        ack: if (shard as u64 + log_id).is_multiple_of(3) {
            AckLevel::Archived
        } else {
            AckLevel::Queued
        },
        // Some slow jobs, so kills also land mid-compression.
        zstd_level: Some(if (shard as u64 * 7 + log_id).is_multiple_of(4) {
            12
        } else {
            3
        }),
        chunk_size: 64 << 10,
        progress: None,
    }
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    }
}

#[derive(Default)]
struct Ledger {
    /// (shard, log_id) → job id, for every push that was acknowledged.
    acknowledged: BTreeMap<(u32, u64), u64>,
    unacknowledged: Vec<(u32, u64)>,
    /// Segments already restored and compared, so each is restored once.
    restored: std::collections::HashSet<(u32, u64)>,
    /// Segments seen ARCHIVED (final: never waited for again).
    archived: std::collections::HashSet<(u32, u64)>,
}

async fn push(client: &Client, shard: u32, log_id: u64) -> Result<u64, String> {
    let data = segment(shard, log_id);
    let size = Some(data.len() as u64);
    client
        .push_reader(
            shard,
            log_id,
            size,
            Cursor::new(data),
            &options(shard, log_id),
        )
        .await
        .map(|pushed| pushed.job.id.0)
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_at_random_moments_loses_nothing_acknowledged() {
    let rounds: u32 = std::env::var("WAL_ARCHIVER_KILL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let seed: u64 = std::env::var("WAL_ARCHIVER_KILL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2026);
    println!("kill test: {rounds} rounds, seed {seed}");
    let started = Instant::now();
    let mut rng = Rng(seed);
    let mut server = Server::start(&["--archive-parallelism", "2", "--multithread-min-size", "0"]);
    let next_log: Arc<Vec<std::sync::atomic::AtomicU64>> = Arc::new(
        (0..SHARDS)
            .map(|_| std::sync::atomic::AtomicU64::new(1))
            .collect(),
    );
    let mut ledger = Ledger::default();
    let (mut kills, mut repushed, mut verified) = (0u32, 0u64, 0u64);

    for round in 0..rounds {
        let client = server.client().await.retry_policy(RetryPolicy::none());
        let stop = Arc::new(AtomicBool::new(false));
        let mut shards = Vec::new();
        for shard in 1..=SHARDS {
            let (client, stop, next_log) = (client.clone(), stop.clone(), next_log.clone());
            shards.push(tokio::spawn(async move {
                let mut outcomes = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    let log_id = next_log[shard as usize - 1].fetch_add(1, Ordering::SeqCst);
                    outcomes.push((shard, log_id, push(&client, shard, log_id).await));
                }
                outcomes
            }));
        }
        tokio::time::sleep(Duration::from_millis(rng.below(400))).await;
        stop.store(true, Ordering::SeqCst);
        server.kill();
        kills += 1;
        for shard in shards {
            for (shard, log_id, outcome) in shard.await.unwrap() {
                match outcome {
                    Ok(job_id) => {
                        assert!(
                            ledger
                                .acknowledged
                                .insert((shard, log_id), job_id)
                                .is_none()
                        );
                    }
                    Err(_) => ledger.unacknowledged.push((shard, log_id)),
                }
            }
        }

        server.restart();
        let client = server.client().await;
        // Unacknowledged segments pushed again succeed (some had in fact been committed).
        for (shard, log_id) in std::mem::take(&mut ledger.unacknowledged) {
            let job_id = push(&client, shard, log_id).await.unwrap_or_else(|e| {
                panic!("round {round}: re-push of shard {shard} log_id {log_id} failed: {e}")
            });
            ledger.acknowledged.insert((shard, log_id), job_id);
            repushed += 1;
        }
        let full = round % 5 == 4 || round + 1 == rounds;
        verified += check(&server, &client, &mut ledger, full, round).await;
    }

    let client = server.client().await;
    for shard in 1..=SHARDS {
        let highest = next_log[shard as usize - 1].load(Ordering::SeqCst) - 1;
        let status = client.shard(shard).await.unwrap();
        assert_eq!(
            status.archived_watermark,
            Some(highest),
            "shard {shard}: {status:?}"
        );
    }
    println!(
        "kill test: {kills} kills, {} pushes acknowledged, {verified} restores verified byte-exact, \
         {repushed} unacknowledged re-pushed OK, in {:.0} s",
        ledger.acknowledged.len(),
        started.elapsed().as_secs_f64()
    );
}

/// Waits for every acknowledged job and checks the invariants; with `full`
/// also restores every segment. Returns how many restores it verified.
async fn check(
    server: &Server,
    client: &Client,
    ledger: &mut Ledger,
    full: bool,
    round: u32,
) -> u64 {
    let mut restored = 0;
    // Wait (concurrently) for jobs not yet seen ARCHIVED; ARCHIVED is final.
    let pending: Vec<((u32, u64), u64)> = ledger
        .acknowledged
        .iter()
        .filter(|(key, _)| !ledger.archived.contains(key))
        .map(|(key, id)| (*key, *id))
        .collect();
    let waits = pending.iter().map(|&((shard, log_id), job_id)| async move {
        let job = client.wait(job_id).await.unwrap_or_else(|e| {
            panic!("round {round}: acknowledged shard {shard} log_id {log_id} job {job_id}: {e}")
        });
        assert_eq!(job.state, JobState::Archived);
    });
    futures::future::join_all(waits).await;
    ledger.archived.extend(pending.iter().map(|(key, _)| *key));
    let to_restore: Vec<(u32, u64)> = ledger
        .acknowledged
        .keys()
        .filter(|key| (full || key.1 % 7 == 0) && !ledger.restored.contains(*key))
        .copied()
        .collect();
    for &(shard, log_id) in &to_restore {
        let mut out = Cursor::new(Vec::new());
        client
            .restore_to(shard, log_id, &mut out, None)
            .await
            .unwrap();
        assert_eq!(
            Digest::of(&out.into_inner()),
            Digest::of(&segment(shard, log_id)),
            "round {round}: shard {shard} log_id {log_id} restored wrong bytes"
        );
        ledger.restored.insert((shard, log_id));
        restored += 1;
    }
    // No segment archived twice, and exactly one archive file per archived segment.
    let mut per_segment: HashMap<(u32, u64), u32> = HashMap::new();
    let mut filter = JobFilter {
        state: Some(JobState::Archived),
        limit: 1000,
        ..Default::default()
    };
    loop {
        let (jobs, next) = client.list(&filter).await.unwrap();
        for job in jobs {
            *per_segment.entry((job.shard_id, job.log_id)).or_default() += 1;
        }
        match next {
            Some(next) => filter.after = Some(next),
            None => break,
        }
    }
    assert!(
        per_segment.values().all(|&n| n == 1),
        "round {round}: a segment has two ARCHIVED jobs"
    );
    let files: usize = (1..=SHARDS).map(|s| server.archives(s).len()).sum();
    assert_eq!(
        files,
        per_segment.len(),
        "round {round}: archive files vs archived segments"
    );
    if full {
        for (&(shard, log_id), _) in per_segment
            .iter()
            .filter(|(key, _)| key.1 % 5 == round as u64 % 5)
        {
            assert_eq!(
                zstd_decode(&server.archive_path(shard, log_id)),
                segment(shard, log_id)
            );
        }
    }
    // Drained: nothing RECEIVING, QUEUED or COMPRESSING, so no spool and no temporaries.
    let unfinished = client
        .list(&JobFilter {
            state: Some(JobState::Queued),
            ..Default::default()
        })
        .await
        .unwrap()
        .0;
    assert!(
        unfinished.is_empty(),
        "round {round}: still queued: {unfinished:?}"
    );
    eventually(Duration::from_secs(30), || async {
        server.spool_files().is_empty().then_some(())
    })
    .await;
    assert!(
        server.temporaries().is_empty(),
        "round {round}: {:?}",
        server.temporaries()
    );
    restored
}
