//! Domain types shared by every layer. Plain Rust: the protobuf types stop at
//! the API edge (`service`), so nothing below it depends on generated code.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::ErrorKind;

mod ownership;

pub use ownership::Ownership;

/// What receiving a segment proved about it: its size, SHA-256 (verified
/// against the client's) and XXH3-128, so that whatever reads the spool
/// later can check it holds exactly those bytes, cheaply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    pub size: u64,
    pub sha256: Digest,
    pub content_xxh3: u128,
}

pub type ShardId = u32;
pub type LogId = u64;

/// log_ids at or above this are side files (PostgreSQL's history files and
/// backup labels, say): archived like any segment, but not part of the
/// ordered sequence a shard's watermark describes.
pub const SIDE_FILE_LOG_ID: LogId = 1 << 62;

/// A job's number. A type of its own because job ids and log_ids are both
/// u64 and are easy to swap by mistake.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct JobId(pub u64);

impl From<u64> for JobId {
    fn from(id: u64) -> Self {
        JobId(id)
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for JobId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(JobId)
    }
}

/// SHA-256 of a whole segment. Serialized as lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; 32]);

impl Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Digest {
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(Digest)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn of(data: &[u8]) -> Self {
        use sha2::{Digest as _, Sha256};
        Digest(Sha256::digest(data).into())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.to_hex())
    }
}

impl FromStr for Digest {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = hex::decode(s).map_err(|e| format!("not a hex SHA-256: {e}"))?;
        Digest::from_slice(&bytes)
            .ok_or_else(|| format!("a SHA-256 has 32 bytes, got {}", bytes.len()))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ContentKind {
    #[default]
    Raw,
    JsonLines,
}

impl ContentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ContentKind::Raw => "raw",
            ContentKind::JsonLines => "json_lines",
        }
    }
}

impl FromStr for ContentKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().replace('-', "_").as_str() {
            "raw" => Ok(ContentKind::Raw),
            "json_lines" | "jsonl" => Ok(ContentKind::JsonLines),
            other => Err(format!(
                "unknown content kind {other:?} (raw or json-lines)"
            )),
        }
    }
}

/// When the service answers a push.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AckLevel {
    /// Bytes durably spooled, job row committed, job on its queue.
    #[default]
    Queued,
    /// The archive itself is durable.
    Archived,
}

impl AckLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            AckLevel::Queued => "queued",
            AckLevel::Archived => "archived",
        }
    }
}

impl FromStr for AckLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "queued" => Ok(AckLevel::Queued),
            "archived" => Ok(AckLevel::Archived),
            other => Err(format!("unknown ack level {other:?} (queued or archived)")),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobState {
    Receiving,
    Queued,
    Compressing,
    Archived,
    Failed,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 6] = [
        JobState::Receiving,
        JobState::Queued,
        JobState::Compressing,
        JobState::Archived,
        JobState::Failed,
        JobState::Cancelled,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Archived | JobState::Failed | JobState::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Receiving => "RECEIVING",
            JobState::Queued => "QUEUED",
            JobState::Compressing => "COMPRESSING",
            JobState::Archived => "ARCHIVED",
            JobState::Failed => "FAILED",
            JobState::Cancelled => "CANCELLED",
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let upper = s.to_ascii_uppercase();
        JobState::ALL
            .into_iter()
            .find(|state| state.as_str() == upper)
            .ok_or_else(|| format!("unknown job state {s:?}"))
    }
}

/// Why a job FAILED, so a caller waiting for ARCHIVED gets a precise status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The segment itself is bad: size, digest or a JSON line.
    InvalidData,
    /// Stored bytes no longer match what was received.
    Integrity,
    /// The disk is full.
    NoSpace,
    /// Any other I/O or internal error.
    Internal,
    /// The upload or the service stopped before the segment was complete.
    Interrupted,
    /// An archive of other bytes stands under the segment's key.
    Conflict,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::InvalidData => "invalid_data",
            FailureKind::Integrity => "integrity",
            FailureKind::NoSpace => "no_space",
            FailureKind::Internal => "internal",
            FailureKind::Interrupted => "interrupted",
            FailureKind::Conflict => "conflict",
        }
    }
}

/// Whether pushing a failed segment again can succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    /// It may: the upload was cut, the disk was full, our copy was damaged.
    Retryable,
    /// It will not: the bytes or the request are wrong, or another segment's
    /// archive holds the key. Fix the cause, or resolve the segment.
    Permanent,
}

impl FailureKind {
    pub fn class(self) -> FailureClass {
        match self {
            FailureKind::InvalidData | FailureKind::Conflict => FailureClass::Permanent,
            FailureKind::Integrity
            | FailureKind::NoSpace
            | FailureKind::Internal
            | FailureKind::Interrupted => FailureClass::Retryable,
        }
    }

    /// What a caller that waited for ARCHIVED is told about a job that failed this way.
    pub fn error_kind(self) -> ErrorKind {
        match self {
            FailureKind::InvalidData => ErrorKind::InvalidArgument,
            FailureKind::Integrity => ErrorKind::DataLoss,
            FailureKind::NoSpace => ErrorKind::ResourceExhausted,
            FailureKind::Interrupted => ErrorKind::Aborted,
            FailureKind::Internal => ErrorKind::Internal,
            FailureKind::Conflict => ErrorKind::AlreadyExists,
        }
    }
}

impl FromStr for FailureKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            FailureKind::InvalidData,
            FailureKind::Integrity,
            FailureKind::NoSpace,
            FailureKind::Internal,
            FailureKind::Interrupted,
            FailureKind::Conflict,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == s)
        .ok_or_else(|| format!("unknown failure kind {s:?}"))
    }
}

/// The header of a push, as the engine sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentRequest {
    pub shard_id: ShardId,
    pub log_id: LogId,
    /// Declared size, if the client knows it up front (else in the trailer).
    pub size: Option<u64>,
    /// Declared SHA-256, if the client knows it up front (else in the trailer).
    pub sha256: Option<Digest>,
    pub kind: ContentKind,
    pub ack: AckLevel,
    /// The server's `compression_level` when `None`.
    pub zstd_level: Option<i32>,
}

/// Size and digest sent after the data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Trailer {
    pub size: Option<u64>,
    pub sha256: Option<Digest>,
}

/// Which jobs to list: a page of at most `limit`, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobFilter {
    pub shard_id: Option<ShardId>,
    pub state: Option<JobState>,
    pub log_id_min: Option<LogId>,
    pub log_id_max: Option<LogId>,
    /// Only jobs with a larger id: the page token.
    pub after: Option<JobId>,
    pub limit: usize,
}

/// Statistics of a JSON-lines segment, gathered while it is compressed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsonStats {
    pub entries: u64,
    pub first_timestamp: Option<i64>,
    pub last_timestamp: Option<i64>,
}

/// Everything known about one archive job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    pub shard_id: ShardId,
    pub log_id: LogId,
    pub state: JobState,
    /// Why the job failed or was cancelled; empty otherwise.
    pub reason: String,
    /// What kind of failure, for FAILED jobs.
    pub failure: Option<FailureKind>,
    /// Whether a re-push can succeed, for FAILED jobs (from `failure`).
    pub failure_class: Option<FailureClass>,
    /// Size and digest of the segment: declared by the client, verified on receipt.
    pub size: Option<u64>,
    pub sha256: Option<Digest>,
    pub kind: ContentKind,
    pub ack: AckLevel,
    pub zstd_level: i32,
    pub archive_size: Option<u64>,
    pub json: Option<JsonStats>,
    /// When retention removed the archive; the job stays ARCHIVED.
    pub expired_unix_ms: Option<i64>,
    /// How many times compression was put off by a failure that passes
    /// (a full disk, the object store down); the reason says the last one.
    pub attempts: u32,
    /// XXH3-128 of the segment as received; the worker checks the spool against it.
    #[serde(skip)]
    pub content_xxh3: Option<u128>,
    pub created_unix_ms: i64,
    pub updated_unix_ms: i64,
}

/// The segment that holds a shard's watermark back, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blocker {
    pub log_id: LogId,
    /// Its latest job; `None` for a segment known only as missing (a gap
    /// found when jobs were rebuilt from the archive store).
    pub job_id: Option<JobId>,
    pub state: Option<JobState>,
    pub reason: String,
    pub failure_class: Option<FailureClass>,
    /// Its first push (or when the gap was found).
    pub since_unix_ms: i64,
}

/// A segment an operator gave up, so its shard's watermark may pass it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolution {
    pub shard_id: ShardId,
    pub log_id: LogId,
    pub reason: String,
    /// The token that resolved it (empty without authentication).
    pub by: String,
    pub unix_ms: i64,
}

/// Per-shard counters and the deletion watermark.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardStatus {
    pub shard_id: ShardId,
    pub receiving: u64,
    pub queued: u64,
    pub running: u64,
    pub archived: u64,
    pub failed: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub archived_watermark: Option<LogId>,
    pub last_archived_unix_ms: Option<i64>,
    /// What holds the watermark, if anything does.
    pub held_by: Option<Blocker>,
    pub resolved: u64,
    /// Segments whose latest job FAILED, not archived or resolved since.
    pub failed_segments: u64,
}

/// What `verify` found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    pub archives_checked: u64,
    pub bytes_checked: u64,
    pub problems: Vec<VerifyProblem>,
    pub gaps: Vec<LogIdGap>,
    /// Segments given up by an operator: not archived, not counted as gaps.
    pub resolved: Vec<Resolution>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyProblem {
    pub shard_id: ShardId,
    pub log_id: LogId,
    pub job_id: JobId,
    pub problem: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogIdGap {
    pub shard_id: ShardId,
    pub first_missing: LogId,
    pub last_missing: LogId,
}

pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
