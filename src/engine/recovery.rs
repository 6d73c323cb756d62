//! What a start does with what the previous run left behind. Jobs that were
//! acknowledged resume from their spool; a job caught compressing starts over;
//! a job still receiving was never acknowledged and fails as "interrupted"; an
//! archive that reached its final name before its row said ARCHIVED is verified
//! and adopted rather than written twice; temporaries and stray spool files go.

use std::collections::HashSet;

use super::EngineError;
use super::restore::open_job_archive;
use crate::config::Config;
use crate::queue::Scheduler;
use crate::store::{ArchiveStore, JobDb, Spool};
use crate::types::{AckLevel, FailureKind, Job, JobState, JsonStats};

/// What recovery found and did at start.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    pub requeued: usize,
    pub adopted: usize,
    pub interrupted: usize,
    pub lost: usize,
    pub temporaries_removed: usize,
    pub orphan_spools_removed: usize,
}

pub(super) fn recover(
    config: &Config,
    db: &JobDb,
    spool: &Spool,
    store: &dyn ArchiveStore,
    scheduler: &Scheduler,
) -> Result<RecoveryReport, EngineError> {
    let mut report = RecoveryReport {
        temporaries_removed: store.clean_up()?,
        ..RecoveryReport::default()
    };
    let mut live_spools = HashSet::new();
    let unfinished =
        db.in_states(&[JobState::Receiving, JobState::Queued, JobState::Compressing])?;
    for job in unfinished {
        if job.state == JobState::Receiving {
            db.fail(
                job.id,
                &[JobState::Receiving],
                FailureKind::Interrupted,
                "interrupted: the service stopped while receiving; push the segment again",
            )?;
            spool.remove(job.id)?;
            report.interrupted += 1;
            continue;
        }
        if let Some((archive_size, json)) = verified_archive(store, &job) {
            db.mark_archived(job.id, archive_size, json)?;
            spool.remove(job.id)?;
            report.adopted += 1;
            continue;
        }
        if job.state == JobState::Compressing {
            db.transition(job.id, &[JobState::Compressing], JobState::Queued, "")?;
        }
        if spool.path(job.id).exists() {
            scheduler.reserve_for_recovery(job.shard_id);
            scheduler.enqueue(job.shard_id, job.id, config.is_small(job.size.unwrap_or(0)));
            live_spools.insert(job.id);
            report.requeued += 1;
        } else if job.ack == AckLevel::Archived {
            // Its spool was never fsynced: nothing had been promised, and the
            // client, still waiting for its answer, pushes it again.
            db.fail(
                job.id,
                &[JobState::Queued],
                FailureKind::Interrupted,
                "interrupted: the service stopped before the archive was durable (ack ARCHIVED: never acknowledged); push the segment again",
            )?;
            report.interrupted += 1;
        } else {
            db.fail(
                job.id,
                &[JobState::Queued],
                FailureKind::Internal,
                "spool file lost before the archive was written; push the segment again",
            )?;
            report.lost += 1;
        }
    }
    for id in spool.list()? {
        if !live_spools.contains(&id) {
            spool.remove(id)?;
            report.orphan_spools_removed += 1;
        }
    }
    if report != RecoveryReport::default() {
        tracing::info!(?report, "recovered from the previous run");
    }
    Ok(report)
}

/// The size of the job's archive if one is in place and decodes to the job's
/// exact segment; `None` means it must be (re)written.
fn verified_archive(store: &dyn ArchiveStore, job: &Job) -> Option<(u64, Option<JsonStats>)> {
    let mut reader = open_job_archive(store, job).ok()?;
    reader.copy_to(&mut std::io::sink()).ok()?;
    let metadata = reader.metadata()?;
    Some((metadata.archive_size, metadata.json))
}
