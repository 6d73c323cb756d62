//! `S3Store` on its own, called the way workers call it (blocking, from plain
//! threads): against a real Garage for uploads, aborts and a paused store, and
//! against a few lines of fake HTTP for how each kind of failure is classified.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng, rngs::StdRng};

use common::garage::{self, Garage};
use common::storage::unique_prefix;
use wal_archiver::store::{
    ArchiveKey, ArchiveMeta, ArchiveStore, PendingArchive, S3Credentials, S3Options, S3Store,
    StoreError, WriteMode,
};
use wal_archiver::types::Digest;

const MIB: usize = 1 << 20;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn options(
    endpoint: &str,
    access_key_id: &str,
    secret: &str,
    region: &str,
    uploads_dir: &Path,
) -> S3Options {
    S3Options {
        endpoint: Some(endpoint.to_owned()),
        bucket: "wal-archive".into(),
        region: region.to_owned(),
        prefix: unique_prefix(),
        path_style: true,
        part_size: 5 * MIB,
        upload_concurrency: 2,
        timeout: Duration::from_secs(60),
        retries: 5,
        credentials: S3Credentials {
            access_key_id: access_key_id.to_owned(),
            secret_access_key: secret.to_owned(),
            session_token: None,
        },
        uploads_dir: uploads_dir.to_owned(),
    }
}

fn garage_options(garage: &Garage, uploads_dir: &Path) -> S3Options {
    let mut options = options(
        &garage.endpoint,
        &garage.access_key_id,
        &garage.secret_access_key,
        &garage.region,
        uploads_dir,
    );
    options.bucket = garage.bucket.clone();
    options
}

/// A store in the test binary's Garage, under a prefix of its own.
fn shared_store(runtime: &tokio::runtime::Runtime, uploads_dir: &Path) -> (S3Store, S3Options) {
    let options = garage_options(garage::shared(), uploads_dir);
    let store = S3Store::open(options.clone(), runtime.handle().clone()).unwrap();
    (store, options)
}

fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    data
}

fn meta(key: ArchiveKey, data: &[u8]) -> ArchiveMeta {
    ArchiveMeta {
        key,
        size: data.len() as u64,
        sha256: Digest::of(data),
    }
}

const KEY: ArchiveKey = ArchiveKey {
    shard_id: 3,
    log_id: 9,
};

/// Runs `f` on a thread of its own and fails the test if it has not returned
/// within `limit`: a safety net against hangs, not a timing assertion.
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("the store call did not return within {limit:?}"))
}

fn read_all(store: &S3Store, key: ArchiveKey) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    store.open(key).unwrap()?.read_to_end(&mut out).unwrap();
    Some(out)
}

#[test]
fn the_store_writes_reads_lists_and_removes() {
    let (runtime, dir) = (runtime(), tempfile::tempdir().unwrap());
    let (store, options) = shared_store(&runtime, dir.path());
    let prefix = options.prefix.clone();
    assert_eq!(store.list(None).unwrap(), vec![]);
    assert_eq!(store.stat(KEY).unwrap(), None);
    assert!(store.open(KEY).unwrap().is_none());

    for (key, data) in [
        (KEY, b"small archive".to_vec()),
        (
            ArchiveKey {
                shard_id: 3,
                log_id: 10,
            },
            random_bytes(1, 12 * MIB),
        ),
        (
            ArchiveKey {
                shard_id: 30,
                log_id: 1,
            },
            Vec::new(),
        ),
    ] {
        let mut pending = store
            .create(key, Some(&meta(key, &data)), WriteMode::Create)
            .unwrap();
        pending.write_all(&data).unwrap();
        pending.commit(&meta(key, &data)).unwrap();
        let info = store.stat(key).unwrap().expect("an object");
        assert_eq!(info.size, data.len() as u64);
        assert_eq!(info.sha256, Some(Digest::of(&data)));
        assert!(read_all(&store, key).unwrap() == data);
    }
    let all = store.list(None).unwrap();
    assert_eq!(
        all.iter()
            .map(|k| (k.shard_id, k.log_id))
            .collect::<Vec<_>>(),
        vec![(3, 9), (3, 10), (30, 1)]
    );
    assert_eq!(
        store.list(Some(3)).unwrap().len(),
        2,
        "shard 30 is not shard 3"
    );
    assert_eq!(
        store.location(KEY),
        format!("s3://wal-archive/{prefix}shard-3/00000000000000000009.wal.zst")
    );
    assert!(store.remove(KEY).unwrap());
    assert!(!store.remove(KEY).unwrap());
    assert_eq!(store.stat(KEY).unwrap(), None);
    assert_eq!(store.clean_up().unwrap(), 0);
}

/// An upload past its first parts, not committed.
fn multipart_in_progress(store: &S3Store, seed: u64) -> Box<dyn PendingArchive> {
    let data = random_bytes(seed, 12 * MIB);
    let mut pending = store
        .create(KEY, Some(&meta(KEY, &data)), WriteMode::Create)
        .unwrap();
    pending.write_all(&data).unwrap();
    pending
}

/// Multipart uploads Garage holds under `prefix`.
fn in_progress(runtime: &tokio::runtime::Runtime, prefix: &str) -> usize {
    runtime.block_on(garage::shared().multipart_uploads(prefix))
}

#[test]
fn an_upload_dropped_without_commit_is_aborted() {
    let (runtime, dir) = (runtime(), tempfile::tempdir().unwrap());
    let (store, options) = shared_store(&runtime, dir.path());
    let prefix = options.prefix.clone();
    let pending = multipart_in_progress(&store, 2);
    assert_eq!(common::list(dir.path()).len(), 1, "the upload is recorded");
    let uploads = |prefix: &str| in_progress(&runtime, prefix);
    assert_eq!(uploads(&prefix), 1);

    drop(pending);
    assert_eq!(uploads(&prefix), 0, "aborted");
    assert!(common::list(dir.path()).is_empty(), "record removed");
    assert_eq!(store.stat(KEY).unwrap(), None, "no object");
}

#[test]
fn clean_up_aborts_the_uploads_a_crash_left() {
    let (runtime, dir) = (runtime(), tempfile::tempdir().unwrap());
    let (store, options) = shared_store(&runtime, dir.path());
    let prefix = options.prefix.clone();
    let pending = multipart_in_progress(&store, 3);
    // A crash: nothing runs, not even the drop that would abort.
    std::mem::forget(pending);
    drop(store);
    let uploads = |prefix: &str| in_progress(&runtime, prefix);
    assert_eq!(uploads(&prefix), 1);

    let restarted = S3Store::open(options, runtime.handle().clone()).unwrap();
    assert_eq!(restarted.clean_up().unwrap(), 1);
    assert_eq!(uploads(&prefix), 0);
    assert!(common::list(dir.path()).is_empty());
    assert_eq!(restarted.clean_up().unwrap(), 0);
}

type StoreCall = Box<dyn FnOnce(&S3Store) -> Result<(), StoreError> + Send>;

#[test]
fn a_paused_store_is_unavailable_within_the_deadline_and_never_hangs() {
    let garage = Garage::start();
    let runtime = runtime();
    let dir = tempfile::tempdir().unwrap();
    let mut options = garage_options(&garage, dir.path());
    options.timeout = Duration::from_secs(1);
    options.retries = 2;
    let store = std::sync::Arc::new(S3Store::open(options, runtime.handle().clone()).unwrap());
    let data = b"written before the pause".to_vec();
    let mut pending = store.create(KEY, None, WriteMode::Create).unwrap();
    pending.write_all(&data).unwrap();
    pending.commit(&meta(KEY, &data)).unwrap();

    garage.pause();
    // Each call may take storage_timeout × (retries + 1) plus backoffs (~5 s
    // here); the limit only guards against a hang.
    let limit = Duration::from_secs(60);
    let calls: Vec<(&str, StoreCall)> = vec![
        ("stat", Box::new(|s| s.stat(KEY).map(drop))),
        ("open", Box::new(|s| s.open(KEY).map(drop))),
        ("list", Box::new(|s| s.list(None).map(drop))),
        ("remove", Box::new(|s| s.remove(KEY).map(drop))),
        (
            "create and commit",
            Box::new(|s| {
                let key = ArchiveKey {
                    shard_id: 3,
                    log_id: 11,
                };
                let mut pending = s.create(key, None, WriteMode::Create)?;
                pending.write_all(b"x").unwrap();
                pending.commit(&meta(key, b"x"))
            }),
        ),
    ];
    for (name, call) in calls {
        let store = store.clone();
        let started = Instant::now();
        let outcome = within(limit, move || call(&store));
        match outcome {
            Err(StoreError::Unavailable(message)) => {
                println!(
                    "{name}: unavailable after {:?}: {message}",
                    started.elapsed()
                )
            }
            other => panic!("{name} on a paused store: expected Unavailable, got {other:?}"),
        }
    }
    garage.resume();
    let info = store.stat(KEY).unwrap().expect("the object is still there");
    assert_eq!(info.sha256, Some(Digest::of(&data)));
}

/// A fake S3 endpoint that answers every request with `status` and `body`.
fn fake_endpoint(status: &'static str, body: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                // Read the head, then the body it announces.
                let mut request = Vec::new();
                let mut byte = [0u8; 1];
                while !request.ends_with(b"\r\n\r\n") {
                    if stream.read(&mut byte).unwrap_or(0) == 0 {
                        return;
                    }
                    request.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&request).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                let mut body_in = vec![0u8; length];
                let _ = stream.read_exact(&mut body_in);
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    format!("http://{addr}")
}

fn fake_store(endpoint: &str, runtime: &tokio::runtime::Runtime, dir: &Path) -> S3Store {
    let mut options = options(endpoint, "key", "secret", "us-east-1", dir);
    options.timeout = Duration::from_secs(2);
    options.retries = 2;
    S3Store::new(options, runtime.handle().clone()).unwrap()
}

fn commit_small(store: &S3Store) -> Result<(), StoreError> {
    let mut pending = store.create(KEY, None, WriteMode::Create)?;
    pending.write_all(b"bytes").unwrap();
    pending.commit(&meta(KEY, b"bytes"))
}

#[test]
fn failures_are_classified_by_what_they_mean() {
    let runtime = runtime();
    let dir = tempfile::tempdir().unwrap();
    let limit = Duration::from_secs(60);
    let check = |status: &'static str, body: &'static str| {
        let store = fake_store(&fake_endpoint(status, body), &runtime, dir.path());
        within(limit, move || {
            (
                store.stat(KEY),
                store.open(KEY).map(|r| r.is_some()),
                commit_small(&store),
                store.list(None),
            )
        })
    };

    // Throttling and server errors pass: Unavailable, after the retries.
    for status in [
        "503 Service Unavailable",
        "500 Internal Server Error",
        "429 Too Many Requests",
    ] {
        let (stat, open, commit, list) = check(status, "");
        for (name, unavailable) in [
            ("stat", matches!(stat, Err(StoreError::Unavailable(_)))),
            ("open", matches!(open, Err(StoreError::Unavailable(_)))),
            ("commit", matches!(commit, Err(StoreError::Unavailable(_)))),
            ("list", matches!(list, Err(StoreError::Unavailable(_)))),
        ] {
            assert!(unavailable, "{name} on {status} must be Unavailable");
        }
    }

    // Refusals do not pass: Backend, with the operation and the key named.
    let denied = "<Error><Code>AccessDenied</Code><Message>no</Message></Error>";
    let (stat, open, commit, list) = check("403 Forbidden", denied);
    for (name, outcome) in [
        ("stat", stat.map(drop)),
        ("open", open.map(drop)),
        ("commit", commit),
        ("list", list.map(drop)),
    ] {
        match outcome {
            Err(StoreError::Backend(message)) => {
                assert!(message.contains("s3://wal-archive/"), "{name}: {message}")
            }
            other => panic!("{name} on 403: expected Backend, got {other:?}"),
        }
    }
    let (_, open, _, _) = check(
        "404 Not Found",
        "<Error><Code>NoSuchBucket</Code><Message>gone</Message></Error>",
    );
    assert!(
        matches!(open, Err(StoreError::Backend(ref m)) if m.contains("reading")),
        "a missing bucket is not a missing archive: {open:?}"
    );
    let (stat, open, _, _) = check(
        "404 Not Found",
        "<Error><Code>NoSuchKey</Code><Message>none</Message></Error>",
    );
    assert!(matches!(stat, Ok(None)), "{stat:?}");
    assert!(matches!(open, Ok(false)), "{open:?}");

    // A create-only write that finds an object.
    let (_, _, commit, _) = check("412 Precondition Failed", "");
    assert!(
        matches!(commit, Err(StoreError::Exists { .. })),
        "{commit:?}"
    );

    // Nobody listening: Unavailable.
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let store = fake_store(&closed, &runtime, dir.path());
    let stat = within(limit, move || store.stat(KEY));
    assert!(matches!(stat, Err(StoreError::Unavailable(_))), "{stat:?}");
}
