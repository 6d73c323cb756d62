//! How the CLI prints jobs and shards (text or `--json`), and its progress bar.

use std::io::IsTerminal;
use std::process::ExitCode;

use wal_archiver::client::Progress;
use wal_archiver::types::{Blocker, FailureClass, Job, ShardStatus, now_unix_ms};

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
    match job.failure_class {
        Some(FailureClass::Retryable) => line.push_str(" (retryable)"),
        Some(FailureClass::Permanent) => line.push_str(" (permanent)"),
        None => {}
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
    println!("  archived watermark  {watermark}: WAL at or below it may be deleted");
    match &status.held_by {
        Some(blocker) => println!("  held by             {}", describe_blocker(blocker)),
        None => println!("  held by             nothing: every submitted segment is archived"),
    }
    println!(
        "  receiving / queued / compressing  {} / {} / {}",
        status.receiving, status.queued, status.running
    );
    println!(
        "  archived / failed segments / resolved   {} / {} / {}",
        status.archived, status.failed_segments, status.resolved
    );
    println!(
        "  last archived       {}",
        ago(status.last_archived_unix_ms)
    );
    println!(
        "  bytes in / out      {} / {}",
        status.bytes_in, status.bytes_out
    );
    Ok(())
}

/// Every shard, one line each: what an operator scans for what is stuck.
pub fn print_shards(shards: &[ShardStatus], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(shards)?);
        return Ok(());
    }
    println!(
        "{:>6}  {:>10}  {:>6}  {:>6}  {:>14}  held by",
        "shard", "watermark", "queued", "failed", "last archived"
    );
    for s in shards {
        let watermark = s
            .archived_watermark
            .map_or_else(|| "none".into(), |w| w.to_string());
        let held = s
            .held_by
            .as_ref()
            .map_or_else(|| "-".into(), describe_blocker);
        println!(
            "{:>6}  {:>10}  {:>6}  {:>6}  {:>14}  {held}",
            s.shard_id,
            watermark,
            s.queued + s.receiving + s.running,
            s.failed_segments,
            ago(s.last_archived_unix_ms)
        );
    }
    if shards.is_empty() {
        println!("(no shard has pushed a segment yet)");
    }
    Ok(())
}

/// `log_id 13 for 2h05m: job 88 FAILED (permanent): <reason>`.
fn describe_blocker(b: &Blocker) -> String {
    let waiting = format!("log_id {} for {}", b.log_id, age_since(b.since_unix_ms));
    let Some(job) = b.job_id else {
        return format!("{waiting}: {}", b.reason);
    };
    let state = b.state.map_or_else(String::new, |s| s.to_string());
    let class = match b.failure_class {
        Some(FailureClass::Retryable) => " (retryable: push it again)",
        Some(FailureClass::Permanent) => " (permanent: fix the cause or resolve it)",
        None => "",
    };
    let reason = if b.reason.is_empty() {
        String::new()
    } else {
        format!(": {}", b.reason)
    };
    format!("{waiting}: job {job} {state}{class}{reason}")
}

fn ago(unix_ms: Option<i64>) -> String {
    unix_ms.map_or_else(|| "never".into(), |ms| format!("{} ago", age_since(ms)))
}

/// `45s`, `12m03s`, `2h05m`, `3d04h`.
fn age_since(unix_ms: i64) -> String {
    let secs = ((now_unix_ms() - unix_ms).max(0) / 1000) as u64;
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
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
