//! Calls and checks several test files make: a push that waits for its
//! archive, a status's code and message, a restore that must end in an
//! error, a health check, a metrics scrape.

use std::io::{Read, Write};

use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;

use wal_archiver::proto::{self, wal_archiver_client::WalArchiverClient};

/// Pushes `data` as shard `shard`'s `log_id` with ack ARCHIVED: it is
/// archived when this returns.
pub async fn push_archived(
    rpc: &mut WalArchiverClient<Channel>,
    shard: u32,
    log_id: u64,
    data: &[u8],
) -> proto::ArchiveReply {
    let mut archived = super::header(shard, log_id, data);
    archived.ack = proto::AckLevel::Archived as i32;
    super::push(rpc, archived, data)
        .await
        .unwrap_or_else(|status| panic!("push of shard {shard} log_id {log_id}: {status:?}"))
}

/// Asserts `status` has `code` and a message that contains `says`.
pub fn assert_status(status: &Status, code: Code, says: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(says),
        "expected {says:?} in {:?}",
        status.message()
    );
}

/// Restores shard `shard`'s `log_id`, which must fail: the status it was
/// refused or ended with, and how many segment bytes came before it.
pub async fn restore_error(
    rpc: &mut WalArchiverClient<Channel>,
    shard: u32,
    log_id: u64,
) -> (Status, usize) {
    let request = proto::RestoreRequest {
        shard_id: shard,
        log_id,
    };
    let mut stream = match rpc.restore(request).await {
        Err(status) => return (status, 0),
        Ok(response) => response.into_inner(),
    };
    let mut received = 0;
    loop {
        match stream.message().await {
            Ok(Some(chunk)) => received += chunk.data.len(),
            Ok(None) => panic!("the restore ended cleanly after {received} bytes"),
            Err(status) => return (status, received),
        }
    }
}

/// The server's overall health on `channel`, or `None` if the check failed.
pub async fn health_status(channel: &Channel) -> Option<ServingStatus> {
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let reply = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .ok()?;
    ServingStatus::try_from(reply.into_inner().status).ok()
}

/// The Prometheus metrics page served on `port`.
pub fn scrape(port: u16) -> String {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics listener");
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(
        response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200"),
        "{response}"
    );
    response
}

/// The value of the first sample whose name and labels start with `prefix`.
pub fn sample(metrics: &str, prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .find(|line| line.starts_with(prefix))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}
