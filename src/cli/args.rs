//! The command line: every subcommand and its arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use wal_archiver::client::DEFAULT_SERVER;
use wal_archiver::config::ConfigFlags;
use wal_archiver::types::{ContentKind, JobState};

#[derive(Parser)]
#[command(
    name = "wal-archiver",
    version,
    about = "Archive database write-ahead-log segments: a gRPC service and its client"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the archiving service.
    Serve(Box<ServeArgs>),
    /// Work with the server's configuration without starting it.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Rebuild missing ARCHIVED jobs from the archive store (a lost jobs database; the server must be stopped). Takes serve's configuration.
    Reindex(Box<ServeArgs>),
    /// Push one segment file, or every wal-<id>.log of a directory below --up-to.
    Push(PushArgs),
    /// Show one job.
    Status {
        job: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List jobs, oldest first.
    List(ListArgs),
    /// Follow a job's state changes until it ends.
    Watch {
        job: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Cancel a receiving, queued or compressing job.
    Cancel {
        job: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a shard's archived watermark, what holds it back and why, its queue and counters.
    Shard {
        shard: u32,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Every shard at a glance: watermark, what holds it back and why, failures, last archive.
    Info {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Give up a segment that is lost or permanently bad so its shard's watermark may pass it (admin; recorded with who and why).
    Resolve {
        #[arg(long)]
        shard: u32,
        #[arg(long)]
        log_id: u64,
        /// Why it is given up: recorded, shown by `info`, `shard` and `verify`.
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Ask the server's grpc.health.v1 service whether it serves: exit 0 when SERVING, 1 otherwise (a probe).
    Health(HealthArgs),
    /// Fetch a segment's original bytes, verified against its SHA-256.
    Restore {
        #[arg(long)]
        shard: u32,
        #[arg(long)]
        log_id: u64,
        /// Output file (written under a temporary name, renamed when verified); `-` for stdout.
        #[arg(short, long)]
        output: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Re-read archives, check every SHA-256 and list gaps in each shard's log_ids; fails on any problem.
    Verify {
        #[arg(long)]
        shard: Option<u32>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print an archive file's metadata; with --verify also decode it and check its SHA-256.
    Inspect {
        archive: PathBuf,
        #[arg(long)]
        verify: bool,
        #[arg(long)]
        json: bool,
    },
    /// Benchmark the service against the in-database baseline and the zstd CLI on the same files.
    #[cfg(feature = "bench")]
    Bench(BenchArgs),
    /// The in-database baseline of `bench`, run in its own process.
    #[cfg(feature = "bench")]
    #[command(hide = true)]
    BenchBaseline {
        #[arg(long)]
        out_dir: PathBuf,
        #[arg(long)]
        level: i32,
        #[arg(long)]
        shards: usize,
        files: Vec<PathBuf>,
    },
    /// PostgreSQL's archive_command: push one WAL file (%p); exits 0 once it is durable.
    ArchivePush(ArchivePushArgs),
    /// PostgreSQL's restore_command: fetch file %f into %p; exits 1 if the archive does not have it.
    ArchiveGet(ArchiveGetArgs),
    /// Write deterministic JSON-lines WAL segments (wal-<id>.log) for trying things out.
    Generate {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 10)]
        segments: u64,
        /// Bytes per segment (whole lines, so slightly more).
        #[arg(long, default_value_t = 1 << 20)]
        size: usize,
        #[arg(long, default_value_t = 1)]
        first_id: u64,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
}

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Print the configuration serve would run with (no secrets) and check it: exits 1 naming every problem.
    Check(Box<ConfigCheckArgs>),
}

#[derive(Args)]
#[command(
    after_help = "Reads the configuration as serve does: FILE, then WAL_ARCHIVER_<KEY> variables, then flags. \
Also checks that the tokens file, the TLS files and the S3 key files can be used."
)]
pub struct ConfigCheckArgs {
    /// TOML config file (serve's --config).
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub flags: ConfigFlags,
}

#[derive(Args)]
pub struct ClientArgs {
    /// Server URL.
    #[arg(long, env = "WAL_ARCHIVER_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Bearer token, when the server has a tokens file.
    #[arg(long, env = "WAL_ARCHIVER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM CA of the server's certificate (TLS; use an https:// URL).
    #[arg(long, env = "WAL_ARCHIVER_CA")]
    pub ca: Option<PathBuf>,
    /// PEM client certificate, when the server verifies clients.
    #[arg(long, env = "WAL_ARCHIVER_CERT", requires = "key")]
    pub cert: Option<PathBuf>,
    /// PEM key of the client certificate.
    #[arg(long, env = "WAL_ARCHIVER_KEY", requires = "cert")]
    pub key: Option<PathBuf>,
}

#[derive(Args)]
#[command(
    after_help = "Each --flag sets the config key of the same name (dashes for underscores); \
values come from defaults, then --config FILE, then WAL_ARCHIVER_<KEY> variables, then flags; an unknown \
WAL_ARCHIVER_* variable is refused. Sizes take units (64KiB, 512MiB, 1GiB) and durations too (30s, 5m, 250ms). \
`wal-archiver config check` prints what serve would run with. See the configuration table in README.md."
)]
pub struct ServeArgs {
    /// TOML config file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub flags: ConfigFlags,
}

#[derive(Args)]
pub struct PushArgs {
    /// The shard the segments belong to.
    #[arg(long)]
    pub shard: u32,
    /// The segment's log id (with FILE).
    #[arg(long, requires = "file", conflicts_with_all = ["wal_dir", "up_to"])]
    pub log_id: Option<u64>,
    /// The segment file.
    #[arg(requires = "log_id")]
    pub file: Option<PathBuf>,
    /// Push every wal-<id>.log of this directory with id below --up-to.
    #[arg(long, requires = "up_to")]
    pub wal_dir: Option<PathBuf>,
    /// Push the files whose log id is below this one.
    #[arg(long, requires = "wal_dir")]
    pub up_to: Option<u64>,
    /// Wait until each job is ARCHIVED.
    #[arg(long)]
    pub wait: bool,
    /// With --wal-dir: delete the files once every one is ARCHIVED (implies --wait).
    #[arg(long, requires = "wal_dir")]
    pub delete: bool,
    /// raw (opaque bytes) or json-lines (every non-empty line must be a JSON object).
    #[arg(long, default_value = "raw", value_parser = parse_kind)]
    pub kind: ContentKind,
    /// Reply only once the archive is durable, instead of once the bytes are spooled.
    #[arg(long)]
    pub ack_archived: bool,
    /// zstd level (server default when unset).
    #[arg(long)]
    pub level: Option<i32>,
    /// Segments streamed at once with --wal-dir.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `archive_command = 'wal-archiver archive-push --shard 1 %p'` (docs/POSTGRESQL.md).
#[derive(Args)]
pub struct ArchivePushArgs {
    /// The shard that stands for this PostgreSQL cluster.
    #[arg(long)]
    pub shard: u32,
    /// The file PostgreSQL archives (%p); its name decides its log_id.
    pub path: PathBuf,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `restore_command = 'wal-archiver archive-get --shard 1 %f %p'` (docs/POSTGRESQL.md).
#[derive(Args)]
pub struct ArchiveGetArgs {
    /// The shard that stands for this PostgreSQL cluster.
    #[arg(long)]
    pub shard: u32,
    /// The file PostgreSQL asks for (%f).
    pub name: String,
    /// Where PostgreSQL wants it (%p).
    pub destination: PathBuf,
    /// Seconds to wait for a file that was pushed but is not archived yet.
    #[arg(long, default_value_t = 120)]
    pub wait_timeout: u64,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `HEALTHCHECK CMD wal-archiver health` (deploy/Dockerfile), or a Kubernetes exec probe.
#[derive(Args)]
pub struct HealthArgs {
    /// Seconds to wait for the answer, connecting included: a probe never hangs.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: u64,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Args)]
pub struct BenchArgs {
    /// Generated WAL, outputs and the server's data dir go here (reused across runs).
    #[arg(long, default_value = "bench-work")]
    pub work_dir: PathBuf,
    /// Segments of each small workload (raw and JSON lines).
    #[arg(long, default_value_t = 10)]
    pub segments: u64,
    /// MiB per segment.
    #[arg(long, default_value_t = 10)]
    pub segment_mib: usize,
    /// MiB of the single large segment; 0 skips it.
    #[arg(long, default_value_t = 1024)]
    pub big_mib: usize,
    /// Shard counts to run the JSON-lines segments with, each pushing every segment.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    pub shards: Vec<usize>,
    #[arg(long, default_value_t = 3)]
    pub level: i32,
    /// Segments a shard streams to the service at once.
    #[arg(long, default_value_t = 2)]
    pub concurrency: usize,
    /// Real PostgreSQL WAL segments (*.zst) the raw workload is cut from.
    #[arg(long, default_value = "tests/data/postgres-wal")]
    pub corpus: PathBuf,
    /// Runs of each small-segment restore, reported by their median.
    #[arg(long, default_value_t = 5)]
    pub restore_runs: usize,
    /// Also run every service workload against a Garage (S3) started with --garage-script.
    #[arg(long)]
    pub s3: bool,
    /// Starts and stops the Garage of --s3 (`start DIR` prints its environment).
    #[arg(long, default_value = "../shared/tools/garage-dev.sh")]
    pub garage_script: PathBuf,
    /// Markdown file whose results block is replaced (analysis around it is kept).
    #[arg(long, default_value = "BENCHMARKS.md")]
    pub out: PathBuf,
    /// SVG chart of the throughputs.
    #[arg(long, default_value = "docs/benchmark.svg")]
    pub chart: PathBuf,
    /// A small run (4 × 1 MiB raw and JSON, 1 and 4 shards, one 16 MiB segment) that writes no files.
    #[arg(long)]
    pub quick: bool,
    /// Instead: GetShard and push-ack latency with this many archived jobs on one shard, against an empty database.
    #[arg(long, value_name = "JOBS")]
    pub history: Option<u64>,
}

#[derive(Args)]
pub struct ListArgs {
    /// Only this shard's jobs.
    #[arg(long)]
    pub shard: Option<u32>,
    /// Only jobs in this state.
    #[arg(long, value_parser = state_parser(), ignore_case = true)]
    pub state: Option<JobState>,
    /// Only jobs with a log_id at least this.
    #[arg(long)]
    pub log_id_min: Option<u64>,
    /// Only jobs with a log_id at most this.
    #[arg(long)]
    pub log_id_max: Option<u64>,
    /// At most this many jobs (all pages are fetched up to it); a note on stderr says when more match.
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
    /// Every matching job, however many.
    #[arg(long, conflicts_with = "limit")]
    pub all: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub fn parse_kind(text: &str) -> Result<ContentKind, String> {
    text.parse()
}

/// Job states as `--state` takes them (in any case), listed by `--help`.
fn state_parser() -> impl clap::builder::TypedValueParser<Value = JobState> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(JobState::ALL.map(JobState::as_str))
        .map(|name| name.parse::<JobState>().expect("a listed state"))
}
