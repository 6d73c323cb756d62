//! Running it: Prometheus metrics scraped over HTTP, `verify`, retention rules,
//! request limits and JSON logs, against the real server.

mod common;

use std::path::Path;
use std::time::Duration;

use common::calls::{sample, scrape};
use common::*;
use tonic::Code;
use wal_archiver::client::{Client, ClientError, PushOptions, RetryPolicy};
use wal_archiver::types::{AckLevel, ContentKind, JobState};

async fn archive(
    client: &Client,
    dir: &Path,
    shard: u32,
    log_id: u64,
    kind: ContentKind,
) -> Vec<u8> {
    let data = json_segment(shard as u64 * 1000 + log_id, 60_000);
    let path = dir.join(format!("wal-{shard}-{log_id}.log"));
    std::fs::write(&path, &data).unwrap();
    let options = PushOptions {
        kind,
        ack: AckLevel::Archived,
        ..PushOptions::default()
    };
    client
        .push_file(shard, log_id, &path, &options)
        .await
        .unwrap();
    data
}

fn code<T: std::fmt::Debug>(result: Result<T, ClientError>) -> Code {
    match result {
        Err(ClientError::Rpc(status)) => status.code(),
        other => panic!("expected a gRPC error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_the_work() {
    let port = free_port();
    let server = Server::start(&["--metrics-listen", &format!("127.0.0.1:{port}")]);
    let client = server.client().await.retry_policy(RetryPolicy::none());
    let dir = tempfile::tempdir().unwrap();
    let before = scrape(port);
    assert_eq!(
        sample(&before, "wal_archiver_received_bytes_total").unwrap_or(0.0),
        0.0
    );

    let mut pushed = 0;
    for log_id in 1..=3 {
        pushed += archive(&client, dir.path(), 4, log_id, ContentKind::JsonLines)
            .await
            .len();
    }
    assert_eq!(code(client.job(99_999).await), Code::NotFound);

    let metrics = eventually(Duration::from_secs(30), || async {
        let m = scrape(port);
        (sample(&m, "wal_archiver_jobs{state=\"ARCHIVED\"}") == Some(3.0)).then_some(m)
    })
    .await;
    assert_eq!(
        sample(&metrics, "wal_archiver_received_bytes_total"),
        Some(pushed as f64)
    );
    assert_eq!(
        sample(&metrics, "wal_archiver_archived_bytes_total"),
        Some(pushed as f64)
    );
    assert!(sample(&metrics, "wal_archiver_archive_written_bytes_total").unwrap() < pushed as f64);
    assert!(sample(&metrics, "wal_archiver_compression_ratio").unwrap() > 2.0);
    assert_eq!(
        sample(
            &metrics,
            "wal_archiver_jobs_finished_total{state=\"ARCHIVED\"}"
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(&metrics, "wal_archiver_archived_watermark{shard=\"4\"}"),
        Some(3.0)
    );
    assert_eq!(
        sample(&metrics, "wal_archiver_queue_depth{shard=\"4\"}"),
        Some(0.0)
    );
    assert_eq!(sample(&metrics, "wal_archiver_spool_bytes"), Some(0.0));
    assert_eq!(
        sample(&metrics, "wal_archiver_refusals_total{code=\"NOT_FOUND\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "wal_archiver_ack_latency_seconds_count{ack=\"archived\"}"
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(&metrics, "wal_archiver_job_duration_seconds_count"),
        Some(3.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_corruption_and_gaps() {
    let server = Server::start(&[]);
    let client = server.client().await;
    let dir = tempfile::tempdir().unwrap();
    for log_id in [1, 2, 4, 5] {
        archive(&client, dir.path(), 1, log_id, ContentKind::Raw).await;
    }
    for log_id in [7, 8] {
        archive(&client, dir.path(), 2, log_id, ContentKind::Raw).await;
    }
    let clean = client.verify(None).await.unwrap();
    assert_eq!(clean.archives_checked, 6);
    assert!(clean.problems.is_empty());
    assert_eq!(clean.gaps.len(), 1);
    assert_eq!(
        (
            clean.gaps[0].shard_id,
            clean.gaps[0].first_missing,
            clean.gaps[0].last_missing
        ),
        (1, 3, 3)
    );

    // Damage one archive in the middle of its data.
    let path = server.archive_path(1, 2);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    std::fs::write(&path, bytes).unwrap();
    let report = client.verify(Some(1)).await.unwrap();
    assert_eq!(report.problems.len(), 1, "{report:?}");
    assert_eq!(report.problems[0].log_id, 2);

    // The CLI: non-zero on any problem, zero for a clean shard, JSON for tools.
    let run = |args: &[&str]| {
        std::process::Command::new(BIN)
            .args(args)
            .env("WAL_ARCHIVER_SERVER", server.url())
            .output()
            .unwrap()
    };
    let bad = run(&["verify", "--shard", "1", "--json"]);
    assert!(!bad.status.success());
    let parsed: serde_json::Value = serde_json::from_slice(&bad.stdout).unwrap();
    assert_eq!(parsed["problems"][0]["log_id"], 2);
    assert_eq!(parsed["gaps"][0]["first_missing"], 3);
    let good = run(&["verify", "--shard", "2"]);
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stdout)
    );
    assert!(String::from_utf8_lossy(&good.stdout).contains("checked 2 archives"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_the_newest_and_everything_above_the_watermark() {
    let port = free_port();
    let server = Server::start(&[
        "--retain-count",
        "2",
        "--retention-interval",
        "1",
        "--metrics-listen",
        &format!("127.0.0.1:{port}"),
    ]);
    let client = server.client().await;
    let dir = tempfile::tempdir().unwrap();
    for log_id in 1..=5 {
        archive(&client, dir.path(), 1, log_id, ContentKind::Raw).await;
    }
    // Shard 2: log_id 3 fails, so its watermark stays at 2 while 4..6 are archived.
    for log_id in [1, 2, 4, 5, 6] {
        archive(&client, dir.path(), 2, log_id, ContentKind::Raw).await;
    }
    let mut rpc = server.rpc().await;
    let data = json_segment(3, 10_000);
    let mut lying = header(2, 3, &data);
    lying.sha256 = bytes::Bytes::copy_from_slice(&[0u8; 32]);
    assert_eq!(
        push(&mut rpc, lying, &data).await.unwrap_err().code(),
        Code::DataLoss
    );
    assert_eq!(client.shard(2).await.unwrap().archived_watermark, Some(2));

    eventually(Duration::from_secs(30), || async {
        (archived_ids(&server, 1) == vec![4, 5] && archived_ids(&server, 2) == vec![4, 5, 6])
            .then_some(())
    })
    .await;
    // Expired archives stay ARCHIVED (the watermark does not move back) but cannot be restored.
    assert_eq!(client.shard(1).await.unwrap().archived_watermark, Some(5));
    let mut sink = std::io::Cursor::new(Vec::new());
    let refused = client.restore_to(1, 2, &mut sink, None).await.unwrap_err();
    assert!(
        refused.to_string().contains("removed by retention"),
        "{refused}"
    );
    assert_eq!(refused.code(), Some(Code::NotFound));
    let clean = client.verify(None).await.unwrap();
    assert!(
        clean.problems.is_empty(),
        "expired archives are not problems: {clean:?}"
    );
    // The counter moves once the removal is recorded, just after the file goes.
    eventually(Duration::from_secs(30), || async {
        let deleted = sample(&scrape(port), "wal_archiver_retention_deleted_total")?;
        assert!(deleted <= 5.0, "{deleted} archives removed");
        (deleted == 5.0).then_some(())
    })
    .await;
    assert!(server.log_text().contains("retention removed archive"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_of_call_has_its_own_limit() {
    let server = Server::start(&[
        "--max-concurrent-requests",
        "1",
        "--max-concurrent-watches",
        "1",
        "--unary-timeout-ms",
        "20000",
    ]);
    let rpc = server.rpc().await;
    // An upload held open does not take the one unary slot.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let data = json_segment(1, 100_000);
    tx.send(header_msg(header(1, 1, &data))).await.unwrap();
    let mut uploader = rpc.clone();
    let upload = tokio::spawn(async move {
        uploader
            .archive(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    let client = server.client().await.retry_policy(RetryPolicy::none());
    eventually(Duration::from_secs(30), || async {
        let status = client.shard(1).await.ok()?;
        (status.receiving == 1).then_some(())
    })
    .await;

    // A unary call held in flight (another process holds the jobs database's
    // write lock, so a cancel waits) takes it: the next one is refused.
    let job = client
        .list(&wal_archiver::types::JobFilter::default())
        .await
        .unwrap()
        .0
        .remove(0);
    let lock = server.lock_jobs_db();
    let hold = || {
        let canceller = client.clone();
        tokio::spawn(async move { canceller.cancel(job.id).await })
    };
    let mut held = hold();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let refused = loop {
        match client.shard(1).await {
            Err(ClientError::Rpc(status)) if status.code() == Code::ResourceExhausted => {
                break status;
            }
            _ => {}
        }
        // The probe can take the slot just as the cancel arrives, and then it
        // is the cancel that is refused: send it again.
        if held.is_finished() {
            match held.await.unwrap() {
                Err(ClientError::Rpc(status)) if status.code() == Code::ResourceExhausted => {}
                other => panic!("the held cancel ended: {other:?}"),
            }
            held = hold();
        }
        assert!(std::time::Instant::now() < deadline, "no call was refused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        refused.message().contains("max_concurrent_requests"),
        "{}",
        refused.message()
    );
    lock.release();
    let _ = held.await.unwrap();
    drop(tx);
    let _ = upload.await.unwrap();
    assert!(client.shard(1).await.is_ok(), "the slot is free again");

    // Watches: one open stream takes the one watch slot, for as long as it is open.
    let pushed = client
        .push_reader(
            1,
            2,
            None,
            std::io::Cursor::new(json_segment(2, 50_000)),
            &Default::default(),
        )
        .await
        .unwrap();
    let archived = client.wait(pushed.job.id).await.unwrap();
    let mut raw = server.rpc().await;
    // A watch of a job still RECEIVING stays open while its upload does.
    let (_open_watch, _upload_sender) = {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let more = json_segment(3, 100_000);
        tx.send(header_msg(header(1, 3, &more))).await.unwrap();
        let mut pusher = raw.clone();
        let push = tokio::spawn(async move {
            pusher
                .archive(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
        });
        let receiving = eventually(Duration::from_secs(30), || async {
            let filter = wal_archiver::types::JobFilter {
                state: Some(wal_archiver::types::JobState::Receiving),
                ..Default::default()
            };
            client.list(&filter).await.ok()?.0.first().map(|j| j.id)
        })
        .await;
        let stream = raw
            .watch_job(wal_archiver::proto::WatchJobRequest {
                job_id: receiving.0,
            })
            .await
            .unwrap()
            .into_inner();
        ((stream, push), tx)
    };
    let second = client.watch(archived.id).await.err().expect("refused");
    assert_eq!(second.code(), Some(Code::ResourceExhausted), "{second}");
    assert!(
        second.to_string().contains("max_concurrent_watches"),
        "{second}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_job_span() {
    let server = Server::start(&["--log-format", "json"]);
    let client = server.client().await;
    let dir = tempfile::tempdir().unwrap();
    archive(&client, dir.path(), 6, 42, ContentKind::Raw).await;
    let log = server.log_text();
    let archived = log
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|line| line["fields"]["message"] == "archived")
        .unwrap_or_else(|| panic!("no JSON 'archived' line in:\n{log}"));
    assert_eq!(archived["span"]["shard_id"], 6);
    assert_eq!(archived["span"]["log_id"], 42);
    assert!(archived["span"]["job_id"].as_u64().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_unary_call_gets_deadline_exceeded() {
    let server = Server::start(&["--unary-timeout-ms", "200"]);
    let client = server.client().await.retry_policy(RetryPolicy::none());
    let data = json_segment(5, 100_000);
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(header_msg(header(1, 1, &data))).await.unwrap();
    let mut uploader = server.rpc().await;
    let held = tokio::spawn(async move {
        uploader
            .archive(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    let receiving = eventually(Duration::from_secs(30), || async {
        let filter = wal_archiver::types::JobFilter {
            shard_id: Some(1),
            ..Default::default()
        };
        client.list(&filter).await.ok()?.0.first().map(|job| job.id)
    })
    .await;

    // Another process (a backup tool, say) holds the jobs database's write
    // lock: a cancel must wait for it, and gets DEADLINE_EXCEEDED in time.
    let lock = server.lock_jobs_db();
    let late = client.cancel(receiving).await.unwrap_err();
    assert_eq!(late.code(), Some(Code::DeadlineExceeded), "{late}");
    assert!(
        late.to_string().contains("unary_timeout_ms (200 ms)"),
        "{late}"
    );
    // A push (a stream) started now waits for the lock too, past the unary deadline, and is not cut.
    let other = json_segment(6, 50_000);
    let mut pusher = server.rpc().await;
    let pushing =
        tokio::spawn(async move { push(&mut pusher, header(2, 1, &other), &other).await });
    tokio::time::sleep(Duration::from_millis(600)).await;
    lock.release();
    pushing.await.unwrap().unwrap();
    // The cancel itself went through once the lock was free.
    assert_eq!(held.await.unwrap().unwrap_err().code(), Code::Cancelled);
    drop(tx);
    assert_eq!(
        client.job(receiving).await.unwrap().state,
        JobState::Cancelled
    );
}

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// On a server of its own on `data_dir`: archives 60 kB segments, each
/// ARCHIVED before the next, and fails a push of each of `failed` (which
/// then holds its shard's watermark back); then stops it (SIGTERM).
async fn archive_then_stop(
    data_dir: &Path,
    segments: &[(u32, std::ops::RangeInclusive<u64>)],
    failed: &[(u32, u64)],
) {
    let mut server = Server::start_in(data_dir, &[]);
    let client = server.client().await;
    let dir = tempfile::tempdir().unwrap();
    for (shard, log_ids) in segments {
        for log_id in log_ids.clone() {
            archive(&client, dir.path(), *shard, log_id, ContentKind::Raw).await;
        }
    }
    let mut rpc = server.rpc().await;
    for &(shard, log_id) in failed {
        let data = json_segment(log_id, 10_000);
        let mut lying = header(shard, log_id, &data);
        lying.sha256 = bytes::Bytes::copy_from_slice(&[0u8; 32]);
        let refused = push(&mut rpc, lying, &data).await.unwrap_err();
        assert_eq!(refused.code(), Code::DataLoss);
    }
    drop((client, rpc));
    assert!(server.terminate().success());
}

/// Makes a shard's archived jobs look `days` older to retention (which
/// goes by their `updated_ms`), in the jobs database of a stopped server.
fn age(data_dir: &Path, shard: u32, log_ids: std::ops::RangeInclusive<u64>, days: i64) {
    let db = rusqlite::Connection::open(data_dir.join("jobs.db")).unwrap();
    let changed = db
        .execute(
            "UPDATE jobs SET updated_ms = updated_ms - ?1
             WHERE shard_id = ?2 AND log_id BETWEEN ?3 AND ?4 AND state = 'ARCHIVED'",
            rusqlite::params![
                days * DAY_MS,
                shard,
                *log_ids.start() as i64,
                *log_ids.end() as i64
            ],
        )
        .unwrap();
    assert_eq!(changed as u64, log_ids.end() - log_ids.start() + 1);
}

/// The log_ids of a shard's archives on disk, in order.
fn archived_ids(server: &Server, shard: u32) -> Vec<u64> {
    server
        .archives(shard)
        .iter()
        .map(|p| {
            p.file_name().unwrap().to_string_lossy()[..20]
                .parse()
                .unwrap()
        })
        .collect()
}

/// A log line without its colours.
fn plain(line: &str) -> String {
    let mut text = String::new();
    let mut rest = line;
    while let Some((before, escape)) = rest.split_once('\u{1b}') {
        text.push_str(before);
        rest = escape.split_once('m').map_or("", |(_, after)| after);
    }
    text.push_str(rest);
    text
}

/// Starts a server with retention on `data_dir` and waits for its first
/// pass, which runs at start; returns that pass's log line.
fn start_with_retention(data_dir: &Path, rules: &[&str]) -> (Server, String) {
    start_with_retention_every(data_dir, rules, "3600")
}

/// Like `start_with_retention`, with passes every `interval` seconds.
fn start_with_retention_every(data_dir: &Path, rules: &[&str], interval: &str) -> (Server, String) {
    let mut args = vec!["--retention-interval", interval];
    args.extend_from_slice(rules);
    let server = Server::start_in(data_dir, &args);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(line) = server
            .log_text()
            .lines()
            .map(plain)
            .find(|line| line.contains("retention pass done"))
        {
            return (server, line);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no retention pass logged:\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn assert_removed_by_retention(client: &Client, shard: u32, log_id: u64) {
    let mut sink = std::io::Cursor::new(Vec::new());
    let refused = client
        .restore_to(shard, log_id, &mut sink, None)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some(Code::NotFound), "{refused}");
    assert!(
        refused.to_string().contains(&format!(
            "the archive of shard {shard} log_id {log_id} was removed by retention"
        )),
        "{refused}"
    );
}

/// retain_days alone: every archive older than that goes, however many are
/// left, but never one above its shard's watermark; younger ones stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_days_removes_old_archives_up_to_the_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    archive_then_stop(&data_dir, &[(1, 1..=6), (2, 1..=2), (2, 4..=6)], &[(2, 3)]).await;
    age(&data_dir, 1, 1..=4, 3);
    // Shard 2's log_id 3 failed: its watermark is 2, and its old 4..6 stay.
    age(&data_dir, 2, 1..=2, 3);
    age(&data_dir, 2, 4..=6, 3);

    let (server, pass) = start_with_retention(&data_dir, &["--retain-days", "2"]);
    assert!(pass.ends_with("retention pass done removed=6"), "{pass}");
    assert_eq!(
        archived_ids(&server, 1),
        vec![5, 6],
        "2 days old or younger stay"
    );
    assert_eq!(
        archived_ids(&server, 2),
        vec![4, 5, 6],
        "above the watermark stay"
    );
    let client = server.client().await;
    for log_id in 1..=4 {
        assert_removed_by_retention(&client, 1, log_id).await;
    }
    assert_removed_by_retention(&client, 2, 2).await;
    assert_eq!(client.shard(1).await.unwrap().archived_watermark, Some(6));
    assert_eq!(client.shard(2).await.unwrap().archived_watermark, Some(2));
    let shard_1 = client.shard(1).await.unwrap();
    assert_eq!(
        shard_1.archived, 6,
        "expired jobs stay ARCHIVED: {shard_1:?}"
    );
}

/// retain_days with retain_count: an archive goes only when both let it go
/// (older than the days, and not among the newest count of its shard), and
/// never above the watermark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_days_and_retain_count_both_must_let_an_archive_go() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    archive_then_stop(
        &data_dir,
        &[(1, 1..=8), (2, 1..=8), (3, 1..=2), (3, 4..=8)],
        &[(3, 3)],
    )
    .await;
    // Shard 1: 1..=6 old. The newest 3 (6, 7, 8) stay, 6 although it is old.
    age(&data_dir, 1, 1..=6, 3);
    // Shard 2: 1..=2 old. 3..=5 are not among the newest 3 but young: they stay.
    age(&data_dir, 2, 1..=2, 3);
    // Shard 3: all old, watermark 2 (log_id 3 failed): 4 and 5 stay above it.
    age(&data_dir, 3, 1..=2, 3);
    age(&data_dir, 3, 4..=8, 3);

    let (server, pass) =
        start_with_retention(&data_dir, &["--retain-days", "2", "--retain-count", "3"]);
    assert!(pass.ends_with("retention pass done removed=9"), "{pass}");
    assert_eq!(archived_ids(&server, 1), vec![6, 7, 8]);
    assert_eq!(archived_ids(&server, 2), vec![3, 4, 5, 6, 7, 8]);
    assert_eq!(archived_ids(&server, 3), vec![4, 5, 6, 7, 8]);
    let client = server.client().await;
    assert_removed_by_retention(&client, 1, 5).await;
    assert_removed_by_retention(&client, 2, 2).await;
    assert_removed_by_retention(&client, 3, 1).await;
    let clean = client.verify(None).await.unwrap();
    assert!(clean.problems.is_empty(), "{clean:?}");
    assert_eq!(clean.archives_checked, 14);
}

/// The retention passes a server logged so far, oldest first.
fn retention_passes(server: &Server) -> Vec<String> {
    server
        .log_text()
        .lines()
        .map(plain)
        .filter(|line| line.contains("retention pass done"))
        .collect()
}

/// An old archive goes even when an archive of a lower log_id is younger:
/// age is per archive. Here the younger one is a segment that failed and
/// was pushed again later — what a shard does to move its watermark on —
/// and the old archives above it must still go once the watermark passes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_days_removes_old_archives_above_a_younger_one() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    archive_then_stop(&data_dir, &[(1, 1..=2), (1, 4..=6)], &[(1, 3)]).await;
    age(&data_dir, 1, 1..=2, 3);
    age(&data_dir, 1, 4..=6, 3);

    let (server, first) = start_with_retention_every(&data_dir, &["--retain-days", "2"], "1");
    assert!(first.ends_with("retention pass done removed=2"), "{first}");
    assert_eq!(
        archived_ids(&server, 1),
        vec![4, 5, 6],
        "above the watermark (2)"
    );
    // log_id 3 pushed again, archived now: the watermark moves to 6.
    let client = server.client().await;
    let files = tempfile::tempdir().unwrap();
    archive(&client, files.path(), 1, 3, ContentKind::Raw).await;
    assert_eq!(client.shard(1).await.unwrap().archived_watermark, Some(6));
    // Passes run every second; the next one that removes anything must
    // remove the old 4..=6 (a safety limit, not a timing assertion).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let passes = loop {
        let passes = retention_passes(&server);
        if passes.len() >= 2 {
            break passes;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the old archives above log_id 3 were never removed: archives {:?}",
            archived_ids(&server, 1)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        passes[1].ends_with("retention pass done removed=3"),
        "{passes:?}"
    );
    assert_eq!(
        archived_ids(&server, 1),
        vec![3],
        "only the young one is left"
    );
}
