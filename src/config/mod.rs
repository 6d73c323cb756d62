//! The one typed configuration. Values come from, in order of precedence (last
//! wins): built-in defaults, a TOML file (`--config`), `WAL_ARCHIVER_*`
//! environment variables, command-line flags. Each layer is a TOML table merged
//! over the previous one, so every key can be set the same way in every layer.
//!
//! Every key is declared once, in `config_keys!` below: its type, default and
//! help text make the `Config` field, its default, and its `serve --flag`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const ENV_PREFIX: &str = "WAL_ARCHIVER_";

/// `WAL_ARCHIVER_*` variables that are not server keys, with who reads them.
/// Any other `WAL_ARCHIVER_*` variable stops the server, as an unknown key in
/// the file does: a misspelt variable must not silently do nothing. These are
/// let through so a shell set up for the CLI, a test run or a deploy script
/// can start a server too.
pub const OTHER_VARIABLES: &[(&str, &str)] = &[
    ("WAL_ARCHIVER_SERVER", "the CLI's --server"),
    ("WAL_ARCHIVER_TOKEN", "the CLI's --token"),
    ("WAL_ARCHIVER_CA", "the CLI's --ca"),
    ("WAL_ARCHIVER_CERT", "the CLI's --cert"),
    ("WAL_ARCHIVER_KEY", "the CLI's --key"),
    (
        "WAL_ARCHIVER_BENCH_BASELINE_KIND",
        "wal-archiver bench, to its baseline process",
    ),
    ("WAL_ARCHIVER_KILL_ROUNDS", "tests/crash.rs"),
    ("WAL_ARCHIVER_KILL_SEED", "tests/crash.rs"),
    ("WAL_ARCHIVER_LOAD_SECS", "tests/load.rs"),
    (
        "WAL_ARCHIVER_TEST_CRASH_AT",
        "tests/crash_points.rs (debug builds only)",
    ),
    ("WAL_ARCHIVER_TOKENS_DIR", "deploy/compose.yaml"),
    ("WAL_ARCHIVER_HOST_PORT", "deploy/compose.yaml"),
    ("WAL_ARCHIVER_S3_HOST_PORT", "deploy/compose.yaml"),
    ("WAL_ARCHIVER_IMAGE_BASE", "deploy/build-image.sh"),
    ("WAL_ARCHIVER_BINARY", "deploy/build-image.sh"),
];

/// Declares the configuration keys. `switch` makes the flag usable without a
/// value (`--allow-unauthenticated` means `true`).
mod keys;
#[cfg(test)]
mod tests;
mod units;

use crate::types::Ownership;
pub use keys::{
    Config, ConfigFlags, KEYS, LogFormat, S3_MAX_PART_SIZE, S3_MIN_PART_SIZE, StorageKind, UNITS,
    Unit,
};

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
    #[error(
        "environment variable {name} is not a configuration key{hint}: unset it, or see the \
         configuration table in README.md"
    )]
    UnknownVariable { name: String, hint: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// A loaded configuration and where each value that is not a default came
/// from (`config file PATH`, `environment variable NAME`, `flag --NAME`).
#[derive(Clone, Debug)]
pub struct Loaded {
    pub config: Config,
    pub origins: BTreeMap<&'static str, String>,
}

impl Config {
    /// Defaults, then `file`, then the `WAL_ARCHIVER_*` variables among `env`, then `flags`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &ConfigFlags,
    ) -> Result<Config, ConfigError> {
        Config::load_explained(file, env, flags).map(|loaded| loaded.config)
    }

    /// Like `load`, keeping where each value came from.
    pub fn load_explained(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &ConfigFlags,
    ) -> Result<Loaded, ConfigError> {
        let defaults = toml::Table::try_from(Config::default())
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let mut merged = defaults.clone();
        let mut origins = BTreeMap::new();
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
            let origin = format!("config file {}", path.display());
            for (name, value) in table {
                let source_name = || format!("{origin}, key {name}");
                let Some(key) = known_key(&name) else {
                    return Err(ConfigError::Value {
                        source_name: source_name(),
                        message: format!("unknown key{}", did_you_mean(&name, "")),
                    });
                };
                let value = match (unit_of(key), value) {
                    (Some(unit), toml::Value::String(text)) => {
                        with_unit(unit, &text).map_err(|message| ConfigError::Value {
                            source_name: source_name(),
                            message,
                        })?
                    }
                    (_, value) => value,
                };
                // Checked alone over the defaults, so the message is this key's.
                let mut alone = defaults.clone();
                alone.insert(key.to_owned(), value.clone());
                into_config(alone).map_err(|message| ConfigError::Value {
                    source_name: source_name(),
                    message,
                })?;
                merged.insert(key.to_owned(), value);
                origins.insert(key, origin.clone());
            }
        }
        for (name, value) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let Some(key) = known_key(&rest.to_ascii_lowercase()) else {
                if OTHER_VARIABLES.iter().any(|(other, _)| *other == name) {
                    continue;
                }
                return Err(ConfigError::UnknownVariable {
                    hint: did_you_mean(&rest.to_ascii_lowercase(), ENV_PREFIX),
                    name,
                });
            };
            set(&mut merged, key, &value, || {
                format!("environment variable {name}={value}")
            })?;
            origins.insert(key, format!("environment variable {name}"));
        }
        for (key, value) in flags.given() {
            let flag = format!("--{}", key.replace('_', "-"));
            set(&mut merged, key, &value, || format!("flag {flag} {value}"))?;
            origins.insert(key, format!("flag {flag}"));
        }
        let mut config = into_config(merged).map_err(ConfigError::Invalid)?;
        config.s3_prefix = normalise_prefix(&config.s3_prefix);
        config.validate().map_err(|e| match e {
            ConfigError::Invalid(message) => ConfigError::Invalid(with_origins(message, &origins)),
            other => other,
        })?;
        Ok(Loaded { config, origins })
    }

    /// The configuration as a TOML table, with nothing secret in it: the
    /// secrets themselves (tokens, S3 keys) live in the files it names, and a
    /// password written into `s3_endpoint`'s URL is masked.
    pub fn redacted(&self) -> toml::Table {
        let mut table = toml::Table::try_from(self).unwrap_or_default();
        if let Some(endpoint) = &self.s3_endpoint {
            table.insert(
                "s3_endpoint".into(),
                toml::Value::String(redact_url(endpoint)),
            );
        }
        table
    }

    /// The shards this server serves.
    pub fn ownership(&self) -> Result<Ownership, ConfigError> {
        match (self.owned_shards.trim(), self.shard_partition.trim()) {
            ("", "") => Ok(Ownership::All),
            (listed, "") => Ownership::listed(listed).map_err(ConfigError::Invalid),
            ("", partition) => Ownership::partition(partition).map_err(ConfigError::Invalid),
            _ => Err(ConfigError::Invalid(
                "owned_shards and shard_partition are two ways to say the same thing: set one"
                    .into(),
            )),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |msg: &str| Err(ConfigError::Invalid(msg.to_owned()));
        self.ownership()?;
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

/// The cores this process may run on (1 when that cannot be told).
pub fn available_cores() -> usize {
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
    if let Some(unit) = unit_of(key) {
        let value = with_unit(unit, text).map_err(|message| ConfigError::Value {
            source_name: source_name(),
            message,
        })?;
        let mut attempt = merged.clone();
        attempt.insert(key.to_owned(), value.clone());
        return match into_config(attempt) {
            Ok(_) => {
                merged.insert(key.to_owned(), value);
                Ok(())
            }
            Err(message) => Err(ConfigError::Value {
                source_name: source_name(),
                message,
            }),
        };
    }
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

fn known_key(name: &str) -> Option<&'static str> {
    KEYS.iter().copied().find(|known| *known == name)
}

fn unit_of(key: &str) -> Option<Unit> {
    UNITS
        .iter()
        .find(|(known, _)| *known == key)
        .map(|(_, unit)| *unit)
}

/// A value with a unit as the integer its key holds.
fn with_unit(unit: Unit, text: &str) -> Result<toml::Value, String> {
    let number = units::parse(unit, text)?;
    i64::try_from(number)
        .map(toml::Value::Integer)
        .map_err(|_| format!("{text:?} is too large"))
}

/// ` (did you mean PREFIX+KEY?)` when a key is one or two typos from `name`.
fn did_you_mean(name: &str, prefix: &str) -> String {
    KEYS.iter()
        .map(|key| (edit_distance(name, key), key))
        .filter(|(distance, _)| *distance <= 2)
        .min()
        .map(|(_, key)| {
            let key = if prefix.is_empty() {
                key.to_string()
            } else {
                format!("{prefix}{}", key.to_ascii_uppercase())
            };
            format!(" (did you mean {key}?)")
        })
        .unwrap_or_default()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// `message`, followed by where the keys it names were set, when not by default.
fn with_origins(message: String, origins: &BTreeMap<&'static str, String>) -> String {
    let named: Vec<String> = origins
        .iter()
        .filter(|(key, _)| mentions(&message, key))
        .map(|(key, origin)| format!("{key} from {origin}"))
        .collect();
    if named.is_empty() {
        message
    } else {
        format!("{message} ({})", named.join("; "))
    }
}

/// Whether `text` has `word` as a whole word (not inside a longer key).
fn mentions(text: &str, word: &str) -> bool {
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(word).any(|(at, _)| {
        !text[..at].ends_with(is_word) && !text[at + word.len()..].starts_with(is_word)
    })
}

/// `scheme://user:password@host/…` as `scheme://user:***@host/…`.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            format!("{scheme}://{user}:***@{host}{}", &rest[authority_end..])
        }
        None => url.to_owned(),
    }
}
