//! `bench --s3`: a real Garage (S3-compatible) started with the project's
//! `garage-dev.sh`, for the service to archive into, and its count of the S3
//! requests it served.
//!
//! Requests are counted by Garage itself: its admin API's `/metrics` has
//! `api_s3_request_counter{api_endpoint="…"}`, one counter per S3 operation.
//! The bench reads it after the server has started and again once every job
//! is ARCHIVED; the difference, divided by the segments pushed, is the
//! requests per segment (the server's start-up listing is not counted).
//!
//! Garage must not outlive the bench, however the bench ends: a watchdog `sh`
//! reads a pipe whose only writer is this process; when the process exits the
//! kernel closes the pipe, `read` returns, and the watchdog stops Garage.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use super::{BenchError, io, reset_dir};

/// Stops the Garage of `$1/garage.pid` with the script `$0` once stdin closes.
const WATCHDOG: &str = r#"
read _
pid=$(cat "$1/garage.pid" 2>/dev/null || true)
bash "$0" stop "$1" >/dev/null 2>&1
for _ in $(seq 50); do [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
[ -n "$pid" ] && kill -9 "$pid" 2>/dev/null
exit 0
"#;
/// How long Garage may take to answer on its S3 port after the script returns.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a `/metrics` read may take.
const METRICS_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) struct Garage {
    endpoint: String,
    bucket: String,
    region: String,
    access_key_id: String,
    secret_access_key: String,
    /// host:port of the admin API (from the config the script wrote).
    admin: String,
    pid: u32,
    dir: PathBuf,
    watchdog: Option<(Child, ChildStdin)>,
}

impl Garage {
    /// Starts a fresh Garage in `dir` with `script` (`garage-dev.sh`).
    pub(super) fn start(script: &Path, dir: &Path) -> Result<Garage, BenchError> {
        if !script.exists() {
            return Err(BenchError::Failed(format!(
                "{} is missing (see --garage-script)",
                script.display()
            )));
        }
        reset_dir(dir)?;
        let dir = dir
            .canonicalize()
            .map_err(io(format!("resolving {}", dir.display())))?;
        // In a process group of its own, so that a Ctrl-C stopping the bench
        // leaves it alive to stop Garage.
        let mut watchdog = Command::new("sh")
            .args([OsStr::new("-c"), OsStr::new(WATCHDOG)])
            .args([script.as_os_str(), dir.as_os_str()])
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(io("starting the Garage watchdog"))?;
        let Some(stdin) = watchdog.stdin.take() else {
            return Err(BenchError::Failed("no watchdog stdin".into()));
        };
        // Stops whatever the script starts, however this function returns.
        let watchdog = Some((watchdog, stdin));
        let output = Command::new("bash")
            .arg(script)
            .arg("start")
            .arg(&dir)
            .stdin(Stdio::null())
            .output()
            .map_err(io(format!("running {} start", script.display())))?;
        if !output.status.success() {
            return Err(BenchError::Failed(format!(
                "{} start failed: {}",
                script.display(),
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let exports: HashMap<&str, &str> = stdout
            .lines()
            .filter_map(|line| line.strip_prefix("export ")?.split_once('='))
            .collect();
        let var = |name: &str| {
            exports.get(name).map(|v| v.to_string()).ok_or_else(|| {
                BenchError::Failed(format!("{} start printed no {name}", script.display()))
            })
        };
        let garage = Garage {
            endpoint: var("S3_ENDPOINT")?,
            bucket: var("S3_BUCKET")?,
            region: var("AWS_REGION")?,
            access_key_id: var("AWS_ACCESS_KEY_ID")?,
            secret_access_key: var("AWS_SECRET_ACCESS_KEY")?,
            admin: admin_addr(&dir.join("garage.toml"))?,
            pid: var("GARAGE_PID")?
                .parse()
                .map_err(|e| BenchError::Failed(format!("GARAGE_PID: {e}")))?,
            dir,
            watchdog,
        };
        let s3 = garage.endpoint.trim_start_matches("http://").to_owned();
        let deadline = Instant::now() + START_TIMEOUT;
        while std::net::TcpStream::connect(&s3).is_err() {
            if Instant::now() > deadline {
                return Err(BenchError::Failed(format!("Garage never answered on {s3}")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(garage)
    }

    /// `serve` flags that put archives in this Garage under `prefix`.
    pub(super) fn server_args(&self, prefix: &str) -> Vec<String> {
        let flags: [(&str, &str); 5] = [
            ("storage", "s3"),
            ("s3-endpoint", &self.endpoint),
            ("s3-bucket", &self.bucket),
            ("s3-region", &self.region),
            ("s3-prefix", prefix),
        ];
        flags
            .iter()
            .flat_map(|(flag, value)| [format!("--{flag}"), value.to_string()])
            .collect()
    }

    /// The credentials, as the server reads them.
    pub(super) fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", self.access_key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_access_key.clone()),
        ]
    }

    /// S3 requests served so far, by operation.
    pub(super) fn requests(&self) -> Result<BTreeMap<String, u64>, BenchError> {
        let metrics = http_get(&self.admin, "/metrics")?;
        Ok(parse_request_counters(&metrics))
    }

    /// Garage's own peak RSS so far.
    pub(super) fn peak_rss(&self) -> Option<u64> {
        super::child::vm_hwm(self.pid).ok()
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        if let Some((mut watchdog, stdin)) = self.watchdog.take() {
            drop(stdin);
            let _ = watchdog.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `[admin] api_bind_addr` of a Garage config.
fn admin_addr(config: &Path) -> Result<String, BenchError> {
    let text =
        std::fs::read_to_string(config).map_err(io(format!("reading {}", config.display())))?;
    let table: toml::Table = toml::from_str(&text)
        .map_err(|e| BenchError::Failed(format!("{}: {e}", config.display())))?;
    table
        .get("admin")
        .and_then(|admin| admin.get("api_bind_addr"))
        .and_then(|addr| addr.as_str())
        .map(str::to_owned)
        .ok_or_else(|| {
            BenchError::Failed(format!("no [admin] api_bind_addr in {}", config.display()))
        })
}

/// `api_s3_request_counter{api_endpoint="X"} N` lines, summed by X.
fn parse_request_counters(metrics: &str) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("api_s3_request_counter{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once('}') else {
            continue;
        };
        let endpoint = labels
            .split(',')
            .find_map(|label| label.trim().strip_prefix("api_endpoint="))
            .map(|v| v.trim_matches('"').to_owned());
        if let (Some(endpoint), Ok(value)) = (endpoint, value.trim().parse::<f64>()) {
            *counts.entry(endpoint).or_insert(0) += value as u64;
        }
    }
    counts
}

/// A plain HTTP/1.0 GET; the body.
fn http_get(addr: &str, path: &str) -> Result<String, BenchError> {
    let failed = |e: std::io::Error| BenchError::Io {
        context: format!("GET http://{addr}{path}"),
        source: e,
    };
    let mut stream = std::net::TcpStream::connect(addr).map_err(failed)?;
    stream
        .set_read_timeout(Some(METRICS_TIMEOUT))
        .map_err(failed)?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(failed)?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(failed)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(BenchError::Failed(format!(
            "GET http://{addr}{path}: {}",
            head.lines().next().unwrap_or("no answer")
        )));
    }
    Ok(body.to_owned())
}

/// Requests per segment between two readings of the counters, by operation.
pub(super) fn per_segment(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
    segments: usize,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .filter_map(|(endpoint, &count)| {
            let made = count - before.get(endpoint).copied().unwrap_or(0).min(count);
            (made > 0).then(|| (endpoint.clone(), made as f64 / segments.max(1) as f64))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_s3_requests_by_operation() {
        let metrics = "\
# HELP api_s3_request_counter Number of API calls to the various S3 API endpoints
api_s3_request_counter{api_endpoint=\"HeadObject\"} 2
api_s3_request_counter{api_endpoint=\"PutObject\"} 1
api_s3_error_counter{api_endpoint=\"HeadObject\",status_code=\"404\"} 1
api_admin_request_counter{api_endpoint=\"/metrics\"} 2
";
        let before = parse_request_counters(metrics);
        assert_eq!(before.get("HeadObject"), Some(&2));
        assert_eq!(before.get("PutObject"), Some(&1));
        assert_eq!(before.len(), 2);
        let after = parse_request_counters(
            "api_s3_request_counter{api_endpoint=\"HeadObject\"} 8\n\
             api_s3_request_counter{api_endpoint=\"PutObject\"} 4\n",
        );
        let per = per_segment(&before, &after, 3);
        assert_eq!(per.get("HeadObject"), Some(&2.0));
        assert_eq!(per.get("PutObject"), Some(&1.0));
    }
}
