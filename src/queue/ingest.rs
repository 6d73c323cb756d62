//! Taking a segment in. The bytes go to a spool file while they are hashed
//! (SHA-256 to verify the client's digest, XXH3-128 so the worker can verify the
//! spool cheaply). Parsing JSON lines is left to the worker's compression pass,
//! off the acknowledgement path. Nothing is committed because the stream ended — a
//! client that aborts mid-upload can look like a clean end of stream — only
//! once the received size and SHA-256 match what was declared.

use std::fs::File;
use std::io::Write;
use std::sync::Arc;

use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use xxhash_rust::xxh3::Xxh3;

use super::{Inner, QueueError, blocking};
use crate::store::{NewJob, Received};
use crate::telemetry;
use crate::types::{AckLevel, ContentKind, Digest, FailureKind, Job, JobState, LogId, ShardId};

/// The header of a push, already translated from the wire.
#[derive(Clone, Debug)]
pub struct SegmentRequest {
    pub shard_id: ShardId,
    pub log_id: LogId,
    pub size: Option<u64>,
    pub sha256: Option<Digest>,
    pub kind: ContentKind,
    pub ack: AckLevel,
    pub zstd_level: Option<i32>,
}

/// A push the engine took: the job and whether it already existed.
#[derive(Clone, Debug)]
pub struct Accepted {
    pub job: Job,
    pub deduplicated: bool,
}

pub enum Begin {
    /// The same segment was pushed before; nothing more to receive.
    Known(Box<Accepted>),
    /// Send the data with `Upload::write`, then `Upload::finish`.
    Stream(Box<Upload>),
}

/// Size and digest sent after the data.
#[derive(Clone, Copy, Debug, Default)]
pub struct Trailer {
    pub size: Option<u64>,
    pub sha256: Option<Digest>,
}

pub struct Upload {
    inner: Arc<Inner>,
    request: SegmentRequest,
    mode: Mode,
    sink: Option<Sink>,
    received: u64,
    finished: bool,
    cancel: CancellationToken,
    _permit: Option<OwnedSemaphorePermit>,
}

enum Mode {
    /// A new job, spooled.
    Spool { job: Job },
    /// The segment has an active job but its digest comes in the trailer:
    /// hash the stream to tell a retry from a conflict, write nothing.
    Compare { existing: Job },
}

/// What the bytes pass through on a blocking thread.
struct Sink {
    hasher: Sha256,
    checksum: Xxh3,
    file: Option<File>,
}

impl Sink {
    fn absorb(&mut self, data: &[u8]) -> Result<(), QueueError> {
        self.hasher.update(data);
        self.checksum.update(data);
        if let Some(file) = &mut self.file {
            file.write_all(data)
                .map_err(|e| QueueError::io("writing spool file", e))?;
        }
        Ok(())
    }
}

pub(super) async fn begin(inner: Arc<Inner>, request: SegmentRequest) -> Result<Begin, QueueError> {
    if inner.draining.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(QueueError::ShuttingDown);
    }
    let config = &inner.config;
    if request.log_id > i64::MAX as u64 {
        return Err(QueueError::Invalid(format!(
            "log_id {} is out of range (at most 2^63-1)",
            request.log_id
        )));
    }
    let level = request.zstd_level.unwrap_or(config.compression_level);
    let levels = zstd::zstd_safe::min_c_level()..=zstd::zstd_safe::max_c_level();
    if !levels.contains(&level) {
        return Err(QueueError::Invalid(format!(
            "zstd level {level} is out of range ({}..={})",
            levels.start(),
            levels.end()
        )));
    }
    if let Some(size) = request.size
        && size > config.max_segment_size
    {
        return Err(too_large(size, config.max_segment_size));
    }
    if let Some(sha) = request.sha256 {
        let db_inner = inner.clone();
        let (shard, log) = (request.shard_id, request.log_id);
        if let Some(existing) = blocking(move || Ok(db_inner.db.active_job(shard, log)?)).await? {
            return known_or_conflict(existing, sha)
                .map(|accepted| Begin::Known(Box::new(accepted)));
        }
    }
    inner.enough_free_space(request.size.unwrap_or(0))?;
    let permit =
        inner
            .uploads
            .clone()
            .try_acquire_owned()
            .map_err(|_| QueueError::TooManyUploads {
                limit: config.max_concurrent_uploads,
            })?;
    if !inner.scheduler.reserve(request.shard_id) {
        return Err(QueueError::QueueFull {
            shard_id: request.shard_id,
            limit: config.archive_queue_size,
        });
    }
    let new = NewJob {
        shard_id: request.shard_id,
        log_id: request.log_id,
        size: request.size,
        sha256: request.sha256,
        kind: request.kind,
        ack: request.ack,
        zstd_level: level,
    };
    let db_inner = inner.clone();
    let cancel = CancellationToken::new();
    let token = cancel.clone();
    let inserted = blocking(move || {
        // Insert and register under one lock, so no one sees this RECEIVING
        // row without its live upload (see the staleness check below).
        let mut receiving = db_inner.receiving.lock().unwrap_or_else(|p| p.into_inner());
        let job = match db_inner.db.insert_receiving(&new)? {
            Ok(job) => job,
            Err(existing) => {
                if existing.state == JobState::Receiving && !receiving.contains_key(&existing.id) {
                    // Its upload ended but recording that failed (a full disk,
                    // say): fail it now so the segment can be pushed again.
                    let reason =
                        "interrupted: the upload ended but its failure could not be recorded";
                    db_inner.db.fail(
                        existing.id,
                        &[JobState::Receiving],
                        FailureKind::Interrupted,
                        reason,
                    )?;
                    return Ok(Err(None));
                }
                return Ok(Err(Some(existing)));
            }
        };
        match db_inner.spool.create(job.id) {
            Ok(file) => {
                receiving.insert(job.id, token);
                Ok(Ok((job, file)))
            }
            Err(e) => {
                let err = QueueError::from(e);
                db_inner.db.fail(
                    job.id,
                    &[JobState::Receiving],
                    err.failure_kind(),
                    &err.to_string(),
                )?;
                Err(err)
            }
        }
    })
    .await;
    let (job, file) = match inserted {
        Ok(Ok(created)) => created,
        Ok(Err(None)) => {
            inner.scheduler.release(request.shard_id);
            return Box::pin(begin(inner, request)).await;
        }
        Ok(Err(Some(existing))) => {
            inner.scheduler.release(request.shard_id);
            return match (existing.state, request.sha256) {
                (JobState::Receiving, _) => Err(busy(&existing)),
                (_, Some(sha)) => known_or_conflict(existing, sha)
                    .map(|accepted| Begin::Known(Box::new(accepted))),
                (_, None) => Ok(Begin::Stream(Box::new(Upload {
                    inner,
                    request,
                    mode: Mode::Compare { existing },
                    sink: Some(Sink {
                        hasher: Sha256::new(),
                        checksum: Xxh3::new(),
                        file: None,
                    }),
                    received: 0,
                    finished: false,
                    cancel: CancellationToken::new(),
                    _permit: Some(permit),
                }))),
            };
        }
        Err(e) => {
            inner.scheduler.release(request.shard_id);
            return Err(e);
        }
    };
    inner.emit(&job);
    Ok(Begin::Stream(Box::new(Upload {
        inner,
        request,
        mode: Mode::Spool { job },
        sink: Some(Sink {
            hasher: Sha256::new(),
            checksum: Xxh3::new(),
            file: Some(file),
        }),
        received: 0,
        finished: false,
        cancel,
        _permit: Some(permit),
    })))
}

fn known_or_conflict(existing: Job, pushed: Digest) -> Result<Accepted, QueueError> {
    match existing.sha256 {
        _ if existing.state == JobState::Receiving => Err(busy(&existing)),
        Some(sha) if sha == pushed => Ok(Accepted {
            job: existing,
            deduplicated: true,
        }),
        Some(sha) => Err(QueueError::Conflict {
            shard_id: existing.shard_id,
            log_id: existing.log_id,
            existing: sha,
            pushed,
        }),
        None => Err(busy(&existing)),
    }
}

fn busy(existing: &Job) -> QueueError {
    QueueError::Busy {
        shard_id: existing.shard_id,
        log_id: existing.log_id,
        job_id: existing.id,
    }
}

fn too_large(size: u64, limit: u64) -> QueueError {
    QueueError::Invalid(format!(
        "segment of {size} bytes exceeds max_segment_size ({limit} bytes)"
    ))
}

impl Upload {
    /// The job being received; `None` when only comparing with an existing one.
    pub fn job(&self) -> Option<&Job> {
        match &self.mode {
            Mode::Spool { job } => Some(job),
            Mode::Compare { .. } => None,
        }
    }

    /// Resolves when someone cancels the job (CancelJob).
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }

    pub async fn write(&mut self, data: Bytes) -> Result<(), QueueError> {
        let limits = &self.inner.config;
        if data.len() > limits.max_chunk_size {
            let err = QueueError::Invalid(format!(
                "data chunk of {} bytes exceeds max_chunk_size ({} bytes)",
                data.len(),
                limits.max_chunk_size
            ));
            return Err(self.fail(err).await);
        }
        let total = self.received + data.len() as u64;
        if total > limits.max_segment_size {
            let limit = limits.max_segment_size;
            return Err(self.fail(too_large(total, limit)).await);
        }
        if let Some(declared) = self.request.size
            && total > declared
        {
            return Err(self
                .fail(QueueError::SizeMismatch {
                    declared,
                    received: total,
                })
                .await);
        }
        self.received = total;
        let Some(mut sink) = self.sink.take() else {
            return Err(QueueError::Internal("upload already failed".into()));
        };
        let joined = tokio::task::spawn_blocking(move || {
            let result = sink.absorb(&data);
            (sink, result)
        })
        .await;
        match joined {
            Ok((sink, Ok(()))) => {
                self.sink = Some(sink);
                Ok(())
            }
            Ok((sink, Err(e))) => {
                // Close the spool file first: an unlinked file that is still
                // open keeps its space, and a full disk needs that space back
                // to record the failure.
                drop(sink);
                Err(self.fail(e).await)
            }
            Err(e) => Err(self
                .fail(QueueError::Internal(format!("spool writer failed: {e}")))
                .await),
        }
    }

    /// Verifies size and digest, makes the spool durable, commits QUEUED and
    /// puts the job on its shard's queue.
    pub async fn finish(mut self, trailer: Trailer) -> Result<Accepted, QueueError> {
        let size = match merge("size", self.request.size, trailer.size) {
            Ok(size) => size,
            Err(e) => return Err(self.fail(e).await),
        };
        let declared = match merge("SHA-256", self.request.sha256, trailer.sha256) {
            Ok(Some(sha)) => sha,
            Ok(None) => return Err(self.fail(QueueError::MissingDigest).await),
            Err(e) => return Err(self.fail(e).await),
        };
        if let Some(declared) = size
            && declared != self.received
        {
            let received = self.received;
            return Err(self
                .fail(QueueError::SizeMismatch { declared, received })
                .await);
        }
        let Some(sink) = self.sink.take() else {
            return Err(QueueError::Internal("upload already failed".into()));
        };
        let received = Digest(sink.hasher.finalize().into());
        if received != declared {
            return Err(self
                .fail(QueueError::DigestMismatch { declared, received })
                .await);
        }
        match &self.mode {
            Mode::Compare { existing } => {
                self.finished = true;
                let existing = existing.clone();
                let inner = self.inner.clone();
                let current =
                    blocking(move || Ok(inner.db.get(existing.id)?.unwrap_or(existing))).await?;
                known_or_conflict(current, declared)
            }
            Mode::Spool { job } => {
                let id = job.id;
                let received = Received {
                    size: self.received,
                    sha256: declared,
                    content_xxh3: sink.checksum.digest128(),
                };
                let commit = self.commit(id, sink.file, received).await;
                match commit {
                    Ok(Some(job)) => {
                        metrics::counter!(telemetry::RECEIVED_BYTES).increment(self.received);
                        self.finished = true;
                        self.forget_token();
                        self.inner.scheduler.enqueue(job.shard_id, job.id);
                        self.inner.emit(&job);
                        Ok(Accepted {
                            job,
                            deduplicated: false,
                        })
                    }
                    // Cancelled between the last chunk and the commit.
                    Ok(None) => Err(self.fail(QueueError::Cancelled(id)).await),
                    Err(e) => Err(self.fail(e).await),
                }
            }
        }
    }

    async fn commit(
        &self,
        id: u64,
        file: Option<File>,
        received: Received,
    ) -> Result<Option<Job>, QueueError> {
        let inner = self.inner.clone();
        let durable = self.request.ack == AckLevel::Queued;
        blocking(move || {
            if let Some(file) = file {
                // Ack ARCHIVED needs no durable spool: nothing is promised until
                // the archive is durable, and a spool torn by a crash fails
                // its digest check when the job is resumed.
                if durable {
                    inner.spool.persist(&file)?;
                }
            }
            Ok(inner.db.mark_queued(id, &received)?)
        })
        .await
    }

    /// Ends the upload because of a protocol error or a broken stream.
    pub async fn abort(mut self, err: QueueError) -> QueueError {
        self.fail(err).await
    }

    /// Records the job FAILED (CANCELLED for a cancel), removes its spool file
    /// and frees its place on the queue. Returns `err` for the caller to send.
    async fn fail(&mut self, err: QueueError) -> QueueError {
        if self.finished {
            return err;
        }
        self.finished = true;
        self.sink = None;
        if let Mode::Spool { job } = &self.mode {
            let outcome = match &err {
                QueueError::Cancelled(_) => None,
                other => Some((other.failure_kind(), other.to_string())),
            };
            let inner = self.inner.clone();
            let (id, shard) = (job.id, job.shard_id);
            let recorded = blocking(move || abandon(&inner, id, shard, outcome)).await;
            if let Err(e) = recorded {
                tracing::error!(job_id = id, error = %e, "could not record a failed upload");
            }
            self.forget_token();
        }
        err
    }

    fn forget_token(&self) {
        if let Mode::Spool { job } = &self.mode {
            self.inner
                .receiving
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&job.id);
        }
    }
}

/// Ends a RECEIVING job: FAILED with `failure`, or CANCELLED when it is `None`.
fn abandon(
    inner: &Inner,
    id: u64,
    shard: ShardId,
    failure: Option<(FailureKind, String)>,
) -> Result<(), QueueError> {
    inner.scheduler.release(shard);
    // The spool goes first: when the disk is full, its space is what lets the
    // jobs database record the failure.
    let removed = inner.spool.remove(id);
    let job = match failure {
        Some((kind, reason)) => inner.db.fail(id, &[JobState::Receiving], kind, &reason),
        None => inner.db.transition(
            id,
            &[JobState::Receiving],
            JobState::Cancelled,
            "cancelled by request",
        ),
    };
    if let Some(job) = job? {
        inner.emit(&job);
    }
    Ok(removed?)
}

impl Drop for Upload {
    /// A handler dropped mid-upload (the client went away): the job fails.
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.sink = None;
        if let Mode::Spool { job } = &self.mode {
            self.forget_token();
            let inner = self.inner.clone();
            let (id, shard) = (job.id, job.shard_id);
            let cleanup = move || {
                let reason = "interrupted: the client went away before the segment was complete";
                let failure = Some((FailureKind::Interrupted, reason.to_owned()));
                if let Err(e) = abandon(&inner, id, shard, failure) {
                    tracing::error!(job_id = id, error = %e, "could not record an abandoned upload");
                }
            };
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn_blocking(cleanup)),
                Err(_) => cleanup(),
            }
        }
    }
}

fn merge<T: PartialEq + std::fmt::Debug>(
    what: &str,
    header: Option<T>,
    trailer: Option<T>,
) -> Result<Option<T>, QueueError> {
    match (header, trailer) {
        (Some(h), Some(t)) if h != t => Err(QueueError::Invalid(format!(
            "header and trailer disagree on the {what}: {h:?} vs {t:?}"
        ))),
        (Some(h), _) => Ok(Some(h)),
        (None, t) => Ok(t),
    }
}
