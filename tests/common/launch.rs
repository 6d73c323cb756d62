//! Starting the server in the ways `Server::start` does not: with variables in
//! its environment (to test the configuration layers), and as a bare process
//! watched from its first instant, before it has recovered and says it listens.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::{BIN, Backend, Server};

impl Server {
    /// Like `start`, with `env` added to the server's environment (kept
    /// across `restart`).
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let args = args.iter().map(|a| a.to_string()).collect();
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut server = Server::spawn_with(
            &dir.path().join("data"),
            "127.0.0.1:0",
            args,
            env,
            Backend::Local,
            None,
        );
        server._dir = Some(dir);
        server
    }

    /// Keeps the address it listens on now across `restart` (for clients
    /// configured once with a URL).
    pub fn keep_address(&mut self) {
        self.listen = self.addr.to_string();
    }

    /// Replaces the variables `start_with_env` added, from the next `restart` on.
    pub fn set_env(&mut self, env: &[(&str, &str)]) {
        self.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }
}

/// A `wal-archiver serve` process that was only spawned: it may still be
/// recovering. Killed when dropped.
pub struct Starting {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Starting {
    /// Spawns the server on `data_dir` at a fixed loopback port and returns
    /// at once, without waiting for it to listen; stderr goes to `log`.
    pub fn spawn(data_dir: &Path, args: &[&str], log: &Path) -> Starting {
        let addr: SocketAddr = format!("127.0.0.1:{}", super::free_port())
            .parse()
            .expect("address");
        let log_file = std::fs::File::create(log).expect("log file");
        let child = Command::new(BIN)
            .arg("serve")
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--data-dir")
            .arg(data_dir)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file))
            .spawn()
            .expect("spawn wal-archiver serve");
        Starting { child, addr }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("wait").is_none()
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
