//! The one typed configuration. Values come from, in order of precedence (last
//! wins): built-in defaults, a TOML file (`--config`), `WAL_ARCHIVER_*`
//! environment variables, command-line flags. Each layer is a TOML table merged
//! over the previous one, so every key can be set the same way in every layer.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const ENV_PREFIX: &str = "WAL_ARCHIVER_";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Jobs database, spool and archives live below this directory.
    pub data_dir: PathBuf,
    /// Compression workers; 0 means one per core.
    pub archive_parallelism: usize,
    /// Jobs a shard may have received or waiting (RECEIVING + QUEUED) before pushes get RESOURCE_EXHAUSTED.
    pub archive_queue_size: usize,
    /// zstd level used when a push does not ask for one.
    pub compression_level: i32,
    /// Largest segment accepted, in bytes.
    pub max_segment_size: u64,
    /// Largest data chunk in one request message, in bytes.
    pub max_chunk_size: usize,
    /// Pushes are refused with RESOURCE_EXHAUSTED while the data dir has less free space than this, in bytes.
    pub min_free_bytes: u64,
    /// Segments being received at once, over all shards; more get RESOURCE_EXHAUSTED.
    pub max_concurrent_uploads: usize,
    /// Longest line of a JSON-lines segment, in bytes.
    pub max_json_line_size: usize,
    /// Seconds running compressions get to finish after SIGTERM/SIGINT.
    pub shutdown_grace: u64,
    /// Use zstd's own worker threads for one segment when it is the only work and at least this big, in bytes; 0 turns it off.
    pub multithread_min_size: u64,
    /// Nice value (0–19) of the compression threads, so receiving and
    /// acknowledging segments takes precedence over background compression.
    pub worker_nice: i32,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// PEM certificate chain and key: serve gRPC over TLS.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: require client certificates signed by it.
    pub tls_client_ca: Option<PathBuf>,
    /// TOML file of bearer tokens (see docs/OPERATIONS.md); unset means no authentication.
    pub tokens_file: Option<PathBuf>,
    /// Allow listening on a non-loopback address without a tokens file.
    pub allow_unauthenticated: bool,
    /// Keep archives at least this many days; 0 turns the age rule off.
    pub retain_days: u64,
    /// Keep at least the newest this many archives per shard; 0 turns the count rule off.
    pub retain_count: u64,
    /// Seconds between retention passes.
    pub retention_interval: u64,
    /// Prometheus metrics over HTTP on this address; unset means off.
    pub metrics_listen: Option<SocketAddr>,
    /// Milliseconds a unary call (status, list, cancel) may take before DEADLINE_EXCEEDED.
    pub unary_timeout_ms: u64,
    /// Requests handled at once over all connections; more get RESOURCE_EXHAUSTED.
    pub max_concurrent_requests: usize,
    /// HTTP/2 streams one connection may have open at once.
    pub max_streams_per_connection: u32,
}

/// Keys whose default is unset, so they are absent from the defaults table.
const OPTIONAL_KEYS: [&str; 5] = [
    "tls_cert",
    "tls_key",
    "tls_client_ca",
    "tokens_file",
    "metrics_listen",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            data_dir: PathBuf::from("./data"),
            archive_parallelism: 0,
            archive_queue_size: 64,
            compression_level: 3,
            max_segment_size: 4 << 30,
            max_chunk_size: 1 << 20,
            min_free_bytes: 256 << 20,
            max_concurrent_uploads: 256,
            max_json_line_size: 16 << 20,
            shutdown_grace: 30,
            multithread_min_size: 32 << 20,
            worker_nice: 10,
            log_format: LogFormat::Text,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            tokens_file: None,
            allow_unauthenticated: false,
            metrics_listen: None,
            retain_days: 0,
            retain_count: 0,
            retention_interval: 3600,
            unary_timeout_ms: 30_000,
            max_concurrent_requests: 1024,
            max_streams_per_connection: 256,
        }
    }
}

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
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Defaults, then `file`, then the `WAL_ARCHIVER_*` variables among `env`, then `flags`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: toml::Table,
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
        }
        merged.extend(env_layer(env));
        merged.extend(flags);
        let config: Config = toml::Value::Table(merged)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.message().to_owned()))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |msg: &str| Err(ConfigError::Invalid(msg.to_owned()));
        if self.archive_queue_size == 0 {
            return invalid("archive_queue_size must be at least 1");
        }
        if !(zstd::zstd_safe::min_c_level()..=zstd::zstd_safe::max_c_level())
            .contains(&self.compression_level)
        {
            return invalid("compression_level is outside zstd's range");
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
        Ok(())
    }

    /// The number of compression workers actually started.
    pub fn workers(&self) -> usize {
        if self.archive_parallelism > 0 {
            self.archive_parallelism
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }
    }
}

/// `WAL_ARCHIVER_ARCHIVE_QUEUE_SIZE=8` becomes `archive_queue_size = 8`. A value
/// that parses as a TOML scalar (number, boolean) is taken as one, anything else
/// as a string.
fn env_layer(env: impl IntoIterator<Item = (String, String)>) -> toml::Table {
    let known = toml::Table::try_from(Config::default()).unwrap_or_default();
    env.into_iter()
        .filter_map(|(name, value)| {
            let key = name.strip_prefix(ENV_PREFIX)?.to_ascii_lowercase();
            match known.get(&key) {
                Some(default) => Some((key, scalar_like(default, &value))),
                None if OPTIONAL_KEYS.contains(&key.as_str()) => {
                    Some((key, toml::Value::String(value)))
                }
                // Not a server key (WAL_ARCHIVER_SERVER and WAL_ARCHIVER_TOKEN are the client's).
                None => None,
            }
        })
        .collect()
}

fn scalar_like(default: &toml::Value, text: &str) -> toml::Value {
    let parsed = match default {
        toml::Value::Integer(_) => text.trim().parse::<i64>().ok().map(toml::Value::Integer),
        toml::Value::Boolean(_) => text.trim().parse::<bool>().ok().map(toml::Value::Boolean),
        toml::Value::Float(_) => text.trim().parse::<f64>().ok().map(toml::Value::Float),
        _ => None,
    };
    parsed.unwrap_or_else(|| toml::Value::String(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

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
            ("UNRELATED".to_owned(), "1".to_owned()),
        ];
        let mut flags = toml::Table::new();
        flags.insert("listen".into(), toml::Value::String("127.0.0.1:9".into()));
        let config = Config::load(Some(&file), env, flags).unwrap();
        assert_eq!(config.archive_queue_size, 5);
        assert_eq!(config.compression_level, 9);
        assert_eq!(config.data_dir, PathBuf::from("/x"));
        assert_eq!(config.listen, "127.0.0.1:9".parse().unwrap());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "archive_queue_sise = 5\n").unwrap();
        assert!(Config::load(Some(&file), vec![], toml::Table::new()).is_err());
        let env = vec![(
            "WAL_ARCHIVER_ARCHIVE_QUEUE_SIZE".to_owned(),
            "lots".to_owned(),
        )];
        assert!(Config::load(None, env, toml::Table::new()).is_err());
    }
}
