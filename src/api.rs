//! The wire edge: protobuf ⇄ domain, for the service and the client alike. The
//! only place that knows both; everything above and below speaks domain types.

use bytes::Bytes;

use crate::error::{Classified, ErrorKind};
use crate::proto;
use crate::types::{
    AckLevel, Blocker, ContentKind, Digest, FailureClass, FailureKind, Job, JobFilter, JobId,
    JobState, JsonStats, LogIdGap, Resolution, SegmentRequest, ShardStatus, Trailer, VerifyProblem,
    VerifyReport,
};

/// A message whose fields do not make sense (unknown enum value, a digest of
/// the wrong length, a bad page token).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidMessage(pub String);

impl Classified for InvalidMessage {
    fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidArgument
    }
}

impl TryFrom<proto::SegmentHeader> for SegmentRequest {
    type Error = InvalidMessage;

    fn try_from(header: proto::SegmentHeader) -> Result<Self, InvalidMessage> {
        Ok(SegmentRequest {
            shard_id: header.shard_id,
            log_id: header.log_id,
            size: header.size,
            sha256: digest(&header.sha256, "header")?,
            kind: content_kind(header.kind)?,
            ack: ack_level(header.ack)?,
            zstd_level: header.zstd_level,
        })
    }
}

impl From<&SegmentRequest> for proto::SegmentHeader {
    fn from(request: &SegmentRequest) -> Self {
        proto::SegmentHeader {
            shard_id: request.shard_id,
            log_id: request.log_id,
            size: request.size,
            sha256: request
                .sha256
                .map_or_else(Bytes::new, |d| Bytes::copy_from_slice(&d.0)),
            kind: proto_kind(request.kind) as i32,
            ack: proto_ack(request.ack) as i32,
            zstd_level: request.zstd_level,
        }
    }
}

impl TryFrom<proto::SegmentTrailer> for Trailer {
    type Error = InvalidMessage;

    fn try_from(trailer: proto::SegmentTrailer) -> Result<Self, InvalidMessage> {
        Ok(Trailer {
            size: trailer.size,
            sha256: digest(&trailer.sha256, "trailer")?,
        })
    }
}

fn digest(bytes: &[u8], place: &str) -> Result<Option<Digest>, InvalidMessage> {
    if bytes.is_empty() {
        return Ok(None);
    }
    Digest::from_slice(bytes).map(Some).ok_or_else(|| {
        InvalidMessage(format!(
            "sha256 in the {place} has {} bytes; a SHA-256 has 32",
            bytes.len()
        ))
    })
}

fn content_kind(value: i32) -> Result<ContentKind, InvalidMessage> {
    match proto::ContentKind::try_from(value) {
        Ok(proto::ContentKind::Unspecified | proto::ContentKind::Raw) => Ok(ContentKind::Raw),
        Ok(proto::ContentKind::JsonLines) => Ok(ContentKind::JsonLines),
        Err(_) => Err(InvalidMessage(format!("unknown content kind {value}"))),
    }
}

fn proto_kind(kind: ContentKind) -> proto::ContentKind {
    match kind {
        ContentKind::Raw => proto::ContentKind::Raw,
        ContentKind::JsonLines => proto::ContentKind::JsonLines,
    }
}

fn ack_level(value: i32) -> Result<AckLevel, InvalidMessage> {
    match proto::AckLevel::try_from(value) {
        Ok(proto::AckLevel::Unspecified | proto::AckLevel::Queued) => Ok(AckLevel::Queued),
        Ok(proto::AckLevel::Archived) => Ok(AckLevel::Archived),
        Err(_) => Err(InvalidMessage(format!("unknown ack level {value}"))),
    }
}

fn proto_ack(ack: AckLevel) -> proto::AckLevel {
    match ack {
        AckLevel::Queued => proto::AckLevel::Queued,
        AckLevel::Archived => proto::AckLevel::Archived,
    }
}

/// A state filter: `None` for unspecified.
fn state_filter(value: i32) -> Result<Option<JobState>, InvalidMessage> {
    match proto::JobState::try_from(value) {
        Ok(proto::JobState::Unspecified) => Ok(None),
        Ok(state) => Ok(Some(job_state(state))),
        Err(_) => Err(InvalidMessage(format!("unknown job state {value}"))),
    }
}

fn job_state(state: proto::JobState) -> JobState {
    match state {
        proto::JobState::Receiving | proto::JobState::Unspecified => JobState::Receiving,
        proto::JobState::Queued => JobState::Queued,
        proto::JobState::Compressing => JobState::Compressing,
        proto::JobState::Archived => JobState::Archived,
        proto::JobState::Failed => JobState::Failed,
        proto::JobState::Cancelled => JobState::Cancelled,
    }
}

fn proto_state(state: JobState) -> proto::JobState {
    match state {
        JobState::Receiving => proto::JobState::Receiving,
        JobState::Queued => proto::JobState::Queued,
        JobState::Compressing => proto::JobState::Compressing,
        JobState::Archived => proto::JobState::Archived,
        JobState::Failed => proto::JobState::Failed,
        JobState::Cancelled => proto::JobState::Cancelled,
    }
}

impl From<Job> for proto::Job {
    fn from(job: Job) -> Self {
        proto::Job {
            job_id: job.id.0,
            shard_id: job.shard_id,
            log_id: job.log_id,
            state: proto_state(job.state) as i32,
            reason: job.reason,
            size: job.size.unwrap_or(0),
            sha256: job
                .sha256
                .map_or_else(Bytes::new, |d| Bytes::copy_from_slice(&d.0)),
            kind: proto_kind(job.kind) as i32,
            ack: proto_ack(job.ack) as i32,
            zstd_level: job.zstd_level,
            archive_size: job.archive_size.unwrap_or(0),
            created_unix_ms: job.created_unix_ms,
            updated_unix_ms: job.updated_unix_ms,
            json_entries: job.json.map(|j| j.entries),
            first_timestamp: job.json.and_then(|j| j.first_timestamp),
            last_timestamp: job.json.and_then(|j| j.last_timestamp),
            expired_unix_ms: job.expired_unix_ms.unwrap_or(0),
            attempts: job.attempts,
            failure_kind: job
                .failure
                .map(|k| k.as_str().to_owned())
                .unwrap_or_default(),
            failure_class: proto_class(job.failure_class) as i32,
        }
    }
}

fn proto_class(class: Option<FailureClass>) -> proto::FailureClass {
    match class {
        None => proto::FailureClass::Unspecified,
        Some(FailureClass::Retryable) => proto::FailureClass::Retryable,
        Some(FailureClass::Permanent) => proto::FailureClass::Permanent,
    }
}

fn failure_class(value: i32) -> Option<FailureClass> {
    match proto::FailureClass::try_from(value) {
        Ok(proto::FailureClass::Retryable) => Some(FailureClass::Retryable),
        Ok(proto::FailureClass::Permanent) => Some(FailureClass::Permanent),
        _ => None,
    }
}

/// A job as the server described it. Unknown enum values (a newer server)
/// read as the closest known ones rather than failing the call.
impl From<&proto::Job> for Job {
    fn from(job: &proto::Job) -> Self {
        Job {
            id: JobId(job.job_id),
            shard_id: job.shard_id,
            log_id: job.log_id,
            state: job_state(proto::JobState::try_from(job.state).unwrap_or_default()),
            reason: job.reason.clone(),
            failure: job.failure_kind.parse::<FailureKind>().ok(),
            failure_class: failure_class(job.failure_class),
            size: Some(job.size),
            sha256: Digest::from_slice(&job.sha256),
            kind: content_kind(job.kind).unwrap_or_default(),
            ack: ack_level(job.ack).unwrap_or_default(),
            zstd_level: job.zstd_level,
            archive_size: (job.archive_size > 0).then_some(job.archive_size),
            json: job.json_entries.map(|entries| JsonStats {
                entries,
                first_timestamp: job.first_timestamp,
                last_timestamp: job.last_timestamp,
            }),
            expired_unix_ms: (job.expired_unix_ms > 0).then_some(job.expired_unix_ms),
            attempts: job.attempts,
            content_xxh3: None,
            created_unix_ms: job.created_unix_ms,
            updated_unix_ms: job.updated_unix_ms,
        }
    }
}

/// Page size of ListJobs when the request leaves it at 0, and its cap.
pub const DEFAULT_PAGE_SIZE: usize = 100;
pub const MAX_PAGE_SIZE: usize = 1000;

impl TryFrom<proto::ListJobsRequest> for JobFilter {
    type Error = InvalidMessage;

    fn try_from(request: proto::ListJobsRequest) -> Result<Self, InvalidMessage> {
        let after = match request.page_token.as_str() {
            "" => None,
            token => Some(
                token
                    .parse()
                    .map_err(|_| InvalidMessage(format!("bad page_token {token:?}")))?,
            ),
        };
        Ok(JobFilter {
            shard_id: request.shard_id,
            state: state_filter(request.state)?,
            log_id_min: request.log_id_min,
            log_id_max: request.log_id_max,
            after,
            limit: match request.page_size as usize {
                0 => DEFAULT_PAGE_SIZE,
                n => n.min(MAX_PAGE_SIZE),
            },
        })
    }
}

impl From<&JobFilter> for proto::ListJobsRequest {
    fn from(filter: &JobFilter) -> Self {
        proto::ListJobsRequest {
            shard_id: filter.shard_id,
            state: filter.state.map_or(0, |s| proto_state(s) as i32),
            log_id_min: filter.log_id_min,
            log_id_max: filter.log_id_max,
            page_size: filter.limit.min(MAX_PAGE_SIZE) as u32,
            page_token: filter.after.map(|id| id.to_string()).unwrap_or_default(),
        }
    }
}

/// The page token of the page after `jobs`: empty on the last page.
pub fn next_page_token(jobs: &[Job], limit: usize) -> String {
    match jobs.last() {
        Some(last) if jobs.len() == limit => last.id.to_string(),
        _ => String::new(),
    }
}

/// The job id a page token stands for.
pub fn page_after(token: &str) -> Option<JobId> {
    token.parse().ok()
}

impl From<ShardStatus> for proto::Shard {
    fn from(status: ShardStatus) -> Self {
        proto::Shard {
            shard_id: status.shard_id,
            queue_depth: status.queued,
            receiving: status.receiving,
            running: status.running,
            archived: status.archived,
            failed: status.failed,
            bytes_in: status.bytes_in,
            bytes_out: status.bytes_out,
            archived_watermark: status.archived_watermark,
            last_archived_unix_ms: status.last_archived_unix_ms,
            held_by: status.held_by.map(|b| proto::Blocker {
                log_id: b.log_id,
                job_id: b.job_id.map(|id| id.0),
                state: b.state.map_or(0, |s| proto_state(s) as i32),
                reason: b.reason,
                failure_class: proto_class(b.failure_class) as i32,
                since_unix_ms: b.since_unix_ms,
            }),
            resolved: status.resolved,
            failed_segments: status.failed_segments,
        }
    }
}

impl From<proto::Shard> for ShardStatus {
    fn from(shard: proto::Shard) -> Self {
        ShardStatus {
            shard_id: shard.shard_id,
            receiving: shard.receiving,
            queued: shard.queue_depth,
            running: shard.running,
            archived: shard.archived,
            failed: shard.failed,
            bytes_in: shard.bytes_in,
            bytes_out: shard.bytes_out,
            archived_watermark: shard.archived_watermark,
            last_archived_unix_ms: shard.last_archived_unix_ms,
            held_by: shard.held_by.map(|b| Blocker {
                log_id: b.log_id,
                job_id: b.job_id.map(JobId),
                state: state_filter(b.state).ok().flatten(),
                reason: b.reason,
                failure_class: failure_class(b.failure_class),
                since_unix_ms: b.since_unix_ms,
            }),
            resolved: shard.resolved,
            failed_segments: shard.failed_segments,
        }
    }
}

impl From<Resolution> for proto::Resolution {
    fn from(r: Resolution) -> Self {
        proto::Resolution {
            shard_id: r.shard_id,
            log_id: r.log_id,
            reason: r.reason,
            by: r.by,
            unix_ms: r.unix_ms,
        }
    }
}

impl From<proto::Resolution> for Resolution {
    fn from(r: proto::Resolution) -> Self {
        Resolution {
            shard_id: r.shard_id,
            log_id: r.log_id,
            reason: r.reason,
            by: r.by,
            unix_ms: r.unix_ms,
        }
    }
}

impl From<VerifyReport> for proto::VerifyReply {
    fn from(report: VerifyReport) -> Self {
        proto::VerifyReply {
            archives_checked: report.archives_checked,
            bytes_checked: report.bytes_checked,
            problems: report
                .problems
                .into_iter()
                .map(|p| proto::VerifyProblem {
                    shard_id: p.shard_id,
                    log_id: p.log_id,
                    job_id: p.job_id.0,
                    problem: p.problem,
                })
                .collect(),
            gaps: report
                .gaps
                .into_iter()
                .map(|g| proto::LogIdGap {
                    shard_id: g.shard_id,
                    first_missing: g.first_missing,
                    last_missing: g.last_missing,
                })
                .collect(),
            resolved: report.resolved.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<proto::VerifyReply> for VerifyReport {
    fn from(reply: proto::VerifyReply) -> Self {
        VerifyReport {
            archives_checked: reply.archives_checked,
            bytes_checked: reply.bytes_checked,
            problems: reply
                .problems
                .into_iter()
                .map(|p| VerifyProblem {
                    shard_id: p.shard_id,
                    log_id: p.log_id,
                    job_id: JobId(p.job_id),
                    problem: p.problem,
                })
                .collect(),
            gaps: reply
                .gaps
                .into_iter()
                .map(|g| LogIdGap {
                    shard_id: g.shard_id,
                    first_missing: g.first_missing,
                    last_missing: g.last_missing,
                })
                .collect(),
            resolved: reply.resolved.into_iter().map(Into::into).collect(),
        }
    }
}
