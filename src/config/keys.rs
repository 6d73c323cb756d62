//! Every configuration key, declared once: its type, its default and its
//! help text make the `Config` field, the default and the `serve --flag`.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

macro_rules! config_keys {
    ($(
        $(#[doc = $doc:literal])*
        $name:ident : $ty:ty = $default:expr $(, switch = $switch:literal)? $(, unit = $unit:ident)? ;
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

        /// The keys whose text may carry a unit (`1GiB`, `30s`), with the
        /// unit their number is kept in.
        pub const UNITS: &[(&str, Unit)] = &[$($((stringify!($name), Unit::$unit),)?)*];
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
    max_segment_size: u64 = 4 << 30, unit = Bytes;
    /// Largest data chunk in one request message, in bytes (restores send chunks of at most 256 KiB).
    max_chunk_size: usize = 1 << 20, unit = Bytes;
    /// Pushes are refused while the data dir has less free space than this plus the declared segment size, in bytes.
    min_free_bytes: u64 = 256 << 20, unit = Bytes;
    /// Segments being received at once, over all shards; more get RESOURCE_EXHAUSTED.
    max_concurrent_uploads: usize = 256;
    /// Longest line of a JSON-lines segment, in bytes.
    max_json_line_size: usize = 16 << 20, unit = Bytes;
    /// Seconds running compressions get to finish after SIGTERM/SIGINT.
    shutdown_grace: u64 = 30, unit = Seconds;
    /// Seconds an Archive stream may send nothing (header included) before it is cut and its job FAILED; also how long a Restore or Watch reader may read nothing.
    receive_idle_timeout: u64 = 60, unit = Seconds;
    /// Seconds between HTTP/2 keepalive pings (and the TCP keepalive interval), so a dead peer is noticed; 0 turns them off.
    keepalive_interval: u64 = 30, unit = Seconds;
    /// Seconds a compression may make no progress before it is reported stalled and put off to be tried again.
    stall_timeout: u64 = 300, unit = Seconds;
    /// Longest wait, in seconds, between tries of a job put off by a failure that passes (a full disk, the object store down).
    retry_max_backoff: u64 = 60, unit = Seconds;
    /// Restores streamed at once; more get RESOURCE_EXHAUSTED. 0 means four per core.
    max_concurrent_restores: usize = 0;
    /// WatchJob streams open at once; more get RESOURCE_EXHAUSTED.
    max_concurrent_watches: usize = 1024;
    /// With several replicas on one bucket: the shards this one serves, as ids and ranges (`0-63,128`); empty means every shard.
    owned_shards: String = String::new();
    /// With several replicas on one bucket: `INDEX/COUNT` serves the shards whose id modulo COUNT is INDEX; empty means every shard.
    shard_partition: String = String::new();
    /// Highest zstd level a push may ask for; higher levels are refused (they cost minutes and hundreds of MiB per segment).
    max_zstd_level: i32 = 19;
    /// Segments up to this size also have a worker of their own, so they never wait behind large or slow ones, in bytes; 0 turns the small lane off.
    small_job_size: u64 = 16 << 20, unit = Bytes;
    /// A segment at least this big that is the only work is compressed on zstd's own threads, in bytes; 0 turns this off.
    multithread_min_size: u64 = 32 << 20, unit = Bytes;
    /// An upload that finds a worker idle and no job waiting is compressed while it arrives, not after; false always spools first.
    compress_while_receiving: bool = true;
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
    retain_days: u64 = 0, unit = Days;
    /// Keep at least the newest this many archives per shard; 0 turns the count rule off.
    retain_count: u64 = 0;
    /// Seconds between retention passes.
    retention_interval: u64 = 3600, unit = Seconds;
    /// Prometheus metrics over HTTP on this address (/metrics); unset means off.
    metrics_listen: Option<SocketAddr> = None;
    /// Per-shard metric series (watermark, queue depth, failed segments, oldest unarchived age, last archive time): about five series per shard; false keeps only the totals, for fleets of many thousands of shards.
    metrics_shard_labels: bool = true, switch = "true";
    /// Plaintext gRPC serving only grpc.health.v1 on this address (for kubelet probes when the main port uses TLS); unset means off.
    health_listen: Option<SocketAddr> = None;
    /// Milliseconds a unary call may take before DEADLINE_EXCEEDED; streams are not cut.
    unary_timeout_ms: u64 = 30_000, unit = Millis;
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
    s3_part_size: u64 = 8 << 20, unit = Bytes;
    /// Parts of one multipart upload sent at once; memory per upload is about part size × (this + 1).
    s3_upload_concurrency: usize = 2;
    /// Seconds one archive-store request may go without an answer (per attempt; a stream's reads each get this).
    storage_timeout: u64 = 60, unit = Seconds;
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

/// What a number of a key with a unit counts. Text with a unit is turned
/// into this one: `1GiB` into bytes, `5m` into seconds or milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Bytes,
    Seconds,
    Millis,
    Days,
}

/// S3 refuses parts below this size, except the last.
pub const S3_MIN_PART_SIZE: u64 = 5 << 20;
/// S3's largest part.
pub const S3_MAX_PART_SIZE: u64 = 5 << 30;
