//! `archive-push` and `archive-get`: PostgreSQL's `archive_command` and
//! `restore_command`. Each run handles one file and speaks to PostgreSQL
//! only through its exit status and one line on stderr, which PostgreSQL
//! logs: so every outcome here is an exit code chosen on purpose, never an
//! error that happens to bubble up. The name ⇄ log_id mapping lives in the
//! library (`wal_archiver::postgres`); docs/POSTGRESQL.md explains it.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use super::args::{ArchiveGetArgs, ArchivePushArgs, ClientArgs};
use wal_archiver::client::{Client, ClientError, Connection, PushOptions, RetryPolicy};
use wal_archiver::postgres::{ArchiveFile, SIDE_FILE_BASE};
use wal_archiver::types::{JobFilter, JobState, LogId, ShardId};

/// PostgreSQL reads 1 from `restore_command` as "not in the archive".
const NOT_FOUND: u8 = 1;
/// Any other failure of `archive-get`. Still below 126: 126 and up make the
/// startup process FATAL, which would take down a standby for an outage of
/// the archive it can ride out by streaming.
const GET_FAILED: u8 = 2;

/// Pushes `%p` and exits 0 only once the server acknowledged it durable
/// (ack QUEUED: spooled and fsynced). Pushing a file again is fine (the
/// server deduplicates); other bytes under the same name are refused.
pub async fn archive_push(args: ArchivePushArgs) -> anyhow::Result<ExitCode> {
    let shard = args.shard;
    let name = args
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let fail = |what: String| {
        eprintln!("wal-archiver archive-push: {name} (shard {shard}): {what}");
        Ok(ExitCode::FAILURE)
    };
    let file = match ArchiveFile::from_name(&name) {
        Ok(file) => file,
        Err(e) => return fail(e.to_string()),
    };
    let size = match std::fs::metadata(&args.path) {
        Ok(metadata) => metadata.len(),
        Err(e) => return fail(format!("cannot read {}: {e}", args.path.display())),
    };
    let log_id = match file.log_id(size) {
        Ok(log_id) => log_id,
        Err(e) => return fail(e.to_string()),
    };
    let client =
        match Client::connect_retrying(&connection(&args.client), RetryPolicy::default()).await {
            Ok(client) => client,
            Err(e) => return fail(describe(&e)),
        };
    match client
        .push_file(shard, log_id, &args.path, &PushOptions::default())
        .await
    {
        Ok(pushed) if pushed.job.state == JobState::Failed => fail(format!(
            "log_id {log_id}: job {} FAILED: {}",
            pushed.job.id, pushed.job.reason
        )),
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(e) => fail(format!("log_id {log_id}: {}", describe(&e))),
    }
}

/// Writes file `%f` to `%p`, verified and complete or not at all. Exits 1,
/// quietly, when the archive does not have it (PostgreSQL asks for files
/// past the end of the archive and for timelines that do not exist, all the
/// time); 2 with a message for anything else. Transient failures (server
/// unreachable, restarting, busy) are retried first with backoff.
pub async fn archive_get(args: ArchiveGetArgs) -> anyhow::Result<ExitCode> {
    let shard = args.shard;
    let name = args.name.as_str();
    let fail = |what: String| {
        eprintln!("wal-archiver archive-get: {name} (shard {shard}): {what}");
        Ok(ExitCode::from(GET_FAILED))
    };
    let file = match ArchiveFile::from_name(name) {
        Ok(file) => file,
        Err(e) => return fail(e.to_string()),
    };
    let retry = RetryPolicy::default();
    let client = match Client::connect_retrying(&connection(&args.client), retry.clone()).await {
        Ok(client) => client,
        Err(e) => return fail(describe(&e)),
    };
    let wait = Duration::from_secs(args.wait_timeout);
    let mut attempt = 0;
    loop {
        match get(&client, shard, &file, &args.destination, wait).await {
            Ok(Got::Restored) => return Ok(ExitCode::SUCCESS),
            Ok(Got::Missing) => return Ok(ExitCode::from(NOT_FOUND)),
            Ok(Got::Expired(log_id)) => {
                eprintln!(
                    "wal-archiver archive-get: {name} (shard {shard}): log_id {log_id} was removed by retention"
                );
                return Ok(ExitCode::from(NOT_FOUND));
            }
            Err(GetError::Client(e)) if e.is_retryable() && attempt + 1 < retry.attempts => {
                tokio::time::sleep(retry.backoff(attempt)).await;
                attempt += 1;
            }
            Err(GetError::Client(e)) if e.code() == Some(tonic::Code::NotFound) => {
                // Removed between the lookup and the restore.
                return Ok(ExitCode::from(NOT_FOUND));
            }
            Err(GetError::Client(e)) => return fail(describe(&e)),
            Err(GetError::Other(what)) => return fail(what),
        }
    }
}

enum Got {
    Restored,
    Missing,
    Expired(LogId),
}

enum GetError {
    Client(ClientError),
    Other(String),
}

impl From<ClientError> for GetError {
    fn from(e: ClientError) -> Self {
        GetError::Client(e)
    }
}

async fn get(
    client: &Client,
    shard: ShardId,
    file: &ArchiveFile,
    destination: &Path,
    wait: Duration,
) -> Result<Got, GetError> {
    let segment_size = match file {
        ArchiveFile::Side(_) => None,
        ArchiveFile::Segment(_) => match segment_size(client, shard).await? {
            Some(size) => Some(size),
            // Not one segment pushed: this one is not either.
            None => return Ok(Got::Missing),
        },
    };
    let log_id = file
        .log_id(segment_size.unwrap_or(0))
        .map_err(|e| GetError::Other(e.to_string()))?;
    let Some(mut job) = client.active_job(shard, log_id).await? else {
        return Ok(Got::Missing);
    };
    if job.state != JobState::Archived {
        // Pushed, but not compressed yet: a push is acknowledged once it is
        // durable in the spool, and the server restores only archives. The
        // file exists, so it is waited for rather than reported missing
        // (a recovery would end early).
        let pushing = job.state == JobState::Receiving;
        job = match tokio::time::timeout(wait, client.wait(job.id)).await {
            Ok(Ok(archived)) => archived,
            // A push that never completed: the file is not in the archive.
            Ok(Err(ClientError::JobNotArchived(_))) if pushing => return Ok(Got::Missing),
            Ok(Err(ClientError::JobNotArchived(failed))) => {
                return Err(GetError::Other(format!(
                    "log_id {log_id} was acknowledged, then its job {} ended {}: {}",
                    failed.id, failed.state, failed.reason
                )));
            }
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => {
                return Err(GetError::Other(format!(
                    "log_id {log_id} (job {}) is still {} after {}s (--wait-timeout)",
                    job.id,
                    job.state,
                    wait.as_secs()
                )));
            }
        };
    }
    if job.expired_unix_ms.is_some() {
        return Ok(Got::Expired(log_id));
    }
    if let Some(expected) = segment_size
        && job.size != Some(expected)
    {
        return Err(GetError::Other(format!(
            "log_id {log_id} holds {} bytes, not a {expected}-byte segment: did the cluster's \
             wal_segment_size change? (docs/POSTGRESQL.md: one segment size per shard)",
            job.size.unwrap_or(0)
        )));
    }
    client.restore_job_to_file(&job, destination, None).await?;
    Ok(Got::Restored)
}

/// The cluster's WAL segment size, as the archive knows it: the size of the
/// shard's first segment (`archive-push` derived that log_id from the size of
/// the very file, and every segment of a cluster has the same size); `get`
/// checks the one it fetches has it too.
async fn segment_size(client: &Client, shard: ShardId) -> Result<Option<u64>, ClientError> {
    let mut filter = JobFilter {
        shard_id: Some(shard),
        log_id_max: Some(SIDE_FILE_BASE - 1),
        limit: 100,
        ..JobFilter::default()
    };
    loop {
        let (jobs, next) = client.list(&filter).await?;
        let pushed = jobs
            .iter()
            .filter(|job| !matches!(job.state, JobState::Failed | JobState::Cancelled))
            .find_map(|job| job.size);
        if pushed.is_some() {
            return Ok(pushed);
        }
        match next {
            Some(next) => filter.after = Some(next),
            None => return Ok(None),
        }
    }
}

fn connection(args: &ClientArgs) -> Connection {
    Connection {
        url: args.server.clone(),
        ca: args.ca.clone(),
        cert: args.cert.clone(),
        key: args.key.clone(),
        token: args.token.clone(),
    }
}

/// gRPC errors as `CODE: message`, like every other command prints them.
fn describe(e: &ClientError) -> String {
    match e {
        ClientError::Rpc(status) => format!(
            "{}: {}",
            wal_archiver::service::code_name(status.code()),
            status.message()
        ),
        other => other.to_string(),
    }
}
