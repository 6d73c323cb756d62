//! The `wal-archiver` command: parse arguments, call the library, print, exit.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use futures::StreamExt;
use serde::Serialize;

use wal_archiver::archive::{ArchiveReader, read_metadata};
use wal_archiver::client::{
    Client, ClientError, Connection, DEFAULT_SERVER, DirOptions, Progress, PushOptions,
};
use wal_archiver::config::{Config, LogFormat};
use wal_archiver::proto;
use wal_archiver::types::{AckLevel, ContentKind, Job, JobState, ShardStatus};

#[derive(Parser)]
#[command(
    name = "wal-archiver",
    version,
    about = "Archive database write-ahead-log segments: a gRPC service and its client"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the archiving service.
    Serve(Box<ServeArgs>),
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
    /// Show a shard's queue, counters and archived watermark.
    Shard {
        shard: u32,
        #[command(flatten)]
        client: ClientArgs,
    },
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
    Bench(BenchArgs),
    /// The in-database baseline of `bench`, run in its own process.
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

#[derive(Args)]
struct ClientArgs {
    /// Server URL.
    #[arg(long, env = "WAL_ARCHIVER_SERVER", default_value = DEFAULT_SERVER)]
    server: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Bearer token, when the server has a tokens file.
    #[arg(long, env = "WAL_ARCHIVER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// PEM CA of the server's certificate (TLS; use an https:// URL).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// PEM client certificate, when the server verifies clients.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// PEM key of the client certificate.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
}

/// Every flag overrides the config key of the same name; the README's
/// configuration table says what each one means and its default.
#[derive(Args, Serialize)]
#[command(
    after_help = "Each --flag sets the config key of the same name (dashes for underscores); \
values come from defaults, then --config FILE, then WAL_ARCHIVER_<KEY> variables, then flags. \
See the configuration table in README.md."
)]
struct ServeArgs {
    /// TOML config file.
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    archive_parallelism: Option<u32>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    archive_queue_size: Option<u32>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    compression_level: Option<i32>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_segment_size: Option<u64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_chunk_size: Option<u32>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    min_free_bytes: Option<u64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_concurrent_uploads: Option<u32>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_json_line_size: Option<u64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    shutdown_grace: Option<u64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    multithread_min_size: Option<u64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    worker_nice: Option<i32>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    log_format: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_cert: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_key: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_client_ca: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    tokens_file: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics_listen: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    retain_days: Option<u64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    retain_count: Option<u64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    retention_interval: Option<u64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    unary_timeout_ms: Option<u64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_concurrent_requests: Option<u64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_streams_per_connection: Option<u32>,
    /// Allow a non-loopback listen address without a tokens file.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    allow_unauthenticated: bool,
}

#[derive(Args)]
struct PushArgs {
    /// The shard the segments belong to.
    #[arg(long)]
    shard: u32,
    /// The segment's log id (with FILE).
    #[arg(long, requires = "file", conflicts_with_all = ["wal_dir", "up_to"])]
    log_id: Option<u64>,
    /// The segment file.
    #[arg(requires = "log_id")]
    file: Option<PathBuf>,
    /// Push every wal-<id>.log of this directory with id below --up-to.
    #[arg(long, requires = "up_to")]
    wal_dir: Option<PathBuf>,
    /// Push the files whose log id is below this one.
    #[arg(long, requires = "wal_dir")]
    up_to: Option<u64>,
    /// Wait until each job is ARCHIVED.
    #[arg(long)]
    wait: bool,
    /// With --wal-dir: delete the files once every one is ARCHIVED (implies --wait).
    #[arg(long, requires = "wal_dir")]
    delete: bool,
    /// raw (opaque bytes) or json-lines (every non-empty line must be a JSON object).
    #[arg(long, default_value = "raw", value_parser = parse_kind)]
    kind: ContentKind,
    /// Reply only once the archive is durable, instead of once the bytes are spooled.
    #[arg(long)]
    ack_archived: bool,
    /// zstd level (server default when unset).
    #[arg(long)]
    level: Option<i32>,
    /// Segments streamed at once with --wal-dir.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args)]
struct BenchArgs {
    /// Generated WAL, outputs and the server's data dir go here (reused across runs).
    #[arg(long, default_value = "bench-work")]
    work_dir: PathBuf,
    #[arg(long, default_value_t = 10)]
    segments: u64,
    /// MiB per segment.
    #[arg(long, default_value_t = 10)]
    segment_mib: usize,
    /// MiB of the single large segment; 0 skips it.
    #[arg(long, default_value_t = 1024)]
    big_mib: usize,
    /// Shard counts to run the segments with, each pushing every segment.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    shards: Vec<usize>,
    #[arg(long, default_value_t = 3)]
    level: i32,
    /// Segments a shard streams to the service at once.
    #[arg(long, default_value_t = 2)]
    concurrency: usize,
    /// Markdown file whose results block is replaced (analysis around it is kept).
    #[arg(long, default_value = "BENCHMARKS.md")]
    out: PathBuf,
    /// SVG chart of the throughputs.
    #[arg(long, default_value = "docs/benchmark.svg")]
    chart: PathBuf,
    /// A small run (4 × 1 MiB, 1 and 4 shards, one 16 MiB segment) that writes no files.
    #[arg(long)]
    quick: bool,
}

#[derive(Args)]
struct ListArgs {
    #[arg(long)]
    shard: Option<u32>,
    #[arg(long, value_parser = parse_state)]
    state: Option<JobState>,
    #[arg(long)]
    log_id_min: Option<u64>,
    #[arg(long)]
    log_id_max: Option<u64>,
    /// At most this many jobs (all pages are fetched up to it).
    #[arg(long, default_value_t = 1000)]
    limit: usize,
    #[command(flatten)]
    client: ClientArgs,
}

fn parse_kind(text: &str) -> Result<ContentKind, String> {
    text.parse()
}

fn parse_state(text: &str) -> Result<JobState, String> {
    text.parse()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_) | Command::Bench(_)) {
        // A client command piped into `head` should end quietly, as CLI tools do.
        // SAFETY: setting a signal disposition before any thread is started.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            match e.downcast_ref::<ClientError>() {
                Some(ClientError::Rpc(status)) => {
                    eprintln!(
                        "error: {}: {}",
                        wal_archiver::service::code_name(status.code()),
                        status.message()
                    )
                }
                _ => eprintln!("error: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve(args) => serve(*args).await,
        Command::Push(args) => push(args).await,
        Command::Status { job, client } => {
            let found = connect(&client).await?.job(job).await?;
            print_job(&found, client.json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::List(args) => list(args).await,
        Command::Watch { job, client } => {
            let states = connect(&client).await?.watch(job).await?;
            let mut states = Box::pin(states);
            let mut last = None;
            while let Some(state) = states.next().await {
                let state = state?;
                print_job(&state, client.json)?;
                last = Some(state.state);
            }
            Ok(exit_for(last == Some(JobState::Archived)))
        }
        Command::Cancel { job, client } => {
            let cancelled = connect(&client).await?.cancel(job).await?;
            print_job(&cancelled, client.json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Shard { shard, client } => {
            let status = connect(&client).await?.shard(shard).await?;
            print_shard(&status, client.json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Restore {
            shard,
            log_id,
            output,
            client,
        } => {
            let connected = connect(&client).await?;
            let bar = progress_bar(None, "restoring");
            let written = if output == Path::new("-") {
                connected
                    .restore_to(shard, log_id, &mut tokio::io::stdout(), bar.progress())
                    .await?
            } else {
                connected
                    .restore_to_file(shard, log_id, &output, bar.progress())
                    .await?
            };
            bar.finish();
            if output != Path::new("-") {
                eprintln!(
                    "restored {written} bytes of shard {shard} log_id {log_id} to {}",
                    output.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Inspect {
            archive,
            verify,
            json,
        } => inspect(&archive, verify, json),
        Command::Bench(args) => bench(args).await,
        Command::Verify { shard, client } => {
            let report = connect(&client).await?.verify(shard).await?;
            if client.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "checked {} archives ({} bytes): {} problems, {} gaps",
                    report.archives_checked,
                    report.bytes_checked,
                    report.problems.len(),
                    report.gaps.len()
                );
                for p in &report.problems {
                    println!(
                        "shard {} log_id {} (job {}): {}",
                        p.shard_id, p.log_id, p.job_id, p.problem
                    );
                }
                for g in &report.gaps {
                    println!(
                        "shard {}: no archive for log_ids {}..={}",
                        g.shard_id, g.first_missing, g.last_missing
                    );
                }
            }
            Ok(exit_for(
                report.problems.is_empty() && report.gaps.is_empty(),
            ))
        }
        Command::BenchBaseline {
            out_dir,
            level,
            shards,
            files,
        } => {
            wal_archiver::bench::baseline(&files, &out_dir, level, shards)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Generate {
            dir,
            segments,
            size,
            first_id,
            seed,
        } => {
            let paths = wal_archiver::walgen::write_wal_dir(&dir, segments, size, first_id, seed)
                .with_context(|| format!("writing segments to {}", dir.display()))?;
            println!("wrote {} segments to {}", paths.len(), dir.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    use wal_archiver::bench::BenchOptions;
    let options = if args.quick {
        BenchOptions {
            work_dir: args.work_dir,
            segments: 4,
            segment_size: 1 << 20,
            big_segment_size: 16 << 20,
            shard_counts: vec![1, 4],
            level: args.level,
            concurrency: args.concurrency,
            markdown: None,
            chart: None,
        }
    } else {
        BenchOptions {
            work_dir: args.work_dir,
            segments: args.segments,
            segment_size: args.segment_mib << 20,
            big_segment_size: args.big_mib << 20,
            shard_counts: args.shards,
            level: args.level,
            concurrency: args.concurrency,
            markdown: Some(args.out),
            chart: Some(args.chart),
        }
    };
    wal_archiver::bench::run(options).await?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let flags = toml::Table::try_from(&args).context("command-line flags")?;
    let config = Config::load(args.config.as_deref(), std::env::vars(), flags)?;
    init_tracing(config.log_format);
    // Install the handlers now, not when the future is first polled: a
    // SIGTERM that arrives before then would kill the process outright
    // instead of draining it.
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("watching SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("watching SIGINT")?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = interrupt.recv() => tracing::info!("SIGINT received"),
        }
    };
    wal_archiver::service::serve(config, shutdown, |addr| {
        // Scripts and tests read this line to learn the port (useful with port 0).
        println!("wal-archiver listening on {addr}");
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn push(args: PushArgs) -> anyhow::Result<ExitCode> {
    let client = connect(&args.client).await?;
    let mut options = PushOptions {
        kind: args.kind,
        ack: if args.ack_archived {
            AckLevel::Archived
        } else {
            AckLevel::Queued
        },
        zstd_level: args.level,
        ..PushOptions::default()
    };
    if let (Some(log_id), Some(file)) = (args.log_id, &args.file) {
        let size = std::fs::metadata(file)
            .with_context(|| format!("reading {}", file.display()))?
            .len();
        let bar = progress_bar(Some(size), "pushing");
        options.progress = bar.progress();
        let pushed = client.push_file(args.shard, log_id, file, &options).await?;
        bar.finish();
        let job = if args.wait {
            client.wait(pushed.job.id).await?
        } else {
            pushed.job
        };
        if args.client.json {
            println!(
                "{}",
                serde_json::json!({ "job": job, "deduplicated": pushed.deduplicated })
            );
        } else {
            let note = if pushed.deduplicated {
                " (already pushed)"
            } else {
                ""
            };
            println!("{}{note}", job_line(&job));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let (Some(dir), Some(up_to)) = (&args.wal_dir, args.up_to) else {
        anyhow::bail!("give either --log-id and FILE, or --wal-dir and --up-to");
    };
    let dir_options = DirOptions {
        wait: args.wait,
        delete: args.delete,
        concurrency: args.concurrency,
    };
    let report = client
        .push_wal_dir(args.shard, dir, up_to, &options, dir_options)
        .await?;
    if args.client.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        for (_, job) in &report.pushed {
            println!("{}", job_line(job));
        }
        for (log_id, error) in &report.failed {
            println!("log_id {log_id}: FAILED: {error}");
        }
        for path in &report.deleted {
            println!("deleted {}", path.display());
        }
        if args.delete && report.deleted.is_empty() && !report.pushed.is_empty() {
            println!("nothing deleted: not every segment was archived");
        }
    }
    Ok(exit_for(report.failed.is_empty()))
}

async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let client = connect(&args.client).await?;
    let mut jobs = Vec::new();
    let mut token = String::new();
    while jobs.len() < args.limit {
        let request = proto::ListJobsRequest {
            shard_id: args.shard,
            state: args
                .state
                .map(|s| wal_archiver::api::job_state(s) as i32)
                .unwrap_or(0),
            log_id_min: args.log_id_min,
            log_id_max: args.log_id_max,
            page_size: (args.limit - jobs.len()).min(1000) as u32,
            page_token: token.clone(),
        };
        let (page, next) = client.list(request).await?;
        jobs.extend(page);
        match next {
            Some(next) => token = next,
            None => break,
        }
    }
    if args.client.json {
        println!("{}", serde_json::to_string(&jobs)?);
    } else {
        for job in &jobs {
            println!("{}", job_line(job));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn inspect(path: &Path, verify: bool, json: bool) -> anyhow::Result<ExitCode> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let metadata = if verify {
        let mut reader = ArchiveReader::open(file)?;
        reader.copy_to(&mut std::io::sink())?;
        reader.metadata()
    } else {
        read_metadata(file)?
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&metadata)?);
    } else {
        let h = &metadata.header;
        println!("format version   {}", h.format_version);
        println!("shard / log_id   {} / {}", h.shard_id, h.log_id);
        println!("content kind     {}", h.content_kind.as_str());
        println!("original size    {} bytes", h.original_size);
        println!(
            "compressed size  {} bytes (archive file {} bytes)",
            metadata.compressed_size, metadata.archive_size
        );
        println!("sha256           {}", h.sha256);
        println!("zstd level       {}", h.zstd_level);
        println!("created (unix ms) {}", h.created_unix_ms);
        if let Some(stats) = &metadata.json {
            println!("json entries     {}", stats.entries);
            if let (Some(first), Some(last)) = (stats.first_timestamp, stats.last_timestamp) {
                println!("timestamps       {first} .. {last}");
            }
        }
        if verify {
            println!("verified         SHA-256 matches");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn connect(args: &ClientArgs) -> Result<Client, ClientError> {
    Client::connect_with(&Connection {
        url: args.server.clone(),
        ca: args.ca.clone(),
        cert: args.cert.clone(),
        key: args.key.clone(),
        token: args.token.clone(),
    })
    .await
}

fn exit_for(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn print_job(job: &Job, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(job)?);
    } else {
        println!("{}", job_line(job));
    }
    Ok(())
}

fn job_line(job: &Job) -> String {
    let mut line = format!(
        "job {} shard {} log_id {} {} size {}",
        job.id,
        job.shard_id,
        job.log_id,
        job.state,
        job.size.unwrap_or(0)
    );
    if let Some(archive) = job.archive_size {
        line.push_str(&format!(" archive {archive}"));
    }
    if !job.reason.is_empty() {
        line.push_str(&format!(" reason: {}", job.reason));
    }
    line
}

fn print_shard(status: &ShardStatus, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(status)?);
        return Ok(());
    }
    let watermark = status
        .archived_watermark
        .map_or_else(|| "none".to_owned(), |w| w.to_string());
    println!("shard {}", status.shard_id);
    println!("  archived watermark  {watermark}");
    println!(
        "  receiving / queued / compressing  {} / {} / {}",
        status.receiving, status.queued, status.running
    );
    println!(
        "  archived / failed   {} / {}",
        status.archived, status.failed
    );
    println!(
        "  bytes in / out      {} / {}",
        status.bytes_in, status.bytes_out
    );
    Ok(())
}

/// A progress bar on stderr when it is a terminal; silent otherwise.
struct Bar(Option<indicatif::ProgressBar>);

fn progress_bar(total: Option<u64>, what: &'static str) -> Bar {
    if !std::io::stderr().is_terminal() {
        return Bar(None);
    }
    let bar = match total {
        Some(total) => indicatif::ProgressBar::new(total),
        None => indicatif::ProgressBar::new_spinner(),
    };
    let style = indicatif::ProgressStyle::with_template(
        "{msg} {bytes}/{total_bytes} {bytes_per_sec} {wide_bar}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(what);
    Bar(Some(bar))
}

impl Bar {
    fn progress(&self) -> Option<Progress> {
        let bar = self.0.clone()?;
        Some(std::sync::Arc::new(move |done| bar.set_position(done)))
    }

    fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}
