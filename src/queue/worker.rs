//! A compression worker: a plain OS thread, so compression never runs on the
//! async runtime and `archive_parallelism` bounds CPU and memory exactly.

use std::io::Read;
use std::sync::Arc;

use super::scheduler::{Interrupt, Task};
use super::{Inner, QueueError};
use crate::archive::{ArchiveHeader, ArchiveWriter, FORMAT_VERSION, JsonLinesChecker};
use crate::store::ArchiveKey;
use crate::telemetry;
use crate::types::{ContentKind, Job, JobState, JsonStats, now_unix_ms};

/// Spool bytes read per step: large enough to amortize syscalls, small enough
/// that a cancel or shutdown is noticed within milliseconds.
const SPOOL_READ_BUFFER: usize = 1 << 20;

enum Outcome {
    Archived(u64, Option<JsonStats>),
    Interrupted(Interrupt),
    Failed(QueueError),
}

pub(super) fn run(inner: &Arc<Inner>) {
    lower_priority(inner.config.worker_nice);
    while let Some(task) = inner.scheduler.next() {
        let span = tracing::info_span!(
            "job",
            job_id = task.job_id,
            shard_id = tracing::field::Empty,
            log_id = tracing::field::Empty
        );
        let _entered = span.enter();
        run_job(inner, &task);
        inner.scheduler.finished(task.job_id);
    }
}

/// Compression is background work: at a lower CPU priority it yields to the
/// threads that receive segments, so acknowledgements stay fast while the
/// workers keep every idle cycle.
fn lower_priority(nice: i32) {
    if nice == 0 {
        return;
    }
    // SAFETY: gettid and setpriority have no memory-safety preconditions; on
    // Linux PRIO_PROCESS with a thread id sets that one thread's nice value.
    let rc = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, nice)
    };
    if rc != 0 {
        tracing::warn!(nice, error = %std::io::Error::last_os_error(), "cannot lower the worker's CPU priority");
    }
}

fn run_job(inner: &Inner, task: &Task) {
    let id = task.job_id;
    let job = match inner
        .db
        .transition(id, &[JobState::Queued], JobState::Compressing, "")
    {
        Ok(Some(job)) => job,
        Ok(None) => return,
        Err(e) => {
            tracing::error!(error = %e, "cannot start job; it stays queued for the next start");
            return;
        }
    };
    tracing::Span::current()
        .record("shard_id", job.shard_id)
        .record("log_id", job.log_id);
    inner.emit(&job);
    let started = std::time::Instant::now();
    let outcome = match compress(inner, &job, task) {
        Ok((size, json)) => Outcome::Archived(size, json),
        Err(Outcome::Interrupted(why)) => Outcome::Interrupted(why),
        Err(Outcome::Failed(e)) => Outcome::Failed(e),
        Err(Outcome::Archived(..)) => unreachable!("compress never fails with success"),
    };
    let recorded = match &outcome {
        Outcome::Archived(size, json) => inner.db.mark_archived(id, *size, *json),
        Outcome::Interrupted(Interrupt::Cancel) => inner.db.transition(
            id,
            &[JobState::Compressing],
            JobState::Cancelled,
            "cancelled by request",
        ),
        Outcome::Interrupted(Interrupt::Shutdown) => {
            inner
                .db
                .transition(id, &[JobState::Compressing], JobState::Queued, "")
        }
        Outcome::Failed(e) => inner.db.fail(
            id,
            &[JobState::Compressing],
            e.failure_kind(),
            &e.to_string(),
        ),
    };
    match recorded {
        Ok(Some(job)) => {
            match &outcome {
                Outcome::Archived(size, _) => tracing::info!(
                    shard_id = job.shard_id,
                    log_id = job.log_id,
                    size = job.size.unwrap_or(0),
                    archive_size = size,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "archived"
                ),
                Outcome::Failed(e) => {
                    tracing::warn!(shard_id = job.shard_id, log_id = job.log_id, error = %e, "job failed")
                }
                Outcome::Interrupted(why) => tracing::info!(?why, "job interrupted"),
            }
            record_outcome(&job, &outcome);
            if job.state != JobState::Queued
                && let Err(e) = inner.spool.remove(id)
            {
                tracing::warn!(error = %e, "spool file left behind; it is removed at the next start");
            }
            inner.emit(&job);
        }
        Ok(None) => tracing::warn!("job changed state under its worker"),
        // The archive may be durable while its row is not: recovery adopts it.
        Err(e) => tracing::error!(error = %e, "cannot record the job's outcome"),
    }
}

/// Streams the spool through the JSON-lines check (for JSON_LINES) and the
/// encoder into the archive store; returns the archive size and JSON stats.
fn record_outcome(job: &Job, outcome: &Outcome) {
    if let Outcome::Archived(archive_size, _) = outcome {
        metrics::counter!(telemetry::ARCHIVED_BYTES).increment(job.size.unwrap_or(0));
        metrics::counter!(telemetry::ARCHIVE_WRITTEN_BYTES).increment(*archive_size);
        let took = (job.updated_unix_ms - job.created_unix_ms).max(0) as f64 / 1000.0;
        metrics::histogram!(telemetry::JOB_DURATION).record(took);
    }
    if job.state.is_terminal() {
        metrics::counter!(telemetry::JOBS_FINISHED, "state" => job.state.as_str()).increment(1);
    }
}

fn compress(inner: &Inner, job: &Job, task: &Task) -> Result<(u64, Option<JsonStats>), Outcome> {
    let failed = |e: QueueError| Outcome::Failed(e);
    let (Some(size), Some(sha), Some(content_xxh3)) = (job.size, job.sha256, job.content_xxh3)
    else {
        return Err(failed(QueueError::Internal(
            "queued job without size, digest or checksum".into(),
        )));
    };
    let mut spool = inner
        .spool
        .open_file(job.id)
        .map_err(|e| failed(e.into()))?;
    let header = ArchiveHeader {
        format_version: FORMAT_VERSION,
        shard_id: job.shard_id,
        log_id: job.log_id,
        content_kind: job.kind,
        original_size: size,
        sha256: sha.to_hex(),
        zstd_level: job.zstd_level,
        created_unix_ms: now_unix_ms(),
    };
    let threshold = inner.config.multithread_min_size;
    let zstd_workers = if task.alone && threshold > 0 && size >= threshold {
        inner.config.workers() as u32
    } else {
        0
    };
    let key = ArchiveKey {
        shard_id: job.shard_id,
        log_id: job.log_id,
    };
    let pending = inner.store.create(key).map_err(|e| failed(e.into()))?;
    let mut writer = ArchiveWriter::new(pending, header, content_xxh3, zstd_workers)
        .map_err(|e| failed(e.into()))?;
    let mut checker = (job.kind == ContentKind::JsonLines)
        .then(|| JsonLinesChecker::new(inner.config.max_json_line_size));
    let mut buf = vec![0u8; SPOOL_READ_BUFFER];
    loop {
        if let Some(why) = task.stop.get() {
            return Err(Outcome::Interrupted(why));
        }
        let n = match spool.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(failed(QueueError::io("reading spool file", e))),
        };
        if n == 0 {
            break;
        }
        if let Some(checker) = &mut checker {
            checker.feed(&buf[..n]).map_err(|e| failed(e.into()))?;
        }
        writer
            .write_all(&buf[..n])
            .map_err(|e| failed(spool_damaged(e.into())))?;
    }
    let json = checker
        .map(JsonLinesChecker::finish)
        .transpose()
        .map_err(|e| failed(e.into()))?;
    let written = writer
        .finish(json)
        .map_err(|e| failed(spool_damaged(e.into())))?;
    if let Some(why) = task.stop.get() {
        return Err(Outcome::Interrupted(why));
    }
    written.sink.commit().map_err(|e| failed(e.into()))?;
    Ok((written.archive_size, json))
}

/// A spool that no longer matches its verified digest was damaged after the
/// acknowledgement (a crash before it was durable, or the disk).
fn spool_damaged(e: QueueError) -> QueueError {
    match e {
        QueueError::Archive(
            ref inner @ (crate::archive::ArchiveError::DigestMismatch { .. }
            | crate::archive::ArchiveError::SizeMismatch { .. }),
        ) => QueueError::Internal(format!(
            "spool file no longer matches the received segment: {inner}"
        )),
        other => other,
    }
}
