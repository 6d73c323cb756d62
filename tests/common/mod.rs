//! Shared test setup: the real `wal-archiver` binary on an ephemeral loopback
//! port with its own data dir, real gRPC clients, the real PostgreSQL corpus.
#![allow(dead_code)]

/// Runs each named `async fn(Backend)` as two tests, `local::NAME` and
/// `s3::NAME`, so both archive stores keep one behaviour.
#[allow(unused_macros)]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Local).await
                }
            )*
        }
        mod s3 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::S3).await
                }
            )*
        }
    };
}

pub mod calls;
pub mod disk;
pub mod garage;
pub mod launch;
pub mod lossyfs;
pub mod storage;

pub use storage::{Backend, S3Target};

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tonic::transport::Channel;

use wal_archiver::client::Client;
use wal_archiver::proto::{self, archive_request::Msg, wal_archiver_client::WalArchiverClient};
use wal_archiver::types::Digest;

pub const BIN: &str = env!("CARGO_BIN_EXE_wal-archiver");

pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub backend: Backend,
    /// The server's bucket and key prefix, with the S3 backend.
    pub s3: Option<S3Target>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// `--listen`: `127.0.0.1:0` (a new port on each start) unless fixed.
    listen: String,
    _dir: Option<tempfile::TempDir>,
    /// The log lives apart from the data dir, which a test may fill up.
    _log_dir: tempfile::TempDir,
}

impl Server {
    /// Starts a server on a fresh data dir; `args` are extra `serve` flags.
    pub fn start(args: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut server = Server::start_in(&dir.path().join("data"), args);
        server._dir = Some(dir);
        server
    }

    /// Starts a server on `data_dir` (kept as it is).
    pub fn start_in(data_dir: &Path, args: &[&str]) -> Server {
        Server::start_listening_in(data_dir, "127.0.0.1:0", args)
    }

    /// Starts a server on a fresh data dir at a fixed address, which it keeps
    /// across `restart`: for clients configured once with a URL, like
    /// PostgreSQL's archive_command. `free_port` picks one.
    pub fn start_listening(listen: &str, args: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut server = Server::start_listening_in(&dir.path().join("data"), listen, args);
        server._dir = Some(dir);
        server
    }

    fn start_listening_in(data_dir: &Path, listen: &str, args: &[&str]) -> Server {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        Server::spawn_with(data_dir, listen, args, Vec::new(), Backend::Local, None)
    }

    fn spawn_with(
        data_dir: &Path,
        listen: &str,
        args: Vec<String>,
        env: Vec<(String, String)>,
        backend: Backend,
        s3: Option<S3Target>,
    ) -> Server {
        let log_dir = tempfile::tempdir().expect("log dir");
        let log = log_dir.path().join("server.log");
        let (child, addr) = spawn(data_dir, listen, &args, &env, &log);
        Server {
            child: Some(child),
            addr,
            data_dir: data_dir.to_owned(),
            log,
            backend,
            s3,
            args,
            env,
            listen: listen.to_owned(),
            _dir: None,
            _log_dir: log_dir,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.url()).await.expect("connect")
    }

    pub async fn rpc(&self) -> WalArchiverClient<Channel> {
        WalArchiverClient::connect(self.url())
            .await
            .expect("connect")
            .max_decoding_message_size(64 << 20)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL: no chance to clean up, like a crash or the OOM killer.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        signal(child.id(), libc::SIGTERM);
        wait_with_timeout(&mut child, Duration::from_secs(60))
    }

    /// Waits for the server to exit by itself (after signals the test sent).
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        wait_with_timeout(&mut child, limit)
    }

    /// Starts again on the same data dir with the same flags (a new port,
    /// unless started with `start_listening`).
    pub fn restart(&mut self) {
        self.kill();
        let (child, addr) = spawn(
            &self.data_dir,
            &self.listen,
            &self.args,
            &self.env,
            &self.log,
        );
        self.child = Some(child);
        self.addr = addr;
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Archive files of a shard, and leftovers (temporaries, spool files).
    pub fn archives(&self, shard: u32) -> Vec<PathBuf> {
        list(
            &self
                .data_dir
                .join("archives")
                .join(format!("shard-{shard}")),
        )
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".wal.zst"))
        .collect()
    }

    pub fn archive_path(&self, shard: u32, log_id: u64) -> PathBuf {
        self.data_dir
            .join("archives")
            .join(format!("shard-{shard}"))
            .join(format!("{log_id:020}.wal.zst"))
    }

    pub fn spool_files(&self) -> Vec<PathBuf> {
        list(&self.data_dir.join("spool"))
    }

    pub fn temporaries(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for shard in list(&self.data_dir.join("archives")) {
            found.extend(list(&shard).into_iter().filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(".tmp-"))
            }));
        }
        found
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A loopback port free right now, for `Server::start_listening`.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

fn spawn(
    data_dir: &Path,
    listen: &str,
    args: &[String],
    env: &[(String, String)],
    log: &Path,
) -> (Child, SocketAddr) {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    let mut child = Command::new(BIN)
        .arg("serve")
        .arg("--listen")
        .arg(listen)
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("RUST_LOG", "info")
        .env_remove("WAL_ARCHIVER_SERVER")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file))
        .spawn()
        .expect("spawn wal-archiver serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(addr) = wal_archiver::service::listening_address(&line) {
                    break addr;
                }
            }
            _ => {
                let _ = child.kill();
                panic!(
                    "server exited before listening; log:\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
        }
    };
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

pub fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: plain kill(2) on a child we spawned.
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

pub fn wait_with_timeout(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("server did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Each thread of process `pid`: its name and the fields of its
/// /proc/<pid>/task/<tid>/stat after the name (state first).
pub fn thread_stats(pid: u32) -> Vec<(String, Vec<String>)> {
    let mut found = Vec::new();
    for task in list(Path::new(&format!("/proc/{pid}/task"))) {
        // A thread may end between listing and reading.
        let Ok(stat) = std::fs::read_to_string(task.join("stat")) else {
            continue;
        };
        // "tid (comm) state ppid …": comm may hold spaces, so split at its last ')'.
        let (head, rest) = stat.rsplit_once(')').expect("stat line");
        let name = head.split_once('(').expect("stat line").1.to_owned();
        found.push((name, rest.split_whitespace().map(str::to_owned).collect()));
    }
    found
}

pub fn list(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    paths.sort();
    paths
}

/// The two real PostgreSQL WAL segments, decompressed once with the stock
/// `zstd` binary and checked against the SHA-256 the corpus README gives.
pub fn postgres_segments() -> Vec<PathBuf> {
    const SEGMENTS: [(&str, &str); 2] = [
        (
            "00000001000000000000000F",
            "6b8393a75e52c4716a0abde278f5652079ce93159ace047b27ef00ba16c07763",
        ),
        (
            "000000010000000000000010",
            "6f45cad14894a18fd18ebcedb280660db4b590e80ba7c029d2fb173da1e29c60",
        ),
    ];
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/postgres-wal");
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("postgres-wal");
    std::fs::create_dir_all(&cache).expect("cache dir");
    SEGMENTS
        .iter()
        .map(|(name, sha)| {
            let out = cache.join(name);
            if !out.exists() {
                let temp = cache.join(format!("{name}.{}.part", std::process::id()));
                let status = Command::new("zstd")
                    .args(["-d", "-q", "-f"])
                    .arg(source.join(format!("{name}.zst")))
                    .arg("-o")
                    .arg(&temp)
                    .status()
                    .expect("run zstd -d (is the zstd binary installed?)");
                assert!(status.success(), "zstd -d failed for {name}");
                std::fs::rename(&temp, &out).expect("rename");
            }
            let bytes = std::fs::read(&out).expect("read segment");
            assert_eq!(
                Digest::of(&bytes).to_hex(),
                *sha,
                "corpus segment {name} is not the expected one"
            );
            out
        })
        .collect()
}

/// Deterministic JSON-lines WAL.
pub fn json_segment(seed: u64, size: usize) -> Vec<u8> {
    wal_archiver::walgen::EventGenerator::new(seed).segment(size)
}

/// Decodes an archive with the stock `zstd -d`.
pub fn zstd_decode(archive: &Path) -> Vec<u8> {
    let output = Command::new("zstd")
        .args(["-d", "-c", "-q"])
        .arg(archive)
        .output()
        .expect("run zstd");
    assert!(
        output.status.success(),
        "zstd -d failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

pub fn header(shard_id: u32, log_id: u64, data: &[u8]) -> proto::SegmentHeader {
    proto::SegmentHeader {
        shard_id,
        log_id,
        size: Some(data.len() as u64),
        sha256: Bytes::copy_from_slice(&Digest::of(data).0),
        kind: proto::ContentKind::Raw as i32,
        ack: proto::AckLevel::Queued as i32,
        zstd_level: None,
    }
}

pub fn header_msg(header: proto::SegmentHeader) -> proto::ArchiveRequest {
    proto::ArchiveRequest {
        msg: Some(Msg::Header(header)),
    }
}

pub fn data_msgs(data: &[u8], chunk: usize) -> Vec<proto::ArchiveRequest> {
    data.chunks(chunk)
        .map(|c| proto::ArchiveRequest {
            msg: Some(Msg::Data(Bytes::copy_from_slice(c))),
        })
        .collect()
}

/// Sends exactly these messages as one Archive stream.
pub async fn send(
    rpc: &mut WalArchiverClient<Channel>,
    messages: Vec<proto::ArchiveRequest>,
) -> Result<proto::ArchiveReply, tonic::Status> {
    rpc.archive(tokio_stream::iter(messages))
        .await
        .map(|r| r.into_inner())
}

/// Header plus all data as one stream.
pub async fn push(
    rpc: &mut WalArchiverClient<Channel>,
    header: proto::SegmentHeader,
    data: &[u8],
) -> Result<proto::ArchiveReply, tonic::Status> {
    let mut messages = vec![header_msg(header)];
    messages.extend(data_msgs(data, 256 << 10));
    send(rpc, messages).await
}

/// Polls `check` until it returns `Some`, for at most `limit` (a safety net
/// against hangs, not a timing assertion).
pub async fn eventually<T, F, Fut>(limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "condition not reached within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The counts of the server's `recovered from the previous run` line
/// (`RecoveryReport { requeued: 1, adopted: 0, … }`, its last one); `None`
/// when it logged none (nothing to recover).
pub fn recovery_report(log: &str) -> Option<std::collections::BTreeMap<String, u64>> {
    let line = log
        .lines()
        .rev()
        .find(|line| line.contains("recovered from the previous run"))?;
    let (_, fields) = line.split_once("RecoveryReport {")?;
    let (fields, _) = fields.split_once('}')?;
    Some(
        fields
            .split(',')
            .filter_map(|field| {
                let (name, value) = field.split_once(':')?;
                Some((name.trim().to_owned(), value.trim().parse().ok()?))
            })
            .collect(),
    )
}

/// The jobs database's write lock, held the way another process (a backup
/// tool, say) can: the server's next write waits for `release` (up to its
/// 10 s busy timeout).
pub struct JobsDbLock(rusqlite::Connection);

impl Server {
    pub fn lock_jobs_db(&self) -> JobsDbLock {
        let holder = rusqlite::Connection::open(self.data_dir.join("jobs.db")).unwrap();
        holder.execute_batch("BEGIN IMMEDIATE;").unwrap();
        JobsDbLock(holder)
    }
}

impl JobsDbLock {
    pub fn release(self) {
        self.0.execute_batch("COMMIT;").unwrap();
    }
}
