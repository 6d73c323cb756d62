//! TLS with certificates made here (rcgen), bearer tokens with roles and shard
//! sets, and the loopback-only default, each refusal checked on the real server.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tonic::Code;
use wal_archiver::client::{Client, ClientError, Connection, PushOptions, RetryPolicy};

const SHARD_SECRET: &str = "shard-one-secret";
const OBSERVER_SECRET: &str = "observer-secret";
const ADMIN_SECRET: &str = "admin-secret";

fn write_tokens(path: &Path, extra: &str) {
    let shard_digest = wal_archiver::types::Digest::of(SHARD_SECRET.as_bytes()).to_hex();
    let text = format!(
        r#"
[[tokens]]
name = "shard-1"
role = "shard"
shards = [1]
sha256 = "{shard_digest}"

[[tokens]]
name = "dashboard"
role = "observer"
secret = "{OBSERVER_SECRET}"

[[tokens]]
name = "operator"
role = "admin"
secret = "{ADMIN_SECRET}"
{extra}"#
    );
    std::fs::write(path, text).unwrap();
}

async fn client_with(server: &Server, token: Option<&str>) -> Client {
    Client::connect_with(&Connection {
        url: server.url(),
        token: token.map(str::to_owned),
        ..Connection::default()
    })
    .await
    .unwrap()
    .retry_policy(RetryPolicy::none())
}

fn code(result: Result<impl std::fmt::Debug, ClientError>) -> Code {
    match result {
        Err(ClientError::Rpc(status)) => status.code(),
        other => panic!("expected a gRPC error, got {other:?}"),
    }
}

fn segment_file(dir: &Path, name: &str, seed: u64) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, json_segment(seed, 20_000)).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_roles_and_shards() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    write_tokens(&tokens, "");
    let server = Server::start(&["--tokens-file", tokens.to_str().unwrap()]);
    let wal = segment_file(dir.path(), "wal-1.log", 1);
    let options = PushOptions::default();

    // No token, or an unknown one: UNAUTHENTICATED, for writes and reads alike.
    let anonymous = client_with(&server, None).await;
    assert_eq!(
        code(anonymous.push_file(1, 1, &wal, &options).await),
        Code::Unauthenticated
    );
    assert_eq!(code(anonymous.shard(1).await), Code::Unauthenticated);
    let stranger = client_with(&server, Some("not-a-token")).await;
    assert_eq!(code(stranger.shard(1).await), Code::Unauthenticated);

    // A shard token: its own shard only, and never cancel.
    let shard = client_with(&server, Some(SHARD_SECRET)).await;
    let pushed = shard.push_file(1, 1, &wal, &options).await.unwrap();
    let archived = shard.wait(pushed.job.id).await.unwrap();
    assert_eq!(shard.shard(1).await.unwrap().archived_watermark, Some(1));
    let mut restored = std::io::Cursor::new(Vec::new());
    shard.restore_to(1, 1, &mut restored, None).await.unwrap();
    assert_eq!(restored.into_inner(), std::fs::read(&wal).unwrap());
    assert_eq!(
        code(shard.push_file(2, 1, &wal, &options).await),
        Code::PermissionDenied
    );
    let mut sink = std::io::Cursor::new(Vec::new());
    assert_eq!(
        code(shard.restore_to(2, 1, &mut sink, None).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(shard.cancel(archived.id).await),
        Code::PermissionDenied
    );
    let all_shards = wal_archiver::types::JobFilter::default();
    assert_eq!(code(shard.list(&all_shards).await), Code::PermissionDenied);
    let own = wal_archiver::types::JobFilter {
        shard_id: Some(1),
        ..Default::default()
    };
    assert_eq!(shard.list(&own).await.unwrap().0.len(), 1);

    // An observer reads everything and changes nothing.
    let observer = client_with(&server, Some(OBSERVER_SECRET)).await;
    assert_eq!(observer.job(archived.id).await.unwrap().id, archived.id);
    assert_eq!(observer.list(&all_shards).await.unwrap().0.len(), 1);
    assert_eq!(observer.shard(1).await.unwrap().archived, 1);
    assert_eq!(
        code(observer.push_file(1, 2, &wal, &options).await),
        Code::PermissionDenied
    );
    let mut sink = std::io::Cursor::new(Vec::new());
    assert_eq!(
        code(observer.restore_to(1, 1, &mut sink, None).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(observer.cancel(archived.id).await),
        Code::PermissionDenied
    );

    // An admin may cancel: this job is finished, so the refusal is the job's state.
    let admin = client_with(&server, Some(ADMIN_SECRET)).await;
    assert_eq!(
        code(admin.cancel(archived.id).await),
        Code::FailedPrecondition
    );
    admin.push_file(9, 1, &wal, &options).await.unwrap();

    // Each refusal is logged with the peer and the token's name, never a secret.
    let log = server.log_text();
    let refusals: Vec<&str> = log.lines().filter(|l| l.contains("call refused")).collect();
    assert!(refusals.len() >= 9, "{log}");
    for line in &refusals {
        assert!(line.contains("peer=127.0.0.1:"), "{line}");
        for secret in [SHARD_SECRET, OBSERVER_SECRET, ADMIN_SECRET, "not-a-token"] {
            assert!(!line.contains(secret), "{line}");
        }
    }
    let logged = |token: &str, reason: &str| {
        refusals
            .iter()
            .any(|l| l.contains(&format!("token={token:?}")) && l.contains(reason))
    };
    assert!(logged("", "no bearer token"), "{log}");
    assert!(logged("", "unknown token"), "{log}");
    assert!(logged("shard-1", "may not push to shard 2"), "{log}");
    assert!(logged("dashboard", "may not cancel jobs"), "{log}");

    // Health stays open without a token.
    let channel = tonic::transport::Endpoint::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let reply = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        reply.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_file_reloads_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    write_tokens(&tokens, "");
    let server = Server::start(&["--tokens-file", tokens.to_str().unwrap()]);
    let newcomer = client_with(&server, Some("new-shard-secret")).await;
    assert_eq!(code(newcomer.shard(1).await), Code::Unauthenticated);

    write_tokens(
        &tokens,
        "[[tokens]]\nname = \"shard-2\"\nrole = \"shard\"\nshards = [2]\nsecret = \"new-shard-secret\"\n",
    );
    signal(server.pid(), libc::SIGHUP);
    let wal = segment_file(dir.path(), "wal-5.log", 5);
    let pushed = eventually(Duration::from_secs(30), || async {
        newcomer
            .push_file(2, 5, &wal, &PushOptions::default())
            .await
            .ok()
    })
    .await;
    assert_eq!(pushed.job.shard_id, 2);
    assert!(server.log_text().contains("tokens reloaded"));

    // A broken file is refused and the tokens in force stay.
    std::fs::write(&tokens, "this is not toml [[").unwrap();
    signal(server.pid(), libc::SIGHUP);
    eventually(Duration::from_secs(30), || async {
        server.log_text().contains("not reloaded").then_some(())
    })
    .await;
    assert!(newcomer.shard(2).await.is_ok());
}

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// A CA, a server certificate for 127.0.0.1 and localhost, and a client certificate.
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        for (name, names) in [
            (
                "server",
                vec!["127.0.0.1".to_owned(), "localhost".to_owned()],
            ),
            ("client", vec!["shard-1".to_owned()]),
        ] {
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(names)
                .unwrap()
                .signed_by(&key, &ca)
                .unwrap();
            std::fs::write(dir.path().join(format!("{name}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.path().join(format!("{name}.key")), key.serialize_pem()).unwrap();
        }
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).to_str().unwrap().to_owned()
    }
}

/// Waits for the server to log a refused TLS handshake from the loopback
/// whose reason contains `reason`.
async fn handshake_refused(server: &Server, reason: &str) {
    eventually(Duration::from_secs(10), || async {
        let log = server.log_text();
        log.lines()
            .any(|l| {
                l.contains("TLS handshake refused")
                    && l.contains("peer=127.0.0.1:")
                    && l.contains(reason)
            })
            .then_some(())
    })
    .await
}

async fn tls_client(
    server: &Server,
    ca: Option<PathBuf>,
    client_cert: Option<(PathBuf, PathBuf)>,
) -> Result<Client, ClientError> {
    let (cert, key) = client_cert.unzip();
    Client::connect_with(&Connection {
        url: format!("https://{}", server.addr),
        ca,
        cert,
        key,
        token: None,
    })
    .await
    .map(|c| c.retry_policy(RetryPolicy::none()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_client_certificates() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let wal = segment_file(dir.path(), "wal-1.log", 3);

    let server = Server::start(&[
        "--tls-cert",
        &pki.arg("server.pem"),
        "--tls-key",
        &pki.arg("server.key"),
    ]);
    let client = tls_client(&server, Some(pki.path("ca.pem")), None)
        .await
        .unwrap();
    let pushed = client
        .push_file(1, 1, &wal, &PushOptions::default())
        .await
        .unwrap();
    assert_eq!(client.wait(pushed.job.id).await.unwrap().shard_id, 1);
    // Plain text to a TLS port, or TLS without trusting the CA, gets nowhere.
    let plain = Client::connect(&server.url()).await;
    let refused = match plain {
        Err(_) => true,
        Ok(plain) => plain
            .retry_policy(RetryPolicy::none())
            .shard(1)
            .await
            .is_err(),
    };
    assert!(refused, "plain text must not reach a TLS server");
    let untrusting = tls_client(&server, None, None).await;
    let refused = match untrusting {
        Err(_) => true,
        Ok(c) => c.shard(1).await.is_err(),
    };
    assert!(
        refused,
        "a client that does not trust the CA must not connect"
    );
    // The server logs both refused handshakes with the peer and the reason.
    handshake_refused(&server, "reason=received corrupt message").await;
    handshake_refused(&server, "reason=received fatal alert: UnknownCA").await;
    drop(server);

    let mutual = Server::start(&[
        "--tls-cert",
        &pki.arg("server.pem"),
        "--tls-key",
        &pki.arg("server.key"),
        "--tls-client-ca",
        &pki.arg("ca.pem"),
    ]);
    let without_cert = tls_client(&mutual, Some(pki.path("ca.pem")), None).await;
    let refused = match without_cert {
        Err(_) => true,
        Ok(c) => c
            .push_file(1, 1, &wal, &PushOptions::default())
            .await
            .is_err(),
    };
    assert!(refused, "a client without a certificate must be refused");
    handshake_refused(&mutual, "reason=peer sent no certificates").await;
    let with_cert = tls_client(
        &mutual,
        Some(pki.path("ca.pem")),
        Some((pki.path("client.pem"), pki.path("client.key"))),
    )
    .await
    .unwrap();
    let pushed = with_cert
        .push_file(1, 1, &wal, &PushOptions::default())
        .await
        .unwrap();
    assert_eq!(with_cert.wait(pushed.job.id).await.unwrap().log_id, 1);
}

#[test]
fn public_address_needs_tokens_or_an_explicit_opt_out() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(BIN)
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("refusing to listen on 0.0.0.0:0 without authentication"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("data").exists(),
        "nothing is created when the config is refused"
    );

    let mut child = std::process::Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--allow-unauthenticated",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert!(
        line.starts_with("wal-archiver listening on 0.0.0.0:"),
        "{line}"
    );
    signal(child.id(), libc::SIGTERM);
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("WITHOUT BOTH TLS AND TOKENS"), "{stderr}");
}

/// An emptied tokens file would lock everyone out: it is refused on reload
/// (and at start), and the tokens in force stay. A file that others can read
/// while it holds plain secrets is warned about.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_tokens_file_is_refused_and_readable_secrets_are_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    write_tokens(&tokens, "");
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o644)).unwrap();
    let server = Server::start(&["--tokens-file", tokens.to_str().unwrap()]);
    let log = server.log_text();
    assert!(
        log.contains("readable by group or others") && log.contains("plain secrets"),
        "{log}"
    );
    let admin = client_with(&server, Some(ADMIN_SECRET)).await;
    std::fs::write(&tokens, "# all tokens removed by mistake\n").unwrap();
    signal(server.pid(), libc::SIGHUP);
    eventually(Duration::from_secs(30), || async {
        server
            .log_text()
            .contains("defines no tokens")
            .then_some(())
    })
    .await;
    assert_eq!(
        code(admin.shard(1).await),
        Code::NotFound,
        "the admin token still works"
    );

    let refused = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--tokens-file"])
        .arg(&tokens)
        .arg("--data-dir")
        .arg(dir.path().join("other-data"))
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("defines no tokens"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

/// A shard token asking for another shard's job learns nothing: it gets the
/// same NOT_FOUND as for a job that does not exist, so ids cannot be probed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_of_other_shards_look_like_missing_ones() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    write_tokens(&tokens, "");
    let server = Server::start(&["--tokens-file", tokens.to_str().unwrap()]);
    let admin = client_with(&server, Some(ADMIN_SECRET)).await;
    let wal = segment_file(dir.path(), "wal-1.log", 1);
    let other_shard = admin
        .push_file(2, 1, &wal, &PushOptions::default())
        .await
        .unwrap();
    let shard = client_with(&server, Some(SHARD_SECRET)).await;
    let foreign = shard.job(other_shard.job.id).await.unwrap_err();
    let missing = shard.job(999_999).await.unwrap_err();
    assert_eq!(foreign.code(), Some(Code::NotFound), "{foreign}");
    assert_eq!(missing.code(), Some(Code::NotFound), "{missing}");
    assert_eq!(
        foreign
            .to_string()
            .replace(&other_shard.job.id.to_string(), "N"),
        missing.to_string().replace("999999", "N")
    );
    assert_eq!(
        shard
            .watch(other_shard.job.id)
            .await
            .err()
            .and_then(|e| e.code()),
        Some(Code::NotFound)
    );
}

/// A token revoked while its upload streams cannot commit that upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_during_an_upload_stops_its_commit() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    write_tokens(&tokens, "");
    let server = Server::start(&["--tokens-file", tokens.to_str().unwrap()]);
    let channel = tonic::transport::Endpoint::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let bearer: tonic::metadata::MetadataValue<_> =
        format!("Bearer {SHARD_SECRET}").parse().unwrap();
    let mut rpc = wal_archiver::proto::wal_archiver_client::WalArchiverClient::with_interceptor(
        channel,
        move |mut request: tonic::Request<()>| {
            request
                .metadata_mut()
                .insert("authorization", bearer.clone());
            Ok(request)
        },
    );
    let data = json_segment(4, 100_000);
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(header_msg(header(1, 1, &data))).await.unwrap();
    let upload = tokio::spawn(async move {
        rpc.archive(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    let admin = client_with(&server, Some(ADMIN_SECRET)).await;
    eventually(Duration::from_secs(30), || async {
        (admin.shard(1).await.ok()?.receiving == 1).then_some(())
    })
    .await;
    // The shard's token is revoked.
    let admin_only =
        format!("[[tokens]]\nname = \"operator\"\nrole = \"admin\"\nsecret = \"{ADMIN_SECRET}\"\n");
    std::fs::write(&tokens, admin_only).unwrap();
    signal(server.pid(), libc::SIGHUP);
    eventually(Duration::from_secs(30), || async {
        server.log_text().contains("tokens reloaded").then_some(())
    })
    .await;
    for message in data_msgs(&data, 32 << 10) {
        tx.send(message).await.unwrap();
    }
    drop(tx);
    let refused = upload.await.unwrap().unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(
        refused.message().contains("revoked"),
        "{}",
        refused.message()
    );
    let status = admin.shard(1).await.unwrap();
    assert_eq!((status.queued, status.archived, status.failed), (0, 0, 1));
}

/// The certificate recipe of docs/OPERATIONS.md, run exactly as printed: the
/// server takes its files, a shard with its client certificate gets through,
/// and the mistakes it warns about are refused with a message that names them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_recipe_works_as_printed() {
    let guide = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/OPERATIONS.md"))
        .unwrap();
    let marker = "(the_certificate_recipe_works_as_printed) runs this block exactly as printed.";
    let after = &guide[guide.find(marker).expect("the recipe's marker")..];
    let block = after
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.split_once("\n```"))
        .expect("a sh block after the marker")
        .0;
    let run_recipe = || {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("recipe.sh"), block).unwrap();
        let run = std::process::Command::new("bash")
            .args(["-euo", "pipefail", "recipe.sh"])
            .current_dir(dir.path())
            .output()
            .expect("bash and openssl");
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(run.status.success(), "{stderr}");
        dir
    };
    let dir = run_recipe();
    let file = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();

    let server = Server::start(&[
        "--tls-cert",
        &file("server.pem"),
        "--tls-key",
        &file("server.key"),
        "--tls-client-ca",
        &file("ca.pem"),
    ]);
    let wal = segment_file(dir.path(), "wal-1.log", 7);
    let push = |cert: &str, key: &str| {
        std::process::Command::new(BIN)
            .args(["push", "--shard", "1", "--log-id", "1", "--wait"])
            .arg(&wal)
            .args(["--server", &format!("https://{}", server.addr)])
            .args([
                "--ca",
                &file("ca.pem"),
                "--cert",
                &file(cert),
                "--key",
                &file(key),
            ])
            .env_remove("WAL_ARCHIVER_TOKEN")
            .output()
            .unwrap()
    };
    let pushed = push("shard1.pem", "shard1.key");
    assert!(
        pushed.status.success(),
        "{}",
        String::from_utf8_lossy(&pushed.stderr)
    );
    assert_eq!(server.archives(1).len(), 1);

    // A client key that is not its certificate's: the CLI names both files.
    let mismatched = push("shard1.pem", "server.key");
    let stderr = String::from_utf8_lossy(&mismatched.stderr);
    assert!(!mismatched.status.success());
    assert!(
        stderr.contains("server.key is not the private key of the certificate in")
            && stderr.contains("shard1.pem"),
        "{stderr}"
    );

    // A client certificate from another CA (a second run of the recipe):
    // refused, and the server's log says by whom and why.
    let other = run_recipe();
    let stranger = std::process::Command::new(BIN)
        .args([
            "shard",
            "1",
            "--server",
            &format!("https://{}", server.addr),
        ])
        .args(["--ca", &file("ca.pem")])
        .arg("--cert")
        .arg(other.path().join("shard1.pem"))
        .arg("--key")
        .arg(other.path().join("shard1.key"))
        .output()
        .unwrap();
    assert!(!stranger.status.success());
    // Same CA name, another key: BadSignature (UnknownIssuer when the names differ).
    handshake_refused(&server, "reason=invalid peer certificate").await;

    // The server's certificate with the client's key: `config check` (and serve) name the files.
    let wrong = std::process::Command::new(BIN)
        .args(["config", "check", "--tls-cert", &file("server.pem")])
        .args(["--tls-key", &file("shard1.key")])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&wrong.stdout).into_owned()
        + &String::from_utf8_lossy(&wrong.stderr);
    assert!(!wrong.status.success());
    assert!(
        stdout.contains("shard1.key is not the private key of the certificate in"),
        "{stdout}"
    );
}
