//! The wire edge: protobuf ⇄ domain, for the service and the client alike. The
//! only place that knows both.

use tonic::Status;

use crate::proto;
use crate::queue::{SegmentRequest, Trailer};
use crate::types::{
    AckLevel, ContentKind, Digest, Job, JobState, JsonStats, LogIdGap, ShardStatus, VerifyProblem,
    VerifyReport,
};

pub fn segment_request(header: proto::SegmentHeader) -> Result<SegmentRequest, Status> {
    let kind = match proto::ContentKind::try_from(header.kind) {
        Ok(proto::ContentKind::Unspecified | proto::ContentKind::Raw) => ContentKind::Raw,
        Ok(proto::ContentKind::JsonLines) => ContentKind::JsonLines,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "unknown content kind {}",
                header.kind
            )));
        }
    };
    let ack = match proto::AckLevel::try_from(header.ack) {
        Ok(proto::AckLevel::Unspecified | proto::AckLevel::Queued) => AckLevel::Queued,
        Ok(proto::AckLevel::Archived) => AckLevel::Archived,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "unknown ack level {}",
                header.ack
            )));
        }
    };
    Ok(SegmentRequest {
        shard_id: header.shard_id,
        log_id: header.log_id,
        size: header.size,
        sha256: digest(&header.sha256, "header")?,
        kind,
        ack,
        zstd_level: header.zstd_level,
    })
}

pub fn trailer(trailer: proto::SegmentTrailer) -> Result<Trailer, Status> {
    Ok(Trailer {
        size: trailer.size,
        sha256: digest(&trailer.sha256, "trailer")?,
    })
}

fn digest(bytes: &[u8], place: &str) -> Result<Option<Digest>, Status> {
    if bytes.is_empty() {
        return Ok(None);
    }
    Digest::from_slice(bytes).map(Some).ok_or_else(|| {
        Status::invalid_argument(format!(
            "sha256 in the {place} has {} bytes; a SHA-256 has 32",
            bytes.len()
        ))
    })
}

pub fn state_filter(state: i32) -> Result<Option<JobState>, Status> {
    match proto::JobState::try_from(state) {
        Ok(proto::JobState::Unspecified) => Ok(None),
        Ok(state) => Ok(Some(job_state_from_proto(state))),
        Err(_) => Err(Status::invalid_argument(format!(
            "unknown job state {state}"
        ))),
    }
}

fn job_state_from_proto(state: proto::JobState) -> JobState {
    match state {
        proto::JobState::Receiving | proto::JobState::Unspecified => JobState::Receiving,
        proto::JobState::Queued => JobState::Queued,
        proto::JobState::Compressing => JobState::Compressing,
        proto::JobState::Archived => JobState::Archived,
        proto::JobState::Failed => JobState::Failed,
        proto::JobState::Cancelled => JobState::Cancelled,
    }
}

pub fn job_state(state: JobState) -> proto::JobState {
    match state {
        JobState::Receiving => proto::JobState::Receiving,
        JobState::Queued => proto::JobState::Queued,
        JobState::Compressing => proto::JobState::Compressing,
        JobState::Archived => proto::JobState::Archived,
        JobState::Failed => proto::JobState::Failed,
        JobState::Cancelled => proto::JobState::Cancelled,
    }
}

pub fn job(job: Job) -> proto::Job {
    proto::Job {
        job_id: job.id,
        shard_id: job.shard_id,
        log_id: job.log_id,
        state: job_state(job.state) as i32,
        reason: job.reason,
        size: job.size.unwrap_or(0),
        sha256: job.sha256.map(|d| d.0.to_vec()).unwrap_or_default().into(),
        kind: match job.kind {
            ContentKind::Raw => proto::ContentKind::Raw,
            ContentKind::JsonLines => proto::ContentKind::JsonLines,
        } as i32,
        ack: match job.ack {
            AckLevel::Queued => proto::AckLevel::Queued,
            AckLevel::Archived => proto::AckLevel::Archived,
        } as i32,
        zstd_level: job.zstd_level,
        archive_size: job.archive_size.unwrap_or(0),
        created_unix_ms: job.created_unix_ms,
        updated_unix_ms: job.updated_unix_ms,
        json_entries: job.json.map(|j| j.entries),
        first_timestamp: job.json.and_then(|j| j.first_timestamp),
        last_timestamp: job.json.and_then(|j| j.last_timestamp),
        expired_unix_ms: job.expired_unix_ms.unwrap_or(0),
    }
}

pub fn shard(status: ShardStatus) -> proto::Shard {
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
    }
}

pub fn verify_reply(report: VerifyReport) -> proto::VerifyReply {
    proto::VerifyReply {
        archives_checked: report.archives_checked,
        bytes_checked: report.bytes_checked,
        problems: report
            .problems
            .into_iter()
            .map(|p| proto::VerifyProblem {
                shard_id: p.shard_id,
                log_id: p.log_id,
                job_id: p.job_id,
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
    }
}

pub fn verify_report(reply: proto::VerifyReply) -> VerifyReport {
    VerifyReport {
        archives_checked: reply.archives_checked,
        bytes_checked: reply.bytes_checked,
        problems: reply
            .problems
            .into_iter()
            .map(|p| VerifyProblem {
                shard_id: p.shard_id,
                log_id: p.log_id,
                job_id: p.job_id,
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
    }
}

/// The domain view of a proto job (for the client library).
pub fn job_from_proto(job: &proto::Job) -> Job {
    Job {
        id: job.job_id,
        shard_id: job.shard_id,
        log_id: job.log_id,
        state: job_state_from_proto(
            proto::JobState::try_from(job.state).unwrap_or(proto::JobState::Unspecified),
        ),
        reason: job.reason.clone(),
        failure: None,
        size: Some(job.size),
        sha256: Digest::from_slice(&job.sha256),
        kind: if job.kind == proto::ContentKind::JsonLines as i32 {
            ContentKind::JsonLines
        } else {
            ContentKind::Raw
        },
        ack: if job.ack == proto::AckLevel::Archived as i32 {
            AckLevel::Archived
        } else {
            AckLevel::Queued
        },
        zstd_level: job.zstd_level,
        archive_size: (job.archive_size > 0).then_some(job.archive_size),
        json: job.json_entries.map(|entries| JsonStats {
            entries,
            first_timestamp: job.first_timestamp,
            last_timestamp: job.last_timestamp,
        }),
        expired_unix_ms: (job.expired_unix_ms > 0).then_some(job.expired_unix_ms),
        content_xxh3: None,
        created_unix_ms: job.created_unix_ms,
        updated_unix_ms: job.updated_unix_ms,
    }
}
