//! A real Garage (an S3-compatible object store) for tests, started with the
//! project's `../shared/tools/garage-dev.sh` in a temporary directory.
//!
//! `shared()` starts one per test binary, on first use; tests keep apart by
//! giving each server its own key prefix. A Garage is never left running after
//! the test process ends, however it ends (a static is never dropped, and a
//! panic or SIGKILL runs no code): each one has a watchdog `sh` whose stdin is
//! a pipe held open by this process. When the process exits, the kernel closes
//! the pipe, `read` returns, and the watchdog stops Garage (SIGCONT first, in
//! case a test paused it; SIGKILL if SIGTERM is not enough) and removes its
//! directory. `Garage::start()` gives a test a Garage of its own (one it may
//! pause), stopped the same way when it is dropped.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::signer::{SignedUrlOptions, Signer};

/// The helper script, beside the repository (as in CI).
fn script() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/tools/garage-dev.sh");
    assert!(
        path.exists(),
        "{} is missing: the S3 tests need the shared tools beside the repository",
        path.display()
    );
    path
}

/// Stops Garage (whatever `DIR/garage.pid` names) once stdin closes.
const WATCHDOG: &str = r#"
read _ignored
pid=$(cat "$2/garage.pid" 2>/dev/null || true)
if [ -n "$pid" ]; then
  kill -CONT "$pid" 2>/dev/null
  bash "$1" stop "$2" >/dev/null 2>&1
  for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null
fi
rm -rf "$2"
"#;

pub struct Garage {
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub pid: u32,
    pub dir: PathBuf,
    watchdog: Option<(Child, ChildStdin)>,
}

static SHARED: OnceLock<Garage> = OnceLock::new();

/// The test binary's Garage, started on first use.
pub fn shared() -> &'static Garage {
    SHARED.get_or_init(Garage::start)
}

impl Garage {
    /// A Garage of this test's own, stopped when dropped.
    pub fn start() -> Garage {
        // The script unpacks its binary on first use: one start at a time.
        static STARTING: Mutex<()> = Mutex::new(());
        let _one_at_a_time = STARTING.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::Builder::new()
            .prefix("garage-")
            .tempdir()
            .expect("temp dir")
            .keep();
        let script = script();
        let mut watchdog = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("garage-watchdog")
            .arg(&script)
            .arg(&dir)
            // Its own process group: whatever signals the test's group at
            // the end must not stop it before it has stopped Garage.
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the Garage watchdog");
        let stdin = watchdog.stdin.take().expect("watchdog stdin");
        let output = Command::new("bash")
            .arg(&script)
            .arg("start")
            .arg(&dir)
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .expect("run garage-dev.sh start");
        let mut garage = Garage {
            endpoint: String::new(),
            bucket: String::new(),
            region: String::new(),
            access_key_id: String::new(),
            secret_access_key: String::new(),
            pid: 0,
            dir,
            watchdog: Some((watchdog, stdin)),
        };
        assert!(
            output.status.success(),
            "garage-dev.sh start failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let Some((name, value)) = line
                .strip_prefix("export ")
                .and_then(|rest| rest.split_once('='))
            else {
                continue;
            };
            let value = value.to_owned();
            match name {
                "S3_ENDPOINT" => garage.endpoint = value,
                "S3_BUCKET" => garage.bucket = value,
                "AWS_REGION" => garage.region = value,
                "AWS_ACCESS_KEY_ID" => garage.access_key_id = value,
                "AWS_SECRET_ACCESS_KEY" => garage.secret_access_key = value,
                "GARAGE_PID" => garage.pid = value.parse().expect("GARAGE_PID"),
                _ => {}
            }
        }
        assert!(
            !garage.endpoint.is_empty() && !garage.access_key_id.is_empty() && garage.pid != 0,
            "garage-dev.sh printed no environment: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        garage.wait_until_listening();
        garage
    }

    fn wait_until_listening(&self) {
        let addr = self
            .endpoint
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "Garage's S3 API at {addr} never answered"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The credentials, as the server reads them.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), self.access_key_id.clone()),
            (
                "AWS_SECRET_ACCESS_KEY".into(),
                self.secret_access_key.clone(),
            ),
        ]
    }

    /// `serve` flags for this Garage, under `prefix`.
    pub fn server_args(&self, prefix: &str) -> Vec<String> {
        [
            "--storage",
            "s3",
            "--s3-endpoint",
            &self.endpoint,
            "--s3-bucket",
            &self.bucket,
            "--s3-region",
            &self.region,
            "--s3-prefix",
            prefix,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// A plain object_store client on the bucket, to look at what the server wrote.
    pub fn bucket(&self) -> AmazonS3 {
        AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_region(&self.region)
            .with_bucket_name(&self.bucket)
            .with_access_key_id(&self.access_key_id)
            .with_secret_access_key(&self.secret_access_key)
            .build()
            .expect("object_store client")
    }

    /// Multipart uploads in progress under `prefix`, as Garage lists them
    /// (ListMultipartUploads, which object_store does not offer: a presigned
    /// GET sent by hand).
    pub async fn multipart_uploads(&self, prefix: &str) -> usize {
        let options = SignedUrlOptions::default().with_query([("uploads", ""), ("prefix", prefix)]);
        let url = self
            .bucket()
            .signed_url_opts(
                http::Method::GET,
                &ObjectPath::from(""),
                Duration::from_secs(300),
                &options,
            )
            .await
            .expect("presigned ListMultipartUploads");
        let url = url.as_str().to_owned();
        let body = tokio::task::spawn_blocking(move || http_get(&url))
            .await
            .unwrap();
        assert!(
            body.contains("ListMultipartUploadsResult"),
            "unexpected answer: {body}"
        );
        body.matches("<Upload>").count()
    }

    /// SIGSTOP: Garage accepts connections (the kernel does) but answers
    /// nothing. Returns once every one of its threads is stopped: kill(2)
    /// returns before a busy thread has taken the signal, and such a thread
    /// could still answer the next request.
    pub fn pause(&self) {
        super::signal(self.pid, libc::SIGSTOP);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let threads = super::thread_stats(self.pid);
            let stopped = |(_, fields): &(String, Vec<String>)| {
                fields
                    .first()
                    .is_some_and(|state| matches!(state.as_str(), "T" | "t"))
            };
            if !threads.is_empty() && threads.iter().all(stopped) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Garage did not stop: {threads:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn resume(&self) {
        super::signal(self.pid, libc::SIGCONT);
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        if let Some((mut watchdog, stdin)) = self.watchdog.take() {
            drop(stdin);
            let deadline = Instant::now() + Duration::from_secs(30);
            while matches!(watchdog.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }
}

/// A plain HTTP/1.0 GET of `url` (http only); the body as text.
fn http_get(url: &str) -> String {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut stream = std::net::TcpStream::connect(host).expect("connect to Garage");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the answer");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    assert!(
        head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
        "{response}"
    );
    body.to_owned()
}
