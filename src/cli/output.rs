//! How the CLI prints jobs and shards (text or `--json`), and its progress bar.

use std::io::IsTerminal;
use std::process::ExitCode;

use wal_archiver::client::Progress;
use wal_archiver::types::{Job, ShardStatus};

pub fn exit_for(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

pub fn print_job(job: &Job, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(job)?);
    } else {
        println!("{}", job_line(job));
    }
    Ok(())
}

pub fn job_line(job: &Job) -> String {
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

pub fn print_shard(status: &ShardStatus, json: bool) -> anyhow::Result<()> {
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
pub struct Bar(Option<indicatif::ProgressBar>);

pub fn progress_bar(total: Option<u64>, what: &'static str) -> Bar {
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
    pub fn progress(&self) -> Option<Progress> {
        let bar = self.0.clone()?;
        Some(std::sync::Arc::new(move |done| bar.set_position(done)))
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}
