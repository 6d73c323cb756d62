//! Clients and disks that misbehave slowly: every wait has an end, a fault
//! that passes never costs an acknowledged segment, and no client can starve
//! the others. Each test provokes the real failure against the real binary.

mod common;

use std::time::Duration;

use common::calls::{assert_status, push_archived};
use common::disk::{SmallDisk, noise};
use common::*;
use tokio_stream::wrappers::ReceiverStream;
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
        // Spool first: an idle worker following the upload would write the
        // archive beside the arriving spool and fill the disk before the ack.
        &[
            "--min-free-bytes",
            "0",
            "--retry-max-backoff",
            "1",
            "--compress-while-receiving",
            "false",
        ],
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

/// A shard host that stops mid-upload (a dead network path, SIGSTOP) must not
/// hold its job RECEIVING: after receive_idle_timeout the stream is cut, the
/// job FAILED with a reason that says so, and the segment can be pushed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_goes_quiet_is_cut_and_its_segment_can_be_pushed_again() {
    let server = Server::start(&["--receive-idle-timeout", "2"]);
    let client = server.client().await;
    let mut rpc = server.rpc().await;
    let data = json_segment(3, 200_000);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(header_msg(header(1, 1, &data))).await.unwrap();
    tx.send(data_msgs(&data[..50_000], 50_000).remove(0))
        .await
        .unwrap();
    let quiet = tokio::spawn(async move {
        rpc.archive(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    let cut = tokio::time::timeout(LIMIT, quiet)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(cut.code(), Code::DeadlineExceeded, "{cut:?}");
    assert!(
        cut.message().contains("no data for 2 s"),
        "{}",
        cut.message()
    );
    let jobs = jobs_of_shard(&client, 1).await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].state, JobState::Failed);
    assert!(
        jobs[0].reason.contains("no data for 2 s"),
        "{}",
        jobs[0].reason
    );
    drop(tx);

    let mut rpc = server.rpc().await;
    let again = push(&mut rpc, header(1, 1, &data), &data).await.unwrap();
    client.wait(again.job.unwrap().job_id).await.unwrap();
    assert!(server.spool_files().is_empty());
}

/// The real CLI, frozen with SIGSTOP in the middle of an upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_client_process_does_not_hold_its_job() {
    let server = Server::start(&["--receive-idle-timeout", "2"]);
    let client = server.client().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.wal");
    std::fs::write(&file, noise(256 << 20, 5)).unwrap();
    let mut cli = std::process::Command::new(BIN)
        .args([
            "push",
            "--shard",
            "1",
            "--log-id",
            "1",
            "--server",
            &server.url(),
        ])
        .arg(&file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    eventually(LIMIT, || async {
        let jobs = jobs_of_shard(&client, 1).await;
        jobs.iter()
            .any(|j| j.state == JobState::Receiving)
            .then_some(())
    })
    .await;
    signal(cli.id(), libc::SIGSTOP);
    let failed = eventually(LIMIT, || async {
        let jobs = jobs_of_shard(&client, 1).await;
        jobs.into_iter().find(|j| j.state == JobState::Failed)
    })
    .await;
    assert!(
        failed.reason.contains("no data for 2 s"),
        "{}",
        failed.reason
    );
    signal(cli.id(), libc::SIGKILL);
    let _ = cli.wait();
    // Its place on the queue and its upload slot are free again.
    let status = client.shard(1).await.unwrap();
    assert_eq!((status.receiving, status.queued), (0, 0));
    let pushed = client
        .push_file(1, 1, &file, &wal_archiver::client::PushOptions::default())
        .await
        .unwrap();
    client.wait(pushed.job.id).await.unwrap();
}

/// Streams that never send their header are dropped after
/// receive_idle_timeout, and the health service answers throughout, even
/// with more of them open than max_concurrent_requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_less_streams_are_dropped_and_health_always_answers() {
    let server = Server::start(&[
        "--receive-idle-timeout",
        "2",
        "--max-concurrent-requests",
        "4",
    ]);
    let mut silent = Vec::new();
    let mut senders = Vec::new();
    for _ in 0..8 {
        let mut rpc = server.rpc().await;
        let (tx, rx) = tokio::sync::mpsc::channel::<proto::ArchiveRequest>(1);
        senders.push(tx);
        silent.push(tokio::spawn(async move {
            rpc.archive(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let channel = tonic::transport::Endpoint::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        serving.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let client = server.client().await;
    client.shard(1).await.unwrap_err(); // NOT_FOUND, but answered: unary calls have their own limit
    for stream in silent {
        let cut = tokio::time::timeout(LIMIT, stream)
            .await
            .unwrap()
            .unwrap()
            .unwrap_err();
        assert_eq!(cut.code(), Code::DeadlineExceeded, "{cut:?}");
        assert!(
            cut.message().contains("no segment header within 2 s"),
            "{}",
            cut.message()
        );
    }
    drop(senders);
}

async fn jobs_of_shard(
    client: &wal_archiver::client::Client,
    shard: u32,
) -> Vec<wal_archiver::types::Job> {
    let filter = wal_archiver::types::JobFilter {
        shard_id: Some(shard),
        ..Default::default()
    };
    client.list(&filter).await.unwrap().0
}

fn threads_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("Threads: line")
}

/// Restore streams that nobody reads are bounded: past max_concurrent_restores
/// they are refused, the ones open pin no more than that many threads, and
/// other shards' pushes and GetShard are answered meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unread_restore_streams_are_bounded_and_starve_nobody() {
    let server = Server::start(&[
        "--max-concurrent-restores",
        "4",
        "--receive-idle-timeout",
        "5",
    ]);
    let client = server.client().await;
    let data = noise(16 << 20, 3);
    let mut rpc = server.rpc().await;
    let mut first = header(1, 1, &data);
    first.ack = proto::AckLevel::Archived as i32;
    push(&mut rpc, first, &data).await.unwrap();
    let threads_before = threads_of(server.pid());

    let mut open = Vec::new();
    let mut refused = 0;
    for _ in 0..40 {
        let mut rpc = server.rpc().await;
        match rpc
            .restore(proto::RestoreRequest {
                shard_id: 1,
                log_id: 1,
            })
            .await
        {
            // Opened and never read.
            Ok(stream) => open.push(stream.into_inner()),
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(
                    status.message().contains("max_concurrent_restores"),
                    "{}",
                    status.message()
                );
                refused += 1;
            }
        }
    }
    assert_eq!(
        open.len(),
        4,
        "exactly max_concurrent_restores streams open"
    );
    assert_eq!(refused, 36);
    assert!(
        threads_of(server.pid()) <= threads_before + 8,
        "unread restores pinned threads: {} before, {} now",
        threads_before,
        threads_of(server.pid())
    );
    // Everything else is answered meanwhile.
    client.shard(1).await.unwrap();
    let other = json_segment(9, 100_000);
    let mut second = header(2, 1, &other);
    second.ack = proto::AckLevel::Archived as i32;
    push(&mut rpc, second, &other).await.unwrap();

    // A reader that reads nothing for receive_idle_timeout is dropped: its slot comes back.
    let mut reopened = eventually(LIMIT, || async {
        let mut rpc = server.rpc().await;
        rpc.restore(proto::RestoreRequest {
            shard_id: 2,
            log_id: 1,
        })
        .await
        .ok()
    })
    .await
    .into_inner();
    let mut restored = Vec::new();
    while let Some(chunk) = reopened.message().await.unwrap() {
        restored.extend_from_slice(&chunk.data);
    }
    assert!(restored == other);
    drop(open);
}

/// An archive file copied over another segment's is intact as a file, but it
/// is not the segment the job recorded: restore refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_refuses_an_archive_of_another_segment() {
    let server = Server::start(&[]);
    let client = server.client().await;
    let mut rpc = server.rpc().await;
    for (shard, log_id, seed) in [(1, 1, 1), (1, 2, 2), (2, 1, 3)] {
        let data = json_segment(seed, 60_000);
        let mut h = header(shard, log_id, &data);
        h.ack = proto::AckLevel::Archived as i32;
        push(&mut rpc, h, &data).await.unwrap();
    }
    // Same shard, another log_id; then another shard.
    for source in [server.archive_path(1, 2), server.archive_path(2, 1)] {
        std::fs::copy(&source, server.archive_path(1, 1)).unwrap();
        let mut sink = Vec::new();
        let err = client.restore_to(1, 1, &mut sink, None).await.unwrap_err();
        assert_eq!(err.code(), Some(Code::DataLoss), "{err}");
        assert!(
            err.to_string()
                .contains("the job recorded shard 1 log_id 1"),
            "{err}"
        );
        assert!(sink.is_empty(), "no byte of the wrong segment was sent");
    }
}

/// A client may not ask for more than max_zstd_level, and one large slow job
/// does not hold back a small segment of another shard: with one general
/// worker busy, the small lane archives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn levels_are_capped_and_a_slow_job_does_not_starve_small_segments() {
    let server = Server::start(&["--archive-parallelism", "1", "--multithread-min-size", "0"]);
    let client = server.client().await;
    let mut rpc = server.rpc().await;
    let small = json_segment(5, 20_000);
    let mut greedy = header(2, 1, &small);
    greedy.zstd_level = Some(22);
    let refused = push(&mut rpc, greedy, &small).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("max_zstd_level"),
        "{}",
        refused.message()
    );

    // 40 MiB at level 19 keeps the one general worker busy for seconds.
    let big = json_segment(6, 40 << 20);
    let mut slow = header(1, 1, &big);
    slow.zstd_level = Some(19);
    let big_job = push(&mut rpc, slow, &big).await.unwrap().job.unwrap();
    eventually(LIMIT, || async {
        (client.job(big_job.job_id).await.ok()?.state == JobState::Compressing).then_some(())
    })
    .await;
    let mut quick = header(2, 1, &small);
    quick.ack = proto::AckLevel::Archived as i32;
    push(&mut rpc, quick, &small).await.unwrap();
    assert_eq!(
        client.job(big_job.job_id).await.unwrap().state,
        JobState::Compressing,
        "the small segment was archived while the large one was still compressing"
    );
    client.cancel(big_job.job_id).await.unwrap();
}

/// A second server on the same data dir (a systemd mistake, a shared volume)
/// exits at once naming the data dir and the holder; the first goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_the_same_data_dir_is_refused() {
    let server = Server::start(&[]);
    let mut second = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&server.data_dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_with_timeout(&mut second, Duration::from_secs(30));
    assert!(!status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.contains(&server.data_dir.display().to_string())
            && stderr.contains(&format!("pid {}", server.pid())),
        "{stderr}"
    );
    let data = json_segment(1, 10_000);
    let mut rpc = server.rpc().await;
    let mut h = header(1, 1, &data);
    h.ack = proto::AckLevel::Archived as i32;
    push(&mut rpc, h, &data).await.unwrap();
}

/// SIGHUP, which operators and log rotators send by habit, never kills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_without_a_tokens_file_is_logged_and_ignored() {
    let server = Server::start(&[]);
    signal(server.pid(), libc::SIGHUP);
    let log = eventually(LIMIT, || async {
        let log = server.log_text();
        log.contains("SIGHUP").then_some(log)
    })
    .await;
    assert!(log.contains("nothing to reload"), "{log}");
    server.client().await.shard(1).await.unwrap_err();
    assert!(
        std::fs::metadata(format!("/proc/{}", server.pid())).is_ok(),
        "still running"
    );
}

/// A damaged or missing archive is repaired by pushing the same segment
/// again, whether its digest comes in the header or the trailer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_archive_is_repaired_by_a_push_of_the_same_bytes() {
    let server = Server::start(&[]);
    let client = server.client().await;
    let mut rpc = server.rpc().await;
    let dir = tempfile::tempdir().unwrap();
    for log_id in [1u64, 2] {
        let data = json_segment(log_id, 80_000);
        std::fs::write(dir.path().join(format!("{log_id}.wal")), &data).unwrap();
        let mut h = header(1, log_id, &data);
        h.ack = proto::AckLevel::Archived as i32;
        push(&mut rpc, h, &data).await.unwrap();
    }
    // log_id 1: one flipped byte; log_id 2: the archive is gone.
    let path = server.archive_path(1, 1);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();
    std::fs::remove_file(server.archive_path(1, 2)).unwrap();
    let report = client.verify(Some(1)).await.unwrap();
    assert_eq!(report.problems.len(), 2, "{report:?}");
    assert!(
        report
            .problems
            .iter()
            .all(|p| p.problem.contains("push the segment again to repair it")),
        "{report:?}"
    );

    // Digest in the header (the raw push), then in the trailer (the client).
    let data = json_segment(1, 80_000);
    let mut h = header(1, 1, &data);
    h.ack = proto::AckLevel::Archived as i32;
    let repaired = push(&mut rpc, h, &data).await.unwrap();
    assert!(
        !repaired.deduplicated,
        "a damaged archive is not a duplicate"
    );
    let options = wal_archiver::client::PushOptions {
        ack: wal_archiver::types::AckLevel::Archived,
        ..Default::default()
    };
    let again = client
        .push_file(1, 2, &dir.path().join("2.wal"), &options)
        .await
        .unwrap();
    assert!(!again.deduplicated);
    assert_eq!(again.job.state, JobState::Archived);

    let report = client.verify(Some(1)).await.unwrap();
    assert!(report.problems.is_empty(), "{report:?}");
    for log_id in [1u64, 2] {
        assert_eq!(
            zstd_decode(&server.archive_path(1, log_id)),
            json_segment(log_id, 80_000)
        );
    }
    // And a push of intact archives' bytes is still a plain duplicate.
    let data = json_segment(1, 80_000);
    assert!(
        push(&mut rpc, header(1, 1, &data), &data)
            .await
            .unwrap()
            .deduplicated
    );
    assert_eq!(client.shard(1).await.unwrap().archived_watermark, Some(2));
}

/// Two pushes repairing the same lost archive at once: the second is told the
/// segment is being received (ABORTED, retry later) instead of truncating the
/// spool file the first one is writing, and the first repair ends ARCHIVED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_repair_of_a_segment_at_a_time() {
    let server = Server::start(&[]);
    let mut rpc = server.rpc().await;
    let data = json_segment(1, 400_000);
    push_archived(&mut rpc, 1, 1, &data).await;
    std::fs::remove_file(server.archive_path(1, 1)).unwrap();

    // The first repair sends half the segment and holds its stream open.
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tx.send(header_msg(header(1, 1, &data))).await.unwrap();
    let half = data.len() / 2;
    for message in data_msgs(&data[..half], 50_000) {
        tx.send(message).await.unwrap();
    }
    let mut first_rpc = server.rpc().await;
    let first = tokio::spawn(async move { first_rpc.archive(ReceiverStream::new(rx)).await });
    eventually(Duration::from_secs(30), || async {
        (!server.spool_files().is_empty()).then_some(())
    })
    .await;

    let second = push(&mut rpc, header(1, 1, &data), &data)
        .await
        .unwrap_err();
    assert_status(
        &second,
        Code::Aborted,
        "is being received by another stream",
    );

    for message in data_msgs(&data[half..], 50_000) {
        tx.send(message).await.unwrap();
    }
    drop(tx);
    let repaired = first.await.unwrap().unwrap().into_inner();
    assert!(!repaired.deduplicated);
    let job = server
        .client()
        .await
        .wait(repaired.job.unwrap().job_id)
        .await
        .unwrap();
    assert_eq!(job.state, JobState::Archived);
    assert_eq!(zstd_decode(&server.archive_path(1, 1)), data);
}

/// During shutdown_grace the server keeps answering: health NOT_SERVING,
/// pushes UNAVAILABLE, reads answered, watches ended with a status that says
/// why; a second SIGTERM stops at once; the interrupted job resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_during_the_grace_period() {
    let mut server = Server::start(&[
        "--shutdown-grace",
        "120",
        "--archive-parallelism",
        "1",
        "--small-job-size",
        "0",
        "--multithread-min-size",
        "0",
    ]);
    let client = server.client().await;
    let mut rpc = server.rpc().await;
    let big = json_segment(6, 40 << 20);
    let mut slow = header(1, 1, &big);
    slow.zstd_level = Some(19);
    let job = push(&mut rpc, slow, &big).await.unwrap().job.unwrap();
    eventually(LIMIT, || async {
        (client.job(job.job_id).await.ok()?.state == JobState::Compressing).then_some(())
    })
    .await;
    let mut watch = rpc
        .watch_job(proto::WatchJobRequest { job_id: job.job_id })
        .await
        .unwrap()
        .into_inner();
    watch.message().await.unwrap().unwrap();
    let pid = server.pid();
    signal(pid, libc::SIGTERM);

    let ended = tokio::time::timeout(LIMIT, watch.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
    assert!(ended.message().contains("stopping"), "{}", ended.message());
    // A new connection during the grace period is answered.
    let channel = tonic::transport::Endpoint::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status.status,
        tonic_health::pb::health_check_response::ServingStatus::NotServing as i32
    );
    let fresh = server
        .client()
        .await
        .retry_policy(wal_archiver::client::RetryPolicy::none());
    assert_eq!(
        fresh.job(job.job_id).await.unwrap().state,
        JobState::Compressing
    );
    let small = json_segment(7, 10_000);
    let mut rpc = server.rpc().await;
    let refused = push(&mut rpc, header(2, 1, &small), &small)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");

    signal(pid, libc::SIGTERM);
    let exited = server.wait_exit(Duration::from_secs(10));
    assert!(
        !exited.success(),
        "a second signal stops at once: {exited:?}"
    );
    server.restart();
    let client = server.client().await;
    assert_eq!(
        client.wait(job.job_id).await.unwrap().state,
        JobState::Archived
    );
}

/// Many tiny chunks are gathered before they are hashed and spooled; the
/// segment still arrives byte-exact, and a damaged one is still caught.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_chunks_are_gathered_and_still_verified() {
    let server = Server::start(&[]);
    let mut rpc = server.rpc().await;
    let data = json_segment(8, 40_000);
    let mut h = header(1, 1, &data);
    h.ack = proto::AckLevel::Archived as i32;
    let mut messages = vec![header_msg(h.clone())];
    messages.extend(data_msgs(&data, 1));
    send(&mut rpc, messages).await.unwrap();
    assert_eq!(zstd_decode(&server.archive_path(1, 1)), data);

    let mut damaged = data.clone();
    damaged[30_000] ^= 1;
    h.log_id = 2;
    let mut messages = vec![header_msg(h)];
    messages.extend(data_msgs(&damaged, 3));
    let refused = send(&mut rpc, messages).await.unwrap_err();
    assert_eq!(refused.code(), Code::DataLoss, "{refused:?}");
}
