//! The original bytes of an archived segment, streamed back and verified: the
//! last chunk is held back until the whole segment is proven.

use std::sync::Arc;

use bytes::Bytes;
use futures::Stream;
use tokio::sync::mpsc;

use super::{EngineError, blocking};
use crate::archive::ArchiveReader;
use crate::store::{ArchiveKey, ArchiveStore, JobDb};
use crate::types::{LogId, ShardId};

pub(super) struct Restorer {
    pub db: Arc<JobDb>,
    pub store: Arc<dyn ArchiveStore>,
    pub chunk_size: usize,
}

impl Restorer {
    pub async fn restore(
        &self,
        shard_id: ShardId,
        log_id: LogId,
    ) -> Result<impl Stream<Item = Result<Bytes, EngineError>> + Send + 'static, EngineError> {
        let (db, store) = (self.db.clone(), self.store.clone());
        let chunk_size = self.chunk_size;
        let key = ArchiveKey { shard_id, log_id };
        let reader = blocking(move || {
            match db.archived_job(shard_id, log_id)? {
                None => return Err(EngineError::SegmentNotFound { shard_id, log_id }),
                Some(job) if job.expired_unix_ms.is_some() => {
                    return Err(EngineError::Expired { shard_id, log_id });
                }
                Some(_) => {}
            }
            let input = store
                .open(key)?
                .ok_or_else(|| EngineError::ArchiveMissing {
                    shard_id,
                    log_id,
                    location: store.location(key),
                })?;
            Ok(ArchiveReader::open(input)?)
        })
        .await?;
        let (tx, rx) = mpsc::channel::<Result<Bytes, EngineError>>(4);
        tokio::task::spawn_blocking(move || {
            let mut reader = reader;
            let mut held: Option<Bytes> = None;
            loop {
                let mut buf = vec![0u8; chunk_size];
                match reader.read_chunk(&mut buf) {
                    Ok(0) => {
                        if let Some(last) = held.take() {
                            let _ = tx.blocking_send(Ok(last));
                        }
                        return;
                    }
                    Ok(n) => {
                        buf.truncate(n);
                        if let Some(previous) = held.replace(Bytes::from(buf))
                            && tx.blocking_send(Ok(previous)).is_err()
                        {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e.into()));
                        return;
                    }
                }
            }
        });
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
    }
}
