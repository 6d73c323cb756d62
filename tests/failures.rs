//! Bad input and broken streams: each gets a precise status and message, no
//! partial file, and never costs an acknowledged byte.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::calls::{assert_status, push_archived, restore_error};
use common::*;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use wal_archiver::proto::{self, archive_request::Msg};

fn job_state(job: &proto::Job) -> proto::JobState {
    proto::JobState::try_from(job.state).unwrap()
}

async fn jobs_of(server: &Server, shard: u32) -> Vec<proto::Job> {
    let mut rpc = server.rpc().await;
    let request = proto::ListJobsRequest {
        shard_id: Some(shard),
        ..Default::default()
    };
    rpc.list_jobs(request).await.unwrap().into_inner().jobs
}

/// No archive, no temporary and no spool file anywhere.
fn assert_no_files(server: &Server, shard: u32) {
    assert!(
        server.archives(shard).is_empty(),
        "archives left: {:?}",
        server.archives(shard)
    );
    assert!(
        server.temporaries().is_empty(),
        "temporaries left: {:?}",
        server.temporaries()
    );
    assert!(
        server.spool_files().is_empty(),
        "spool files left: {:?}",
        server.spool_files()
    );
}

async fn failed_job(server: &Server, shard: u32) -> proto::Job {
    let jobs = jobs_of(server, shard).await;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(
        job_state(&jobs[0]),
        proto::JobState::Failed,
        "{:?}",
        jobs[0]
    );
    jobs[0].clone()
}

/// Like `push`, in chunks under a 64 KiB `max_chunk_size`.
async fn push_small(
    rpc: &mut proto::wal_archiver_client::WalArchiverClient<tonic::transport::Channel>,
    first: proto::SegmentHeader,
    data: &[u8],
) -> Result<proto::ArchiveReply, tonic::Status> {
    let mut messages = vec![header_msg(first)];
    messages.extend(data_msgs(data, 60_000));
    send(rpc, messages).await
}

fn message(msg: Msg) -> proto::ArchiveRequest {
    proto::ArchiveRequest { msg: Some(msg) }
}

fn trailer(size: Option<u64>, sha256: &[u8]) -> proto::ArchiveRequest {
    message(Msg::Trailer(proto::SegmentTrailer {
        size,
        sha256: Bytes::copy_from_slice(sha256),
    }))
}

/// A header that leaves size and digest to the trailer, as the library sends it.
fn bare_header(shard: u32, data: &[u8]) -> proto::SegmentHeader {
    let mut bare = header(shard, 1, data);
    bare.size = None;
    bare.sha256 = Bytes::new();
    bare
}

/// What a refused stream leaves behind.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Leaves {
    /// Refused with the header: no job at all.
    NoJob,
    /// The job the header opened, FAILED with the same words as the status.
    FailedJob,
}

/// One bad stream of RELIABILITY.md's failure table.
struct Bad {
    what: &'static str,
    /// Sent with the header's shard set to the case's own.
    messages: Vec<proto::ArchiveRequest>,
    code: Code,
    says: String,
    leaves: Leaves,
}

fn bad(
    what: &'static str,
    messages: Vec<proto::ArchiveRequest>,
    code: Code,
    says: impl Into<String>,
    leaves: Leaves,
) -> Bad {
    Bad {
        what,
        messages,
        code,
        says: says.into(),
        leaves,
    }
}

/// `messages` with every header's shard set to `shard`.
fn on_shard(mut messages: Vec<proto::ArchiveRequest>, shard: u32) -> Vec<proto::ArchiveRequest> {
    for message in &mut messages {
        if let Some(Msg::Header(header)) = &mut message.msg {
            header.shard_id = shard;
        }
    }
    messages
}

/// Every bad Archive stream of docs/RELIABILITY.md's failure table, each on a
/// shard of its own: the code and the message the table promises, and what
/// remains (nothing, or a FAILED job whose reason says the same; never a
/// spool file, a temporary or an archive).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_stream_gets_its_code_and_message() {
    use Code::{DataLoss, InvalidArgument};
    use Leaves::{FailedJob, NoJob};
    let server = Server::start(&["--max-chunk-size", "65536", "--max-segment-size", "1000000"]);
    let data = json_segment(1, 50_000);
    let len = data.len() as u64;
    let sha = wal_archiver::types::Digest::of(&data);
    let medium = json_segment(2, 100_000);
    let large = json_segment(3, 1_100_000);
    // A stream: these first messages, then the data in 20 kB chunks, then these last ones.
    let stream = |first: Vec<proto::ArchiveRequest>, last: Vec<proto::ArchiveRequest>| {
        let mut messages = first;
        messages.extend(data_msgs(&data, 20_000));
        messages.extend(last);
        messages
    };
    let with_header = |edit: fn(&mut proto::SegmentHeader)| {
        let mut edited = header(0, 1, &data);
        edit(&mut edited);
        stream(vec![header_msg(edited)], vec![])
    };
    let full = || header_msg(header(0, 1, &data));
    let bare = || header_msg(bare_header(0, &data));
    let good_trailer = || trailer(Some(len), &sha.0);
    let empty = || proto::ArchiveRequest { msg: None };

    let cases = vec![
        // The header missing, repeated, or out of place; an empty message.
        bad(
            "an empty stream",
            vec![],
            InvalidArgument,
            "empty stream: no segment header",
            NoJob,
        ),
        bad(
            "data before the header",
            stream(vec![], vec![]),
            InvalidArgument,
            "the first message must be the segment header",
            NoJob,
        ),
        bad(
            "an empty message first",
            vec![empty()],
            InvalidArgument,
            "the first message must be the segment header",
            NoJob,
        ),
        bad(
            "the header sent twice",
            stream(vec![full(), full()], vec![]),
            InvalidArgument,
            "segment header sent twice",
            FailedJob,
        ),
        bad(
            "an empty message after the header",
            stream(vec![full()], vec![empty()]),
            InvalidArgument,
            "empty message: set header, data or trailer",
            FailedJob,
        ),
        // The trailer out of place, repeated, or disagreeing with the header.
        bad(
            "data after the trailer",
            stream(
                vec![bare()],
                vec![good_trailer(), data_msgs(b"more", 10).remove(0)],
            ),
            InvalidArgument,
            "data after the trailer",
            FailedJob,
        ),
        bad(
            "the trailer sent twice",
            stream(vec![bare()], vec![good_trailer(), good_trailer()]),
            InvalidArgument,
            "trailer sent twice",
            FailedJob,
        ),
        bad(
            "header and trailer disagree on the size",
            stream(vec![full()], vec![trailer(Some(len + 1), &sha.0)]),
            InvalidArgument,
            format!(
                "header and trailer disagree on the size: {len} vs {}",
                len + 1
            ),
            FailedJob,
        ),
        bad(
            "header and trailer disagree on the SHA-256",
            stream(vec![full()], vec![trailer(Some(len), &[9u8; 32])]),
            InvalidArgument,
            "header and trailer disagree on the SHA-256",
            FailedJob,
        ),
        // Digests.
        bad(
            "a header SHA-256 of the wrong length",
            with_header(|h| h.sha256 = Bytes::from_static(b"short")),
            InvalidArgument,
            "sha256 in the header has 5 bytes; a SHA-256 has 32",
            NoJob,
        ),
        bad(
            "a trailer SHA-256 of the wrong length",
            stream(vec![bare()], vec![trailer(Some(len), &sha.0[..31])]),
            InvalidArgument,
            "sha256 in the trailer has 31 bytes; a SHA-256 has 32",
            FailedJob,
        ),
        bad(
            "no SHA-256 in header or trailer",
            with_header(|h| h.sha256 = Bytes::new()),
            InvalidArgument,
            "no SHA-256 for the segment: send it in the header or in the trailer",
            FailedJob,
        ),
        bad(
            "a SHA-256 mismatch",
            with_header(|h| h.sha256 = Bytes::copy_from_slice(&[7u8; 32])),
            DataLoss,
            format!(
                "SHA-256 mismatch: declared {}, received bytes hash to {sha}",
                "07".repeat(32)
            ),
            FailedJob,
        ),
        // Sizes.
        bad(
            "fewer bytes than declared",
            {
                let mut messages = vec![full()];
                messages.extend(data_msgs(&data[..30_000], 10_000));
                messages
            },
            InvalidArgument,
            format!("size mismatch: {len} bytes declared, 30000 received"),
            FailedJob,
        ),
        bad(
            "more bytes than declared",
            with_header(|h| h.size = h.size.map(|size| size - 1000)),
            InvalidArgument,
            format!("size mismatch: {} bytes declared", len - 1000),
            FailedJob,
        ),
        bad(
            "a chunk over max_chunk_size",
            vec![
                header_msg(header(0, 1, &medium)),
                data_msgs(&medium, 65_537).remove(0),
            ],
            InvalidArgument,
            "data chunk of 65537 bytes exceeds max_chunk_size (65536 bytes)",
            FailedJob,
        ),
        bad(
            "a declared size over max_segment_size",
            with_header(|h| h.size = Some(2_000_000)),
            InvalidArgument,
            "segment of 2000000 bytes exceeds max_segment_size (1000000 bytes)",
            NoJob,
        ),
        bad(
            "a received size over max_segment_size",
            {
                let mut messages = vec![header_msg(bare_header(0, &large))];
                messages.extend(data_msgs(&large, 60_000));
                messages
            },
            InvalidArgument,
            "exceeds max_segment_size (1000000 bytes)",
            FailedJob,
        ),
        // Header fields out of range.
        bad(
            "an unknown content kind",
            with_header(|h| h.kind = 99),
            InvalidArgument,
            "unknown content kind 99",
            NoJob,
        ),
        bad(
            "an unknown ack level",
            with_header(|h| h.ack = 42),
            InvalidArgument,
            "unknown ack level 42",
            NoJob,
        ),
        bad(
            "a log_id over 2^63-1",
            with_header(|h| h.log_id = u64::MAX),
            InvalidArgument,
            format!("log_id {} is out of range (at most 2^63-1)", u64::MAX),
            NoJob,
        ),
        bad(
            "a zstd level above the range",
            with_header(|h| h.zstd_level = Some(100)),
            InvalidArgument,
            "zstd level 100 is out of range",
            NoJob,
        ),
        bad(
            "a zstd level below the range",
            with_header(|h| h.zstd_level = Some(-1_000_000)),
            InvalidArgument,
            "zstd level -1000000 is out of range",
            NoJob,
        ),
    ];

    let mut rpc = server.rpc().await;
    for (index, case) in cases.into_iter().enumerate() {
        let shard = index as u32 + 1;
        let status = send(&mut rpc, on_shard(case.messages, shard))
            .await
            .unwrap_err();
        assert_eq!(status.code(), case.code, "{}: {status:?}", case.what);
        assert!(
            status.message().contains(&case.says),
            "{}: expected {:?} in {:?}",
            case.what,
            case.says,
            status.message()
        );
        let jobs = jobs_of(&server, shard).await;
        match case.leaves {
            NoJob => assert!(jobs.is_empty(), "{}: {jobs:?}", case.what),
            FailedJob => {
                assert_eq!(jobs.len(), 1, "{}: {jobs:?}", case.what);
                assert_eq!(
                    job_state(&jobs[0]),
                    proto::JobState::Failed,
                    "{}",
                    case.what
                );
                assert!(
                    jobs[0].reason.contains(&case.says),
                    "{}: the job's reason is {:?}",
                    case.what,
                    jobs[0].reason
                );
            }
        }
        assert!(server.archives(shard).is_empty(), "{}", case.what);
    }
    eventually(Duration::from_secs(30), || async {
        server.spool_files().is_empty().then_some(())
    })
    .await;
    assert!(server.temporaries().is_empty());
}

/// A segment whose push failed is not blocked by its FAILED job: the correct
/// push of it is archived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_segment_can_be_pushed_again() {
    let server = Server::start(&["--max-chunk-size", "65536"]);
    let mut rpc = server.rpc().await;
    let data = json_segment(2, 200_000);
    let truncated = send(&mut rpc, {
        let mut m = vec![header_msg(header(1, 1, &data))];
        m.extend(data_msgs(&data[..100_000], 30_000));
        m
    })
    .await
    .unwrap_err();
    assert_status(
        &truncated,
        Code::InvalidArgument,
        &format!(
            "size mismatch: {} bytes declared, 100000 received",
            data.len()
        ),
    );
    let job = failed_job(&server, 1).await;
    assert!(job.reason.contains("size mismatch"), "{}", job.reason);
    assert_no_files(&server, 1);

    let ok = push_small(&mut rpc, header(1, 1, &data), &data)
        .await
        .unwrap();
    assert!(!ok.deduplicated);
    let client = server.client().await;
    let archived = client.wait(ok.job.unwrap().job_id).await.unwrap();
    assert_eq!(archived.log_id, 1);
    assert_eq!(zstd_decode(&server.archive_path(1, 1)), data);
    assert!(server.spool_files().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_aborts_mid_upload_never_commits() {
    let server = Server::start(&[]);
    let data = json_segment(3, 400_000);
    for (shard, digest_in_header) in [(1u32, true), (2u32, false)] {
        let mut rpc = server.rpc().await;
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let mut first = header(shard, 7, &data);
        if !digest_in_header {
            first.sha256 = Bytes::new();
            first.size = None;
        }
        tx.send(header_msg(first)).await.unwrap();
        for m in data_msgs(&data[..150_000], 50_000) {
            tx.send(m).await.unwrap();
        }
        let call = tokio::spawn(async move { rpc.archive(ReceiverStream::new(rx)).await });
        eventually(Duration::from_secs(30), || async {
            (jobs_of(&server, shard).await.len() == 1).then_some(())
        })
        .await;
        call.abort();
        drop(tx);
        let job = eventually(Duration::from_secs(30), || async {
            let jobs = jobs_of(&server, shard).await;
            (job_state(&jobs[0]) == proto::JobState::Failed).then(|| jobs[0].clone())
        })
        .await;
        assert!(
            job.reason.contains("interrupted")
                || job.reason.contains("mismatch")
                || job.reason.contains("SHA-256"),
            "{}",
            job.reason
        );
        eventually(Duration::from_secs(30), || async {
            server.spool_files().is_empty().then_some(())
        })
        .await;
        assert!(server.archives(shard).is_empty());

        pushed_again_whole(&server, shard, 7, &data).await;
    }
}

/// A segment file that fails to read midway: the push reports the read error,
/// not the server's view of a short stream, and the server keeps nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_that_cannot_be_read_fails_with_its_read_error() {
    struct Unreadable;
    impl tokio::io::AsyncRead for Unreadable {
        fn poll_read(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Err(std::io::Error::other("the disk went away")))
        }
    }
    let server = Server::start(&[]);
    let data = json_segment(3, 700_000);
    let readable = 600_000;
    let reader =
        tokio::io::AsyncReadExt::chain(std::io::Cursor::new(data[..readable].to_vec()), Unreadable);
    let client = server.client().await;
    let options = wal_archiver::client::PushOptions::default();
    let error = client
        .push_reader(4, 9, Some(data.len() as u64), reader, &options)
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("reading the segment") && message.contains("the disk went away"),
        "{message}"
    );
    let job = terminal_job(&server, 4).await;
    assert_eq!(job_state(&job), proto::JobState::Failed, "{}", job.reason);
    eventually(Duration::from_secs(30), || async {
        server.spool_files().is_empty().then_some(())
    })
    .await;
    assert!(server.archives(4).is_empty());

    pushed_again_whole(&server, 4, 9, &data).await;
}

/// The segment pushed again, whole, is archived.
async fn pushed_again_whole(server: &Server, shard: u32, log: u64, data: &[u8]) {
    let mut rpc = server.rpc().await;
    let reply = push(&mut rpc, header(shard, log, data), data)
        .await
        .unwrap();
    let archived = server
        .client()
        .await
        .wait(reply.job.unwrap().job_id)
        .await
        .unwrap();
    assert_eq!(archived.size, Some(data.len() as u64));
    assert_eq!(zstd_decode(&server.archive_path(shard, log)), data);
}

/// The one job of `shard` once it is in a terminal state.
async fn terminal_job(server: &Server, shard: u32) -> proto::Job {
    eventually(Duration::from_secs(30), || async {
        let job = jobs_of(server, shard).await.into_iter().next()?;
        let done = matches!(
            job_state(&job),
            proto::JobState::Archived | proto::JobState::Failed | proto::JobState::Cancelled
        );
        done.then_some(job)
    })
    .await
}

/// A client that goes away while the server is still recording its job (the
/// write waits for the jobs database's lock) must not leave the job RECEIVING
/// for good: every retry of the segment would be refused as busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_aborts_while_its_job_is_recorded_can_push_again() {
    let server = Server::start(&[]);
    let data = json_segment(3, 400_000);
    let lock = server.lock_jobs_db();
    let mut rpc = server.rpc().await;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(header_msg(header(1, 7, &data))).await.unwrap();
    let call = tokio::spawn(async move { rpc.archive(ReceiverStream::new(rx)).await });
    // The server has the header by now and waits to write the job's row.
    tokio::time::sleep(Duration::from_secs(1)).await;
    call.abort();
    drop(tx);
    tokio::time::sleep(Duration::from_secs(1)).await;
    lock.release();

    let job = terminal_job(&server, 1).await;
    assert_eq!(job_state(&job), proto::JobState::Failed, "{job:?}");
    assert!(
        job.reason.contains("interrupted") || job.reason.contains("mismatch"),
        "{}",
        job.reason
    );
    eventually(Duration::from_secs(30), || async {
        server.spool_files().is_empty().then_some(())
    })
    .await;
    pushed_again_whole(&server, 1, 7, &data).await;
}

/// A client that goes away after sending its whole segment, while the server
/// commits it (the commit waits for the jobs database's lock), must not leave
/// a QUEUED job without its spool file: a retry would be answered
/// "deduplicated" for a segment that is never archived. The commit, once
/// begun, completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_aborts_while_its_segment_is_committed_gets_it_archived() {
    let server = Server::start(&[]);
    let data = json_segment(3, 400_000);
    let mut rpc = server.rpc().await;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tx.send(header_msg(header(1, 7, &data))).await.unwrap();
    for m in data_msgs(&data, 50_000) {
        tx.send(m).await.unwrap();
    }
    let call = tokio::spawn(async move { rpc.archive(ReceiverStream::new(rx)).await });
    eventually(Duration::from_secs(30), || async {
        (jobs_of(&server, 1).await.len() == 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let lock = server.lock_jobs_db();
    // The stream ends whole: the server verifies it and waits to commit it…
    drop(tx);
    tokio::time::sleep(Duration::from_secs(1)).await;
    // …when the client goes away before its answer.
    call.abort();
    tokio::time::sleep(Duration::from_secs(1)).await;
    lock.release();

    let job = terminal_job(&server, 1).await;
    assert_eq!(job_state(&job), proto::JobState::Archived, "{job:?}");
    assert_eq!(zstd_decode(&server.archive_path(1, 7)), data);
    eventually(Duration::from_secs(30), || async {
        server.spool_files().is_empty().then_some(())
    })
    .await;
    let mut rpc = server.rpc().await;
    let again = push(&mut rpc, header(1, 7, &data), &data).await.unwrap();
    assert!(again.deduplicated);
    assert_eq!(again.job.unwrap().job_id, job.job_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_and_conflicting_pushes() {
    let server = Server::start(&[]);
    let mut rpc = server.rpc().await;
    let client = server.client().await;
    let data = json_segment(4, 100_000);
    let first = push(&mut rpc, header(1, 5, &data), &data).await.unwrap();
    let id = first.job.unwrap().job_id;
    client.wait(id).await.unwrap();

    let again = push(&mut rpc, header(1, 5, &data), &data).await.unwrap();
    assert!(again.deduplicated);
    assert_eq!(again.job.unwrap().job_id, id);
    // Digest only in a trailer (the library's way): the stream is hashed, then matched.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wal-5.log");
    std::fs::write(&path, &data).unwrap();
    let via_trailer = client
        .push_file(1, 5, &path, &Default::default())
        .await
        .unwrap();
    assert!(via_trailer.deduplicated);
    assert_eq!(via_trailer.job.id.0, id);
    assert_eq!(server.archives(1).len(), 1);

    let other = json_segment(40, 100_000);
    let conflict = push(&mut rpc, header(1, 5, &other), &other)
        .await
        .unwrap_err();
    assert_eq!(conflict.code(), Code::AlreadyExists);
    let existing = wal_archiver::types::Digest::of(&data).to_hex();
    let pushed = wal_archiver::types::Digest::of(&other).to_hex();
    assert!(
        conflict.message().contains(&existing) && conflict.message().contains(&pushed),
        "{}",
        conflict.message()
    );
    std::fs::write(&path, &other).unwrap();
    let conflict = client
        .push_file(1, 5, &path, &Default::default())
        .await
        .unwrap_err();
    assert_eq!(conflict.code(), Some(Code::AlreadyExists));
    assert_eq!(
        zstd_decode(&server.archive_path(1, 5)),
        data,
        "the archive is untouched"
    );

    // The same segment while its first upload is still being received.
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(header_msg(header(2, 1, &data))).await.unwrap();
    let mut holder = server.rpc().await;
    let held = tokio::spawn(async move { holder.archive(ReceiverStream::new(rx)).await });
    eventually(Duration::from_secs(30), || async {
        (jobs_of(&server, 2).await.len() == 1).then_some(())
    })
    .await;
    let busy = push(&mut rpc, header(2, 1, &data), &data)
        .await
        .unwrap_err();
    assert_eq!(busy.code(), Code::Aborted);
    assert!(
        busy.message().contains("being received"),
        "{}",
        busy.message()
    );
    for m in data_msgs(&data, 30_000) {
        tx.send(m).await.unwrap();
    }
    drop(tx);
    held.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_json_line_fails_the_job_with_its_line_number() {
    let server = Server::start(&[]);
    let mut rpc = server.rpc().await;
    let client = server.client().await;
    let data =
        b"{\"timestamp\":1,\"a\":1}\n\n{\"timestamp\":2}\n[1,2]\n{\"timestamp\":3}\n".to_vec();
    let mut queued = header(1, 1, &data);
    queued.kind = proto::ContentKind::JsonLines as i32;
    let reply = push(&mut rpc, queued, &data).await.unwrap();
    let failed = client.wait(reply.job.unwrap().job_id).await.unwrap_err();
    assert!(failed.to_string().contains("line 4"), "{failed}");

    // With ack ARCHIVED the push itself answers, precisely.
    let torn = b"{\"timestamp\":1}\n{\"timestamp\":2,\"payload\":{\"x\":".to_vec();
    let mut archived = header(2, 1, &torn);
    archived.kind = proto::ContentKind::JsonLines as i32;
    archived.ack = proto::AckLevel::Archived as i32;
    let status = push(&mut rpc, archived, &torn).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("line 2"), "{}", status.message());
    assert_no_files(&server, 1);
    assert_no_files(&server, 2);
    assert_eq!(client.shard(2).await.unwrap().archived_watermark, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_refuses_at_once_and_other_shards_go_on() {
    let server = Server::start(&["--archive-queue-size", "2"]);
    let data = json_segment(6, 100_000);
    let mut senders = Vec::new();
    let mut calls = Vec::new();
    for log_id in 1..=2u64 {
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tx.send(header_msg(header(5, log_id, &data))).await.unwrap();
        let mut rpc = server.rpc().await;
        calls.push(tokio::spawn(async move {
            rpc.archive(ReceiverStream::new(rx)).await
        }));
        senders.push(tx);
    }
    eventually(Duration::from_secs(30), || async {
        (jobs_of(&server, 5).await.len() == 2).then_some(())
    })
    .await;
    let mut rpc = server.rpc().await;
    let full = push(&mut rpc, header(5, 3, &data), &data)
        .await
        .unwrap_err();
    assert_eq!(full.code(), Code::ResourceExhausted);
    assert!(
        full.message().contains("queue is full"),
        "{}",
        full.message()
    );
    assert_eq!(
        jobs_of(&server, 5).await.len(),
        2,
        "a refused push creates no job"
    );
    push(&mut rpc, header(6, 1, &data), &data).await.unwrap();

    for tx in senders {
        for m in data_msgs(&data, 30_000) {
            tx.send(m).await.unwrap();
        }
    }
    for call in calls {
        call.await.unwrap().unwrap();
    }
    let client = server.client().await;
    eventually(Duration::from_secs(30), || async {
        (client.shard(5).await.ok()?.archived == 2).then_some(())
    })
    .await;
    push(&mut rpc, header(5, 3, &data), &data).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn low_disk_budget_refuses_before_writing() {
    let server = Server::start(&["--min-free-bytes", "1152921504606846976"]);
    let mut rpc = server.rpc().await;
    let data = json_segment(7, 10_000);
    let status = push(&mut rpc, header(1, 1, &data), &data)
        .await
        .unwrap_err();
    assert_status(
        &status,
        Code::ResourceExhausted,
        "(min_free_bytes, plus the space uploads in progress reserved, plus the declared segment size); retry later",
    );
    assert!(jobs_of(&server, 1).await.is_empty());
    assert_no_files(&server, 1);
}

/// Past max_concurrent_uploads a push is refused at once, before anything is
/// written, and is taken again once an upload ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_uploads_refuses_at_once() {
    let server = Server::start(&["--max-concurrent-uploads", "1"]);
    let data = json_segment(12, 100_000);
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(header_msg(header(1, 1, &data))).await.unwrap();
    let mut holder = server.rpc().await;
    let held = tokio::spawn(async move { holder.archive(ReceiverStream::new(rx)).await });
    eventually(Duration::from_secs(30), || async {
        (jobs_of(&server, 1).await.len() == 1).then_some(())
    })
    .await;

    let mut rpc = server.rpc().await;
    let refused = push(&mut rpc, header(2, 1, &data), &data)
        .await
        .unwrap_err();
    assert_status(
        &refused,
        Code::ResourceExhausted,
        "1 segments are being received already (max_concurrent_uploads); retry later",
    );
    assert!(
        jobs_of(&server, 2).await.is_empty(),
        "a refused push creates no job"
    );
    assert_eq!(
        server.spool_files().len(),
        1,
        "only the held upload's spool"
    );

    for m in data_msgs(&data, 30_000) {
        tx.send(m).await.unwrap();
    }
    drop(tx);
    held.await.unwrap().unwrap();
    push(&mut rpc, header(2, 1, &data), &data).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_of_unknown_things_and_damaged_archives() {
    let server = Server::start(&[]);
    let mut rpc = server.rpc().await;
    let job = rpc
        .get_job(proto::GetJobRequest { job_id: 77 })
        .await
        .unwrap_err();
    assert_status(&job, Code::NotFound, "no job 77");
    let shard = rpc
        .get_shard(proto::GetShardRequest { shard_id: 77 })
        .await
        .unwrap_err();
    assert_status(
        &shard,
        Code::NotFound,
        "shard 77 has never pushed a segment",
    );
    let restore = rpc
        .restore(proto::RestoreRequest {
            shard_id: 1,
            log_id: 1,
        })
        .await
        .expect_err("no such segment");
    assert_status(&restore, Code::NotFound, "no archive of shard 1 log_id 1");
    let bad_token = proto::ListJobsRequest {
        page_token: "not-a-token".into(),
        ..Default::default()
    };
    let listed = rpc.list_jobs(bad_token).await.unwrap_err();
    assert_status(
        &listed,
        Code::InvalidArgument,
        "bad page_token \"not-a-token\"",
    );
    let cancel = rpc
        .cancel_job(proto::CancelJobRequest { job_id: 77 })
        .await
        .unwrap_err();
    assert_status(&cancel, Code::NotFound, "no job 77");

    // Damage archives on disk: restore ends with DATA_LOSS, never a complete copy.
    let data = wal_archiver::walgen::EventGenerator::new(8).segment(3 << 20);
    for (log_id, damage) in [(1u64, "flip"), (2, "truncate")] {
        push_archived(&mut rpc, 1, log_id, &data).await;
        let path = server.archive_path(1, log_id);
        let mut bytes = std::fs::read(&path).unwrap();
        if damage == "flip" {
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0xff;
        } else {
            bytes.truncate(bytes.len() - 100);
        }
        std::fs::write(&path, bytes).unwrap();
        let (end, received) = restore_error(&mut rpc, 1, log_id).await;
        let says = if damage == "flip" {
            "archive data is corrupt: Data corruption detected"
        } else {
            "archive data is corrupt: footer is missing or damaged (archive truncated?)"
        };
        assert_status(&end, Code::DataLoss, says);
        assert!(
            received < data.len(),
            "{damage}: the whole segment was sent"
        );
    }
}

/// Sends raw bytes as request messages, to play a client that speaks broken protobuf.
#[derive(Clone, Copy, Default)]
struct RawCodec;

struct RawEncoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = proto::ArchiveReply;
    type Encoder = RawEncoder;
    type Decoder =
        <tonic_prost::ProstCodec<(), proto::ArchiveReply> as tonic::codec::Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        RawEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic::codec::Codec::decoder(
            &mut tonic_prost::ProstCodec::<(), proto::ArchiveReply>::default(),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_protobuf_is_invalid_argument() {
    let server = Server::start(&[]);
    let data = json_segment(9, 20_000);
    let valid_header = prost::Message::encode_to_vec(&header_msg(header(1, 1, &data)));
    let garbage = vec![0xff, 0xff, 0xff, 0x07];
    for (case, messages) in [
        ("first message", vec![garbage.clone()]),
        ("after the header", vec![valid_header, garbage]),
    ] {
        let channel = tonic::transport::Endpoint::from_shared(server.url())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.unwrap();
        let path = http::uri::PathAndQuery::from_static("/walarchiver.v1.WalArchiver/Archive");
        let request = tonic::Request::new(tokio_stream::iter(messages));
        let status = grpc
            .client_streaming(request, path, RawCodec)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
        assert!(
            status.message().contains("malformed"),
            "{case}: {}",
            status.message()
        );
    }
    // The job opened by the valid header failed, and left nothing behind.
    failed_job(&server, 1).await;
    assert_no_files(&server, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_mid_write_fails_the_job_and_serving_goes_on() {
    let small = disk::SmallDisk::mount(8);
    let server = Server::start_in(&small.path().join("data"), &["--min-free-bytes", "0"]);
    let mut rpc = server.rpc().await;

    // 10 MiB that does not compress, size and digest only in the trailer, so
    // the free-space check cannot refuse it up front: the write itself fails.
    let noise = disk::noise(10 << 20, 0x2545_f491_4f6c_dd1d);
    let mut first = header(1, 1, &noise);
    first.size = None;
    first.sha256 = Bytes::new();
    let mut messages = vec![header_msg(first)];
    messages.extend(data_msgs(&noise, 256 << 10));
    messages.push(message(Msg::Trailer(proto::SegmentTrailer {
        size: Some(noise.len() as u64),
        sha256: Bytes::copy_from_slice(&wal_archiver::types::Digest::of(&noise).0),
    })));
    let status = send(&mut rpc, messages).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("No space left"),
        "{}",
        status.message()
    );
    let job = failed_job(&server, 1).await;
    assert!(job.reason.contains("No space left"), "{}", job.reason);
    assert_no_files(&server, 1);
    let log = server.log_text();
    assert!(log.contains("serving"), "the server log is read: {log}");
    assert!(!log.contains("could not record"), "{log}");

    // The failed segment can be pushed again once there is room (here: smaller).
    let retry = json_segment(11, 300_000);
    let reply = push(&mut rpc, header(1, 1, &retry), &retry).await.unwrap();
    assert!(!reply.deduplicated);
    server
        .client()
        .await
        .wait(reply.job.unwrap().job_id)
        .await
        .unwrap();

    // Another shard is still served, end to end.
    let data = json_segment(10, 200_000);
    push_archived(&mut rpc, 2, 1, &data).await;
    assert_eq!(zstd_decode(&server.archive_path(2, 1)), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_of_other_bytes_under_the_key_is_never_overwritten() {
    let server = Server::start(&[]);
    let mut rpc = server.rpc().await;
    let original = json_segment(1, 50_000);
    push_archived(&mut rpc, 1, 1, &original).await;
    // Someone plants log_id 1's archive where log_id 2's belongs (another
    // replica claiming the shard, a hand copy).
    let planted = server.archive_path(1, 2);
    std::fs::copy(server.archive_path(1, 1), &planted).unwrap();

    let other = json_segment(2, 50_000);
    let mut second = header(1, 2, &other);
    second.ack = proto::AckLevel::Archived as i32;
    let refused = push(&mut rpc, second, &other).await.unwrap_err();
    assert_eq!(refused.code(), Code::AlreadyExists, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("shard 1 log_id 2 was already pushed with SHA-256")
            && refused
                .message()
                .contains(&wal_archiver::types::Digest::of(&other).to_hex()),
        "{}",
        refused.message()
    );
    assert_eq!(
        std::fs::read(&planted).unwrap(),
        std::fs::read(server.archive_path(1, 1)).unwrap(),
        "the planted archive is left as it was"
    );
}
