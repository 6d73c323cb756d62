//! `wal-archiver serve`: load the configuration, set up logging and signals,
//! and run the service until SIGTERM or SIGINT.

use std::process::ExitCode;

use anyhow::Context;

use super::args::ServeArgs;
use wal_archiver::config::{Config, LogFormat};

pub async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(args.config.as_deref(), std::env::vars(), &args.flags)?;
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
