//! Several replicas on one bucket, a replica that loses its disk, and a
//! bucket that stops answering — against a real Garage started by the test.

mod common;

use std::time::Duration;

use common::garage::{self, Garage};
use common::storage::unique_prefix;
use common::*;
use tonic::Code;
use wal_archiver::client::{Client, Connection, PushOptions, RetryPolicy, Router};
use wal_archiver::types::{AckLevel, JobState};

const LIMIT: Duration = Duration::from_secs(90);

fn archived() -> PushOptions {
    PushOptions {
        ack: AckLevel::Archived,
        ..PushOptions::default()
    }
}

fn segment(shard: u32, log_id: u64) -> Vec<u8> {
    json_segment(u64::from(shard) * 1000 + log_id, 30_000)
}

async fn push(
    client: &Client,
    shard: u32,
    log_id: u64,
    options: &PushOptions,
) -> wal_archiver::client::Pushed {
    let data = segment(shard, log_id);
    client
        .push_reader(
            shard,
            log_id,
            Some(data.len() as u64),
            std::io::Cursor::new(data),
            options,
        )
        .await
        .unwrap_or_else(|e| panic!("push shard {shard} log_id {log_id}: {e}"))
}

/// Two replicas with different partitions push to one bucket at once; each
/// refuses the other's shards; a third, started empty on the same bucket,
/// sees every segment exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_share_a_bucket_by_partition() {
    let prefix = unique_prefix();
    let a = Server::start_on_prefix(garage::shared(), &prefix, &["--shard-partition", "0/2"]);
    let b = Server::start_on_prefix(garage::shared(), &prefix, &["--shard-partition", "1/2"]);
    let connection = |server: &Server| Connection {
        url: server.url(),
        ..Connection::default()
    };
    let router = Router::partitioned(&[connection(&a), connection(&b)])
        .await
        .unwrap();

    let pushes = (1..=4u32).flat_map(|shard| (1..=3u64).map(move |log_id| (shard, log_id)));
    let done = futures::future::join_all(pushes.map(|(shard, log_id)| {
        let client = router.client(shard).unwrap().clone();
        async move { push(&client, shard, log_id, &archived()).await }
    }))
    .await;
    assert!(done.iter().all(|p| p.job.state == JobState::Archived));

    let refused = a.client().await.retry_policy(RetryPolicy::none());
    let err = refused
        .push_reader(
            1,
            9,
            None,
            std::io::Cursor::new(b"x".to_vec()),
            &PushOptions::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::FailedPrecondition), "{err}");
    assert!(err.to_string().contains("shard_partition 0/2"), "{err}");
    assert_eq!(
        refused.shard(3).await.unwrap_err().code(),
        Some(Code::FailedPrecondition)
    );

    let third = Server::start_on_prefix(garage::shared(), &prefix, &[]);
    let client = third.client().await;
    let report = client.verify(None).await.unwrap();
    assert_eq!(report.archives_checked, 12, "{report:?}");
    assert!(
        report.problems.is_empty() && report.gaps.is_empty(),
        "{report:?}"
    );
    for shard in 1..=4 {
        assert_eq!(
            client.shard(shard).await.unwrap().archived_watermark,
            Some(3)
        );
        assert_eq!(client.shard(shard).await.unwrap().archived, 3);
    }
    let mut restored = Vec::new();
    client.restore_to(4, 2, &mut restored, None).await.unwrap();
    assert!(restored == segment(4, 2));
}

/// A replacement replica on an empty data dir rebuilds its jobs and
/// watermarks from the bucket; a segment missing from the bucket between
/// archived ones stops its shard's watermark until it is pushed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_an_empty_data_dir_rebuilds_from_the_bucket() {
    let prefix = unique_prefix();
    let first = Server::start_on_prefix(garage::shared(), &prefix, &["--shard-partition", "0/2"]);
    let client = first.client().await;
    for shard in [2u32, 4] {
        for log_id in 1..=5 {
            push(&client, shard, log_id, &archived()).await;
        }
    }
    drop(client);
    drop(first); // its disk is lost
    // A segment the bucket does not have (as if its push had failed).
    let probe = Server::start_on_prefix(garage::shared(), &prefix, &["--shard-partition", "1/2"]);
    probe.remove_archive(4, 3).await;
    drop(probe);

    let replacement =
        Server::start_on_prefix(garage::shared(), &prefix, &["--shard-partition", "0/2"]);
    assert!(
        replacement
            .log_text()
            .contains("rebuilt jobs from the archive store"),
        "{}",
        replacement.log_text()
    );
    let client = replacement.client().await;
    assert_eq!(client.shard(2).await.unwrap().archived_watermark, Some(5));
    assert_eq!(
        client.shard(4).await.unwrap().archived_watermark,
        Some(2),
        "the gap at 3 holds it"
    );
    let mut restored = Vec::new();
    client.restore_to(2, 4, &mut restored, None).await.unwrap();
    assert!(restored == segment(2, 4));
    // Pushing the missing segment again lets the watermark pass.
    push(&client, 4, 3, &archived()).await;
    assert_eq!(client.shard(4).await.unwrap().archived_watermark, Some(5));
    // And a push of a segment the bucket already has is a plain duplicate.
    assert!(
        push(&client, 2, 5, &PushOptions::default())
            .await
            .deduplicated
    );
}

/// While the bucket does not answer (Garage paused), acknowledged segments
/// wait QUEUED and say why; pushes and status calls are answered; once it
/// answers again every job ends ARCHIVED, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_bucket_delays_archives_and_fails_nothing() {
    let garage = Garage::start();
    let server = Server::start_on(
        &garage,
        &[
            "--storage-timeout",
            "1",
            "--storage-retries",
            "0",
            "--retry-max-backoff",
            "1",
        ],
    );
    let client = server.client().await;
    garage.pause();
    let mut jobs = Vec::new();
    for log_id in 1..=4 {
        jobs.push(
            push(&client, 1, log_id, &PushOptions::default())
                .await
                .job
                .id,
        );
    }
    let waiting = eventually(LIMIT, || async {
        let job = client.job(jobs[0]).await.ok()?;
        (job.attempts >= 1).then_some(job)
    })
    .await;
    assert_eq!(waiting.state, JobState::Queued, "{waiting:?}");
    assert!(
        waiting.reason.contains("retrying") && waiting.reason.contains("unavailable"),
        "{}",
        waiting.reason
    );
    let status = client.shard(1).await.unwrap();
    assert_eq!(status.archived, 0);
    garage.resume();
    for id in jobs {
        assert_eq!(client.wait(id).await.unwrap().state, JobState::Archived);
    }
    assert_eq!(client.shard(1).await.unwrap().archived_watermark, Some(4));
}
