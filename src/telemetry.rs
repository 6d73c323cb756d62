//! Metric names and their help text, in one place so the code that records
//! them, the `/metrics` page and docs/OPERATIONS.md agree. Recording goes
//! through the `metrics` facade: a no-op until the service installs the
//! Prometheus exporter (`metrics_listen`).

pub const RECEIVED_BYTES: &str = "wal_archiver_received_bytes_total";
pub const ARCHIVED_BYTES: &str = "wal_archiver_archived_bytes_total";
pub const ARCHIVE_WRITTEN_BYTES: &str = "wal_archiver_archive_written_bytes_total";
pub const JOBS_FINISHED: &str = "wal_archiver_jobs_finished_total";
pub const REFUSALS: &str = "wal_archiver_refusals_total";
pub const RETENTION_DELETED: &str = "wal_archiver_retention_deleted_total";
pub const ACK_LATENCY: &str = "wal_archiver_ack_latency_seconds";
pub const JOB_DURATION: &str = "wal_archiver_job_duration_seconds";
pub const JOBS: &str = "wal_archiver_jobs";
pub const QUEUE_DEPTH: &str = "wal_archiver_queue_depth";
pub const WATERMARK: &str = "wal_archiver_archived_watermark";
pub const SPOOL_BYTES: &str = "wal_archiver_spool_bytes";
pub const COMPRESSION_RATIO: &str = "wal_archiver_compression_ratio";
pub const JOB_RETRIES: &str = "wal_archiver_job_retries_total";
pub const JOB_STALLS: &str = "wal_archiver_job_stalls_total";
pub const FAILED_SEGMENTS: &str = "wal_archiver_failed_segments";
pub const OLDEST_UNARCHIVED_AGE: &str = "wal_archiver_oldest_unarchived_age_seconds";
pub const LAST_ARCHIVED: &str = "wal_archiver_last_archived_timestamp_seconds";
pub const SHARDS: &str = "wal_archiver_shards";
pub const BUILD_INFO: &str = "wal_archiver_build_info";
pub const LAST_VERIFY: &str = "wal_archiver_last_verify_timestamp_seconds";
pub const VERIFY_PROBLEMS: &str = "wal_archiver_verify_problems";
pub const LAST_RETENTION: &str = "wal_archiver_last_retention_timestamp_seconds";
pub const TOKEN_RELOAD_FAILURES: &str = "wal_archiver_token_reload_failures_total";

/// Every metric with its `# HELP` text.
const HELP: &[(&str, &str)] = &[
    (RECEIVED_BYTES, "Segment bytes received and acknowledged."),
    (ARCHIVED_BYTES, "Segment bytes archived."),
    (ARCHIVE_WRITTEN_BYTES, "Archive bytes written to the store."),
    (
        JOBS_FINISHED,
        "Jobs that reached a terminal state, by state.",
    ),
    (REFUSALS, "Calls answered with an error, by gRPC code."),
    (RETENTION_DELETED, "Archives removed by retention."),
    (
        ACK_LATENCY,
        "Time from a push's first message to its answer, by ack level.",
    ),
    (JOB_DURATION, "Time from a job's creation to its end."),
    (
        JOBS,
        "Jobs by state (FAILED and CANCELLED count every job ever so ended).",
    ),
    (
        QUEUE_DEPTH,
        "Segments of a shard received, queued or compressing.",
    ),
    (
        WATERMARK,
        "A shard's archived watermark: WAL at or below it may be deleted.",
    ),
    (
        SPOOL_BYTES,
        "Bytes in the spool: acknowledged, not archived yet.",
    ),
    (
        COMPRESSION_RATIO,
        "Segment bytes per archive byte, over everything archived.",
    ),
    (
        JOB_RETRIES,
        "Jobs put off by a failure that passes (full disk, store unreachable).",
    ),
    (
        JOB_STALLS,
        "Compressions reported stalled (no progress for stall_timeout).",
    ),
    (
        FAILED_SEGMENTS,
        "Segments whose latest job FAILED, not archived or resolved since; falls when they are.",
    ),
    (
        OLDEST_UNARCHIVED_AGE,
        "Seconds the segment holding a shard's watermark has waited; 0 when nothing holds it.",
    ),
    (LAST_ARCHIVED, "Unix time of a shard's newest archive."),
    (SHARDS, "Shards this server serves and knows."),
    (BUILD_INFO, "Always 1; the labels say which build runs."),
    (LAST_VERIFY, "Unix time of the last verify."),
    (VERIFY_PROBLEMS, "Problems and gaps the last verify found."),
    (LAST_RETENTION, "Unix time of the last retention pass."),
    (
        TOKEN_RELOAD_FAILURES,
        "Reloads of the tokens file that were refused (the previous tokens stayed).",
    ),
];

/// Registers the help text of every metric, and the build's identity.
pub fn describe() {
    for (name, help) in HELP {
        // The facade keeps one description per name whatever its kind.
        metrics::describe_gauge!(*name, *help);
    }
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// Now, as Prometheus timestamps are: seconds since the epoch.
pub fn unix_seconds() -> f64 {
    crate::types::now_unix_ms() as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    /// An alert on a metric nobody emits would never fire.
    #[test]
    fn every_metric_the_alerts_use_is_emitted() {
        let rules = include_str!("../deploy/prometheus/alerts.yaml");
        let known: Vec<&str> = super::HELP.iter().map(|(name, _)| *name).collect();
        let mut used = 0;
        for word in rules.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("wal_archiver_") && !word.starts_with("wal_archiver-") {
                assert!(
                    known.contains(&word),
                    "alerts.yaml uses {word}, which is not emitted"
                );
                used += 1;
            }
        }
        assert!(used >= 8, "the alert rules were read");
    }
}
