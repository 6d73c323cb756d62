//! What an operator needs to see what is stuck and why, and to clear it
//! deliberately: `info`, `shard`, failure classes, `resolve` — on the real binary.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use tonic::Code;
use wal_archiver::client::{PushOptions, RetryPolicy};
use wal_archiver::types::{AckLevel, ContentKind, FailureClass, JobState};

const LIMIT: Duration = Duration::from_secs(60);

fn cli(server: &Server, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("WAL_ARCHIVER_SERVER", server.url())
        .output()
        .expect("run the CLI")
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A segment the database really wrote with a bad line fails for good: `info`
/// says it holds the watermark and that re-pushing will not help; `resolve`
/// lets the watermark pass, and the record of who and why stays visible.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanently_bad_segment_is_shown_and_can_be_resolved() {
    let server = Server::start(&[]);
    let client = server.client().await.retry_policy(RetryPolicy::none());
    let options = PushOptions {
        kind: ContentKind::JsonLines,
        ack: AckLevel::Archived,
        ..PushOptions::default()
    };
    let good = |seed| std::io::Cursor::new(json_segment(seed, 20_000));
    client
        .push_reader(3, 1, None, good(1), &options)
        .await
        .unwrap();
    let bad = b"{\"ok\":1}\n{\"torn\":\n".to_vec();
    let refused = client
        .push_reader(3, 2, None, std::io::Cursor::new(bad), &options)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some(Code::InvalidArgument));
    client
        .push_reader(3, 3, None, good(3), &options)
        .await
        .unwrap();

    let shard = client.shard(3).await.unwrap();
    assert_eq!(shard.archived_watermark, Some(1));
    let held = shard
        .held_by
        .clone()
        .expect("something holds the watermark");
    assert_eq!((held.log_id, held.state), (2, Some(JobState::Failed)));
    assert_eq!(held.failure_class, Some(FailureClass::Permanent));
    assert!(held.reason.contains("line 2"), "{}", held.reason);
    assert_eq!(shard.failed_segments, 1);

    let info = stdout(&cli(&server, &["info"]));
    assert!(
        info.contains("log_id 2 for")
            && info.contains("FAILED (permanent: fix the cause or resolve it)"),
        "{info}"
    );
    let listed: serde_json::Value =
        serde_json::from_str(&stdout(&cli(&server, &["info", "--json"]))).unwrap();
    assert_eq!(listed[0]["held_by"]["log_id"], 2);
    assert_eq!(listed[0]["held_by"]["failure_class"], "permanent");
    // --json jobs carry the failure and its class (they used to say null).
    let failed_job = held.job_id.unwrap().0.to_string();
    let job: serde_json::Value =
        serde_json::from_str(&stdout(&cli(&server, &["status", &failed_job, "--json"]))).unwrap();
    assert_eq!(job["failure"], "invalid_data");
    assert_eq!(job["failure_class"], "permanent");

    // Refusals first: no reason, an archived segment, one never submitted.
    let no_reason = cli(
        &server,
        &["resolve", "--shard", "3", "--log-id", "2", "--reason", " "],
    );
    assert!(!no_reason.status.success());
    assert!(String::from_utf8_lossy(&no_reason.stderr).contains("INVALID_ARGUMENT"));
    let archived = client.resolve(3, 1, "oops").await.unwrap_err();
    assert_eq!(
        archived.code(),
        Some(Code::FailedPrecondition),
        "{archived}"
    );
    let unknown = client.resolve(3, 9, "oops").await.unwrap_err();
    assert_eq!(unknown.code(), Some(Code::NotFound), "{unknown}");

    let resolved = stdout(&cli(
        &server,
        &[
            "resolve",
            "--shard",
            "3",
            "--log-id",
            "2",
            "--reason",
            "torn by the crash of 11-20; rows re-imported",
        ],
    ));
    assert!(resolved.contains("shard 3 log_id 2 resolved"), "{resolved}");
    let shard = client.shard(3).await.unwrap();
    assert_eq!(
        shard.archived_watermark,
        Some(3),
        "the watermark passes the resolved segment"
    );
    assert!(shard.held_by.is_none());
    assert_eq!(
        (shard.resolved, shard.failed_segments),
        (1, 0),
        "the failure count falls"
    );
    let verify = client.verify(Some(3)).await.unwrap();
    assert!(
        verify.gaps.is_empty(),
        "a resolved segment is not a gap: {verify:?}"
    );
    assert_eq!(verify.resolved.len(), 1);
    assert_eq!(
        verify.resolved[0].reason,
        "torn by the crash of 11-20; rows re-imported"
    );
    assert!(
        server.log_text().contains("segment resolved"),
        "audited in the log"
    );
    // And if the segment turns up after all, it is archived like any other.
    client
        .push_reader(3, 2, None, good(2), &options)
        .await
        .unwrap();
    assert_eq!(client.shard(3).await.unwrap().archived, 3);
}

/// A segment whose upload was cut fails as retryable: pushing it again works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_upload_is_retryable() {
    let server = Server::start(&["--receive-idle-timeout", "1"]);
    let client = server.client().await;
    let mut rpc = server.rpc().await;
    let data = json_segment(4, 50_000);
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tx.send(header_msg(header(5, 1, &data))).await.unwrap();
    let cut = rpc
        .archive(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(cut.code(), Code::DeadlineExceeded);
    drop(tx);
    let shard = eventually(LIMIT, || async {
        let shard = client.shard(5).await.ok()?;
        shard.held_by.clone()?.failure_class.map(|_| shard)
    })
    .await;
    assert_eq!(
        shard.held_by.unwrap().failure_class,
        Some(FailureClass::Retryable)
    );
}

fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics listener");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text
}

fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|line| line.starts_with(series))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

/// Metrics answer "which shard is behind": per-shard series, a failure gauge
/// that falls once the failure is resolved, help text and the build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_say_which_shard_is_behind() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let server = Server::start(&["--metrics-listen", &listen]);
    let client = server.client().await.retry_policy(RetryPolicy::none());
    let options = PushOptions {
        kind: ContentKind::JsonLines,
        ack: AckLevel::Archived,
        ..PushOptions::default()
    };
    client
        .push_reader(
            1,
            1,
            None,
            std::io::Cursor::new(json_segment(1, 10_000)),
            &options,
        )
        .await
        .unwrap();
    let bad = std::io::Cursor::new(b"[1]\n".to_vec());
    client
        .push_reader(2, 1, None, bad, &options)
        .await
        .unwrap_err();

    let metrics = eventually(LIMIT, || async {
        let metrics = scrape(port);
        (sample(&metrics, "wal_archiver_failed_segments{shard=\"2\"}") == Some(1.0))
            .then_some(metrics)
    })
    .await;
    assert!(
        metrics.contains("# HELP wal_archiver_failed_segments"),
        "{metrics}"
    );
    assert!(
        sample(&metrics, "wal_archiver_build_info{version=").is_some(),
        "{metrics}"
    );
    assert!(
        sample(
            &metrics,
            "wal_archiver_last_archived_timestamp_seconds{shard=\"1\"}"
        )
        .unwrap()
            > 1.7e9
    );
    assert!(
        sample(
            &metrics,
            "wal_archiver_oldest_unarchived_age_seconds{shard=\"2\"}"
        )
        .is_some()
    );
    assert_eq!(
        sample(
            &metrics,
            "wal_archiver_oldest_unarchived_age_seconds{shard=\"1\"}"
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(&metrics, "wal_archiver_archived_watermark{shard=\"1\"}"),
        Some(1.0)
    );

    client.resolve(2, 1, "a test segment").await.unwrap();
    eventually(LIMIT, || async {
        (sample(&scrape(port), "wal_archiver_failed_segments{shard=\"2\"}") == Some(0.0))
            .then_some(())
    })
    .await;
    client.verify(None).await.unwrap();
    let metrics = scrape(port);
    assert!(sample(&metrics, "wal_archiver_last_verify_timestamp_seconds").unwrap() > 1.7e9);
    assert_eq!(sample(&metrics, "wal_archiver_verify_problems"), Some(0.0));
}
