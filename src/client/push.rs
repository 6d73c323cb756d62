//! Pushing segments: one from a file or any reader, or a WAL directory up to a
//! log_id. The SHA-256 is computed while the bytes stream and sent in the
//! trailer, so a file is read once per attempt. Pushes are idempotent on the
//! server, so a file push is retried with backoff when it is refused for a
//! reason that passes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::{Client, ClientError, RetryPolicy};
use crate::error::IoError;
use crate::proto::{self, archive_request::Msg};
use crate::types::{AckLevel, ContentKind, Job, JobState, LogId, SegmentRequest, ShardId};

/// Data per request message: well under the server's max_chunk_size default
/// (1 MiB), and the server's batch for one hash-and-spool step. Each upload in
/// flight holds about one message in the server's decoder: 512 KiB took the
/// server to 87-102 MiB with 16 shards pushing, 256 KiB to 71-83, at the same
/// speed; 128 KiB to 64-77 but pushed 1 GiB ~10 % slower.
pub const DEFAULT_CHUNK_SIZE: usize = 256 << 10;

/// Called with the number of bytes sent or received so far.
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

#[derive(Clone)]
pub struct PushOptions {
    pub kind: ContentKind,
    pub ack: AckLevel,
    pub zstd_level: Option<i32>,
    pub chunk_size: usize,
    pub progress: Option<Progress>,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            kind: ContentKind::Raw,
            ack: AckLevel::Queued,
            zstd_level: None,
            chunk_size: DEFAULT_CHUNK_SIZE,
            progress: None,
        }
    }
}

/// What the server answered to a push.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Pushed {
    pub job: Job,
    pub deduplicated: bool,
}

/// How a WAL directory is pushed.
#[derive(Clone, Copy, Debug)]
pub struct DirOptions {
    /// Wait for each job to be ARCHIVED.
    pub wait: bool,
    /// Delete the files once every one is ARCHIVED (implies `wait`).
    pub delete: bool,
    /// Segments streamed at once.
    pub concurrency: usize,
}

impl Default for DirOptions {
    fn default() -> Self {
        DirOptions {
            wait: false,
            delete: false,
            concurrency: 4,
        }
    }
}

/// Outcome of pushing a WAL directory.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct DirReport {
    pub pushed: Vec<(LogId, Job)>,
    pub failed: Vec<(LogId, String)>,
    pub deleted: Vec<PathBuf>,
}

impl Client {
    /// Pushes one segment from a file: size in the header, SHA-256 computed
    /// while streaming and sent in the trailer, so the file is read once per
    /// attempt. Retried from the start on retryable refusals.
    pub async fn push_file(
        &self,
        shard_id: ShardId,
        log_id: LogId,
        path: &Path,
        options: &PushOptions,
    ) -> Result<Pushed, ClientError> {
        let mut attempt = 0;
        loop {
            let file = tokio::fs::File::open(path)
                .await
                .map_err(ClientError::io(format!("opening {}", path.display())))?;
            let size = file
                .metadata()
                .await
                .map_err(ClientError::io(format!("reading {}", path.display())))?
                .len();
            match self
                .push_reader(shard_id, log_id, Some(size), file, options)
                .await
            {
                Err(ClientError::Rpc(status))
                    if RetryPolicy::is_retryable(&status) && attempt + 1 < self.retry.attempts =>
                {
                    tokio::time::sleep(self.retry.backoff(attempt)).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Pushes one segment from any reader, once (a reader cannot be rewound
    /// for a retry). The SHA-256 goes in the trailer.
    pub async fn push_reader(
        &self,
        shard_id: ShardId,
        log_id: LogId,
        size: Option<u64>,
        reader: impl AsyncRead + Unpin + Send + 'static,
        options: &PushOptions,
    ) -> Result<Pushed, ClientError> {
        let header = proto::SegmentHeader::from(&SegmentRequest {
            shard_id,
            log_id,
            size,
            sha256: None,
            kind: options.kind,
            ack: options.ack,
            zstd_level: options.zstd_level,
        });
        let (failure_tx, mut failure_rx) = tokio::sync::oneshot::channel();
        let requests = segment_stream(
            header,
            reader,
            options.chunk_size,
            options.progress.clone(),
            failure_tx,
        );
        let reply = self.rpc.clone().archive(requests).await;
        // A local read error ends the request stream early: the server sees a
        // short segment and refuses it; report the real cause.
        if let Ok(read_error) = failure_rx.try_recv() {
            return Err(read_error);
        }
        let reply = reply?.into_inner();
        let job = reply
            .job
            .as_ref()
            .map(Job::from)
            .ok_or_else(|| ClientError::Invalid("server replied without a job".into()))?;
        Ok(Pushed {
            job,
            deduplicated: reply.deduplicated,
        })
    }

    /// Every `wal-<id>.log` in `dir` with id below `up_to`, in numeric order:
    /// regular files, or symlinks to them.
    pub fn wal_files(dir: &Path, up_to: LogId) -> Result<Vec<(LogId, PathBuf)>, ClientError> {
        let entries = std::fs::read_dir(dir)
            .map_err(ClientError::io(format!("listing {}", dir.display())))?;
        let mut files: Vec<(LogId, PathBuf)> = entries
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name();
                let id = parse_wal_name(name.to_str()?)?;
                let path = entry.path();
                (id < up_to && path.is_file()).then_some((id, path))
            })
            .collect();
        files.sort_by_key(|(id, _)| *id);
        Ok(files)
    }

    /// Pushes every WAL file below `up_to`, `dir_options.concurrency` at a
    /// time. With `delete`, files are removed only if every one of them
    /// reached ARCHIVED.
    pub async fn push_wal_dir(
        &self,
        shard_id: ShardId,
        dir: &Path,
        up_to: LogId,
        options: &PushOptions,
        dir_options: DirOptions,
    ) -> Result<DirReport, ClientError> {
        let files = Client::wal_files(dir, up_to)?;
        let DirOptions {
            wait,
            delete,
            concurrency,
        } = dir_options;
        let wait = wait || delete;
        let results: Vec<(LogId, PathBuf, Result<Job, ClientError>)> = futures::stream::iter(files)
            .map(|(log_id, path)| async move {
                let pushed = self.push_file(shard_id, log_id, &path, options).await;
                let job = match pushed {
                    Ok(pushed) if wait => self.wait(pushed.job.id).await,
                    Ok(pushed) => Ok(pushed.job),
                    Err(e) => Err(e),
                };
                (log_id, path, job)
            })
            .buffered(concurrency.max(1))
            .collect()
            .await;
        let mut report = DirReport::default();
        let mut archived = Vec::new();
        for (log_id, path, result) in results {
            match result {
                Ok(job) => {
                    if job.state == JobState::Archived {
                        archived.push(path);
                    }
                    report.pushed.push((log_id, job));
                }
                Err(e) => report.failed.push((log_id, e.to_string())),
            }
        }
        if delete && report.failed.is_empty() && archived.len() == report.pushed.len() {
            for path in archived {
                tokio::fs::remove_file(&path)
                    .await
                    .map_err(ClientError::io(format!("deleting {}", path.display())))?;
                report.deleted.push(path);
            }
        }
        Ok(report)
    }
}

/// `wal-42.log` or `wal-00042.log` → 42.
pub fn parse_wal_name(name: &str) -> Option<LogId> {
    let digits = name.strip_prefix("wal-")?.strip_suffix(".log")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Header, data chunks, trailer with the size and SHA-256 of what was sent.
fn segment_stream(
    header: proto::SegmentHeader,
    reader: impl AsyncRead + Unpin + Send + 'static,
    chunk_size: usize,
    progress: Option<Progress>,
    failure: tokio::sync::oneshot::Sender<ClientError>,
) -> impl Stream<Item = proto::ArchiveRequest> + Send + 'static {
    enum Phase<R> {
        Header(proto::SegmentHeader, R),
        Data(R),
        Done,
    }
    struct State<R> {
        phase: Phase<R>,
        hasher: Sha256,
        sent: u64,
        failure: Option<tokio::sync::oneshot::Sender<ClientError>>,
    }
    let state = State {
        phase: Phase::Header(header, reader),
        hasher: Sha256::new(),
        sent: 0,
        failure: Some(failure),
    };
    futures::stream::unfold(state, move |mut state| {
        let progress = progress.clone();
        async move {
            match std::mem::replace(&mut state.phase, Phase::Done) {
                Phase::Header(header, reader) => {
                    state.phase = Phase::Data(reader);
                    Some((message(Msg::Header(header)), state))
                }
                Phase::Data(mut reader) => {
                    // Read into spare capacity: zeroing 256 KiB per chunk first
                    // cost a memset of the whole segment.
                    let mut buf = BytesMut::with_capacity(chunk_size);
                    while buf.len() < chunk_size {
                        match (&mut reader)
                            .take((chunk_size - buf.len()) as u64)
                            .read_buf(&mut buf)
                            .await
                        {
                            Ok(0) => break,
                            Ok(_) => {}
                            Err(e) => {
                                if let Some(failure) = state.failure.take() {
                                    let _ = failure.send(ClientError::Io(IoError::new(
                                        "reading the segment",
                                        e,
                                    )));
                                }
                                return None;
                            }
                        }
                    }
                    if buf.is_empty() {
                        let trailer = proto::SegmentTrailer {
                            size: Some(state.sent),
                            sha256: Bytes::copy_from_slice(
                                &std::mem::take(&mut state.hasher).finalize(),
                            ),
                        };
                        return Some((message(Msg::Trailer(trailer)), state));
                    }
                    state.hasher.update(&buf);
                    state.sent += buf.len() as u64;
                    if let Some(progress) = &progress {
                        progress(state.sent);
                    }
                    state.phase = Phase::Data(reader);
                    Some((message(Msg::Data(buf.freeze())), state))
                }
                Phase::Done => None,
            }
        }
    })
}

fn message(msg: Msg) -> proto::ArchiveRequest {
    proto::ArchiveRequest { msg: Some(msg) }
}

#[cfg(test)]
mod tests {
    use super::parse_wal_name;

    #[test]
    fn wal_names() {
        assert_eq!(parse_wal_name("wal-42.log"), Some(42));
        assert_eq!(parse_wal_name("wal-00042.log"), Some(42));
        assert_eq!(parse_wal_name("wal-.log"), None);
        assert_eq!(parse_wal_name("wal-4x.log"), None);
        assert_eq!(parse_wal_name("wal-42.log.tmp"), None);
    }
}
