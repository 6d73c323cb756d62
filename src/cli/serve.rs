//! `wal-archiver serve`: load the configuration, set up logging and signals,
//! and run the service until SIGTERM or SIGINT.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use tokio::signal::unix::{Signal, SignalKind, signal};

use super::args::ServeArgs;
use wal_archiver::config::{Config, LogFormat};

/// glibc malloc arenas the server allocates from. By default glibc gives a
/// thread that meets contention an arena of its own (up to 8 per core) and
/// each arena keeps the buffers freed into it resident, so the upload buffers
/// are held once per thread that ever freed them: 16 shards pushing peaked at
/// 70-80 MiB with the default, 65-75 with two arenas, 57-62 with one; the
/// server's CPU moved within this VM's noise (BENCHMARKS.md, "Memory at 16
/// shards").
const MALLOC_ARENAS: libc::c_int = 1;

/// Caps glibc's malloc arenas; call before any thread is started. An
/// operator's own `MALLOC_ARENA_MAX` or `GLIBC_TUNABLES` wins.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let set_by_operator = std::env::var_os("MALLOC_ARENA_MAX").is_some()
            || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("arena_max"));
        if !set_by_operator {
            // SAFETY: mallopt only sets a parameter of the allocator; no
            // thread of ours is running yet.
            unsafe { libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS) };
        }
    }
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(args.config.as_deref(), std::env::vars(), &args.flags)?;
    init_tracing(config.log_format);
    tracing::info!(
        config = %serde_json::to_string(&config.redacted())?,
        "effective configuration (secrets are not in it: tokens and S3 keys stay in their files)"
    );
    let log_format = config.log_format; // Install the handlers now, not when the future is first polled: a
    // signal that arrives before then would kill the process outright
    // instead of draining it (SIGHUP's default action is to die, too).
    let mut term = signal(SignalKind::terminate()).context("watching SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("watching SIGINT")?;
    let hangup = signal(SignalKind::hangup()).context("watching SIGHUP")?;
    tokio::spawn(log_hangups(hangup, config.tokens_file.is_some()));
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received: draining"),
            _ = interrupt.recv() => tracing::info!("SIGINT received: draining"),
        }
        // A second signal means: stop now. Acknowledged work is durable
        // (as after a crash); running compressions start over at the next start.
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = interrupt.recv() => {}
            }
            tracing::warn!(
                "second signal: stopping at once; running compressions resume at the next start"
            );
            std::process::exit(1);
        });
    };
    wal_archiver::service::serve(config, shutdown, |addr| {
        // Scripts and tests read this line to learn the port (useful with port 0).
        println!(
            "{}",
            wal_archiver::service::listening_line(addr, log_format)
        );
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}

/// `wal-archiver reindex`: the same configuration as `serve`, the server stopped.
pub async fn reindex(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(args.config.as_deref(), std::env::vars(), &args.flags)?;
    init_tracing(config.log_format);
    let report = tokio::task::spawn_blocking(move || {
        let store = wal_archiver::service::open_store(&config)?;
        Ok::<_, anyhow::Error>(wal_archiver::engine::Archiver::reindex(
            &config,
            store.as_ref(),
        )?)
    })
    .await??;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(if report.unreadable.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// SIGHUP reloads what is reloadable (the tokens file, whose watcher acts on
/// it too) and never kills.
async fn log_hangups(mut hangup: Signal, has_tokens: bool) {
    while hangup.recv().await.is_some() {
        if has_tokens {
            tracing::info!("SIGHUP received: reloading the tokens file");
        } else {
            tracing::info!("SIGHUP received: nothing to reload (no tokens_file)");
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal, never into a file or a pipe.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
