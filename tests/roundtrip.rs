//! Byte-exact roundtrips through the real server: push, archive, restore, and
//! decode every archive with the stock `zstd -d`.

mod common;

use std::io::Cursor;

use common::*;
use wal_archiver::archive::read_metadata;
use wal_archiver::client::PushOptions;
use wal_archiver::types::{AckLevel, ContentKind, Digest, JobState};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_segments_roundtrip_byte_exact() {
    let server = Server::start(&[]);
    let client = server.client().await;
    let options = PushOptions {
        ack: AckLevel::Archived,
        ..PushOptions::default()
    };
    for (i, path) in postgres_segments().iter().enumerate() {
        let log_id = 15 + i as u64;
        let original = std::fs::read(path).unwrap();
        let pushed = client.push_file(7, log_id, path, &options).await.unwrap();
        assert_eq!(pushed.job.state, JobState::Archived, "{:?}", pushed.job);
        assert!(!pushed.deduplicated);
        assert_eq!(pushed.job.size, Some(original.len() as u64));
        assert_eq!(pushed.job.sha256, Some(Digest::of(&original)));

        let archive = server.archive_path(7, log_id);
        assert_eq!(
            zstd_decode(&archive),
            original,
            "zstd -d must give the original bytes"
        );
        let metadata = read_metadata(std::fs::File::open(&archive).unwrap()).unwrap();
        assert_eq!(metadata.shard_id, 7);
        assert_eq!(metadata.log_id, log_id);
        assert_eq!(metadata.original_size, original.len() as u64);
        assert_eq!(metadata.sha256, Digest::of(&original).to_hex());
        assert_eq!(metadata.content_kind, ContentKind::Raw);
        assert_eq!(metadata.zstd_level, 3);
        assert_eq!(
            metadata.archive_size,
            std::fs::metadata(&archive).unwrap().len()
        );
        assert_eq!(pushed.job.archive_size, Some(metadata.archive_size));
        assert!(
            metadata.archive_size < original.len() as u64 / 2,
            "WAL compresses well"
        );

        let mut restored = Cursor::new(Vec::new());
        let n = client
            .restore_to(7, log_id, &mut restored, None)
            .await
            .unwrap();
        assert_eq!(n, original.len() as u64);
        assert_eq!(
            restored.into_inner(),
            original,
            "restore must give the original bytes"
        );
    }
    let shard = client.shard(7).await.unwrap();
    assert_eq!(shard.archived, 2);
    assert_eq!(shard.archived_watermark, Some(16));
    assert!(
        server.spool_files().is_empty(),
        "spool files left: {:?}",
        server.spool_files()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_roundtrip_with_entry_stats() {
    let server = Server::start(&[]);
    let client = server.client().await;
    let dir = tempfile::tempdir().unwrap();
    let options = PushOptions {
        kind: ContentKind::JsonLines,
        ..PushOptions::default()
    };
    let mut segments = Vec::new();
    for log_id in 1..=3u64 {
        let data = json_segment(log_id, 3 << 20);
        let path = dir.path().join(format!("wal-{log_id}.log"));
        std::fs::write(&path, &data).unwrap();
        let pushed = client.push_file(1, log_id, &path, &options).await.unwrap();
        assert!(matches!(
            pushed.job.state,
            JobState::Queued | JobState::Compressing | JobState::Archived
        ));
        segments.push((log_id, data, pushed.job.id));
    }
    for (log_id, data, job_id) in segments {
        let job = client.wait(job_id).await.unwrap();
        let lines = data.iter().filter(|&&b| b == b'\n').count() as u64;
        let stats = job.json.expect("JSON stats");
        assert_eq!(stats.entries, lines);
        assert!(stats.first_timestamp.unwrap() < stats.last_timestamp.unwrap());

        let archive = server.archive_path(1, log_id);
        assert_eq!(zstd_decode(&archive), data);
        let metadata = read_metadata(std::fs::File::open(&archive).unwrap()).unwrap();
        assert_eq!(metadata.content_kind, ContentKind::JsonLines);
        assert_eq!(metadata.json, Some(stats));

        let mut restored = Cursor::new(Vec::new());
        client
            .restore_to(1, log_id, &mut restored, None)
            .await
            .unwrap();
        assert_eq!(restored.into_inner(), data);
    }
    assert_eq!(client.shard(1).await.unwrap().archived_watermark, Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_in_header_and_empty_segment() {
    let server = Server::start(&[]);
    let mut rpc = server.rpc().await;
    let data = json_segment(9, 200_000);
    let mut with_header_digest = header(3, 1, &data);
    with_header_digest.ack = wal_archiver::proto::AckLevel::Archived as i32;
    let reply = push(&mut rpc, with_header_digest, &data).await.unwrap();
    assert_eq!(
        reply.job.unwrap().state,
        wal_archiver::proto::JobState::Archived as i32
    );
    assert_eq!(zstd_decode(&server.archive_path(3, 1)), data);

    let mut empty = header(3, 2, b"");
    empty.ack = wal_archiver::proto::AckLevel::Archived as i32;
    let reply = push(&mut rpc, empty, b"").await.unwrap();
    assert_eq!(
        reply.job.unwrap().state,
        wal_archiver::proto::JobState::Archived as i32
    );
    assert!(zstd_decode(&server.archive_path(3, 2)).is_empty());
    let client = server.client().await;
    let mut restored = Cursor::new(Vec::new());
    assert_eq!(
        client.restore_to(3, 2, &mut restored, None).await.unwrap(),
        0
    );
    assert_eq!(client.shard(3).await.unwrap().archived_watermark, Some(2));
}
