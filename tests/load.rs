//! The load test: 16 shards push continuously for `WAL_ARCHIVER_LOAD_SECS`
//! (default 60) into queues small enough to overflow, with retries off so
//! every refusal is seen. Nothing acknowledged may be lost, every refusal must
//! be RESOURCE_EXHAUSTED, memory must stay bounded, and status calls must keep
//! answering (their latency is reported, not asserted). Loopback only, and
//! bounded in time and count.

mod common;

use std::io::Cursor;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use tonic::Code;
use wal_archiver::client::{ClientError, PushOptions, RetryPolicy};
use wal_archiver::types::{ContentKind, Digest, JobState};

const SHARDS: u32 = 16;
const MAX_PUSHES: u64 = 100_000;
const SEGMENT_SIZE: usize = 1 << 20;

/// A memory figure of the running server; a missing one fails the test
/// (a 0 would make the memory bound vacuous).
fn vm_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/status: {e}"))
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// A segment no other push sends: one of a few generated bodies after a line
/// naming its shard and log_id, so a restore of any other segment fails.
fn unique_segment(shard: u32, log_id: u64, body: &[u8]) -> Vec<u8> {
    let mut data = format!("{{\"shard\":{shard},\"log_id\":{log_id}}}\n").into_bytes();
    data.extend_from_slice(body);
    data
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_shards_overflowing_small_queues() {
    let secs: u64 = std::env::var("WAL_ARCHIVER_LOAD_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let server = Server::start(&[
        "--archive-queue-size",
        "2",
        "--archive-parallelism",
        "2",
        "--multithread-min-size",
        "0",
    ]);
    let pid = server.pid();
    let segments: Arc<Vec<Vec<u8>>> =
        Arc::new((0..4).map(|i| json_segment(i, SEGMENT_SIZE)).collect());
    let deadline = Instant::now() + Duration::from_secs(secs);
    let stop = Arc::new(AtomicBool::new(false));
    let pushes = Arc::new(AtomicU64::new(0));

    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !stop.load(Ordering::SeqCst) {
                peak = peak.max(vm_kib(pid, "VmRSS:"));
                std::thread::sleep(Duration::from_millis(200));
            }
            peak
        })
    };
    let mut shards = Vec::new();
    for shard in 1..=SHARDS {
        let client = server.client().await.retry_policy(RetryPolicy::none());
        let (segments, pushes) = (segments.clone(), pushes.clone());
        shards.push(tokio::spawn(async move {
            let options = PushOptions {
                kind: ContentKind::JsonLines,
                ..PushOptions::default()
            };
            let (mut acknowledged, mut refused, mut other) = (Vec::new(), 0u64, Vec::new());
            let mut log_id = 0u64;
            while Instant::now() < deadline && pushes.fetch_add(1, Ordering::SeqCst) < MAX_PUSHES {
                log_id += 1;
                let which = (log_id % segments.len() as u64) as usize;
                let data = unique_segment(shard, log_id, &segments[which]);
                let size = Some(data.len() as u64);
                match client
                    .push_reader(shard, log_id, size, Cursor::new(data), &options)
                    .await
                {
                    Ok(pushed) => acknowledged.push((log_id, pushed.job.id, which)),
                    Err(ClientError::Rpc(status)) if status.code() == Code::ResourceExhausted => {
                        refused += 1;
                        log_id -= 1; // the shard keeps its WAL and pushes it again
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => other.push(e.to_string()),
                }
            }
            (shard, acknowledged, refused, other)
        }));
    }
    let status_latencies = {
        let client = server.client().await.retry_policy(RetryPolicy::none());
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = Vec::new();
            let mut shard = 0;
            while Instant::now() < deadline {
                shard = shard % SHARDS + 1;
                let started = Instant::now();
                let answer = client.shard(shard).await;
                latencies.push(started.elapsed());
                if let Err(e) = answer
                    && e.code() != Some(Code::NotFound)
                {
                    errors.push(e.to_string());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (latencies, errors)
        })
    };

    let mut all_acknowledged = Vec::new();
    let (mut refusals, mut other_errors) = (0u64, Vec::new());
    for shard in shards {
        let (shard, acknowledged, refused, other) = shard.await.unwrap();
        refusals += refused;
        other_errors.extend(other);
        all_acknowledged.extend(
            acknowledged
                .into_iter()
                .map(|(log_id, job, which)| (shard, log_id, job, which)),
        );
    }
    let (mut latencies, status_errors) = status_latencies.await.unwrap();
    assert!(
        other_errors.is_empty(),
        "every refusal must be RESOURCE_EXHAUSTED: {other_errors:?}"
    );
    assert!(
        status_errors.is_empty(),
        "status calls failed under load: {status_errors:?}"
    );

    // Everything acknowledged ends ARCHIVED and restores byte-exact (a sample).
    let client = server.client().await;
    let waits = all_acknowledged.iter().map(|&(_, _, job, _)| {
        let client = client.clone();
        async move { client.wait(job).await.map(|j| j.state) }
    });
    for state in futures::future::join_all(waits).await {
        assert_eq!(state.unwrap(), JobState::Archived);
    }
    // Every shard made progress (none starved by the others) and its
    // watermark covers all it had acknowledged (its log_ids have no gaps).
    for shard in 1..=SHARDS {
        let highest = all_acknowledged
            .iter()
            .filter(|(s, ..)| *s == shard)
            .map(|&(_, log_id, ..)| log_id)
            .max();
        assert!(highest.is_some(), "shard {shard} got nothing acknowledged");
        let status = client.shard(shard).await.unwrap();
        assert_eq!(status.archived_watermark, highest, "shard {shard}");
    }
    for &(shard, log_id, _, which) in all_acknowledged.iter().step_by(25) {
        let mut out = Cursor::new(Vec::new());
        client
            .restore_to(shard, log_id, &mut out, None)
            .await
            .unwrap();
        assert_eq!(
            Digest::of(&out.into_inner()),
            Digest::of(&unique_segment(shard, log_id, &segments[which])),
            "shard {shard} log_id {log_id}"
        );
    }
    eventually(Duration::from_secs(60), || async {
        server.spool_files().is_empty().then_some(())
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let sampled_peak = sampler.join().unwrap();
    let peak_mib = vm_kib(pid, "VmHWM:").max(sampled_peak) as f64 / 1024.0;
    assert!(
        peak_mib < 512.0,
        "server peak RSS {peak_mib:.0} MiB: memory is not bounded"
    );
    assert!(
        !all_acknowledged.is_empty() && refusals > 0,
        "the queues must both take work and overflow"
    );

    latencies.sort();
    println!(
        "overload: {secs} s, {SHARDS} shards, {} acknowledged ({} MiB), {refusals} refused (all RESOURCE_EXHAUSTED), \
         status p50 {:.1} ms p99 {:.1} ms max {:.1} ms over {} calls, server peak RSS {peak_mib:.0} MiB",
        all_acknowledged.len(),
        (all_acknowledged.len() * SEGMENT_SIZE) >> 20,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0),
        latencies.len()
    );
}
