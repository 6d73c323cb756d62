//! `wal-archiver health`: one grpc.health.v1 Check of the whole server (service
//! ""), for container HEALTHCHECKs and exec probes. It answers with its exit
//! code — 0 for SERVING, 1 for anything else — and is bounded by `--timeout`,
//! connecting included, because a probe that hangs is worse than one that fails.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use super::args::{ClientArgs, HealthArgs};
use wal_archiver::client::{ClientError, Connection};

pub async fn health(args: HealthArgs) -> anyhow::Result<ExitCode> {
    let client = &args.client;
    let limit = Duration::from_secs(args.timeout);
    let server = &client.server;
    let status = match tokio::time::timeout(limit, check(client)).await {
        Err(_) => bail!("{server}: no answer within {} s", args.timeout),
        // One line for the probe's log: the innermost cause says it best
        // ("Connection refused", "invalid peer certificate: UnknownIssuer").
        Ok(Err(ClientError::Connect { source, .. })) => {
            bail!("{server}: unreachable: {}", innermost(&source))
        }
        Ok(Err(ClientError::Rpc(status))) => bail!(
            "{server}: {}: {}",
            wal_archiver::service::code_name(status.code()),
            status.message()
        ),
        Ok(Err(e)) => bail!("{server}: {e}"),
        Ok(Ok(status)) => status,
    };
    let name = status.as_str_name();
    if status != ServingStatus::Serving {
        // NOT_SERVING: recovering at start or draining at shutdown.
        bail!("{server}: {name}");
    }
    if client.json {
        println!(
            "{}",
            serde_json::json!({ "server": client.server, "status": name })
        );
    } else {
        println!("{name}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn check(client: &ClientArgs) -> Result<ServingStatus, ClientError> {
    let channel = Connection {
        url: client.server.clone(),
        ca: client.ca.clone(),
        cert: client.cert.clone(),
        key: client.key.clone(),
        token: None,
    }
    .channel()
    .await?;
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?
        .into_inner();
    Ok(ServingStatus::try_from(reply.status).unwrap_or(ServingStatus::Unknown))
}

fn innermost(error: &(dyn std::error::Error + 'static)) -> String {
    let mut error = error;
    while let Some(source) = error.source() {
        error = source;
    }
    error.to_string()
}
