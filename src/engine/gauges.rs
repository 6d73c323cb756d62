//! What the metrics gauges show, read from the jobs database and the spool
//! rather than mirrored in memory, so they cannot drift from the truth.

use std::sync::Arc;

use super::EngineError;
use crate::store::{JobDb, Spool};
use crate::types::{JobState, ShardStatus};

/// A snapshot for the metrics gauges.
#[derive(Debug, Default, Clone)]
pub struct Gauges {
    pub jobs: Vec<(JobState, u64)>,
    pub shards: Vec<ShardStatus>,
    pub spool_bytes: u64,
    pub archived_bytes: u64,
    pub archive_bytes: u64,
}

#[derive(Clone)]
pub(super) struct Reader {
    pub db: Arc<JobDb>,
    pub spool: Arc<Spool>,
}

impl Reader {
    pub fn read(&self) -> Result<Gauges, EngineError> {
        let mut shards = Vec::new();
        for shard in self.db.shard_ids()? {
            shards.extend(self.db.shard_status(shard)?);
        }
        let jobs = self.db.state_counts()?;
        let spool_bytes = self
            .spool
            .list()?
            .into_iter()
            .filter_map(|id| std::fs::metadata(self.spool.path(id)).ok())
            .map(|m| m.len())
            .sum();
        Ok(Gauges {
            archived_bytes: shards.iter().map(|s| s.bytes_in).sum(),
            archive_bytes: shards.iter().map(|s| s.bytes_out).sum(),
            jobs,
            shards,
            spool_bytes,
        })
    }
}
