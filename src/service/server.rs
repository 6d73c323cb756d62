//! Assembles the gRPC server: our service, standard health and reflection, and
//! the shutdown order that keeps acknowledgements true: refuse new pushes, let
//! running compressions finish within `shutdown_grace`, leave queued jobs
//! durable for the next start, end watch streams, then stop listening.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic_health::ServingStatus;

use super::WalArchiverService;
use super::auth::{Tokens, TokensError};
use super::guard::GuardLayer;
use crate::config::Config;
use crate::proto::FILE_DESCRIPTOR_SET;
use crate::proto::wal_archiver_server::WalArchiverServer;
use crate::queue::{Archiver, QueueError};
use crate::telemetry;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use std::sync::{Arc, OnceLock};

/// Room for the non-data fields of a request next to a `max_chunk_size` chunk.
const MESSAGE_OVERHEAD: usize = 64 << 10;
/// HTTP/2 flow-control windows: large enough that one upload stream is not
/// throttled by round trips, small enough to bound buffered bytes per stream.
const STREAM_WINDOW: u32 = 4 << 20;
const CONNECTION_WINDOW: u32 = 16 << 20;
/// Largest HTTP/2 frame a client may send: with the 16 KiB default a 1 MiB
/// chunk costs 64 frames, each a wakeup of the connection and stream tasks.
const MAX_FRAME_SIZE: u32 = 1 << 20;
/// How often state gauges are read from the jobs database.
const GAUGE_REFRESH: Duration = Duration::from_secs(2);
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
];
/// How often the tokens file is checked for changes (SIGHUP reloads at once).
const TOKENS_POLL: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Queue(#[from] QueueError),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection service: {0}")]
    Reflection(String),
    #[error("server task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("{0}")]
    Tokens(#[from] TokensError),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("metrics listener {0}")]
    Metrics(String),
}

/// Binds `config.listen` and serves until `shutdown` resolves. `on_listening`
/// is told the bound address (useful with port 0).
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
    on_listening: impl FnOnce(SocketAddr) + Send,
) -> Result<(), ServeError> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.listen,
            source,
        })?;
    let local = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: config.listen,
        source,
    })?;

    let tokens = match &config.tokens_file {
        Some(path) => {
            let tokens = Tokens::load(path)?;
            tokens.watch(path.clone(), TOKENS_POLL);
            tokens
        }
        None => Tokens::disabled(),
    };
    if !config.listen.ip().is_loopback()
        && (config.tls_cert.is_none() || config.tokens_file.is_none())
    {
        tracing::warn!(
            listen = %config.listen,
            tls = config.tls_cert.is_some(),
            authentication = config.tokens_file.is_some(),
            "!!! LISTENING ON A NON-LOOPBACK ADDRESS WITHOUT BOTH TLS AND TOKENS: anyone who can reach it can \
             read or push WAL in the clear !!!"
        );
    }
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, ServingStatus::NotServing).await;
    install_metrics(&config)?;
    let ready: Arc<OnceLock<Archiver>> = Arc::default();
    let stopping = CancellationToken::new();
    let handlers = WalArchiverService::new(ready.clone(), stopping.clone(), tokens.clone());
    let service = WalArchiverServer::new(handlers)
        .max_decoding_message_size(config.max_chunk_size + MESSAGE_OVERHEAD)
        .max_encoding_message_size(config.max_chunk_size + MESSAGE_OVERHEAD);
    // Health and reflection stay open; our service needs a token when auth is on.
    let service = InterceptedService::new(service, move |request| tokens.authenticate(request));
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let guard = GuardLayer::new(
        config.max_concurrent_requests,
        Duration::from_millis(config.unary_timeout_ms),
    );
    let server = tls(Server::builder(), &config)?
        .initial_stream_window_size(Some(STREAM_WINDOW))
        .initial_connection_window_size(Some(CONNECTION_WINDOW))
        .max_frame_size(Some(MAX_FRAME_SIZE))
        .max_concurrent_streams(Some(config.max_streams_per_connection))
        .layer(guard)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(service)
        .serve_with_incoming_shutdown(
            TcpListenerStream::new(listener),
            stopping.clone().cancelled_owned(),
        );
    let mut server = tokio::spawn(server);

    // Health says NOT_SERVING and calls get UNAVAILABLE until recovery is done.
    tracing::info!(%local, data_dir = %config.data_dir.display(), "recovering");
    let archiver_config = config.clone();
    let opened = tokio::task::spawn_blocking(move || Archiver::open(archiver_config)).await;
    let archiver = match opened {
        Ok(Ok((archiver, _report))) => archiver,
        Ok(Err(e)) => {
            stopping.cancel();
            return Err(e.into());
        }
        Err(e) => {
            stopping.cancel();
            return Err(e.into());
        }
    };
    let _ = ready.set(archiver.clone());
    if config.metrics_listen.is_some() {
        spawn_gauges(archiver.clone(), stopping.clone());
    }
    if config.retain_days > 0 || config.retain_count > 0 {
        spawn_retention(
            archiver.clone(),
            Duration::from_secs(config.retention_interval.max(1)),
            stopping.clone(),
        );
    }
    set_health(&health, ServingStatus::Serving).await;
    tracing::info!(%local, workers = config.workers(), "serving");
    on_listening(local);

    tokio::select! {
        () = shutdown => {}
        finished = &mut server => {
            archiver.shutdown(Duration::ZERO).await;
            return Ok(finished??);
        }
    }
    let grace = Duration::from_secs(config.shutdown_grace);
    tracing::info!(
        grace_secs = config.shutdown_grace,
        "draining: new pushes are refused"
    );
    set_health(&health, ServingStatus::NotServing).await;
    archiver.start_draining();
    archiver.shutdown(grace).await;
    stopping.cancel();
    match tokio::time::timeout(grace.max(Duration::from_secs(1)), &mut server).await {
        Ok(finished) => finished??,
        Err(_) => {
            tracing::warn!(
                "uploads still open after the grace period: closing them; their jobs fail as interrupted"
            );
            server.abort();
        }
    }
    tracing::info!("stopped");
    Ok(())
}

fn install_metrics(config: &Config) -> Result<(), ServeError> {
    let Some(addr) = config.metrics_listen else {
        return Ok(());
    };
    let failed = |e: &dyn std::fmt::Display| ServeError::Metrics(format!("{addr}: {e}"));
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .map_err(|e| failed(&e))?
        .install()
        .map_err(|e| failed(&e))?;
    tracing::info!(%addr, "metrics on http://{addr}/metrics");
    Ok(())
}

/// Refreshes the gauges that describe state (jobs by state, queue depths,
/// watermarks, spool size) from the jobs database.
fn spawn_gauges(archiver: Archiver, stopping: CancellationToken) {
    tokio::spawn(async move {
        loop {
            match archiver.gauges().await {
                Ok(gauges) => {
                    for (state, count) in gauges.jobs {
                        metrics::gauge!(telemetry::JOBS, "state" => state.as_str())
                            .set(count as f64);
                    }
                    for shard in gauges.shards {
                        let id = shard.shard_id.to_string();
                        metrics::gauge!(telemetry::QUEUE_DEPTH, "shard" => id.clone())
                            .set(shard.queued as f64);
                        if let Some(mark) = shard.archived_watermark {
                            metrics::gauge!(telemetry::WATERMARK, "shard" => id).set(mark as f64);
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
    });
}

fn spawn_retention(archiver: Archiver, every: Duration, stopping: CancellationToken) {
    tokio::spawn(async move {
        loop {
            match archiver.apply_retention().await {
                Ok(0) => {}
                Ok(removed) => tracing::info!(removed, "retention pass done"),
                Err(e) => tracing::error!(error = %e, "retention pass failed"),
            }
            tokio::select! {
                () = stopping.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    });
}

fn tls(builder: Server, config: &Config) -> Result<Server, ServeError> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(builder);
    };
    let read = |path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| ServeError::Tls(format!("cannot read {}: {e}", path.display())))
    };
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?));
    if let Some(ca) = &config.tls_client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(read(ca)?));
    }
    builder
        .tls_config(tls)
        .map_err(|e| ServeError::Tls(e.to_string()))
}

async fn set_health(health: &tonic_health::server::HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    health
        .set_service_status(
            <WalArchiverServer<WalArchiverService> as tonic::server::NamedService>::NAME,
            status,
        )
        .await;
}
