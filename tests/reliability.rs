//! Clients and disks that misbehave slowly: every wait has an end, a fault
//! that passes never costs an acknowledged segment, and no client can starve
//! the others. Each test provokes the real failure against the real binary.

mod common;

use std::time::Duration;

use common::disk::{SmallDisk, noise};
use common::*;
use tonic::Code;
use wal_archiver::proto;
use wal_archiver::types::JobState;

const LIMIT: Duration = Duration::from_secs(60);

/// A volume that fills up after a segment was acknowledged (here: before its
/// archive is written) only delays the archive: the job waits QUEUED with its
/// spool, says why, and completes by itself once space returns — no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_after_the_ack_delays_the_archive_and_loses_nothing() {
    let disk = SmallDisk::mount(48);
    let server = Server::start_in(
        &disk.path().join("data"),
        &["--min-free-bytes", "0", "--retry-max-backoff", "1"],
    );
    let client = server.client().await;
    let mut rpc = server.rpc().await;
    // Room for the 8 MiB spool, not for the archive of incompressible data beside it.
    let filler = disk.fill_leaving(12 << 20);
    let data = noise(8 << 20, 7);
    let reply = push(&mut rpc, header(1, 1, &data), &data).await.unwrap();
    let job = reply.job.unwrap();
    assert_eq!(
        job.state,
        proto::JobState::Queued as i32,
        "acknowledged QUEUED"
    );

    let retrying = eventually(LIMIT, || async {
        let job = client.job(job.job_id).await.ok()?;
        (job.attempts >= 1).then_some(job)
    })
    .await;
    assert_eq!(retrying.state, JobState::Queued, "{retrying:?}");
    assert!(
        retrying.reason.starts_with("retrying: ") && retrying.reason.contains("No space left"),
        "{}",
        retrying.reason
    );
    assert_eq!(
        server.spool_files().len(),
        1,
        "the spool is kept for the next try"
    );

    std::fs::remove_file(filler).unwrap();
    let archived = client.wait(job.job_id).await.unwrap();
    assert_eq!(archived.state, JobState::Archived);
    assert!(archived.attempts >= 1);
    let mut restored = Vec::new();
    client.restore_to(1, 1, &mut restored, None).await.unwrap();
    assert!(restored == data, "restored bytes differ");
    assert!(server.spool_files().is_empty());
}

/// Two uploads checked at the same moment must not both count the same free
/// space: the first one's declared size is reserved until it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_in_progress_reserve_their_space() {
    let disk = SmallDisk::mount(32);
    let server = Server::start_in(&disk.path().join("data"), &["--min-free-bytes", "0"]);
    let mut first = server.rpc().await;
    let big = noise(20 << 20, 1);
    // The first upload sends its header (20 MiB declared) and one chunk, then waits.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(header_msg(header(1, 1, &big))).await.unwrap();
    tx.send(data_msgs(&big[..1 << 20], 1 << 20).remove(0))
        .await
        .unwrap();
    let held = tokio::spawn(async move {
        first
            .archive(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    let client = server.client().await;
    eventually(LIMIT, || async {
        let status = client.shard(1).await.ok()?;
        (status.receiving == 1).then_some(())
    })
    .await;

    let mut second = server.rpc().await;
    let other = noise(20 << 20, 2);
    let refused = push(&mut second, header(2, 1, &other), &other)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("uploads in progress reserved"),
        "{}",
        refused.message()
    );
    drop(tx);
    let _ = held.await;
}
