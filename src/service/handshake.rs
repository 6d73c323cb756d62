//! TLS handshakes done here instead of inside tonic: tonic drops a refused
//! handshake at debug level and without the peer's address, and an operator
//! must see who was refused and why (no client certificate, a certificate from
//! another CA, plaintext spoken to the TLS port).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;

/// A client that opens a connection and says nothing holds a task, not more.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the server to take them.
const ACCEPTED_BACKLOG: usize = 64;

/// The server side of TLS from the PEM text of the certificate chain, its
/// key and, to require client certificates, the CA that signs them. The
/// files were checked (and named in errors) by `crate::tls` before.
pub fn server_config(
    cert_pem: &[u8],
    key_pem: &[u8],
    client_ca_pem: Option<&[u8]>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| e.to_string())?;
    // object_store's S3 client brings rustls' aws-lc-rs provider next to
    // ring: name ours rather than rely on a process default.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match client_ca_pem {
        Some(pem) => {
            let mut roots = RootCertStore::empty();
            for certificate in CertificateDer::pem_slice_iter(pem) {
                roots
                    .add(certificate.map_err(|e| e.to_string())?)
                    .map_err(|e| format!("client CA: {e}"))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .map_err(|e| format!("client CA: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The connections of `incoming` that completed a handshake. Each handshake
/// runs in its own task, so a slow or silent client delays no other; each
/// refusal is logged with the peer's address and rustls' reason. Accepting
/// stops when `stopping` is cancelled (the listener closes with it).
pub fn accept(
    mut incoming: TcpIncoming,
    config: Arc<rustls::ServerConfig>,
    stopping: CancellationToken,
) -> ReceiverStream<io::Result<TlsStream<TcpStream>>> {
    let acceptor = TlsAcceptor::from(config);
    let (accepted, receiver) = mpsc::channel(ACCEPTED_BACKLOG);
    tokio::spawn(async move {
        loop {
            let connection = tokio::select! {
                () = stopping.cancelled() => break,
                next = incoming.next() => match next {
                    Some(connection) => connection,
                    None => break,
                },
            };
            let stream = match connection {
                Ok(stream) => stream,
                Err(e) => {
                    // Accept errors (a peer gone before accept, too many
                    // open files) are the listener's, not the server's end.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let peer = stream
                .peer_addr()
                .map_or_else(|_| "unknown".to_owned(), |a| a.to_string());
            let acceptor = acceptor.clone();
            let accepted = accepted.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        // A server already stopping drops the connection.
                        let _ = accepted.send(Ok(tls)).await;
                    }
                    // Connected and closed without a word: a TCP probe or a
                    // port scan, not a refused client.
                    Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        tracing::debug!(%peer, "connection closed before a TLS handshake");
                    }
                    Ok(Err(e)) => {
                        let hint = if e.to_string().contains("InvalidContentType") {
                            " (a client speaking plaintext to the TLS port: give it an https:// URL)"
                        } else {
                            ""
                        };
                        tracing::warn!(target: "security", %peer, reason = %e, "TLS handshake refused{hint}");
                    }
                    Err(_) => tracing::warn!(
                        target: "security",
                        %peer,
                        timeout_secs = HANDSHAKE_TIMEOUT.as_secs(),
                        "TLS handshake not finished in time: connection closed"
                    ),
                }
            });
        }
    });
    ReceiverStream::new(receiver)
}
