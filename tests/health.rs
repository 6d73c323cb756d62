//! `wal-archiver health` (the container's HEALTHCHECK) run as a process against
//! the real server: SERVING, NOT_SERVING while it drains, nothing there;
//! `health_listen` answering plaintext health while the main port speaks TLS;
//! reflection v1alpha, which grpcurl 1.8 and Postman list services with.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tonic::Code;
use tonic_reflection::pb::v1alpha::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};
use wal_archiver::proto;
use wal_archiver::types::JobState;

const LIMIT: Duration = Duration::from_secs(60);

/// What `wal-archiver health ARGS` exited with, printed and said on stderr.
struct Probe {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn health(args: &[&str], env: &[(&str, &str)]) -> Probe {
    let output = Command::new(BIN)
        .arg("health")
        .args(args)
        .env_remove("WAL_ARCHIVER_SERVER")
        .envs(env.iter().copied())
        .output()
        .expect("run wal-archiver health");
    Probe {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn assert_serving(probe: &Probe) {
    assert_eq!(probe.code, Some(0), "stderr: {}", probe.stderr);
    assert_eq!(probe.stdout.trim(), "SERVING");
}

/// Exit 1 with one line on stderr that contains `reason`.
fn assert_unhealthy(probe: &Probe, reason: &str) {
    assert_eq!(probe.code, Some(1), "stdout: {}", probe.stdout);
    assert_eq!(probe.stderr.lines().count(), 1, "{}", probe.stderr);
    assert!(probe.stderr.contains(reason), "{}", probe.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_serving_then_not_serving_while_draining_then_unreachable() {
    let health_addr = format!("127.0.0.1:{}", free_port());
    let mut server = Server::start(&[
        "--health-listen",
        &health_addr,
        "--shutdown-grace",
        "120",
        "--archive-parallelism",
        "1",
        "--small-job-size",
        "0",
        "--multithread-min-size",
        "0",
    ]);
    let main_url = server.url();
    let health_url = format!("http://{health_addr}");
    assert_serving(&health(&["--server", &main_url], &[]));
    assert_serving(&health(&[], &[("WAL_ARCHIVER_SERVER", &main_url)]));
    assert_serving(&health(&["--server", &health_url, "--timeout", "2"], &[]));

    // A compression that outlasts the checks below keeps the server draining.
    let client = server.client().await;
    let mut rpc = server.rpc().await;
    let big = json_segment(11, 40 << 20);
    let mut slow = header(1, 1, &big);
    slow.zstd_level = Some(19);
    let job = push(&mut rpc, slow, &big).await.unwrap().job.unwrap();
    eventually(LIMIT, || async {
        (client.job(job.job_id).await.ok()?.state == JobState::Compressing).then_some(())
    })
    .await;
    let pid = server.pid();
    signal(pid, libc::SIGTERM);
    eventually(LIMIT, || async {
        (health(&["--server", &main_url], &[]).code == Some(1)).then_some(())
    })
    .await;
    assert_unhealthy(&health(&["--server", &main_url], &[]), "NOT_SERVING");
    assert_unhealthy(&health(&["--server", &health_url], &[]), "NOT_SERVING");

    signal(pid, libc::SIGTERM);
    server.wait_exit(LIMIT);
    assert_unhealthy(&health(&["--server", &main_url], &[]), "unreachable");
    assert_unhealthy(&health(&["--server", &health_url], &[]), "unreachable");
    let nobody = format!("http://127.0.0.1:{}", free_port());
    assert_unhealthy(&health(&["--server", &nobody], &[]), "unreachable");
}

/// A CA and a server certificate for 127.0.0.1 (the PKI of tests/security.rs).
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        std::fs::write(dir.path().join("server.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("server.key"), key.serialize_pem()).unwrap();
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).to_str().unwrap().to_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_listen_answers_plaintext_health_only_while_the_main_port_uses_tls() {
    let pki = Pki::new();
    let health_addr = format!("127.0.0.1:{}", free_port());
    let server = Server::start(&[
        "--tls-cert",
        &pki.arg("server.pem"),
        "--tls-key",
        &pki.arg("server.key"),
        "--health-listen",
        &health_addr,
    ]);
    let health_url = format!("http://{health_addr}");
    let tls_url = format!("https://{}", server.addr);
    assert_serving(&health(&["--server", &health_url], &[]));
    assert_serving(&health(
        &["--server", &tls_url, "--ca", &pki.arg("ca.pem")],
        &[],
    ));
    // The main port speaks only TLS, and only to clients that trust its CA.
    assert_unhealthy(&health(&["--server", &server.url()], &[]), "");
    assert_unhealthy(&health(&["--server", &tls_url], &[]), "unreachable");

    // Health and nothing else: our service and reflection are not there.
    let channel = tonic::transport::Endpoint::from_shared(health_url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let refused = proto::wal_archiver_client::WalArchiverClient::new(channel.clone())
        .get_shard(proto::GetShardRequest { shard_id: 1 })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unimplemented, "{refused:?}");
    let refused = list_services(channel).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unimplemented, "{refused:?}");
}

/// The service names reflection v1alpha lists.
async fn list_services(channel: tonic::transport::Channel) -> Result<Vec<String>, tonic::Status> {
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await?
        .into_inner();
    let reply = replies.message().await?.expect("one reply");
    match reply.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            Ok(list.service.into_iter().map(|s| s.name).collect())
        }
        other => panic!("expected a service list, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_v1alpha_lists_the_service() {
    let server = Server::start(&[]);
    let channel = tonic::transport::Endpoint::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let services = list_services(channel).await.unwrap();
    for name in ["walarchiver.v1.WalArchiver", "grpc.health.v1.Health"] {
        assert!(services.iter().any(|s| s == name), "{services:?}");
    }
}
