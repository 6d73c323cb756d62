//! The one typed configuration. Values come from, in order of precedence (last
//! wins): built-in defaults, a TOML file (`--config`), `WAL_ARCHIVER_*`
//! environment variables, command-line flags. Each layer is a TOML table merged
//! over the previous one, so every key can be set the same way in every layer.
//!
//! Every key is declared once, in `config_keys!` below: its type, default and
//! help text make the `Config` field, its default, and its `serve --flag`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const ENV_PREFIX: &str = "WAL_ARCHIVER_";

/// Declares the configuration keys. `switch` makes the flag usable without a
/// value (`--allow-unauthenticated` means `true`).
macro_rules! config_keys {
    ($(
        $(#[doc = $doc:literal])*
        $name:ident : $ty:ty = $default:expr $(, switch = $switch:literal)? ;
    )*) => {
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct Config {
            $( $(#[doc = $doc])* pub $name: $ty, )*
        }

        impl Default for Config {
            fn default() -> Self {
                Config { $( $name: $default, )* }
            }
        }

        /// Every configuration key as a `serve` flag. Values are parsed like
        /// the same key's environment variable.
        #[derive(clap::Args, Clone, Debug, Default)]
        pub struct ConfigFlags {
            $(
                $(#[doc = $doc])*
                #[arg(long, value_name = "VALUE")]
                $(#[arg(num_args = 0..=1, default_missing_value = $switch)])?
                pub $name: Option<String>,
            )*
        }

        impl ConfigFlags {
            /// The flags that were given, as (key, text) pairs.
            pub fn given(&self) -> Vec<(&'static str, String)> {
                let mut given = Vec::new();
                $( if let Some(value) = &self.$name { given.push((stringify!($name), value.clone())); } )*
                given
            }
        }

        /// Every key, in declaration order.
        pub const KEYS: &[&str] = &[$(stringify!($name)),*];
    };
}

config_keys! {
    /// gRPC listen address (`127.0.0.1:0` picks a free port; the bound address is printed).
    listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 50051));
    /// Jobs database, spool and archives live below this directory.
    data_dir: PathBuf = PathBuf::from("./data");
    /// Compression worker threads; 0 means one per core.
    archive_parallelism: usize = 0;
    /// Segments a shard may have being received or queued; more get RESOURCE_EXHAUSTED.
    archive_queue_size: usize = 64;
    /// zstd level used when a push does not ask for one.
    compression_level: i32 = 3;
    /// Largest segment accepted, in bytes.
    max_segment_size: u64 = 4 << 30;
    /// Largest data chunk in one request message (and restore chunk size), in bytes.
    max_chunk_size: usize = 1 << 20;
    /// Pushes are refused while the data dir has less free space than this plus the declared segment size, in bytes.
    min_free_bytes: u64 = 256 << 20;
    /// Segments being received at once, over all shards; more get RESOURCE_EXHAUSTED.
    max_concurrent_uploads: usize = 256;
    /// Longest line of a JSON-lines segment, in bytes.
    max_json_line_size: usize = 16 << 20;
    /// Seconds running compressions get to finish after SIGTERM/SIGINT.
    shutdown_grace: u64 = 30;
    /// Seconds an Archive stream may send nothing (header included) before it is cut and its job FAILED; also how long a Restore or Watch reader may read nothing.
    receive_idle_timeout: u64 = 60;
    /// Seconds between HTTP/2 keepalive pings (and the TCP keepalive interval), so a dead peer is noticed; 0 turns them off.
    keepalive_interval: u64 = 30;
    /// Seconds a compression may make no progress before it is reported stalled and put off to be tried again.
    stall_timeout: u64 = 300;
    /// Longest wait, in seconds, between tries of a job put off by a failure that passes (a full disk, the object store down).
    retry_max_backoff: u64 = 60;
    /// Restores streamed at once; more get RESOURCE_EXHAUSTED. 0 means four per core.
    max_concurrent_restores: usize = 0;
    /// WatchJob streams open at once; more get RESOURCE_EXHAUSTED.
    max_concurrent_watches: usize = 1024;
    /// Highest zstd level a push may ask for; higher levels are refused (they cost minutes and hundreds of MiB per segment).
    max_zstd_level: i32 = 19;
    /// Segments up to this size also have a worker of their own, so they never wait behind large or slow ones, in bytes; 0 turns the small lane off.
    small_job_size: u64 = 16 << 20;
    /// A segment at least this big that is the only work is compressed on zstd's own threads, in bytes; 0 turns this off.
    multithread_min_size: u64 = 32 << 20;
    /// CPU priority (nice, 0-19) of the compression threads, so receiving and acknowledging goes first.
    worker_nice: i32 = 10;
    /// Log format: text or json; filter with RUST_LOG (default info).
    log_format: LogFormat = LogFormat::Text;
    /// PEM certificate chain: serve gRPC over TLS (with tls_key).
    tls_cert: Option<PathBuf> = None;
    /// PEM private key of tls_cert.
    tls_key: Option<PathBuf> = None;
    /// PEM CA bundle: require client certificates signed by it.
    tls_client_ca: Option<PathBuf> = None;
    /// TOML file of bearer tokens (docs/OPERATIONS.md); unset means no authentication.
    tokens_file: Option<PathBuf> = None;
    /// Allow a non-loopback listen address without a tokens file.
    allow_unauthenticated: bool = false, switch = "true";
    /// Keep archives at least this many days; 0 turns the age rule off.
    retain_days: u64 = 0;
    /// Keep at least the newest this many archives per shard; 0 turns the count rule off.
    retain_count: u64 = 0;
    /// Seconds between retention passes.
    retention_interval: u64 = 3600;
    /// Prometheus metrics over HTTP on this address (/metrics); unset means off.
    metrics_listen: Option<SocketAddr> = None;
    /// Milliseconds a unary call may take before DEADLINE_EXCEEDED; streams are not cut.
    unary_timeout_ms: u64 = 30_000;
    /// Requests handled at once over all connections; more get RESOURCE_EXHAUSTED.
    max_concurrent_requests: usize = 1024;
    /// HTTP/2 streams one connection may have open at once.
    max_streams_per_connection: u32 = 256;
    /// Where archives are stored: local (below data_dir) or s3 (an S3-compatible bucket).
    storage: StorageKind = StorageKind::Local;
    /// S3 endpoint URL for non-AWS stores, e.g. http://127.0.0.1:3900 (plain http when the URL says so); unset means AWS.
    s3_endpoint: Option<String> = None;
    /// S3 bucket the archives go to (needed with storage = s3).
    s3_bucket: Option<String> = None;
    /// S3 region (signing region; Garage's default is "garage").
    s3_region: String = "us-east-1".to_owned();
    /// Key prefix of every archive in the bucket, e.g. "prod/"; a missing trailing slash is added.
    s3_prefix: String = String::new();
    /// Path-style S3 requests (endpoint/bucket/key), as most non-AWS stores want; false means virtual-hosted style.
    s3_path_style: bool = true, switch = "true";
    /// Archives bigger than this go up as a multipart upload in parts of this size (at least 5 MiB), in bytes.
    s3_part_size: u64 = 8 << 20;
    /// Parts of one multipart upload sent at once; memory per upload is about part size × (this + 1).
    s3_upload_concurrency: usize = 2;
    /// Seconds one archive-store request may go without an answer (per attempt; a stream's reads each get this).
    storage_timeout: u64 = 60;
    /// Times a failed archive-store request is retried, with capped exponential backoff.
    storage_retries: u32 = 5;
    /// File holding the S3 access key id (instead of AWS_ACCESS_KEY_ID).
    s3_access_key_id_file: Option<PathBuf> = None;
    /// File holding the S3 secret access key (instead of AWS_SECRET_ACCESS_KEY).
    s3_secret_access_key_file: Option<PathBuf> = None;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The archive store backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    #[default]
    Local,
    S3,
}

/// S3 refuses parts below this size, except the last.
pub const S3_MIN_PART_SIZE: u64 = 5 << 20;
/// S3's largest part.
const S3_MAX_PART_SIZE: u64 = 5 << 30;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    /// A value that does not fit its key, with where it came from.
    #[error("{source_name}: {message}")]
    Value {
        source_name: String,
        message: String,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Defaults, then `file`, then the `WAL_ARCHIVER_*` variables among `env`, then `flags`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &ConfigFlags,
    ) -> Result<Config, ConfigError> {
        let mut merged = toml::Table::try_from(Config::default())
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            let table: toml::Table =
                toml::from_str(&text).map_err(|source| ConfigError::Parse {
                    path: path.to_owned(),
                    source,
                })?;
            merged.extend(table);
            into_config(merged.clone()).map_err(|message| ConfigError::Value {
                source_name: format!("config file {}", path.display()),
                message,
            })?;
        }
        for (name, value) in env {
            let Some(key) = name.strip_prefix(ENV_PREFIX).map(str::to_ascii_lowercase) else {
                continue;
            };
            // The client's variables (WAL_ARCHIVER_SERVER, _TOKEN) are not server keys.
            let Some(key) = KEYS.iter().find(|known| **known == key) else {
                continue;
            };
            set(&mut merged, key, &value, || {
                format!("environment variable {name}={value}")
            })?;
        }
        for (key, value) in flags.given() {
            let flag = format!("--{}", key.replace('_', "-"));
            set(&mut merged, key, &value, || format!("flag {flag} {value}"))?;
        }
        let mut config = into_config(merged).map_err(ConfigError::Invalid)?;
        config.s3_prefix = normalise_prefix(&config.s3_prefix);
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |msg: &str| Err(ConfigError::Invalid(msg.to_owned()));
        if self.archive_queue_size == 0 {
            return invalid("archive_queue_size must be at least 1");
        }
        if !(1..=zstd::zstd_safe::max_c_level()).contains(&self.max_zstd_level) {
            return invalid("max_zstd_level must be between 1 and 22");
        }
        if !(zstd::zstd_safe::min_c_level()..=self.max_zstd_level).contains(&self.compression_level)
        {
            return invalid(
                "compression_level must be between zstd's lowest level and max_zstd_level",
            );
        }
        if self.receive_idle_timeout == 0 {
            return invalid("receive_idle_timeout must be at least 1 second");
        }
        if self.stall_timeout == 0 || self.retry_max_backoff == 0 {
            return invalid("stall_timeout and retry_max_backoff must be at least 1 second");
        }
        if self.max_chunk_size == 0 || self.max_chunk_size > 16 << 20 {
            return invalid("max_chunk_size must be between 1 byte and 16 MiB");
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return invalid("tls_cert and tls_key go together");
        }
        if self.tls_client_ca.is_some() && self.tls_cert.is_none() {
            return invalid("tls_client_ca needs tls_cert and tls_key");
        }
        if !self.listen.ip().is_loopback()
            && self.tokens_file.is_none()
            && !self.allow_unauthenticated
        {
            return Err(ConfigError::Invalid(format!(
                "refusing to listen on {} without authentication: set tokens_file, or allow_unauthenticated = true \
                 to serve anyone who can reach that address",
                self.listen
            )));
        }
        if !(0..=19).contains(&self.worker_nice) {
            return invalid("worker_nice must be between 0 and 19");
        }
        if self.max_concurrent_uploads == 0 {
            return invalid("max_concurrent_uploads must be at least 1");
        }
        self.validate_storage()
    }

    fn validate_storage(&self) -> Result<(), ConfigError> {
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        if self.storage_timeout == 0 {
            return invalid("storage_timeout must be at least 1 second".into());
        }
        if self.storage != StorageKind::S3 {
            return Ok(());
        }
        if self.s3_bucket.as_deref().is_none_or(str::is_empty) {
            return invalid("storage = s3 needs s3_bucket".into());
        }
        match self.s3_endpoint.as_deref() {
            Some(url) if !(url.starts_with("http://") || url.starts_with("https://")) => {
                return invalid(format!(
                    "s3_endpoint {url:?} must be an http:// or https:// URL"
                ));
            }
            None if self.s3_region.is_empty() => {
                return invalid("storage = s3 needs s3_endpoint or s3_region".into());
            }
            _ => {}
        }
        if !(S3_MIN_PART_SIZE..=S3_MAX_PART_SIZE).contains(&self.s3_part_size) {
            return invalid(format!(
                "s3_part_size must be between {S3_MIN_PART_SIZE} (5 MiB, S3's smallest part) and {S3_MAX_PART_SIZE} (5 GiB)"
            ));
        }
        if self.s3_upload_concurrency == 0 {
            return invalid("s3_upload_concurrency must be at least 1".into());
        }
        let prefix = normalise_prefix(&self.s3_prefix);
        let bad_segment = |part: &str| part.is_empty() || part == "." || part == "..";
        if let Some(segments) = prefix.strip_suffix('/')
            && segments.split('/').any(bad_segment)
        {
            return invalid(format!(
                "s3_prefix {:?} must be path segments separated by single slashes, without . or ..",
                self.s3_prefix
            ));
        }
        if self.s3_access_key_id_file.is_some() != self.s3_secret_access_key_file.is_some() {
            return invalid(
                "s3_access_key_id_file and s3_secret_access_key_file go together".into(),
            );
        }
        Ok(())
    }

    /// Whether a segment of `size` bytes goes to the small lane too.
    pub fn is_small(&self, size: u64) -> bool {
        size <= self.small_job_size
    }

    /// Restores streamed at once.
    pub fn restores(&self) -> usize {
        if self.max_concurrent_restores > 0 {
            self.max_concurrent_restores
        } else {
            4 * available_cores()
        }
    }

    /// The number of compression workers actually started (the small lane's not counted).
    pub fn workers(&self) -> usize {
        if self.archive_parallelism > 0 {
            self.archive_parallelism
        } else {
            available_cores()
        }
    }
}

fn available_cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// An S3 key prefix as the store uses it: empty, or ending with one `/`.
pub fn normalise_prefix(prefix: &str) -> String {
    let prefix = prefix.trim_start_matches('/');
    if prefix.is_empty() || prefix.ends_with('/') {
        prefix.to_owned()
    } else {
        format!("{prefix}/")
    }
}

fn into_config(table: toml::Table) -> Result<Config, String> {
    toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| e.message().to_owned())
}

/// Sets `key` from text (an environment variable or a flag). The text is
/// taken as whichever TOML type the key accepts — a string, else a number or
/// a boolean — so `8`, `true` and `/data` all mean what they say.
fn set(
    merged: &mut toml::Table,
    key: &str,
    text: &str,
    source_name: impl Fn() -> String,
) -> Result<(), ConfigError> {
    let trimmed = text.trim();
    let candidates = [
        Some(toml::Value::String(text.to_owned())),
        trimmed.parse::<i64>().ok().map(toml::Value::Integer),
        trimmed.parse::<bool>().ok().map(toml::Value::Boolean),
        trimmed.parse::<f64>().ok().map(toml::Value::Float),
    ];
    let mut first_error = None;
    for value in candidates.into_iter().flatten() {
        let mut attempt = merged.clone();
        attempt.insert(key.to_owned(), value.clone());
        match into_config(attempt) {
            Ok(_) => {
                merged.insert(key.to_owned(), value);
                return Ok(());
            }
            Err(message) => {
                first_error.get_or_insert(message);
            }
        }
    }
    Err(ConfigError::Value {
        source_name: source_name(),
        message: first_error.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(pairs: &[(&str, &str)]) -> ConfigFlags {
        let mut flags = ConfigFlags::default();
        for (key, value) in pairs {
            match *key {
                "listen" => flags.listen = Some(value.to_string()),
                "archive_queue_size" => flags.archive_queue_size = Some(value.to_string()),
                other => panic!("no test mapping for {other}"),
            }
        }
        flags
    }

    #[test]
    fn layers_override_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "archive_queue_size = 5\ncompression_level = 7\nlisten = \"0.0.0.0:1\"\n",
        )
        .unwrap();
        let env = vec![
            ("WAL_ARCHIVER_COMPRESSION_LEVEL".to_owned(), "9".to_owned()),
            ("WAL_ARCHIVER_DATA_DIR".to_owned(), "/x".to_owned()),
            ("WAL_ARCHIVER_TLS_CERT".to_owned(), "/c.pem".to_owned()),
            ("WAL_ARCHIVER_TLS_KEY".to_owned(), "/k.pem".to_owned()),
            ("UNRELATED".to_owned(), "1".to_owned()),
        ];
        let config = Config::load(Some(&file), env, &flags(&[("listen", "127.0.0.1:9")])).unwrap();
        assert_eq!(config.archive_queue_size, 5);
        assert_eq!(config.compression_level, 9);
        assert_eq!(config.data_dir, PathBuf::from("/x"));
        assert_eq!(config.tls_cert, Some(PathBuf::from("/c.pem")));
        assert_eq!(config.listen, "127.0.0.1:9".parse().unwrap());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_naming_their_source() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "archive_queue_sise = 5\n").unwrap();
        assert!(Config::load(Some(&file), vec![], &ConfigFlags::default()).is_err());
        let env = vec![(
            "WAL_ARCHIVER_ARCHIVE_QUEUE_SIZE".to_owned(),
            "lots".to_owned(),
        )];
        let err = Config::load(None, env, &ConfigFlags::default()).unwrap_err();
        assert!(
            err.to_string()
                .contains("environment variable WAL_ARCHIVER_ARCHIVE_QUEUE_SIZE=lots"),
            "{err}"
        );
        let err = Config::load(None, vec![], &flags(&[("archive_queue_size", "x")])).unwrap_err();
        assert!(
            err.to_string().contains("flag --archive-queue-size x"),
            "{err}"
        );
    }

    #[test]
    fn s3_storage_is_checked_and_its_prefix_normalised() {
        let load = |pairs: &[(&str, &str)]| {
            let env = pairs
                .iter()
                .map(|(k, v)| (format!("{ENV_PREFIX}{}", k.to_uppercase()), v.to_string()))
                .collect::<Vec<_>>();
            Config::load(None, env, &ConfigFlags::default())
        };
        let config = load(&[
            ("storage", "s3"),
            ("s3_bucket", "wal"),
            ("s3_endpoint", "http://127.0.0.1:3900"),
            ("s3_prefix", "/prod/eu"),
        ])
        .unwrap();
        assert_eq!(config.storage, StorageKind::S3);
        assert_eq!(config.s3_prefix, "prod/eu/");
        assert_eq!(config.s3_part_size, 8 << 20);
        assert!(config.s3_path_style);

        let refused = |pairs: &[(&str, &str)], says: &str| {
            let err = load(pairs).unwrap_err().to_string();
            assert!(err.contains(says), "{err}");
        };
        refused(&[("storage", "s3")], "needs s3_bucket");
        refused(&[("storage", "gcs")], "expected `local` or `s3`");
        refused(
            &[
                ("storage", "s3"),
                ("s3_bucket", "b"),
                ("s3_part_size", "1048576"),
            ],
            "s3_part_size must be between",
        );
        refused(
            &[
                ("storage", "s3"),
                ("s3_bucket", "b"),
                ("s3_endpoint", "127.0.0.1:3900"),
            ],
            "http:// or https://",
        );
        refused(
            &[("storage", "s3"), ("s3_bucket", "b"), ("s3_prefix", "a//b")],
            "single slashes",
        );
        refused(
            &[("storage", "s3"), ("s3_bucket", "b"), ("s3_region", "")],
            "s3_endpoint or s3_region",
        );
        refused(
            &[
                ("storage", "s3"),
                ("s3_bucket", "b"),
                ("s3_upload_concurrency", "0"),
            ],
            "s3_upload_concurrency",
        );
        refused(
            &[
                ("storage", "s3"),
                ("s3_bucket", "b"),
                ("s3_access_key_id_file", "/k"),
            ],
            "go together",
        );
        // The local store ignores the S3 keys.
        assert!(load(&[("s3_part_size", "1")]).is_ok());
    }

    #[test]
    fn readme_documents_every_key() {
        let readme = include_str!("../README.md");
        for key in KEYS {
            assert!(
                readme.contains(&format!("`{key}`")),
                "README.md's configuration table does not mention `{key}`"
            );
        }
    }
}
