//! Metric names, in one place so the code that records them and
//! docs/OPERATIONS.md agree. Recording goes through the `metrics` facade: a
//! no-op until the service installs the Prometheus exporter (`metrics_listen`).

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
