//! Getting a segment back: streamed into any writer, or into a file through a
//! temporary name renamed into place (and its directory synced) only once the
//! whole segment arrived verified, so no partial file is ever left.

use std::path::{Path, PathBuf};

use tokio::io::AsyncWriteExt;

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
        self.restore_hashing(shard_id, log_id, out, progress, None)
            .await
    }

    async fn restore_hashing(
        &self,
        shard_id: ShardId,
        log_id: LogId,
        out: &mut (impl tokio::io::AsyncWrite + Unpin),
        progress: Option<Progress>,
        mut hasher: Option<&mut Sha256>,
    ) -> Result<u64, ClientError> {
        let mut chunks = self
            .rpc
            .clone()
            .restore(proto::RestoreRequest { shard_id, log_id })
            .await?
            .into_inner();
        let mut written = 0u64;
        while let Some(chunk) = chunks.message().await? {
            if let Some(hasher) = hasher.as_deref_mut() {
                hasher.update(&chunk.data);
            }
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
        let mut file = tokio::fs::File::create(&temp)
            .await
            .map_err(ClientError::io(format!("creating {}", temp.display())))?;
        let mut hasher = expected.map(|_| Sha256::new());
        let restored = async {
            let written = self
                .restore_hashing(shard_id, log_id, &mut file, progress, hasher.as_mut())
                .await?;
            if let (Some(job), Some(hasher)) = (expected, hasher) {
                check_restored(job, written, Digest(hasher.finalize().into()))?;
            }
            file.sync_all()
                .await
                .map_err(ClientError::io(format!("syncing {}", temp.display())))?;
            Ok(written)
        }
        .await;
        drop(file);
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
    tokio::task::spawn_blocking(move || std::fs::File::open(&parent)?.sync_all())
        .await
        .map_err(|e| ClientError::io(context.clone())(std::io::Error::other(e)))?
        .map_err(ClientError::io(context))
}
