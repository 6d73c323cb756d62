//! Assembles the gRPC server: our service, standard health and reflection, and
//! the shutdown order that keeps acknowledgements true: refuse new pushes, let
//! running compressions finish within `shutdown_grace`, leave queued jobs
//! durable for the next start, end watch streams, then stop listening.
//! With `health_listen`, a second, plaintext server answers only grpc.health.v1
//! from the same reporter (kubelet's gRPC probes speak no TLS before 1.37), and
//! goes away with the main one.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use super::auth::{Tokens, TokensError};
use super::guard::GuardLayer;
use super::handshake;
use super::{WalArchiverService, background};
use crate::config::{Config, StorageKind};
use crate::engine::{Archiver, EngineError};
use crate::proto::FILE_DESCRIPTOR_SET;
use crate::proto::wal_archiver_server::WalArchiverServer;
use crate::store::{ArchiveStore, LocalStore, S3Options, S3Store, StoreError};

/// Room for the non-data fields of a request next to a `max_chunk_size` chunk.
const MESSAGE_OVERHEAD: usize = 64 << 10;
/// HTTP/2 flow-control windows: large enough that one upload stream is not
/// throttled by round trips, small enough to bound buffered bytes per stream.
const STREAM_WINDOW: u32 = 4 << 20;
const CONNECTION_WINDOW: u32 = 16 << 20;
/// Largest HTTP/2 frame a client may send: with the 16 KiB default a 1 MiB
/// chunk costs 64 frames, each a wakeup of the connection and stream tasks.
const MAX_FRAME_SIZE: u32 = 1 << 20;
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
    Engine(#[from] EngineError),
    #[error(transparent)]
    Store(#[from] StoreError),
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

/// The gRPC server running in its task, and what controls it.
struct Running {
    task: JoinHandle<Result<(), tonic::transport::Error>>,
    health: HealthReporter,
    ready: Arc<OnceLock<Archiver>>,
    draining: CancellationToken,
    stopping: CancellationToken,
    /// The `health_listen` server, aborted when this is dropped: a health Watch
    /// stream kept open would otherwise hold its graceful shutdown forever.
    _health_only: Option<AbortOnDrop>,
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
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
    let health_listener = match config.health_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Bind { addr, source })?,
        ),
        None => None,
    };
    warn_if_exposed(&config);
    background::install_metrics(&config).map_err(ServeError::Metrics)?;
    let mut running = start_server(&config, listener, health_listener).await?;

    // Health says NOT_SERVING and calls get UNAVAILABLE until recovery is done.
    tracing::info!(%local, data_dir = %config.data_dir.display(), "recovering");
    let archiver = match open_engine(&config).await {
        Ok(archiver) => archiver,
        Err(e) => {
            running.stopping.cancel();
            return Err(e);
        }
    };
    let _ = running.ready.set(archiver.clone());
    background::spawn(&config, &archiver, &running.stopping);
    set_health(&running.health, ServingStatus::Serving).await;
    tracing::info!(%local, workers = config.workers(), "serving");
    on_listening(local);

    tokio::select! {
        () = shutdown => {}
        finished = &mut running.task => {
            archiver.shutdown(Duration::ZERO).await;
            return Ok(finished??);
        }
    }
    drain(&config, &archiver, running).await
}

fn warn_if_exposed(config: &Config) {
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
}

/// Builds the server (health, reflection, our service behind auth and the
/// guard layer) and starts it on `listener`, NOT_SERVING until the engine is open;
/// the health-only server on `health_listener` when there is one.
async fn start_server(
    config: &Config,
    listener: TcpListener,
    health_listener: Option<TcpListener>,
) -> Result<Running, ServeError> {
    let tokens = match &config.tokens_file {
        Some(path) => {
            let tokens = Tokens::load(path)?;
            tokens.watch(path.clone(), TOKENS_POLL);
            tokens
        }
        None => Tokens::disabled(),
    };
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, ServingStatus::NotServing).await;
    let ready: Arc<OnceLock<Archiver>> = Arc::default();
    let draining = CancellationToken::new();
    let stopping = CancellationToken::new();
    let handlers = WalArchiverService::new(
        ready.clone(),
        draining.clone(),
        stopping.clone(),
        tokens.clone(),
        Duration::from_secs(config.receive_idle_timeout),
    );
    let service = WalArchiverServer::new(handlers)
        .max_decoding_message_size(config.max_chunk_size + MESSAGE_OVERHEAD)
        .max_encoding_message_size(config.max_chunk_size + MESSAGE_OVERHEAD);
    // Health and reflection stay open; our service needs a token when auth is on.
    let service = InterceptedService::new(service, move |request| tokens.authenticate(request));
    let reflection_error =
        |e: tonic_reflection::server::Error| ServeError::Reflection(e.to_string());
    let reflection = reflection_builder().build_v1().map_err(reflection_error)?;
    // v1alpha too: grpcurl 1.8 and Postman list services only through it.
    let reflection_v1alpha = reflection_builder()
        .build_v1alpha()
        .map_err(reflection_error)?;
    // health_listen: grpc.health.v1 alone, in plaintext, without a token
    // (health is open on the main port too), stopping with the main server.
    let health_only = health_listener.map(|listener| {
        let server = Server::builder()
            .add_service(health_service.clone())
            .serve_with_incoming_shutdown(
                TcpIncoming::from(listener),
                stopping.clone().cancelled_owned(),
            );
        AbortOnDrop(tokio::spawn(async move {
            if let Err(e) = server.await {
                tracing::warn!(error = %e, "health-only listener failed");
            }
        }))
    });
    let guard = GuardLayer::new(
        config.max_concurrent_requests,
        config.max_concurrent_watches,
        Duration::from_millis(config.unary_timeout_ms),
    );
    // Keepalive: a peer that died without closing (power loss, a cut
    // network path) is noticed by the pings and probes, and its streams end.
    let keepalive =
        (config.keepalive_interval > 0).then(|| Duration::from_secs(config.keepalive_interval));
    let incoming = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(keepalive)
        .with_keepalive_interval(keepalive);
    let tls = tls(config)?;
    let router = Server::builder()
        .http2_keepalive_interval(keepalive)
        .http2_keepalive_timeout(keepalive)
        .initial_stream_window_size(Some(STREAM_WINDOW))
        .initial_connection_window_size(Some(CONNECTION_WINDOW))
        .max_frame_size(Some(MAX_FRAME_SIZE))
        .max_concurrent_streams(Some(config.max_streams_per_connection))
        .layer(guard)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(service);
    let stop = stopping.clone().cancelled_owned();
    let task = match tls {
        Some(tls) => {
            let handshaken = handshake::accept(incoming, tls, stopping.clone());
            tokio::spawn(router.serve_with_incoming_shutdown(handshaken, stop))
        }
        None => tokio::spawn(router.serve_with_incoming_shutdown(incoming, stop)),
    };
    Ok(Running {
        task,
        health,
        ready,
        draining,
        stopping,
        _health_only: health_only,
    })
}

fn reflection_builder() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// The archive store `config` names, and the engine over it (recovery included).
async fn open_engine(config: &Config) -> Result<Archiver, ServeError> {
    let config = config.clone();
    tokio::task::spawn_blocking(move || {
        let store = open_store(&config)?;
        let (archiver, _report) = Archiver::open(config, store)?;
        Ok::<_, ServeError>(archiver)
    })
    .await?
}

/// The archive store the configuration names. Call it off the async threads
/// (an object store captures the runtime to run its requests on).
pub fn open_store(config: &Config) -> Result<Arc<dyn ArchiveStore>, ServeError> {
    Ok(match config.storage {
        StorageKind::Local => Arc::new(LocalStore::open(config.data_dir.join("archives"))?),
        StorageKind::S3 => {
            let options = S3Options::from_config(config, std::env::vars())?;
            Arc::new(S3Store::open(options, tokio::runtime::Handle::current())?)
        }
    })
}

/// Health NOT_SERVING, pushes refused, compressions given `shutdown_grace`,
/// then the listener closed; uploads still open after the grace are cut.
async fn drain(
    config: &Config,
    archiver: &Archiver,
    mut running: Running,
) -> Result<(), ServeError> {
    let grace = Duration::from_secs(config.shutdown_grace);
    tracing::info!(
        grace_secs = config.shutdown_grace,
        "draining: new pushes are refused"
    );
    set_health(&running.health, ServingStatus::NotServing).await;
    archiver.start_draining();
    running.draining.cancel();
    archiver.shutdown(grace).await;
    running.stopping.cancel();
    match tokio::time::timeout(grace.max(Duration::from_secs(1)), &mut running.task).await {
        Ok(finished) => finished??,
        Err(_) => {
            tracing::warn!(
                "uploads still open after the grace period: closing them; their jobs fail as interrupted"
            );
            running.task.abort();
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// The TLS configuration `config` asks for, its files checked first so a
/// bad one is named rather than reported as `transport error`.
fn tls(config: &Config) -> Result<Option<Arc<rustls::ServerConfig>>, ServeError> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    let tls_error = |e: crate::tls::TlsFileError| ServeError::Tls(e.to_string());
    let (cert_pem, key_pem) = crate::tls::read_identity(cert, key).map_err(tls_error)?;
    let client_ca_pem = match &config.tls_client_ca {
        Some(ca) => Some(crate::tls::read_certificates(ca).map_err(tls_error)?),
        None => None,
    };
    handshake::server_config(&cert_pem, &key_pem, client_ca_pem.as_deref())
        .map(Some)
        .map_err(|e| {
            ServeError::Tls(format!(
                "tls_cert {}, tls_key {}: {e}",
                cert.display(),
                key.display()
            ))
        })
}

async fn set_health(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    health
        .set_service_status(
            <WalArchiverServer<WalArchiverService> as tonic::server::NamedService>::NAME,
            status,
        )
        .await;
}

/// The line `serve` prints on stdout once it listens: scripts and tests read
/// the port from it. With `log_format = "json"` it is a JSON log line like
/// every other (stdout and stderr are often read as one stream).
pub fn listening_line(addr: SocketAddr, format: crate::config::LogFormat) -> String {
    let message = format!("wal-archiver listening on {addr}");
    match format {
        crate::config::LogFormat::Text => message,
        crate::config::LogFormat::Json => serde_json::json!({
            "timestamp": humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
            "level": "INFO",
            "fields": { "message": message, "addr": addr.to_string() },
            "target": "wal_archiver::serve",
        })
        .to_string(),
    }
}

/// The address in a line `listening_line` printed, in either format.
pub fn listening_address(line: &str) -> Option<SocketAddr> {
    if let Some(addr) = line.strip_prefix("wal-archiver listening on ") {
        return addr.trim().parse().ok();
    }
    let json: serde_json::Value = serde_json::from_str(line).ok()?;
    json["fields"]["addr"].as_str()?.parse().ok()
}
