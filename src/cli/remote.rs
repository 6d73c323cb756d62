//! Subcommands that talk to a server through the client library.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use futures::StreamExt;

use super::args::{ClientArgs, ListArgs, PushArgs};
use super::output::{exit_for, job_line, print_job, print_shard, print_shards, progress_bar};
use wal_archiver::client::{Client, ClientError, Connection, DirOptions, PushOptions};
use wal_archiver::types::{AckLevel, JobFilter, JobId, JobState, ShardId};

pub async fn push(args: PushArgs) -> anyhow::Result<ExitCode> {
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
        if report.pushed.is_empty() && report.failed.is_empty() {
            eprintln!(
                "nothing to push: no wal-<log_id>.log below log_id {up_to} in {}",
                dir.display()
            );
        }
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

pub async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let client = connect(&args.client).await?;
    let mut jobs = Vec::new();
    let mut filter = JobFilter {
        shard_id: args.shard,
        state: args.state,
        log_id_min: args.log_id_min,
        log_id_max: args.log_id_max,
        after: None,
        limit: 0,
    };
    let limit = if args.all { usize::MAX } else { args.limit };
    let mut more = false;
    while jobs.len() < limit {
        filter.limit = limit - jobs.len();
        let (page, next) = client.list(&filter).await?;
        jobs.extend(page);
        match next {
            Some(next) => filter.after = Some(next),
            None => break,
        }
        if jobs.len() == limit {
            // A full last page: ask for one more to know whether it was cut.
            filter.limit = 1;
            more = !client.list(&filter).await?.0.is_empty();
        }
    }
    if more {
        // On stderr, so --json output stays one document.
        eprintln!(
            "note: the first {} jobs shown; more match (--limit N for more, --all for every one)",
            jobs.len()
        );
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

pub async fn status(job: u64, client: &ClientArgs) -> anyhow::Result<ExitCode> {
    let found = connect(client).await?.job(JobId(job)).await?;
    print_job(&found, client.json)?;
    Ok(ExitCode::SUCCESS)
}

pub async fn watch(job: u64, client: &ClientArgs) -> anyhow::Result<ExitCode> {
    let mut states = Box::pin(connect(client).await?.watch(JobId(job)).await?);
    let mut last = None;
    while let Some(state) = states.next().await {
        let state = state?;
        print_job(&state, client.json)?;
        last = Some(state.state);
    }
    Ok(exit_for(last == Some(JobState::Archived)))
}

pub async fn cancel(job: u64, client: &ClientArgs) -> anyhow::Result<ExitCode> {
    let cancelled = connect(client).await?.cancel(JobId(job)).await?;
    print_job(&cancelled, client.json)?;
    Ok(ExitCode::SUCCESS)
}

pub async fn shard(shard: ShardId, client: &ClientArgs) -> anyhow::Result<ExitCode> {
    let status = connect(client).await?.shard(shard).await?;
    print_shard(&status, client.json)?;
    Ok(ExitCode::SUCCESS)
}

pub async fn info(client: &ClientArgs) -> anyhow::Result<ExitCode> {
    let shards = connect(client).await?.shards().await?;
    print_shards(&shards, client.json)?;
    Ok(ExitCode::SUCCESS)
}

pub async fn resolve(
    shard: ShardId,
    log_id: u64,
    reason: &str,
    client: &ClientArgs,
) -> anyhow::Result<ExitCode> {
    let resolution = connect(client)
        .await?
        .resolve(shard, log_id, reason)
        .await?;
    if client.json {
        println!("{}", serde_json::to_string(&resolution)?);
    } else {
        println!(
            "shard {} log_id {} resolved by {:?}: {}",
            resolution.shard_id, resolution.log_id, resolution.by, resolution.reason
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn restore(
    shard: ShardId,
    log_id: u64,
    output: &Path,
    client: &ClientArgs,
) -> anyhow::Result<ExitCode> {
    let connected = connect(client).await?;
    let bar = progress_bar(None, "restoring");
    let to_stdout = output == Path::new("-");
    let written = if to_stdout {
        connected
            .restore_to(shard, log_id, &mut tokio::io::stdout(), bar.progress())
            .await?
    } else {
        connected
            .restore_to_file(shard, log_id, output, bar.progress())
            .await?
    };
    bar.finish();
    if !to_stdout {
        eprintln!(
            "restored {written} bytes of shard {shard} log_id {log_id} to {}",
            output.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn verify(shard: Option<ShardId>, client: &ClientArgs) -> anyhow::Result<ExitCode> {
    let report = connect(client).await?.verify(shard).await?;
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
        for r in &report.resolved {
            println!(
                "shard {} log_id {}: resolved by {:?} (not archived, given up): {}",
                r.shard_id, r.log_id, r.by, r.reason
            );
        }
    }
    Ok(exit_for(
        report.problems.is_empty() && report.gaps.is_empty(),
    ))
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
