//! `client::FlushPath` against the real server: segments handed off end
//! archived and their WAL deleted at or below the watermark only; a full
//! spool volume and a server restart are retried; a permanently bad segment
//! is reported, kept, and holds back the deletion of every segment after it
//! until an operator resolves it.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use wal_archiver::client::{FlushEvent, FlushOptions, FlushPath};
use wal_archiver::types::{ContentKind, FailureClass, LogId};

const SHARD: u32 = 1;
const LIMIT: Duration = Duration::from_secs(60);
/// A JSON-lines segment whose fourth line is not an object: FAILED, permanent.
const BAD_JSON: &[u8] =
    b"{\"timestamp\":1,\"a\":1}\n\n{\"timestamp\":2}\n[1,2]\n{\"timestamp\":3}\n";

/// Every event the flush path reported, in order.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<FlushEvent>>>);

impl Seen {
    fn options(&self) -> FlushOptions {
        let seen = self.0.clone();
        FlushOptions {
            kind: ContentKind::JsonLines,
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(500),
            sweep_interval: Duration::from_millis(100),
            rpc_timeout: Duration::from_secs(5),
            on_event: Some(Arc::new(move |event| {
                seen.lock().unwrap().push(event.clone())
            })),
            ..FlushOptions::default()
        }
    }

    fn events(&self) -> Vec<FlushEvent> {
        self.0.lock().unwrap().clone()
    }

    fn archived(&self) -> BTreeSet<LogId> {
        self.ids(|e| match e {
            FlushEvent::Archived { log_id, .. } => Some(*log_id),
            _ => None,
        })
    }

    fn deleted(&self) -> BTreeSet<LogId> {
        self.ids(|e| match e {
            FlushEvent::Deleted { log_id, .. } => Some(*log_id),
            _ => None,
        })
    }

    fn permanent(&self) -> BTreeSet<LogId> {
        self.ids(|e| match e {
            FlushEvent::Permanent { log_id, .. } => Some(*log_id),
            _ => None,
        })
    }

    fn retried(&self) -> BTreeSet<LogId> {
        self.ids(|e| match e {
            FlushEvent::Retrying { log_id, .. } => Some(*log_id),
            _ => None,
        })
    }

    /// The reasons of the `Retrying` events, in order.
    fn retry_reasons(&self) -> Vec<String> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                FlushEvent::Retrying { reason, .. } => Some(reason),
                _ => None,
            })
            .collect()
    }

    fn ids(&self, pick: impl Fn(&FlushEvent) -> Option<LogId>) -> BTreeSet<LogId> {
        self.events().iter().filter_map(pick).collect()
    }

    /// Waits until `want` holds of the events.
    async fn until(&self, what: &str, want: impl Fn(&Seen) -> bool) {
        let deadline = std::time::Instant::now() + LIMIT;
        while !want(self) {
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: not within {LIMIT:?}; events: {:#?}",
                self.events()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn write_segment(dir: &Path, log_id: LogId, bytes: &[u8]) -> PathBuf {
    let path = dir.join(format!("wal-{log_id}.log"));
    std::fs::write(&path, bytes).unwrap();
    path
}

fn write_segments(dir: &Path, ids: impl IntoIterator<Item = LogId>) -> Vec<(LogId, PathBuf)> {
    ids.into_iter()
        .map(|id| (id, write_segment(dir, id, &json_segment(id, 100_000))))
        .collect()
}

/// log_ids of the WAL files on disk.
fn on_disk(dir: &Path) -> BTreeSet<LogId> {
    list(dir)
        .iter()
        .filter_map(|p| wal_archiver::client::parse_wal_name(p.file_name()?.to_str()?))
        .collect()
}

fn range(ids: std::ops::RangeInclusive<LogId>) -> BTreeSet<LogId> {
    ids.collect()
}

/// Several sweeps of the cleaner, so a deletion that should not happen
/// would have happened.
async fn let_the_cleaner_sweep() {
    tokio::time::sleep(Duration::from_millis(800)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handed_off_segments_are_archived_and_deleted_up_to_the_watermark() {
    let server = Server::start(&[]);
    let wal = tempfile::tempdir().unwrap();
    let segments = write_segments(wal.path(), 1..=8);
    // The segment still being written: never handed off, never deleted.
    write_segment(wal.path(), 9, &json_segment(9, 1000));
    let seen = Seen::default();
    let flush = FlushPath::start(server.client().await, SHARD, wal.path(), seen.options());
    for (log_id, path) in segments {
        assert!(flush.hand_off(log_id, path).unwrap());
    }
    assert!(
        !flush.hand_off(1, wal.path().join("wal-1.log")).unwrap(),
        "a segment on its way is not taken twice"
    );

    seen.until("all deleted", |s| s.deleted() == range(1..=8))
        .await;
    assert_eq!(seen.archived(), range(1..=8));
    assert!(seen.retried().is_empty() && seen.permanent().is_empty());
    assert_eq!(on_disk(wal.path()), range(9..=9));
    let status = server.client().await.shard(SHARD).await.unwrap();
    assert_eq!(status.archived_watermark, Some(8));
    assert_eq!(server.archives(SHARD).len(), 8);
    let stats = flush.stats();
    assert_eq!(
        (
            stats.handed_off,
            stats.archived,
            stats.deleted,
            stats.pending
        ),
        (8, 8, 8, 0)
    );
    assert_eq!(stats.watermark, Some(8));
    // Each event's order: archived before deleted.
    for log_id in 1..=8 {
        let events = seen.events();
        let at = |want: fn(&FlushEvent, LogId) -> bool| events.iter().position(|e| want(e, log_id));
        assert!(
            at(|e, id| matches!(e, FlushEvent::Archived { log_id, .. } if *log_id == id))
                < at(|e, id| matches!(e, FlushEvent::Deleted { log_id, .. } if *log_id == id))
        );
    }
    assert!(flush.shutdown().await.is_empty());
}

/// A full spool volume refuses every push (RESOURCE_EXHAUSTED): the flush
/// path retries with backoff, deletes nothing meanwhile, and archives every
/// segment once space returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_volume_is_retried_until_archived() {
    let disk = disk::SmallDisk::mount(32);
    let server = Server::start_in(
        &disk.path().join("data"),
        &["--min-free-bytes", &(8u64 << 20).to_string()],
    );
    let filler = disk.fill_leaving(4 << 20);
    let wal = tempfile::tempdir().unwrap();
    let seen = Seen::default();
    let flush = FlushPath::start(server.client().await, SHARD, wal.path(), seen.options());
    for (log_id, path) in write_segments(wal.path(), 1..=4) {
        flush.hand_off(log_id, path).unwrap();
    }

    seen.until("every segment retried twice", |s| {
        s.events()
            .iter()
            .filter(|e| matches!(e, FlushEvent::Retrying { attempt, .. } if *attempt >= 2))
            .count()
            >= 4
    })
    .await;
    let refusal = seen.retry_reasons().remove(0);
    assert!(refusal.contains("min_free_bytes"), "{refusal}");
    assert!(seen.archived().is_empty() && seen.permanent().is_empty());
    assert_eq!(
        on_disk(wal.path()),
        range(1..=4),
        "nothing deleted while refused"
    );
    assert_eq!(flush.stats().pending, 4);

    std::fs::remove_file(filler).unwrap();
    seen.until("all deleted", |s| s.deleted() == range(1..=4))
        .await;
    assert_eq!(seen.archived(), range(1..=4));
    assert_eq!(seen.retried(), range(1..=4));
    assert!(on_disk(wal.path()).is_empty());
    let stats = flush.stats();
    assert!(
        stats.retries >= 4 && stats.pushes >= stats.retries + 4,
        "{stats:?}"
    );
    assert!(flush.shutdown().await.is_empty());
}

/// A segment with a bad JSON line fails for good: reported Permanent, kept on
/// disk, and the segments after it, although archived, are not deleted (the
/// watermark stops before it). Once an operator resolves it, they are; the
/// bad file itself stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_failure_is_reported_and_holds_deletion_back() {
    let server = Server::start(&[]);
    let client = server.client().await;
    let wal = tempfile::tempdir().unwrap();
    let mut segments = write_segments(wal.path(), [1, 2, 4, 5]);
    segments.insert(2, (3, write_segment(wal.path(), 3, BAD_JSON)));
    let seen = Seen::default();
    let flush = FlushPath::start(client.clone(), SHARD, wal.path(), seen.options());
    for (log_id, path) in segments {
        flush.hand_off(log_id, path).unwrap();
    }

    seen.until("settled", |s| {
        s.permanent() == range(3..=3) && s.archived() == BTreeSet::from([1, 2, 4, 5])
    })
    .await;
    seen.until("below it deleted", |s| s.deleted() == range(1..=2))
        .await;
    let_the_cleaner_sweep().await;
    let reason = seen
        .events()
        .into_iter()
        .find_map(|e| match e {
            FlushEvent::Permanent { reason, .. } => Some(reason),
            _ => None,
        })
        .unwrap();
    assert!(reason.contains("line 4"), "{reason}");
    assert!(
        seen.retried().is_empty(),
        "a permanent failure is not pushed again"
    );
    assert_eq!(seen.deleted(), range(1..=2));
    assert_eq!(on_disk(wal.path()), range(3..=5));
    let status = client.shard(SHARD).await.unwrap();
    assert_eq!(status.archived_watermark, Some(2));
    let held_by = status.held_by.unwrap();
    assert_eq!(
        (held_by.log_id, held_by.failure_class),
        (3, Some(FailureClass::Permanent))
    );
    let stats = flush.stats();
    assert_eq!((stats.permanent, stats.held, stats.pending), (1, 1, 0));

    client
        .resolve(SHARD, 3, "a torn test segment")
        .await
        .unwrap();
    seen.until("after it deleted", |s| {
        s.deleted() == BTreeSet::from([1, 2, 4, 5])
    })
    .await;
    assert_eq!(
        on_disk(wal.path()),
        range(3..=3),
        "the bad segment is never deleted"
    );
    assert_eq!(flush.stats().held, 0);
    assert!(flush.shutdown().await.is_empty());
}

/// The server is killed with archived segments waiting above a stuck
/// watermark and more handed off while it is down: pushes are retried until
/// it is back, and no WAL above the watermark the server reports is deleted,
/// before, during or after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_a_server_restart_nothing_above_the_watermark_is_deleted() {
    let mut server = Server::start_listening(&format!("127.0.0.1:{}", free_port()), &[]);
    let wal = tempfile::tempdir().unwrap();
    let mut segments = write_segments(wal.path(), (1..=7).chain(9..=12));
    segments.insert(7, (8, write_segment(wal.path(), 8, BAD_JSON)));
    let seen = Seen::default();
    let flush = FlushPath::start(server.client().await, SHARD, wal.path(), seen.options());
    for (log_id, path) in segments {
        flush.hand_off(log_id, path).unwrap();
    }
    seen.until("settled", |s| {
        s.permanent() == range(8..=8) && s.deleted() == range(1..=7) && s.archived().len() == 11
    })
    .await;

    server.kill();
    for (log_id, path) in write_segments(wal.path(), 13..=16) {
        flush.hand_off(log_id, path).unwrap();
    }
    seen.until("pushes refused while down", |s| {
        s.retried().intersection(&range(13..=16)).count() > 0
    })
    .await;
    let_the_cleaner_sweep().await;
    assert_eq!(
        on_disk(wal.path()),
        range(8..=16),
        "nothing deleted while down"
    );

    server.restart();
    seen.until("archived after the restart", |s| {
        s.archived().is_superset(&range(13..=16))
    })
    .await;
    let_the_cleaner_sweep().await;
    let client = server.client().await;
    assert_eq!(
        client.shard(SHARD).await.unwrap().archived_watermark,
        Some(7)
    );
    assert_eq!(seen.deleted(), range(1..=7));
    assert_eq!(
        on_disk(wal.path()),
        range(8..=16),
        "nothing above the watermark deleted"
    );

    client.resolve(SHARD, 8, "torn").await.unwrap();
    seen.until("deleted once resolved", |s| s.deleted().len() == 15)
        .await;
    assert_eq!(on_disk(wal.path()), range(8..=8));
    assert_eq!(
        client.shard(SHARD).await.unwrap().archived_watermark,
        Some(16)
    );
    let stats = flush.stats();
    assert_eq!((stats.archived, stats.deleted, stats.pending), (15, 15, 0));
    assert!(flush.shutdown().await.is_empty());
}

/// A job acknowledged QUEUED that ends FAILED for a retryable reason (the
/// server crashed as it began compressing, and the spool volume was lost
/// with it): the flush path notices the failure, pushes the WAL again and
/// deletes it only once that second job is ARCHIVED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_fails_retryably_after_its_ack_is_pushed_again() {
    let mut server = Server::start_with_env(
        &["--compress-while-receiving", "false"],
        &[(wal_archiver::engine::CRASH_AT_VARIABLE, "compressing")],
    );
    server.keep_address();
    let wal = tempfile::tempdir().unwrap();
    let (log_id, path) = write_segments(wal.path(), [1]).remove(0);
    let seen = Seen::default();
    let flush = FlushPath::start(server.client().await, SHARD, wal.path(), seen.options());
    flush.hand_off(log_id, path).unwrap();

    let status = server.wait_exit(LIMIT);
    assert!(!status.success(), "the server did not crash: {status:?}");
    let spooled = server.spool_files();
    assert_eq!(spooled.len(), 1, "the QUEUED segment was not spooled");
    for file in spooled {
        std::fs::remove_file(file).unwrap();
    }
    server.set_env(&[]);
    server.restart();

    seen.until("archived by a second push", |s| {
        s.archived() == range(1..=1)
    })
    .await;
    seen.until("deleted", |s| s.deleted() == range(1..=1)).await;
    let retries = seen.retry_reasons();
    assert!(
        retries.iter().any(|r| r.contains("spool file lost")),
        "the FAILED job was not what the flush path retried: {retries:?}"
    );
    assert!(seen.permanent().is_empty());
    let client = server.client().await;
    let jobs = client
        .list(&wal_archiver::types::JobFilter {
            shard_id: Some(SHARD),
            ..Default::default()
        })
        .await
        .unwrap()
        .0;
    let states: Vec<_> = jobs.iter().map(|j| j.state).collect();
    assert!(
        states.contains(&wal_archiver::types::JobState::Failed)
            && states.contains(&wal_archiver::types::JobState::Archived),
        "{jobs:?}"
    );
    assert_eq!(
        client.shard(SHARD).await.unwrap().archived_watermark,
        Some(1)
    );
    assert!(on_disk(wal.path()).is_empty());
    assert!(flush.shutdown().await.is_empty());
}

/// `shutdown` returns what is not archived yet: here, everything, since the
/// server is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_returns_what_is_still_pending() {
    let mut server = Server::start(&[]);
    let client = server.client().await;
    server.kill();
    let wal = tempfile::tempdir().unwrap();
    let seen = Seen::default();
    let flush = FlushPath::start(client, SHARD, wal.path(), seen.options());
    write_segments(wal.path(), 1..=3);
    assert_eq!(flush.hand_off_dir(3).unwrap(), 2, "below the open segment");
    seen.until("retrying", |s| !s.retried().is_empty()).await;
    let pending = tokio::time::timeout(Duration::from_secs(10), flush.shutdown())
        .await
        .expect("shutdown is prompt");
    let ids: Vec<LogId> = pending.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, [1, 2]);
    assert_eq!(on_disk(wal.path()), range(1..=3));
}
