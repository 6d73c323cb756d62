//! What the server runs beside the handlers: the Prometheus exporter and the
//! refresh of its state gauges, and the retention pass.

use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::engine::Archiver;
use crate::telemetry;

/// How often state gauges are read from the jobs database.
const GAUGE_REFRESH: Duration = Duration::from_secs(2);
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
];

/// Serves Prometheus metrics on `metrics_listen`, if set.
pub fn install_metrics(config: &Config) -> Result<(), String> {
    let Some(addr) = config.metrics_listen else {
        return Ok(());
    };
    let failed = |e: &dyn std::fmt::Display| format!("{addr}: {e}");
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .map_err(|e| failed(&e))?
        .install()
        .map_err(|e| failed(&e))?;
    telemetry::describe();
    tracing::info!(%addr, "metrics on http://{addr}/metrics");
    Ok(())
}

/// Starts the loops the configuration asks for; they end with `stopping`.
pub fn spawn(config: &Config, archiver: &Archiver, stopping: &CancellationToken) {
    if config.metrics_listen.is_some() {
        tokio::spawn(refresh_gauges(
            archiver.clone(),
            config.metrics_shard_labels,
            stopping.clone(),
        ));
    }
    if config.retain_days > 0 || config.retain_count > 0 {
        let every = Duration::from_secs(config.retention_interval.max(1));
        tokio::spawn(retention(archiver.clone(), every, stopping.clone()));
    }
}

/// Refreshes the gauges that describe state (jobs by state, and per shard:
/// queue depth, watermark, failed segments, how long the oldest unarchived
/// segment has waited, the last archive) from the jobs database.
async fn refresh_gauges(archiver: Archiver, per_shard: bool, stopping: CancellationToken) {
    loop {
        match archiver.gauges().await {
            Ok(gauges) => {
                for (state, count) in gauges.jobs {
                    metrics::gauge!(telemetry::JOBS, "state" => state.as_str()).set(count as f64);
                }
                let failed: u64 = gauges.shards.iter().map(|s| s.failed_segments).sum();
                metrics::gauge!(telemetry::FAILED_SEGMENTS).set(failed as f64);
                metrics::gauge!(telemetry::SHARDS).set(gauges.shards.len() as f64);
                let now_ms = crate::types::now_unix_ms();
                for shard in gauges.shards.iter().filter(|_| per_shard) {
                    let id = shard.shard_id.to_string();
                    let waiting = shard.receiving + shard.queued + shard.running;
                    metrics::gauge!(telemetry::QUEUE_DEPTH, "shard" => id.clone())
                        .set(waiting as f64);
                    if let Some(mark) = shard.archived_watermark {
                        metrics::gauge!(telemetry::WATERMARK, "shard" => id.clone())
                            .set(mark as f64);
                    }
                    metrics::gauge!(telemetry::FAILED_SEGMENTS, "shard" => id.clone())
                        .set(shard.failed_segments as f64);
                    let age_ms = shard
                        .held_by
                        .as_ref()
                        .map_or(0, |b| (now_ms - b.since_unix_ms).max(0));
                    metrics::gauge!(telemetry::OLDEST_UNARCHIVED_AGE, "shard" => id.clone())
                        .set(age_ms as f64 / 1000.0);
                    if let Some(ms) = shard.last_archived_unix_ms {
                        metrics::gauge!(telemetry::LAST_ARCHIVED, "shard" => id)
                            .set(ms as f64 / 1000.0);
                    }
                }
                metrics::gauge!(telemetry::SPOOL_BYTES).set(gauges.spool_bytes as f64);
                if gauges.archive_bytes > 0 {
                    let ratio = gauges.archived_bytes as f64 / gauges.archive_bytes as f64;
                    metrics::gauge!(telemetry::COMPRESSION_RATIO).set(ratio);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot refresh metrics"),
        }
        tokio::select! {
            () = stopping.cancelled() => return,
            () = tokio::time::sleep(GAUGE_REFRESH) => {}
        }
    }
}

async fn retention(archiver: Archiver, every: Duration, stopping: CancellationToken) {
    loop {
        match archiver.apply_retention().await {
            Ok(removed) => {
                metrics::gauge!(telemetry::LAST_RETENTION).set(telemetry::unix_seconds());
                if removed > 0 {
                    tracing::info!(removed, "retention pass done");
                }
            }
            Err(e) => tracing::error!(error = %e, "retention pass failed"),
        }
        tokio::select! {
            () = stopping.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}
