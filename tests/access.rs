//! Who may read what, and TLS refusals told apart from a broken server: a
//! shard token asking about another shard gets the documented code and
//! message for each call, and each TLS client that must be turned away is
//! turned away with its own error while the server goes on serving.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::calls::{assert_status, health_status};
use common::*;
use futures::StreamExt;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa, KeyPair,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};
use wal_archiver::client::{Client, ClientError, Connection, PushOptions, RetryPolicy};
use wal_archiver::types::{AckLevel, JobFilter, JobState};

const SHARD_SECRET: &str = "access-test-shard-1";
const ADMIN_SECRET: &str = "access-test-admin";

/// A tokens file: `db-shard-1` may touch shard 1 only; `operator` is admin.
fn tokens_file(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("tokens.toml");
    let text = format!(
        r#"
[[tokens]]
name = "db-shard-1"
role = "shard"
shards = [1]
secret = "{SHARD_SECRET}"

[[tokens]]
name = "operator"
role = "admin"
secret = "{ADMIN_SECRET}"
"#
    );
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

async fn client_with(server: &Server, token: &str) -> Client {
    Client::connect_with(&Connection {
        url: server.url(),
        token: Some(token.to_owned()),
        ..Connection::default()
    })
    .await
    .unwrap()
    .retry_policy(RetryPolicy::none())
}

/// The gRPC status of a call that must have failed with one.
fn status<T: std::fmt::Debug>(result: Result<T, ClientError>) -> Status {
    match result {
        Err(ClientError::Rpc(status)) => status,
        other => panic!("expected a gRPC error, got {other:?}"),
    }
}

/// PERMISSION_DENIED naming the token, its role and shards, and the action.
fn assert_denied(status: &Status, action: &str) {
    assert_status(status, Code::PermissionDenied, action);
    assert!(
        status
            .message()
            .contains(r#"token "db-shard-1" (Shard role, shards [1])"#),
        "the refusal names the token, its role and shards: {:?}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_token_reads_its_own_shard_and_nothing_of_another() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = tokens_file(dir.path());
    let server = Server::start(&["--tokens-file", tokens.to_str().unwrap()]);
    let admin = client_with(&server, ADMIN_SECRET).await;
    let archived = ack_archived();
    let mut jobs = Vec::new();
    for shard in [1u32, 2] {
        let data = json_segment(shard as u64, 30_000);
        let pushed = admin
            .push_reader(
                shard,
                1,
                Some(data.len() as u64),
                std::io::Cursor::new(data),
                &archived,
            )
            .await
            .unwrap();
        assert_eq!(pushed.job.state, JobState::Archived);
        jobs.push(pushed.job);
    }
    let (own, foreign) = (&jobs[0], &jobs[1]);
    let shard = client_with(&server, SHARD_SECRET).await;

    // Its own shard: every read is answered.
    assert_eq!(shard.job(own.id).await.unwrap().id, own.id);
    let watched: Vec<_> = shard.watch(own.id).await.unwrap().collect().await;
    assert_eq!(
        watched.last().unwrap().as_ref().unwrap().state,
        JobState::Archived
    );
    assert_eq!(shard.shard(1).await.unwrap().archived, 1);
    let own_filter = JobFilter {
        shard_id: Some(1),
        ..JobFilter::default()
    };
    assert_eq!(shard.list(&own_filter).await.unwrap().0, vec![own.clone()]);
    assert_eq!(shard.verify(Some(1)).await.unwrap().archives_checked, 1);

    // Another shard's job: NOT_FOUND, worded exactly like a job that does not exist.
    let missing_id = 999_999u64;
    let missing = status(shard.job(missing_id).await);
    assert_status(&missing, Code::NotFound, &format!("no job {missing_id}"));
    let other_job = status(shard.job(foreign.id).await);
    assert_status(
        &other_job,
        Code::NotFound,
        &format!("no job {}", foreign.id),
    );
    assert_eq!(
        other_job.message().replace(&foreign.id.to_string(), "<id>"),
        missing.message().replace(&missing_id.to_string(), "<id>")
    );
    let other_watch = status(shard.watch(foreign.id).await.map(|_| ()));
    assert_status(
        &other_watch,
        Code::NotFound,
        &format!("no job {}", foreign.id),
    );

    // Another shard's status, jobs, archives and checks: PERMISSION_DENIED naming the token.
    assert_denied(&status(shard.shard(2).await), "may not read shard 2");
    // Also for a shard that does not exist: the token is refused before anything is looked up.
    assert_denied(&status(shard.shard(3).await), "may not read shard 3");
    let other_filter = JobFilter {
        shard_id: Some(2),
        ..JobFilter::default()
    };
    assert_denied(
        &status(shard.list(&other_filter).await),
        "may not read shard 2",
    );
    assert_denied(
        &status(shard.list(&JobFilter::default()).await),
        "may not read every shard",
    );
    assert_denied(&status(shard.verify(Some(2)).await), "may not read shard 2");
    assert_denied(
        &status(shard.verify(None).await),
        "may not read every shard",
    );
    let mut sink = std::io::Cursor::new(Vec::new());
    assert_denied(
        &status(shard.restore_to(2, 1, &mut sink, None).await),
        "may not restore from shard 2",
    );
    assert!(sink.into_inner().is_empty());

    // None of that changed anything: the admin still sees both jobs archived.
    for job in &jobs {
        assert_eq!(admin.job(job.id).await.unwrap().state, JobState::Archived);
    }
}

/// Push options that wait for the archive.
fn ack_archived() -> PushOptions {
    PushOptions {
        ack: AckLevel::Archived,
        ..PushOptions::default()
    }
}

/// A CA with a server certificate for 127.0.0.1 and a client certificate, and
/// a second, untrusted CA with a client certificate of its own: PEM files
/// for the server and tonic, DER for the raw TLS client.
struct Pki {
    dir: tempfile::TempDir,
    ca: CertificateDer<'static>,
    /// Client certificates and their keys, by name.
    clients: Vec<(&'static str, CertificateDer<'static>, Vec<u8>)>,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let mut trusted = None;
        let mut clients = Vec::new();
        for (ca_name, leaves) in [
            ("ca", vec![("server", "127.0.0.1"), ("client", "shard-1")]),
            ("rogue-ca", vec![("rogue-client", "shard-1")]),
        ] {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            // Names of their own: otherwise both CAs are rcgen's default name.
            params.distinguished_name = DistinguishedName::new();
            params
                .distinguished_name
                .push(DnType::CommonName, format!("wal-archiver test {ca_name}"));
            let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
            std::fs::write(dir.path().join(format!("{ca_name}.pem")), ca.pem()).unwrap();
            if ca_name == "ca" {
                trusted = Some(ca.der().clone());
            }
            for (name, subject) in leaves {
                let key = KeyPair::generate().unwrap();
                let cert = CertificateParams::new(vec![subject.to_owned()])
                    .unwrap()
                    .signed_by(&key, &ca)
                    .unwrap();
                std::fs::write(dir.path().join(format!("{name}.pem")), cert.pem()).unwrap();
                std::fs::write(dir.path().join(format!("{name}.key")), key.serialize_pem())
                    .unwrap();
                clients.push((name, cert.der().clone(), key.serialize_der()));
            }
        }
        Pki {
            dir,
            ca: trusted.unwrap(),
            clients,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).to_str().unwrap().to_owned()
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).unwrap()
    }

    /// A client certificate and its key, as rustls takes them.
    fn client(&self, name: &str) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let (_, cert, key) = self
            .clients
            .iter()
            .find(|(n, _, _)| *n == name)
            .expect("a client certificate of that name");
        (
            cert.clone(),
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.clone())),
        )
    }
}

/// A TLS handshake with the server, trusting its CA and presenting
/// `identity`, then one read, without a byte of HTTP/2 to race with the
/// server's answer: the error that read ends with.
fn handshake_then_read(addr: std::net::SocketAddr, pki: &Pki, identity: Option<&str>) -> String {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        Some(name) => {
            let (cert, key) = pki.client(name);
            builder.with_client_auth_cert(vec![cert], key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    let server_name = ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = rustls::ClientConnection::new(Arc::new(config), server_name).unwrap();
    let mut socket = std::net::TcpStream::connect(addr).unwrap();
    // A safety net against a server that never answers, not a timing assertion.
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let mut stream = rustls::Stream::new(&mut tls, &mut socket);
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(n) => panic!("the server let the client in ({n} bytes read)"),
        Err(e) => e.to_string(),
    }
}

/// What a plain-text client that speaks HTTP/2 gets from the TLS port: the
/// first bytes of the server's answer.
fn plain_text_answer(addr: std::net::SocketAddr) -> Vec<u8> {
    let mut socket = std::net::TcpStream::connect(addr).unwrap();
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    socket
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    socket.read_to_end(&mut answer).unwrap();
    answer
}

/// A new connection with the right CA and client certificate is served: the
/// server survived whatever came before.
async fn still_serving(server: &Server, pki: &Pki) {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(pki.read("ca.pem")))
        .identity(Identity::from_pem(
            pki.read("client.pem"),
            pki.read("client.key"),
        ));
    let channel = Endpoint::from_shared(format!("https://{}", server.addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("a correct TLS client connects");
    assert_eq!(
        health_status(&channel).await,
        Some(tonic_health::pb::health_check_response::ServingStatus::Serving),
        "health answers a correct TLS client"
    );
    assert!(
        Path::new(&format!("/proc/{}", server.pid())).exists(),
        "the server process is alive"
    );
}

/// Each client TLS must turn away is turned away with its own error — not
/// just any error, which a crashed server would give too — and after each the
/// server still serves a correct client; a correct client pushes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_refusals_are_the_expected_errors_and_the_server_goes_on() {
    let pki = Pki::new();
    let server = Server::start(&[
        "--tls-cert",
        &pki.arg("server.pem"),
        "--tls-key",
        &pki.arg("server.key"),
        "--tls-client-ca",
        &pki.arg("ca.pem"),
    ]);
    still_serving(&server, &pki).await;

    // Plain text: a TLS alert record (content type 21, TLS 1.2 framing, fatal).
    let answer = plain_text_answer(server.addr);
    assert!(
        answer.len() >= 7 && answer[..3] == [21, 3, 3] && answer[5] == 2,
        "a fatal TLS alert, got {answer:?}"
    );
    still_serving(&server, &pki).await;

    // A client that does not trust the server's CA refuses the server itself.
    let untrusting = Endpoint::from_shared(format!("https://{}", server.addr))
        .unwrap()
        .tls_config(ClientTlsConfig::new())
        .unwrap()
        .connect()
        .await
        .unwrap_err();
    let chain = error_chain(&untrusting);
    assert!(
        chain.contains("invalid peer certificate: UnknownIssuer"),
        "{chain}"
    );
    still_serving(&server, &pki).await;

    // The server requires a client certificate signed by its client CA.
    let without = handshake_then_read(server.addr, &pki, None);
    assert!(
        without.contains("received fatal alert: CertificateRequired"),
        "{without}"
    );
    still_serving(&server, &pki).await;
    let rogue = handshake_then_read(server.addr, &pki, Some("rogue-client"));
    assert!(rogue.contains("received fatal alert: UnknownCA"), "{rogue}");
    still_serving(&server, &pki).await;

    // And a correct client is let in, for real work.
    let correct = Client::connect_with(&Connection {
        url: format!("https://{}", server.addr),
        ca: Some(pki.path("ca.pem")),
        cert: Some(pki.path("client.pem")),
        key: Some(pki.path("client.key")),
        token: None,
    })
    .await
    .unwrap();
    let data = json_segment(8, 20_000);
    let pushed = correct
        .push_reader(1, 1, None, std::io::Cursor::new(data), &ack_archived())
        .await
        .unwrap();
    assert_eq!(pushed.job.state, JobState::Archived);
}

/// The error and every source under it, as one line.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(" <- ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}
