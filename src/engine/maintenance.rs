//! Looking after archives once they exist: `verify` re-reads them and checks
//! every SHA-256; retention removes old ones, but never an archive above its
//! shard's watermark, whose WAL the shard may still need.

use std::sync::Arc;

use super::EngineError;
use super::restore::open_job_archive;
use crate::store::{ArchiveKey, ArchiveStore, JobDb};
use crate::telemetry;
use std::collections::HashSet;

use crate::types::{
    Job, JobId, LogId, LogIdGap, SIDE_FILE_LOG_ID, ShardId, VerifyProblem, VerifyReport,
    now_unix_ms,
};

const DAY_MS: i64 = 24 * 60 * 60 * 1000;
/// Archives looked at per query of a retention pass.
const RETENTION_BATCH: usize = 500;

pub(super) struct Maintenance {
    pub db: Arc<JobDb>,
    pub store: Arc<dyn ArchiveStore>,
    pub retain_days: u64,
    pub retain_count: u64,
}

impl Maintenance {
    pub fn verify(&self, only: Option<ShardId>) -> Result<VerifyReport, EngineError> {
        let shards = match only {
            Some(shard) => vec![shard],
            None => self.db.shard_ids()?,
        };
        let mut report = VerifyReport::default();
        for shard_id in shards {
            let jobs = self.db.archived_jobs(shard_id)?;
            let resolved = self.db.resolutions(shard_id)?;
            // Gaps among settled segments (archived or resolved); side files
            // are not a sequence.
            let mut settled: Vec<LogId> = jobs
                .iter()
                .map(|j| j.log_id)
                .chain(resolved.iter().map(|r| r.log_id))
                .filter(|log_id| *log_id < SIDE_FILE_LOG_ID)
                .collect();
            settled.sort_unstable();
            settled.dedup();
            for pair in settled.windows(2) {
                if pair[1] > pair[0] + 1 {
                    report.gaps.push(LogIdGap {
                        shard_id,
                        first_missing: pair[0] + 1,
                        last_missing: pair[1] - 1,
                    });
                }
            }
            report.resolved.extend(resolved);
            for job in jobs.iter().filter(|job| job.expired_unix_ms.is_none()) {
                match self.check_archive(job) {
                    Ok(bytes) => {
                        report.archives_checked += 1;
                        report.bytes_checked += bytes;
                    }
                    Err(problem) => report.problems.push(VerifyProblem {
                        shard_id,
                        log_id: job.log_id,
                        job_id: job.id,
                        problem,
                    }),
                }
            }
            // Objects no job here accounts for.
            let known: HashSet<LogId> = jobs.iter().map(|job| job.log_id).collect();
            for key in self.store.list(Some(shard_id))? {
                if !known.contains(&key.log_id) {
                    report.problems.push(VerifyProblem {
                        shard_id,
                        log_id: key.log_id,
                        job_id: JobId(0),
                        problem: format!(
                            "{} has no ARCHIVED job here (written by another replica, or before the jobs database \
                             was lost): `wal-archiver reindex` records it",
                            self.store.location(key)
                        ),
                    });
                }
            }
        }
        Ok(report)
    }

    /// Decodes the whole archive, checked against the job; the original size
    /// when it is intact, else what is wrong and how to repair it.
    fn check_archive(&self, job: &Job) -> Result<u64, String> {
        let checked = open_job_archive(self.store.as_ref(), job)
            .and_then(|mut reader| Ok(reader.copy_to(&mut std::io::sink())?));
        checked.map_err(|e| format!("{e}; push the segment again to repair it"))
    }

    /// Removes archives that both rules let go: older than `retain_days` (when
    /// set) and not among the newest `retain_count` of their shard (when set).
    /// Returns how many were removed.
    pub fn apply_retention(&self) -> Result<usize, EngineError> {
        let (days, count) = (self.retain_days, self.retain_count);
        if days == 0 && count == 0 {
            return Ok(0);
        }
        let cutoff = (days > 0).then(|| now_unix_ms() - days as i64 * DAY_MS);
        let mut removed = 0;
        for shard_id in self.db.shard_ids()? {
            // Finish removals a crash interrupted.
            for job in self.db.unfinished_removals(shard_id)? {
                self.remove_archive(&job)?;
            }
            let Some(watermark) = self
                .db
                .shard_status(shard_id)?
                .and_then(|s| s.archived_watermark)
            else {
                continue;
            };
            loop {
                let due = self.db.retention_candidates(
                    shard_id,
                    watermark,
                    count,
                    cutoff,
                    RETENTION_BATCH,
                )?;
                let full = due.len() == RETENTION_BATCH;
                for job in &due {
                    // Recorded first: a crash in between leaves a stray file,
                    // never a job that claims an archive it no longer has.
                    self.db.mark_expired(job.id)?;
                    self.remove_archive(job)?;
                    removed += 1;
                    metrics::counter!(telemetry::RETENTION_DELETED).increment(1);
                    tracing::info!(
                        shard_id,
                        log_id = job.log_id,
                        job_id = job.id.0,
                        "retention removed archive"
                    );
                }
                if !full {
                    break;
                }
            }
        }
        Ok(removed)
    }

    fn remove_archive(&self, job: &Job) -> Result<(), EngineError> {
        self.store.remove(ArchiveKey {
            shard_id: job.shard_id,
            log_id: job.log_id,
        })?;
        self.db.mark_archive_removed(job.id)?;
        Ok(())
    }
}
