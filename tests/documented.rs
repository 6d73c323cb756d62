//! Behaviour the README and docs/ promise that no other test watched: zstd's
//! own threads for a large segment alone, the workers' CPU priority, HTTP/2
//! streams per connection, health while recovering, archives of a newer
//! format, the client's retries, and the README's client snippet.

mod common;

use std::path::Path;
use std::time::Duration;

use common::calls::{assert_status, health_status, push_archived, restore_error, sample, scrape};
use common::launch::Starting;
use common::*;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use wal_archiver::client::{ClientError, PushOptions};
use wal_archiver::proto;
use wal_archiver::types::{AckLevel, JobState};

const LIMIT: Duration = Duration::from_secs(120);

/// The server's threads: (name, nice value), from /proc/<pid>/task/*/stat.
fn threads(pid: u32) -> Vec<(String, i64)> {
    thread_stats(pid)
        .into_iter()
        .map(|(name, fields)| {
            // After comm: state is field 3; nice is field 19.
            let nice = fields.get(16).expect("nice field");
            (name, nice.parse().expect("nice value"))
        })
        .collect()
}

/// Threads named like the compression workers. zstd's own threads inherit
/// the name of the worker that starts them (Linux copies it to a new
/// thread), so they count here too. Names are cut to 15 bytes by the kernel.
fn worker_threads(pid: u32) -> Vec<(String, i64)> {
    threads(pid)
        .into_iter()
        .filter(|(name, _)| name.starts_with("archive-worker"))
        .collect()
}

/// The most worker threads seen while `job` compresses, sampled until it is
/// ARCHIVED.
async fn most_worker_threads_while(server: &Server, job: u64) -> usize {
    let client = server.client().await;
    let mut most = 0;
    eventually(LIMIT, || {
        most = most.max(worker_threads(server.pid()).len());
        let client = client.clone();
        async move {
            let job = client.job(job).await.ok()?;
            assert!(
                !job.state.is_terminal() || job.state == JobState::Archived,
                "{job:?}"
            );
            (job.state == JobState::Archived).then_some(())
        }
    })
    .await;
    most
}

/// A segment of at least multithread_min_size that is the only work is
/// compressed with zstd's own threads, one per worker: the server's
/// compression threads go from 2 to 4 while it runs, which a smaller segment
/// never does; both archives are exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_segment_alone_is_compressed_on_zstd_threads() {
    let server = Server::start(&[
        "--archive-parallelism",
        "2",
        "--small-job-size",
        "0",
        "--multithread-min-size",
        "4194304",
    ]);
    let mut rpc = server.rpc().await;
    assert_eq!(
        worker_threads(server.pid()).len(),
        2,
        "two workers, no small lane"
    );
    // Level 19: slow enough that each compression is sampled many times.
    for (log_id, size, multithreaded) in [(1u64, 2 << 20, false), (2, 5 << 20, true)] {
        let data = json_segment(log_id, size);
        let mut slow = header(1, log_id, &data);
        slow.zstd_level = Some(19);
        let job = push(&mut rpc, slow, &data).await.unwrap().job.unwrap();
        let most = most_worker_threads_while(&server, job.job_id).await;
        if multithreaded {
            assert_eq!(
                most, 4,
                "{size} bytes alone, over multithread_min_size: one zstd thread per worker expected"
            );
        } else {
            assert_eq!(
                most, 2,
                "{size} bytes, under multithread_min_size: no zstd threads"
            );
        }
        assert_eq!(zstd_decode(&server.archive_path(1, log_id)), data);
        let mut restored = std::io::Cursor::new(Vec::new());
        server
            .client()
            .await
            .restore_to(1, log_id, &mut restored, None)
            .await
            .unwrap();
        assert_eq!(restored.into_inner(), data);
    }
}

/// worker_nice sets the CPU priority of every compression thread, and of no
/// other thread of the server (nice values add to the one the server started with).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_nice_lowers_the_compression_threads_only() {
    let own: i64 = {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        let rest = stat.rsplit_once(')').unwrap().1.to_owned();
        rest.split_whitespace().nth(16).unwrap().parse().unwrap()
    };
    assert!(
        own < 19,
        "the tests run at nice {own}: no room to lower the workers"
    );
    for (flag, nice) in [(None, (own + 10).min(19)), (Some("16"), 16.max(own))] {
        let mut args = vec!["--archive-parallelism", "2"];
        if let Some(value) = flag {
            args.extend(["--worker-nice", value]);
        }
        let server = Server::start(&args);
        let pid = server.pid();
        // Each worker lowers its own priority as it starts.
        let workers = eventually(LIMIT, || async {
            let workers = worker_threads(pid);
            (workers.len() == 3 && workers.iter().all(|(_, n)| *n == nice)).then_some(workers)
        })
        .await;
        assert_eq!(
            workers.len(),
            3,
            "two workers and the small lane: {workers:?}"
        );
        let others: Vec<_> = threads(pid)
            .into_iter()
            .filter(|(name, _)| !name.starts_with("archive-worker"))
            .collect();
        assert!(!others.is_empty());
        assert!(
            others.iter().all(|(_, n)| *n == own),
            "every other thread stays at nice {own}: {others:?}"
        );
    }
}

/// Past max_streams_per_connection, a further stream on the same connection
/// waits instead of failing: with 2 uploads open on a connection, a third
/// pushed on it reaches the server only once one of the two ends — while a
/// push on another connection goes through at once — and then succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_past_the_per_connection_limit_wait_for_a_free_one() {
    let server = Server::start(&["--max-streams-per-connection", "2"]);
    let channel = tonic::transport::Endpoint::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let shared = proto::wal_archiver_client::WalArchiverClient::new(channel);
    // A first call, so the server's SETTINGS have been read.
    shared
        .clone()
        .get_shard(proto::GetShardRequest { shard_id: 9 })
        .await
        .unwrap_err();
    let client = server.client().await;
    let receiving = |shard: u32| {
        let client = client.clone();
        async move { client.shard(shard).await.map(|s| s.receiving).unwrap_or(0) }
    };

    // Two uploads held open on the shared connection.
    let data = json_segment(1, 100_000);
    let mut held = Vec::new();
    for shard in [1u32, 2] {
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tx.send(header_msg(header(shard, 1, &data))).await.unwrap();
        let mut rpc = shared.clone();
        let call = tokio::spawn(async move { rpc.archive(ReceiverStream::new(rx)).await });
        held.push((tx, call));
    }
    eventually(LIMIT, || async {
        (receiving(1).await == 1 && receiving(2).await == 1).then_some(())
    })
    .await;

    // A third, complete upload on the same connection.
    let mut rpc = shared.clone();
    let third_data = data.clone();
    let third =
        tokio::spawn(async move { push(&mut rpc, header(3, 1, &third_data), &third_data).await });
    // Pushes on another connection, started after it, go through.
    let mut other = server.rpc().await;
    for log_id in 1..=3 {
        let reply = push(&mut other, header(4, log_id, &data), &data)
            .await
            .unwrap();
        assert!(reply.job.is_some());
    }
    assert!(!third.is_finished(), "the third stream waits");
    let shard_3 = wal_archiver::types::JobFilter {
        shard_id: Some(3),
        ..Default::default()
    };
    assert!(
        client.list(&shard_3).await.unwrap().0.is_empty(),
        "the third stream has not reached the server"
    );

    // One of the two ends: the third goes through, and is archived.
    let (tx, call) = held.remove(0);
    for m in data_msgs(&data, 30_000) {
        tx.send(m).await.unwrap();
    }
    drop(tx);
    call.await.unwrap().unwrap();
    let reply = tokio::time::timeout(LIMIT, third)
        .await
        .expect("the third stream went through once a stream was free")
        .unwrap()
        .unwrap();
    let archived = client.wait(reply.job.unwrap().job_id).await.unwrap();
    assert_eq!(archived.shard_id, 3);
    drop(held);
}

/// While it recovers, the server answers health NOT_SERVING and calls
/// UNAVAILABLE, from the moment it listens; once recovered, SERVING. Recovery
/// is held here by another process holding the jobs database's write lock
/// while the server adopts archives already in place for QUEUED jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_not_serving_while_recovering() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let mut server = Server::start_in(&data_dir, &[]);
    let mut rpc = server.rpc().await;
    let mut segments = Vec::new();
    for log_id in 1..=3u64 {
        let data = json_segment(log_id, 200_000);
        push_archived(&mut rpc, 1, log_id, &data).await;
        segments.push(data);
    }
    drop(rpc);
    assert!(server.terminate().success());
    drop(server);
    // As after a crash between an archive's rename and its row's commit:
    // QUEUED jobs whose archives are in place, for recovery to verify and adopt.
    let db = rusqlite::Connection::open(data_dir.join("jobs.db")).unwrap();
    assert_eq!(
        db.execute("UPDATE jobs SET state = 'QUEUED' WHERE shard_id = 1", [])
            .unwrap(),
        3
    );
    db.execute_batch("BEGIN IMMEDIATE;").unwrap();

    let log = dir.path().join("server.log");
    let mut starting = Starting::spawn(&data_dir, &[], &log);
    let endpoint = tonic::transport::Endpoint::from_shared(starting.url()).unwrap();
    let channel = eventually(LIMIT, || async { endpoint.connect().await.ok() }).await;
    assert_eq!(
        health_status(&channel).await,
        Some(ServingStatus::NotServing),
        "health while recovering"
    );
    let recovering = "recovering from the previous run; retry shortly";
    let mut calls = proto::wal_archiver_client::WalArchiverClient::new(channel.clone());
    let refused = calls
        .get_shard(proto::GetShardRequest { shard_id: 1 })
        .await
        .unwrap_err();
    assert_status(&refused, Code::Unavailable, recovering);
    let data = json_segment(9, 1000);
    let refused = push(&mut calls, header(2, 1, &data), &data)
        .await
        .unwrap_err();
    assert_status(&refused, Code::Unavailable, recovering);
    assert!(starting.running(), "still recovering, not dead");
    assert!(
        !std::fs::read_to_string(&log).unwrap().contains("serving"),
        "not serving yet"
    );

    db.execute_batch("ROLLBACK;").unwrap();
    drop(db);
    eventually(LIMIT, || async {
        (health_status(&channel).await == Some(ServingStatus::Serving)).then_some(())
    })
    .await;
    let client = wal_archiver::client::Client::connect(&starting.url())
        .await
        .unwrap();
    let shard = client.shard(1).await.unwrap();
    assert_eq!((shard.archived, shard.queued), (3, 0), "{shard:?}");
    for (i, data) in segments.iter().enumerate() {
        let mut restored = std::io::Cursor::new(Vec::new());
        client
            .restore_to(1, i as u64 + 1, &mut restored, None)
            .await
            .unwrap();
        assert_eq!(&restored.into_inner(), data);
    }
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("adopted: 3")
    );
}

/// Rewrites an archive's `format_version` (header and footer) to `version`,
/// as a newer release would have written it. MessagePack keeps the field's
/// value as one byte for any version below 128.
fn set_format_version(archive: &Path, version: u8) {
    assert!(version < 128);
    let mut bytes = std::fs::read(archive).unwrap();
    let mut field = vec![0xa0 | 14];
    field.extend_from_slice(b"format_version");
    let mut replaced = 0;
    let mut at = 0;
    while let Some(found) = bytes[at..]
        .windows(field.len())
        .position(|window| window == field)
    {
        let value = at + found + field.len();
        assert_eq!(bytes[value], 1, "an archive of format version 1");
        bytes[value] = version;
        replaced += 1;
        at = value;
    }
    assert_eq!(replaced, 2, "header and footer");
    std::fs::write(archive, bytes).unwrap();
}

/// An archive of a newer format_version is refused by this build's readers:
/// `inspect` says so and exits non-zero, a restore of its job answers
/// DATA_LOSS before any byte; stock `zstd -d` still reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_of_a_newer_format_version_is_refused() {
    let server = Server::start(&[]);
    let mut rpc = server.rpc().await;
    let data = json_segment(5, 300_000);
    push_archived(&mut rpc, 1, 1, &data).await;
    let archive = server.archive_path(1, 1);
    set_format_version(&archive, 99);
    let newer = format!(
        "archive format version 99 is newer than this build understands ({})",
        wal_archiver::archive::FORMAT_VERSION
    );

    for args in [
        &["inspect"][..],
        &["inspect", "--verify"],
        &["inspect", "--json"],
    ] {
        let output = std::process::Command::new(BIN)
            .args(args)
            .arg(&archive)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(&newer), "{args:?}: {stderr}");
        assert!(output.stdout.is_empty(), "{args:?}");
    }

    let (refused, received) = restore_error(&mut rpc, 1, 1).await;
    assert_status(&refused, Code::DataLoss, &newer);
    assert_eq!(received, 0, "no byte of the segment was sent");

    assert_eq!(zstd_decode(&archive), data, "zstd -d reads every version");
}

/// The client library retries a push refused with RESOURCE_EXHAUSTED (a
/// full shard queue) until the queue drains, then succeeds; `push_reader`
/// (whose reader cannot be rewound) is tried once and reports the refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_retry_while_the_queue_is_full_and_push_reader_does_not() {
    let port = free_port();
    let server = Server::start(&[
        "--archive-queue-size",
        "1",
        "--metrics-listen",
        &format!("127.0.0.1:{port}"),
    ]);
    let refusals = || {
        sample(
            &scrape(port),
            "wal_archiver_refusals_total{code=\"RESOURCE_EXHAUSTED\"}",
        )
        .unwrap_or(0.0)
    };
    let client = server.client().await;
    let dir = tempfile::tempdir().unwrap();

    // push_reader works.
    let first = json_segment(1, 50_000);
    let pushed = client
        .push_reader(
            1,
            1,
            None,
            std::io::Cursor::new(first.clone()),
            &PushOptions::default(),
        )
        .await
        .unwrap();
    client.wait(pushed.job.id).await.unwrap();
    let mut restored = std::io::Cursor::new(Vec::new());
    client.restore_to(1, 1, &mut restored, None).await.unwrap();
    assert_eq!(restored.into_inner(), first);

    // An upload held open takes shard 1's one queue place.
    let held_data = json_segment(2, 50_000);
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(header_msg(header(1, 2, &held_data))).await.unwrap();
    let mut holder = server.rpc().await;
    let held = tokio::spawn(async move { holder.archive(ReceiverStream::new(rx)).await });
    eventually(LIMIT, || async {
        (client.shard(1).await.ok()?.receiving == 1).then_some(())
    })
    .await;

    // push_reader: refused once, not retried.
    let data = json_segment(3, 50_000);
    let refused = client
        .push_reader(
            1,
            3,
            None,
            std::io::Cursor::new(data.clone()),
            &PushOptions::default(),
        )
        .await
        .unwrap_err();
    match &refused {
        ClientError::Rpc(status) => {
            assert_eq!(status.code(), Code::ResourceExhausted);
            assert!(
                status.message().contains("shard 1's queue is full"),
                "{}",
                status.message()
            );
        }
        other => panic!("expected RESOURCE_EXHAUSTED, got {other:?}"),
    }
    assert_eq!(refusals(), 1.0, "push_reader was not retried");

    // push_file: refused, retried, and through once the queue has room.
    let path = dir.path().join("wal-3.log");
    std::fs::write(&path, &data).unwrap();
    let options = PushOptions {
        ack: AckLevel::Archived,
        ..PushOptions::default()
    };
    let retrying = {
        let client = client.clone();
        tokio::spawn(async move { client.push_file(1, 3, &path, &options).await })
    };
    eventually(LIMIT, || async { (refusals() >= 2.0).then_some(()) }).await;
    assert!(
        !retrying.is_finished(),
        "still retrying while the queue is full"
    );
    for m in data_msgs(&held_data, 30_000) {
        tx.send(m).await.unwrap();
    }
    drop(tx);
    held.await.unwrap().unwrap();
    let pushed = tokio::time::timeout(LIMIT, retrying)
        .await
        .expect("the retried push went through")
        .unwrap()
        .unwrap();
    assert_eq!(pushed.job.state, JobState::Archived);
    assert!(!pushed.deduplicated);
    assert!(refusals() >= 2.0);
    let mut restored = std::io::Cursor::new(Vec::new());
    client.restore_to(1, 3, &mut restored, None).await.unwrap();
    assert_eq!(restored.into_inner(), data);
}

/// The README's client-library snippet is examples/readme_client.rs, which
/// `cargo test` compiles: the two must stay the same text.
#[test]
fn readme_client_snippet_is_the_compiled_example() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let section = readme
        .split_once("## The client library")
        .expect("README has a client library section")
        .1;
    let snippet = section
        .split_once("```rust\n")
        .expect("a rust block in that section")
        .1
        .split_once("```")
        .expect("the block ends")
        .0;
    let example = std::fs::read_to_string(root.join("examples/readme_client.rs")).unwrap();
    assert_eq!(
        snippet, example,
        "README.md's client snippet and examples/readme_client.rs differ"
    );
}
