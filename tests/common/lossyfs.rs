//! lossyfs (tests/powerloss/lossyfs.py) from Rust: mount it, read its
//! durability log and freeze marker, cut the power the way its README says
//! (SIGKILL the service, kill the daemon, only then wait for both), and
//! always unmount, even when a test panics.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::BIN;

/// How long a daemon gets to print `ready`.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a killed process gets to be reaped.
const REAP_TIMEOUT: Duration = Duration::from_secs(20);

/// Where to freeze: when durability op `op` arrives, before or after applying it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Freeze {
    pub op: usize,
    pub after: bool,
}

impl std::fmt::Display for Freeze {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let when = if self.after { "after" } else { "before" };
        write!(f, "{when} op {}", self.op)
    }
}

/// One line of the durability log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DurabilityOp {
    pub index: usize,
    /// `file` or `dir`.
    pub kind: String,
    /// Relative to the mount root; `.` is the root.
    pub path: String,
    pub call: String,
    pub status: String,
}

/// A running lossyfs daemon and its mount. Dropping it is a power cut.
pub struct LossyFs {
    daemon: Option<Child>,
    pub mount: PathBuf,
    pub log: PathBuf,
    pub marker: PathBuf,
    stderr: PathBuf,
}

impl LossyFs {
    /// Mounts `backing` on `mount`; `log`, `marker` and the daemon's stderr
    /// (`log` + `.stderr`) are files outside the mount. Panics, telling to run
    /// install.sh, if the daemon cannot mount: a power-loss test that cannot
    /// cut the power must fail, not pass.
    pub fn mount(
        backing: &Path,
        mount: &Path,
        log: &Path,
        marker: &Path,
        freeze: Option<Freeze>,
    ) -> LossyFs {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/powerloss/lossyfs.py");
        let python = python();
        let stderr = log.with_extension("stderr");
        let mut command = Command::new(python);
        command
            .arg(&script)
            .arg(backing)
            .arg(mount)
            .arg("--log")
            .arg(log)
            .arg("--frozen-marker")
            .arg(marker);
        if let Some(freeze) = freeze {
            let flag = if freeze.after {
                "--freeze-after"
            } else {
                "--freeze-before"
            };
            command.arg(flag).arg(freeze.op.to_string());
        }
        let mut daemon = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::File::create(&stderr).expect("lossyfs stderr file"),
            ))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {python} {}: {e}", script.display()));
        let stdout = daemon.stdout.take().expect("stdout");
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let first = BufReader::new(stdout).lines().next();
            let _ = ready_tx.send(matches!(first, Some(Ok(ref line)) if line == "ready"));
        });
        let mut fs = LossyFs {
            daemon: Some(daemon),
            mount: mount.to_owned(),
            log: log.to_owned(),
            marker: marker.to_owned(),
            stderr,
        };
        if ready_rx.recv_timeout(MOUNT_TIMEOUT) != Ok(true) {
            fs.cut_power(None);
            panic!(
                "lossyfs could not mount {} (run `bash tests/powerloss/install.sh` first: it \
                 installs fuse3 and pyfuse3); its stderr:\n{}",
                mount.display(),
                std::fs::read_to_string(&fs.stderr).unwrap_or_default()
            );
        }
        fs
    }

    /// The marker's content (`N<TAB>before|after<TAB>KIND<TAB>PATH`) once frozen.
    pub fn frozen(&self) -> Option<String> {
        std::fs::read_to_string(&self.marker)
            .ok()
            .map(|s| s.trim_end().to_owned())
    }

    /// The durability operations logged so far by this mount.
    pub fn ops(&self) -> Vec<DurabilityOp> {
        read_log(&self.log)
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The power cut: SIGKILL `service` first, then the daemon, and only then
    /// wait for both (a service blocked in the frozen mount cannot die before
    /// the daemon is gone). Also detaches the mount.
    pub fn cut_power(&mut self, service: Option<&mut Service>) {
        let service = service.and_then(|s| s.child.take());
        if let Some(child) = &service {
            super::signal(child.id(), libc::SIGKILL);
        }
        if let Some(mut daemon) = self.daemon.take() {
            let _ = daemon.kill();
            reap(&mut daemon, "lossyfs daemon");
        }
        if let Some(mut child) = service {
            reap(&mut child, "wal-archiver serve");
        }
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg("-z")
            .arg(&self.mount)
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for LossyFs {
    fn drop(&mut self) {
        self.cut_power(None);
    }
}

/// `$PYTHON` or `python3`, resolved once to the interpreter itself: a pyenv
/// shim costs a second per start on a busy machine.
fn python() -> &'static str {
    static PYTHON: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PYTHON.get_or_init(|| {
        let named = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        Command::new(&named)
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .ok()
            .filter(|out| out.status.success())
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .map(|path| path.trim().to_owned())
            .filter(|path| !path.is_empty())
            .unwrap_or(named)
    })
}

fn reap(child: &mut Child, what: &str) {
    let deadline = Instant::now() + REAP_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // Not a panic: this also runs from Drop while a test unwinds.
    eprintln!(
        "{what} (pid {}) did not exit within {REAP_TIMEOUT:?}",
        child.id()
    );
}

pub fn read_log(path: &Path) -> Vec<DurabilityOp> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            let [index, kind, path, _size, call, status] = fields[..] else {
                return None;
            };
            Some(DurabilityOp {
                index: index.parse().ok()?,
                kind: kind.to_owned(),
                path: path.to_owned(),
                call: call.to_owned(),
                status: status.to_owned(),
            })
        })
        .collect()
}

/// `wal-archiver serve` on a lossyfs mount. Unlike `Server` it never blocks
/// without limit: the mount may freeze while the server starts.
pub struct Service {
    child: Option<Child>,
    addr: mpsc::Receiver<SocketAddr>,
    pub log: PathBuf,
}

/// How a start on a freezing mount ended.
pub enum Started {
    Listening(SocketAddr),
    /// The mount froze before the server listened.
    Frozen,
}

impl Service {
    /// Spawns the server on `data_dir`, stderr to `log` (appended), with no
    /// `WAL_ARCHIVER_*` variable of the test's environment.
    pub fn spawn(data_dir: &Path, args: &[&str], log: &Path) -> Service {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("server log");
        let mut command = Command::new(BIN);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("WAL_ARCHIVER_") {
                command.env_remove(name);
            }
        }
        let mut child = command
            .arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .spawn()
            .expect("spawn wal-archiver serve");
        let stdout = child.stdout.take().expect("stdout");
        let (addr_tx, addr) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("wal-archiver listening on ") {
                    let _ = addr_tx.send(addr.parse().expect("address"));
                }
            }
        });
        Service {
            child: Some(child),
            addr,
            log: log.to_owned(),
        }
    }

    /// Waits until the server listens or `fs` freezes; an error if the
    /// server exits first or `limit` passes.
    pub async fn started(&mut self, fs: &LossyFs, limit: Duration) -> Result<Started, String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(addr) = self.addr.try_recv() {
                return Ok(Started::Listening(addr));
            }
            if fs.frozen().is_some() {
                return Ok(Started::Frozen);
            }
            let child = self.child.as_mut().expect("running");
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "the server exited ({status}) before listening; log:\n{}",
                    self.log_text()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the server did not listen within {limit:?}; log:\n{}",
                    self.log_text()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM and wait: a clean stop (on a mount that is not frozen).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            super::signal(child.id(), libc::SIGTERM);
            super::wait_with_timeout(&mut child, Duration::from_secs(60));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Service {
    /// SIGKILL and a bounded wait: a server stuck in a frozen mount is only
    /// reaped once the daemon is gone.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}
