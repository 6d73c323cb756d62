//! The archive store, seen from outside the real server: every test runs the
//! same body with archives on the local disk and in a real S3-compatible store
//! (Garage, started by `common::garage`), so both backends keep one behaviour.

#[macro_use]
mod common;

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::{RngCore, SeedableRng, rngs::StdRng};
use tonic::Code;

use common::garage::Garage;
use common::*;
use wal_archiver::client::{Client, PushOptions};
use wal_archiver::types::{AckLevel, ContentKind, Digest, JobState};

/// Part size for tests that go multipart: S3's minimum, to keep them quick.
const PART_SIZE: &str = "5242880";

on_both_backends!(
    segments_round_trip_byte_exact,
    a_multipart_archive_round_trips,
    verify_finds_damaged_and_missing_archives,
    retention_removes_archives,
    an_archive_of_other_bytes_under_the_key_is_never_overwritten,
    a_crash_mid_upload_is_cleaned_up_and_the_job_resumes,
    a_failed_upload_leaves_no_object,
    a_damaged_archive_is_repaired_by_a_push_of_the_same_bytes,
);

/// Incompressible bytes: the archive is as big as the segment.
fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    data
}

fn archived(kind: ContentKind) -> PushOptions {
    PushOptions {
        kind,
        ack: AckLevel::Archived,
        ..PushOptions::default()
    }
}

fn write_file(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, data).unwrap();
    path
}

/// Pushes a JSON-lines segment as shard 1's `log_id` and waits for it to be archived.
async fn push_json(client: &Client, dir: &Path, log_id: u64, size: usize) -> Vec<u8> {
    let data = json_segment(log_id, size);
    let path = write_file(dir, &format!("wal-{log_id}"), &data);
    client
        .push_file(1, log_id, &path, &archived(ContentKind::JsonLines))
        .await
        .unwrap();
    data
}

async fn restored(client: &Client, shard: u32, log_id: u64) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    client
        .restore_to(shard, log_id, &mut out, None)
        .await
        .unwrap();
    out.into_inner()
}

/// What the bucket holds beside the bytes: the segment's identity. Size and
/// digest are missing only from a multipart archive begun before its segment
/// was complete, from a client that declared them only in its trailer.
async fn assert_metadata(server: &Server, shard: u32, log_id: u64, original: &[u8], whole: bool) {
    if server.backend != Backend::S3 {
        return;
    }
    let meta = server.archive_metadata(shard, log_id).await;
    assert_eq!(meta.get("shard_id"), Some(&shard.to_string()), "{meta:?}");
    assert_eq!(meta.get("log_id"), Some(&log_id.to_string()), "{meta:?}");
    let identity = (meta.get("size"), meta.get("sha256"));
    let expected = (original.len().to_string(), Digest::of(original).to_hex());
    match identity {
        (None, None) if !whole => {}
        (size, sha) => assert_eq!(
            (size, sha),
            (Some(&expected.0), Some(&expected.1)),
            "{meta:?}"
        ),
    }
}

async fn segments_round_trip_byte_exact(backend: Backend) {
    let server = Server::start_with(backend, &[]);
    let client = server.client().await;
    let dir = tempfile::tempdir().unwrap();
    let mut originals = Vec::new();
    for (i, path) in postgres_segments().iter().enumerate() {
        let log_id = i as u64 + 1;
        client
            .push_file(1, log_id, path, &archived(ContentKind::Raw))
            .await
            .unwrap();
        originals.push((log_id, std::fs::read(path).unwrap()));
    }
    let json = json_segment(7, 2 << 20);
    let path = write_file(dir.path(), "wal-3.log", &json);
    client
        .push_file(1, 3, &path, &archived(ContentKind::JsonLines))
        .await
        .unwrap();
    originals.push((3, json));

    for (log_id, original) in &originals {
        assert!(restored(&client, 1, *log_id).await == *original);
        assert!(
            server.decode_archive(1, *log_id).await == *original,
            "the stock zstd -d gives back log_id {log_id}"
        );
        assert_metadata(&server, 1, *log_id, original, true).await;
    }
    assert_eq!(server.archive_ids(1).await, vec![1, 2, 3]);
}

async fn a_multipart_archive_round_trips(backend: Backend) {
    let server = Server::start_with(backend, &["--s3-part-size", PART_SIZE]);
    let client = server.client().await;
    let dir = tempfile::tempdir().unwrap();
    // 13 MiB that do not compress: three parts of 5, 5 and 3 MiB.
    let data = random_bytes(1, 13 << 20);
    let path = write_file(dir.path(), "wal-1", &data);
    let pushed = client
        .push_file(1, 1, &path, &archived(ContentKind::Raw))
        .await
        .unwrap();
    assert_eq!(pushed.job.state, JobState::Archived);
    assert!(pushed.job.archive_size.unwrap() > 10 << 20);
    assert!(restored(&client, 1, 1).await == data);
    assert!(server.decode_archive(1, 1).await == data);
    assert_metadata(&server, 1, 1, &data, false).await;
    assert!(!server.archive_in_progress(), "nothing left in progress");

    // Declared up front, size and digest are in the metadata however the
    // archive was written.
    let data = random_bytes(2, 13 << 20);
    let mut rpc = server.rpc().await;
    let mut declared = header(1, 2, &data);
    declared.ack = wal_archiver::proto::AckLevel::Archived as i32;
    push(&mut rpc, declared, &data).await.unwrap();
    assert!(server.decode_archive(1, 2).await == data);
    assert_metadata(&server, 1, 2, &data, true).await;
}

async fn verify_finds_damaged_and_missing_archives(backend: Backend) {
    let server = Server::start_with(backend, &[]);
    let client = server.client().await;
    let dir = tempfile::tempdir().unwrap();
    for log_id in 1..=3 {
        push_json(&client, dir.path(), log_id, 80_000).await;
    }
    let clean = client.verify(None).await.unwrap();
    assert_eq!(clean.archives_checked, 3);
    assert!(clean.problems.is_empty(), "{clean:?}");

    let mut damaged = server.archive_bytes(1, 2).await.unwrap();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x5a;
    server.put_archive(1, 2, damaged).await;
    server.remove_archive(1, 3).await;

    let report = client.verify(Some(1)).await.unwrap();
    assert_eq!(report.archives_checked, 1, "{report:?}");
    let problems: Vec<(u64, &str)> = report
        .problems
        .iter()
        .map(|p| (p.log_id, p.problem.as_str()))
        .collect();
    assert_eq!(problems.len(), 2, "{report:?}");
    assert_eq!(problems[0].0, 2, "{report:?}");
    assert_eq!(problems[1].0, 3, "{report:?}");
    assert!(problems[1].1.contains("missing"), "{report:?}");
}

/// A push of an archived segment's bytes rewrites its damaged or missing
/// archive — on S3 too, where the rewrite must replace an object of the
/// same segment instead of being refused by a create-only PUT.
async fn a_damaged_archive_is_repaired_by_a_push_of_the_same_bytes(backend: Backend) {
    let server = Server::start_with(backend, &[]);
    let client = server.client().await;
    let dir = tempfile::tempdir().unwrap();
    for log_id in 1..=2 {
        push_json(&client, dir.path(), log_id, 80_000).await;
    }
    let mut damaged = server.archive_bytes(1, 1).await.unwrap();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x5a;
    server.put_archive(1, 1, damaged).await;
    server.remove_archive(1, 2).await;
    assert_eq!(client.verify(Some(1)).await.unwrap().problems.len(), 2);

    for log_id in 1..=2 {
        let data = push_json(&client, dir.path(), log_id, 80_000).await;
        assert_eq!(restored(&client, 1, log_id).await, data);
        assert!(
            server.decode_archive(1, log_id).await == data,
            "the stock zstd decodes the rewritten archive"
        );
    }
    let report = client.verify(Some(1)).await.unwrap();
    assert!(report.problems.is_empty(), "{report:?}");
    assert_eq!(report.archives_checked, 2);
}

async fn retention_removes_archives(backend: Backend) {
    let server = Server::start_with(
        backend,
        &["--retain-count", "1", "--retention-interval", "1"],
    );
    let client = server.client().await;
    let dir = tempfile::tempdir().unwrap();
    for log_id in 1..=3 {
        push_json(&client, dir.path(), log_id, 20_000).await;
    }
    eventually(Duration::from_secs(60), || async {
        (server.archive_ids(1).await == vec![3]).then_some(())
    })
    .await;
    let mut sink = Cursor::new(Vec::new());
    let refused = client.restore_to(1, 1, &mut sink, None).await.unwrap_err();
    assert_eq!(refused.code(), Some(Code::NotFound), "{refused}");
    assert!(restored(&client, 1, 3).await == json_segment(3, 20_000));
}

async fn an_archive_of_other_bytes_under_the_key_is_never_overwritten(backend: Backend) {
    let server = Server::start_with(backend, &[]);
    let mut rpc = server.rpc().await;
    let original = json_segment(1, 50_000);
    let mut first = header(1, 1, &original);
    first.ack = wal_archiver::proto::AckLevel::Archived as i32;
    push(&mut rpc, first, &original).await.unwrap();
    // log_id 1's archive copied by hand to where log_id 2's belongs (for S3: a
    // plain PUT, without the server's metadata, so its header tells whose it is).
    let planted = server.archive_bytes(1, 1).await.unwrap();
    server.put_archive(1, 2, planted.clone()).await;

    let other = json_segment(2, 50_000);
    let mut second = header(1, 2, &other);
    second.ack = wal_archiver::proto::AckLevel::Archived as i32;
    let refused = push(&mut rpc, second, &other).await.unwrap_err();
    assert_eq!(refused.code(), Code::AlreadyExists, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("shard 1 log_id 2 was already pushed with SHA-256"),
        "{}",
        refused.message()
    );
    assert!(
        server.archive_bytes(1, 2).await.unwrap() == planted,
        "the planted archive is left as it was"
    );
}

/// SIGKILL while a large archive is being written; the next start cleans up
/// what the writer left (a temporary file, or a multipart upload in the
/// bucket) and the acknowledged job is archived from its spool.
async fn a_crash_mid_upload_is_cleaned_up_and_the_job_resumes(backend: Backend) {
    // A Garage of its own: it is paused to catch the upload in the middle.
    let garage = (backend == Backend::S3).then(Garage::start);
    let args = ["--s3-part-size", PART_SIZE];
    let mut server = match &garage {
        Some(garage) => Server::start_on(garage, &args),
        None => Server::start(&args),
    };
    let dir = tempfile::tempdir().unwrap();
    let queued = PushOptions {
        ack: AckLevel::Queued,
        ..PushOptions::default()
    };
    let mut caught = None;
    for log_id in 1..=3u64 {
        let data = random_bytes(log_id, 40 << 20);
        let path = write_file(dir.path(), &format!("wal-{log_id}"), &data);
        let client = server.client().await;
        let job = client
            .push_file(1, log_id, &path, &queued)
            .await
            .unwrap()
            .job;
        let seen = eventually(Duration::from_secs(60), || async {
            if server.archive_in_progress() {
                return Some(true);
            }
            let state = client.job(job.id).await.unwrap().state;
            state.is_terminal().then_some(false)
        })
        .await;
        if let Some(garage) = &garage {
            garage.pause();
        }
        // Still in progress once the store is frozen: the crash lands mid-upload.
        if seen && server.archive_in_progress() {
            server.kill();
            caught = Some((log_id, job.id, data));
            break;
        }
        if let Some(garage) = &garage {
            garage.resume();
        }
    }
    let (log_id, job_id, data) = match caught {
        Some(caught) => caught,
        None if backend == Backend::Local => {
            // A fast disk can finish before a poll sees the temporary file;
            // the S3 case below is the one that must catch the upload.
            return;
        }
        None => panic!("never caught an upload in progress"),
    };
    if let (Some(garage), Some(target)) = (&garage, &server.s3) {
        garage.resume();
        assert!(
            garage.multipart_uploads(&target.prefix).await >= 1,
            "the crash left its multipart upload in the bucket"
        );
        assert!(!server.upload_records().is_empty());
    }

    server.restart();
    let client = server.client().await;
    let job = tokio::time::timeout(Duration::from_secs(120), client.wait(job_id))
        .await
        .expect("the job ends")
        .unwrap();
    assert_eq!(job.state, JobState::Archived, "{job:?}");
    assert!(restored(&client, 1, log_id).await == data);
    assert!(server.temporaries().is_empty());
    assert!(server.upload_records().is_empty());
    if let (Some(garage), Some(target)) = (&garage, &server.s3) {
        assert!(
            server.log_text().contains("temporaries_removed: 1"),
            "recovery aborted the recorded upload: {}",
            server.log_text()
        );
        assert_eq!(
            garage.multipart_uploads(&target.prefix).await,
            0,
            "no upload is left in the bucket"
        );
        assert_metadata(&server, 1, log_id, &data, true).await;
    }
}

/// A job that fails after its archive went multipart (a bad JSON line at the
/// very end) leaves no object, no temporary, no upload in progress.
async fn a_failed_upload_leaves_no_object(backend: Backend) {
    let server = Server::start_with(backend, &["--s3-part-size", PART_SIZE]);
    let client = server.client().await;
    let dir = tempfile::tempdir().unwrap();
    // Hex strings compress to about half: 16 MiB of lines make ~8 MiB of
    // archive, so parts are on their way when the last line is read.
    let mut data = Vec::with_capacity(16 << 20);
    let mut n = 0u64;
    while data.len() < 16 << 20 {
        let noise = hex::encode(random_bytes(n, 2000));
        data.extend_from_slice(format!("{{\"n\":{n},\"noise\":\"{noise}\"}}\n").as_bytes());
        n += 1;
    }
    data.extend_from_slice(b"{\"broken\": \n");
    let path = write_file(dir.path(), "wal-1", &data);
    let refused = client
        .push_file(1, 1, &path, &archived(ContentKind::JsonLines))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some(Code::InvalidArgument), "{refused}");
    assert!(server.archive_bytes(1, 1).await.is_none(), "no object");
    assert!(!server.archive_in_progress(), "nothing left in progress");
    if let Some(target) = &server.s3 {
        assert_eq!(
            garage::shared().multipart_uploads(&target.prefix).await,
            0,
            "the multipart upload was aborted"
        );
    }
}
