//! Getting a segment back: streamed into any writer, or into a file through a
//! temporary name renamed into place (and its directory synced) only once the
//! whole segment arrived verified, so no partial file is ever left.

use std::path::{Path, PathBuf};

use tokio::io::AsyncWriteExt;

use crate::store::{WriteBack, sync_dir};

use super::*;

impl Client {
    /// Writes the original bytes to `out`; returns how many. The server
    /// verifies the SHA-256 and ends with DATA_LOSS on a mismatch.
    pub async fn restore_to(
        &self,
        shard_id: ShardId,
        log_id: LogId,
        out: &mut (impl tokio::io::AsyncWrite + Unpin),
        progress: Option<Progress>,
    ) -> Result<u64, ClientError> {
        let mut chunks = self.restore_stream(shard_id, log_id).await?;
        let mut written = 0u64;
        while let Some(chunk) = chunks.message().await? {
            out.write_all(&chunk.data)
                .await
                .map_err(ClientError::io("writing restored bytes"))?;
            written += chunk.data.len() as u64;
            if let Some(progress) = &progress {
                progress(written);
            }
        }
        out.flush()
            .await
            .map_err(ClientError::io("writing restored bytes"))?;
        Ok(written)
    }

    async fn restore_stream(
        &self,
        shard_id: ShardId,
        log_id: LogId,
    ) -> Result<tonic::Streaming<proto::RestoreChunk>, ClientError> {
        Ok(self
            .rpc
            .clone()
            .restore(proto::RestoreRequest { shard_id, log_id })
            .await?
            .into_inner())
    }

    /// Restores into `path` through a temporary file renamed into place only
    /// once the whole segment arrived verified and is on disk (file and
    /// directory fsynced): no partial file under `path`, even after a crash.
    pub async fn restore_to_file(
        &self,
        shard_id: ShardId,
        log_id: LogId,
        path: &Path,
        progress: Option<Progress>,
    ) -> Result<u64, ClientError> {
        self.restore_into_place(shard_id, log_id, path, progress, None)
            .await
    }

    /// Like `restore_to_file` for an ARCHIVED job looked up first (`active_job`),
    /// and the client checks too: the bytes must have the job's size and
    /// SHA-256 before they are renamed into place. This does not rely on how
    /// the transport reports a stream cut short.
    pub async fn restore_job_to_file(
        &self,
        job: &Job,
        path: &Path,
        progress: Option<Progress>,
    ) -> Result<u64, ClientError> {
        self.restore_into_place(job.shard_id, job.log_id, path, progress, Some(job))
            .await
    }

    async fn restore_into_place(
        &self,
        shard_id: ShardId,
        log_id: LogId,
        path: &Path,
        progress: Option<Progress>,
        expected: Option<&Job>,
    ) -> Result<u64, ClientError> {
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temp = path.with_file_name(format!(".{file_name}.restoring"));
        let file = std::fs::File::create(&temp)
            .map_err(ClientError::io(format!("creating {}", temp.display())))?;
        let restored = async {
            let (written, digest) = self
                .restore_through_writer(shard_id, log_id, file, progress, expected.is_some())
                .await
                .map_err(|e| e.in_file(&temp))?;
            if let (Some(job), Some(digest)) = (expected, digest) {
                check_restored(job, written, digest)?;
            }
            Ok(written)
        }
        .await;
        let written = match restored {
            Ok(written) => written,
            Err(e) => {
                let _ = tokio::fs::remove_file(&temp).await;
                return Err(e);
            }
        };
        tokio::fs::rename(&temp, path)
            .await
            .map_err(ClientError::io(format!("renaming into {}", path.display())))?;
        sync_parent(path).await?;
        Ok(written)
    }

    /// Streams the segment into `file` through a thread of its own that hashes
    /// (when `hash`), writes and finally fsyncs it, so receiving the next
    /// chunks overlaps with writing these: no thread hop per chunk, and the
    /// runtime thread never hashes. Returns the bytes written and their SHA-256.
    async fn restore_through_writer(
        &self,
        shard_id: ShardId,
        log_id: LogId,
        file: std::fs::File,
        progress: Option<Progress>,
        hash: bool,
    ) -> Result<(u64, Option<Digest>), WriterError> {
        let (chunks_tx, mut chunks_rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(WRITE_AHEAD);
        let writer = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut file = file;
            let mut hasher = hash.then(Sha256::new);
            let mut written = 0u64;
            let mut write_back = WriteBack::every(WRITE_BACK_STEP);
            while let Some(chunk) = chunks_rx.blocking_recv() {
                if let Some(hasher) = &mut hasher {
                    hasher.update(&chunk);
                }
                file.write_all(&chunk)?;
                written += chunk.len() as u64;
                write_back.wrote(&file, written);
            }
            Ok::<_, std::io::Error>((file, written, hasher))
        });
        let received = async {
            let mut chunks = self.restore_stream(shard_id, log_id).await?;
            let mut received = 0u64;
            while let Some(chunk) = chunks.message().await? {
                received += chunk.data.len() as u64;
                if chunks_tx.send(chunk.data).await.is_err() {
                    // The writer stopped: its error says why.
                    break;
                }
                if let Some(progress) = &progress {
                    progress(received);
                }
            }
            Ok::<_, ClientError>(())
        }
        .await;
        drop(chunks_tx);
        let written = writer
            .await
            .map_err(|e| WriterError::Io(std::io::Error::other(e)))
            .and_then(|result| result.map_err(WriterError::Io));
        // A failed stream explains more than the write it cut short.
        received.map_err(WriterError::Client)?;
        let (file, written, hasher) = written?;
        tokio::task::spawn_blocking(move || file.sync_all())
            .await
            .map_err(|e| WriterError::Sync(std::io::Error::other(e)))?
            .map_err(WriterError::Sync)?;
        Ok((written, hasher.map(|h| Digest(h.finalize().into()))))
    }
}

/// Written bytes after which their write-back is started, so the closing
/// fsync waits for the last step only, not for the whole segment.
const WRITE_BACK_STEP: u64 = 1 << 20;

/// Restored chunks received but not yet written: bounds the client's memory
/// to a few messages while letting receiving run ahead of the disk.
const WRITE_AHEAD: usize = 4;

/// Why streaming into the temporary file stopped.
enum WriterError {
    Client(ClientError),
    Io(std::io::Error),
    Sync(std::io::Error),
}

impl WriterError {
    fn in_file(self, temp: &Path) -> ClientError {
        match self {
            WriterError::Client(e) => e,
            WriterError::Io(e) => ClientError::io(format!("writing {}", temp.display()))(e),
            WriterError::Sync(e) => ClientError::io(format!("syncing {}", temp.display()))(e),
        }
    }
}

fn check_restored(job: &Job, written: u64, sha256: Digest) -> Result<(), ClientError> {
    let mismatch = |problem: String| ClientError::RestoreMismatch {
        job: job.id,
        problem,
    };
    if let Some(size) = job.size
        && size != written
    {
        return Err(mismatch(format!("{written} bytes, expected {size}")));
    }
    match job.sha256 {
        Some(expected) if expected != sha256 => {
            Err(mismatch(format!("SHA-256 {sha256}, expected {expected}")))
        }
        Some(_) => Ok(()),
        None => Err(mismatch("the job records no SHA-256".into())),
    }
}

/// Makes a rename into `path` durable.
async fn sync_parent(path: &Path) -> Result<(), ClientError> {
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    };
    let context = format!("syncing directory {}", parent.display());
    tokio::task::spawn_blocking(move || sync_dir(&parent))
        .await
        .map_err(|e| ClientError::io(context.clone())(std::io::Error::other(e)))?
        .map_err(ClientError::io(context))
}
