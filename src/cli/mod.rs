//! The `wal-archiver` command: parse arguments, call the library, print, exit.
//! `args` declares every subcommand; `remote` runs the ones that talk to a
//! server, `local` the ones that do not, `serve` the server itself; `output`
//! formats what they print.

mod args;
mod config;
mod health;
mod local;
mod output;
mod postgres;
mod remote;
mod serve;

use std::process::ExitCode;

use clap::Parser;

use args::{Cli, Command, ConfigCommand};
use wal_archiver::client::ClientError;

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Not for `health` either: a probe must exit 0 or 1, never die of SIGPIPE
    // (a plaintext probe of a TLS port has its connection closed under it).
    if !matches!(
        cli.command,
        Command::Serve(_) | Command::Reindex(_) | Command::Health(_)
    ) {
        // A client command piped into `head` should end quietly, as CLI tools do.
        // SAFETY: setting a signal disposition before any thread is started.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    if matches!(cli.command, Command::Serve(_)) {
        serve::limit_malloc_arenas();
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
                Some(ClientError::Rpc(status)) => eprintln!(
                    "error: {}: {}",
                    wal_archiver::service::code_name(status.code()),
                    status.message()
                ),
                _ => eprintln!("error: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve(args) => serve::serve(*args).await,
        Command::Reindex(args) => serve::reindex(*args).await,
        Command::Config {
            command: ConfigCommand::Check(args),
        } => config::check(*args),
        Command::Push(args) => remote::push(args).await,
        Command::Status { job, client } => remote::status(job, &client).await,
        Command::List(args) => remote::list(args).await,
        Command::Watch { job, client } => remote::watch(job, &client).await,
        Command::Cancel { job, client } => remote::cancel(job, &client).await,
        Command::Shard { shard, client } => remote::shard(shard, &client).await,
        Command::Info { client } => remote::info(&client).await,
        Command::Resolve {
            shard,
            log_id,
            reason,
            client,
        } => remote::resolve(shard, log_id, &reason, &client).await,
        Command::Health(args) => health::health(args).await,
        Command::Restore {
            shard,
            log_id,
            output,
            client,
        } => remote::restore(shard, log_id, &output, &client).await,
        Command::Verify { shard, client } => remote::verify(shard, &client).await,
        Command::ArchivePush(args) => postgres::archive_push(args).await,
        Command::ArchiveGet(args) => postgres::archive_get(args).await,
        Command::Inspect {
            archive,
            verify,
            json,
        } => local::inspect(&archive, verify, json),
        #[cfg(feature = "bench")]
        Command::Bench(args) => local::bench(args).await,
        #[cfg(feature = "bench")]
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
        } => local::generate(&dir, segments, size, first_id, seed),
    }
}
