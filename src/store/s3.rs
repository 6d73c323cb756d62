//! Archives in an S3-compatible bucket: `<prefix>shard-<id>/<log_id, 20 digits>.wal.zst`,
//! the same bytes as a local archive, with the segment's identity in the object's
//! metadata (`x-amz-meta-shard_id`, `-log_id`, `-size`, `-sha256`) so `stat` can
//! answer "whose archive is this" without reading it.
//!
//! The trait is blocking (workers are OS threads) and object_store is async: every
//! call runs on the runtime whose `Handle` the store captured when it was opened,
//! and must never be made from an async task.
//!
//! Writing is bounded and streaming. A `PendingArchive` buffers one part
//! (`s3_part_size`). An archive that fits in it goes up as one PUT at commit
//! (create-only where the store honours `If-None-Match`). A bigger one becomes a
//! multipart upload: each full part is sent while the encoder fills the next,
//! at most `s3_upload_concurrency` at once, so an upload holds about
//! part size × (concurrency + 1) bytes. An upload that fails or is dropped
//! without commit is aborted. Each upload id is written to
//! `<data_dir>/s3-uploads/` before its first part, because S3's uploads in
//! progress cannot be listed through object_store: `clean_up` (at start) aborts
//! whatever a crash left there.
//!
//! Every request has a deadline and bounded retries; failures are classified
//! once, in `classify`: a passing fault (timeout, lost connection, 429, 5xx) is
//! `Unavailable`, anything else (403, no such bucket) `Backend`.

use std::fs::{self, File};
use std::future::Future;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::client::HttpError;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as ObjectPath;
use object_store::{
    Attribute, Attributes, BackoffConfig, ClientOptions, GetOptions, ObjectStore, ObjectStoreExt,
    PutMode, PutMultipartOptions, PutOptions, PutPayload, RetryConfig,
};
use tokio::runtime::Handle;
use tokio::task::JoinSet;

use super::{
    ARCHIVE_SUFFIX, ArchiveKey, ArchiveMeta, ArchiveStore, ObjectInfo, PendingArchive, StoreError,
    WriteMode, sync_dir,
};
use crate::config::{Config, normalise_prefix};
use crate::error::IoError;
use crate::types::{Digest, ShardId};

/// Where upload ids are recorded, below the data dir.
pub const UPLOADS_DIR: &str = "s3-uploads";
const RECORD_SUFFIX: &str = ".upload";
/// First retry delay; each next one doubles, up to `MAX_BACKOFF` (or the
/// request timeout, if smaller), so retries never wait longer than a request may take.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
const CONTENT_TYPE: &str = "application/zstd";
/// First allocation of a part buffer; it doubles from there up to the part size.
const FIRST_BUFFER: usize = 256 << 10;

/// The metadata names, as `x-amz-meta-<name>`.
const META_SHARD_ID: &str = "shard_id";
const META_LOG_ID: &str = "log_id";
const META_SIZE: &str = "size";
const META_SHA256: &str = "sha256";

/// S3 credentials; never taken from flags, where `ps` would show them.
#[derive(Clone)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// Everything the S3 store needs, taken from the configuration.
#[derive(Clone, Debug)]
pub struct S3Options {
    pub endpoint: Option<String>,
    pub bucket: String,
    pub region: String,
    /// Empty, or ending with `/`.
    pub prefix: String,
    pub path_style: bool,
    pub part_size: usize,
    pub upload_concurrency: usize,
    /// Per request attempt (and per read of a streamed body).
    pub timeout: Duration,
    pub retries: u32,
    pub credentials: S3Credentials,
    /// Where upload ids in progress are recorded (in the data dir).
    pub uploads_dir: PathBuf,
}

impl S3Options {
    /// The S3 keys of `config`; credentials from its key files, else from
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`) in `env`.
    pub fn from_config(
        config: &Config,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, StoreError> {
        let env: std::collections::HashMap<String, String> = env.into_iter().collect();
        let credentials = match (
            &config.s3_access_key_id_file,
            &config.s3_secret_access_key_file,
        ) {
            (Some(id_file), Some(secret_file)) => S3Credentials {
                access_key_id: read_secret(id_file)?,
                secret_access_key: read_secret(secret_file)?,
                session_token: env.get("AWS_SESSION_TOKEN").cloned(),
            },
            _ => match (
                env.get("AWS_ACCESS_KEY_ID"),
                env.get("AWS_SECRET_ACCESS_KEY"),
            ) {
                (Some(id), Some(secret)) if !id.is_empty() && !secret.is_empty() => S3Credentials {
                    access_key_id: id.clone(),
                    secret_access_key: secret.clone(),
                    session_token: env.get("AWS_SESSION_TOKEN").cloned(),
                },
                _ => {
                    return Err(StoreError::Backend(
                        "storage = s3 needs credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, \
                         or s3_access_key_id_file and s3_secret_access_key_file"
                            .into(),
                    ));
                }
            },
        };
        Ok(S3Options {
            endpoint: config.s3_endpoint.clone(),
            bucket: config.s3_bucket.clone().unwrap_or_default(),
            region: config.s3_region.clone(),
            prefix: normalise_prefix(&config.s3_prefix),
            path_style: config.s3_path_style,
            part_size: usize::try_from(config.s3_part_size).unwrap_or(usize::MAX),
            upload_concurrency: config.s3_upload_concurrency.max(1),
            timeout: Duration::from_secs(config.storage_timeout),
            retries: config.storage_retries,
            credentials,
            uploads_dir: config.data_dir.join(UPLOADS_DIR),
        })
    }
}

fn read_secret(path: &std::path::Path) -> Result<String, StoreError> {
    let text =
        fs::read_to_string(path).map_err(IoError::with(format!("reading {}", path.display())))?;
    Ok(text.trim().to_owned())
}

/// The bucket, the runtime the store's requests run on, and the bounds they keep.
struct Client {
    s3: Arc<AmazonS3>,
    runtime: Handle,
    bucket: String,
    /// A safety net over one blocking call: the longest that its attempts and
    /// backoffs together may take. object_store's own timeouts end a call well
    /// before; this only guarantees that nothing waits forever.
    call_deadline: Duration,
    /// One attempt (`storage_timeout`): what an abort in a drop may take, so a
    /// worker that gives up on a job is not held by a store that is down
    /// (the record stays, and the next start aborts the upload).
    attempt_deadline: Duration,
}

impl Client {
    fn location(&self, path: &ObjectPath) -> String {
        format!("s3://{}/{}", self.bucket, path)
    }

    /// Runs `fut` on the store's runtime from a blocking thread, within the call deadline.
    fn block_on<T>(&self, fut: impl Future<Output = T>) -> Result<T, tokio::time::error::Elapsed> {
        self.block_on_within(self.call_deadline, fut)
    }

    fn block_on_within<T>(
        &self,
        deadline: Duration,
        fut: impl Future<Output = T>,
    ) -> Result<T, tokio::time::error::Elapsed> {
        self.runtime
            .block_on(async { tokio::time::timeout(deadline, fut).await })
    }

    /// One request: its error classified and named by `op` and `path`.
    fn call<T>(
        &self,
        op: &str,
        path: &ObjectPath,
        fut: impl Future<Output = object_store::Result<T>>,
    ) -> Result<T, StoreError> {
        match self.block_on(fut) {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(classify(op, &self.location(path), e)),
            Err(_) => Err(self.no_answer(op, path)),
        }
    }

    /// Like `call`, with a missing object as `None`.
    fn call_found<T>(
        &self,
        op: &str,
        path: &ObjectPath,
        fut: impl Future<Output = object_store::Result<T>>,
    ) -> Result<Option<T>, StoreError> {
        match self.block_on(fut) {
            Ok(Ok(value)) => Ok(Some(value)),
            Ok(Err(e @ object_store::Error::NotFound { .. })) if !names_missing_bucket(&e) => {
                Ok(None)
            }
            Ok(Err(e)) => Err(classify(op, &self.location(path), e)),
            Err(_) => Err(self.no_answer(op, path)),
        }
    }

    fn no_answer(&self, op: &str, path: &ObjectPath) -> StoreError {
        self.no_answer_within(op, path, self.call_deadline)
    }

    fn no_answer_within(&self, op: &str, path: &ObjectPath, deadline: Duration) -> StoreError {
        StoreError::Unavailable(format!(
            "{op} {}: no answer within {deadline:?}",
            self.location(path)
        ))
    }

    /// Aborts a multipart upload; one that is gone already (completed, or
    /// removed by a lifecycle rule) counts as aborted.
    fn abort(&self, path: &ObjectPath, id: &str, deadline: Duration) -> Result<(), StoreError> {
        let op = "aborting the multipart upload of";
        let id = id.to_owned();
        match self.block_on_within(deadline, self.s3.abort_multipart(path, &id)) {
            Ok(Ok(())) | Ok(Err(object_store::Error::NotFound { .. })) => Ok(()),
            Ok(Err(e)) => Err(classify(op, &self.location(path), e)),
            Err(_) => Err(self.no_answer_within(op, path, deadline)),
        }
    }
}

/// An S3-compatible bucket as the archive store.
pub struct S3Store {
    client: Arc<Client>,
    prefix: String,
    part_size: usize,
    upload_concurrency: usize,
    uploads_dir: PathBuf,
}

impl S3Store {
    /// Builds the client and checks, with one listing, that the bucket answers
    /// and the credentials are accepted. A store that is down only warns: the
    /// service starts, and archives wait until it is back. Requests run on `runtime`.
    pub fn open(options: S3Options, runtime: Handle) -> Result<Self, StoreError> {
        let store = S3Store::new(options, runtime)?;
        let prefix = ObjectPath::from(store.prefix.trim_end_matches('/'));
        let probe = store.client.s3.list_with_delimiter(Some(&prefix));
        match store.client.call("listing", &prefix, probe) {
            Ok(_) => Ok(store),
            Err(StoreError::Unavailable(e)) => {
                tracing::warn!(error = %e, "the archive bucket does not answer yet");
                Ok(store)
            }
            Err(e) => Err(e),
        }
    }

    /// Builds the client without touching the network.
    pub fn new(options: S3Options, runtime: Handle) -> Result<Self, StoreError> {
        let timeout = options.timeout;
        let retries = options.retries as usize;
        let max_backoff = MAX_BACKOFF.min(timeout);
        let call_deadline = (timeout + max_backoff) * (options.retries + 1) + timeout;
        // object_store's default `timeout` (30 s) runs from connecting until the
        // whole response body is read: it would cut a restore that streams a
        // large archive, and a part upload on a slow link. It is turned off.
        // Instead `read_timeout` (reqwest) bounds the wait for response headers
        // — which includes sending the request body, at most one part — and then
        // each read of the response body: a stalled request fails within
        // `timeout`, yet a stream of any length goes on while bytes flow.
        // A part of `s3_part_size` must therefore go up within `storage_timeout`
        // (8 MiB in 60 s: 140 KiB/s at least).
        let mut client_options = ClientOptions::new()
            .with_timeout_disabled()
            .with_connect_timeout(timeout)
            .with_read_timeout(timeout);
        if let Some(endpoint) = &options.endpoint {
            client_options = client_options.with_allow_http(endpoint.starts_with("http://"));
        }
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: FIRST_BACKOFF.min(max_backoff),
                max_backoff,
                base: 2.0,
            },
            max_retries: retries,
            retry_timeout: call_deadline,
        };
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&options.bucket)
            .with_region(&options.region)
            .with_virtual_hosted_style_request(!options.path_style)
            .with_access_key_id(&options.credentials.access_key_id)
            .with_secret_access_key(&options.credentials.secret_access_key)
            .with_client_options(client_options)
            .with_retry(retry);
        if let Some(token) = &options.credentials.session_token {
            builder = builder.with_token(token);
        }
        if let Some(endpoint) = &options.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        let s3 = builder
            .build()
            .map_err(|e| StoreError::Backend(format!("S3 configuration: {e}")))?;
        fs::create_dir_all(&options.uploads_dir).map_err(IoError::with(format!(
            "creating {}",
            options.uploads_dir.display()
        )))?;
        Ok(S3Store {
            client: Arc::new(Client {
                s3: Arc::new(s3),
                runtime,
                bucket: options.bucket,
                call_deadline,
                attempt_deadline: timeout,
            }),
            prefix: normalise_prefix(&options.prefix),
            part_size: options.part_size,
            upload_concurrency: options.upload_concurrency.max(1),
            uploads_dir: options.uploads_dir,
        })
    }

    fn shard_prefix(&self, shard_id: ShardId) -> String {
        format!("{}shard-{shard_id}", self.prefix)
    }

    pub fn key(&self, key: ArchiveKey) -> String {
        format!(
            "{}/{:020}{ARCHIVE_SUFFIX}",
            self.shard_prefix(key.shard_id),
            key.log_id
        )
    }

    fn path(&self, key: ArchiveKey) -> Result<ObjectPath, StoreError> {
        let text = self.key(key);
        ObjectPath::parse(&text)
            .map_err(|e| StoreError::Backend(format!("invalid object key {text:?}: {e}")))
    }

    /// The key's `ArchiveKey`, for keys in this store's layout.
    fn parse_key(&self, key: &str) -> Option<ArchiveKey> {
        let (shard, file) = key.strip_prefix(&self.prefix)?.split_once('/')?;
        Some(ArchiveKey {
            shard_id: shard.strip_prefix("shard-")?.parse().ok()?,
            log_id: file.strip_suffix(ARCHIVE_SUFFIX)?.parse().ok()?,
        })
    }
}

impl ArchiveStore for S3Store {
    fn create(
        &self,
        key: ArchiveKey,
        known: Option<&ArchiveMeta>,
        mode: WriteMode,
    ) -> Result<Box<dyn PendingArchive>, StoreError> {
        let path = self.path(key)?;
        Ok(Box::new(S3Pending {
            mode,
            client: self.client.clone(),
            uploads_dir: self.uploads_dir.clone(),
            key,
            path,
            known: known.copied(),
            part_size: self.part_size,
            concurrency: self.upload_concurrency,
            buf: Vec::new(),
            upload: None,
            failed: None,
            finished: false,
        }))
    }

    fn open(&self, key: ArchiveKey) -> Result<Option<Box<dyn Read + Send>>, StoreError> {
        let path = self.path(key)?;
        let got = self
            .client
            .call_found("reading", &path, self.client.s3.get(&path))?;
        Ok(got.map(|result| {
            Box::new(ObjectReader {
                client: self.client.clone(),
                location: self.client.location(&path),
                stream: result.into_stream(),
                chunk: Bytes::new(),
            }) as Box<dyn Read + Send>
        }))
    }

    fn stat(&self, key: ArchiveKey) -> Result<Option<ObjectInfo>, StoreError> {
        let path = self.path(key)?;
        let options = GetOptions {
            head: true,
            ..GetOptions::default()
        };
        let head = self.client.call_found(
            "reading the metadata of",
            &path,
            self.client.s3.get_opts(&path, options),
        )?;
        Ok(head.map(|result| {
            let sha256 = result
                .attributes
                .get(&Attribute::Metadata(META_SHA256.into()))
                .and_then(|value| value.as_ref().parse::<Digest>().ok());
            ObjectInfo {
                size: result.meta.size,
                sha256,
            }
        }))
    }

    fn list(&self, shard: Option<ShardId>) -> Result<Vec<ArchiveKey>, StoreError> {
        let prefix = match shard {
            Some(shard_id) => self.shard_prefix(shard_id),
            None => self.prefix.trim_end_matches('/').to_owned(),
        };
        let prefix = ObjectPath::from(prefix);
        let listing = self.client.s3.list(Some(&prefix));
        let objects = self.client.call("listing", &prefix, async move {
            listing
                .map(|meta| meta.map(|meta| meta.location))
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<object_store::Result<Vec<_>>>()
        })?;
        let mut keys: Vec<ArchiveKey> = objects
            .iter()
            .filter_map(|location| self.parse_key(location.as_ref()))
            .filter(|key| shard.is_none_or(|only| only == key.shard_id))
            .collect();
        keys.sort();
        Ok(keys)
    }

    fn remove(&self, key: ArchiveKey) -> Result<bool, StoreError> {
        let path = self.path(key)?;
        // S3 answers a DELETE the same whether or not the object was there.
        let existed = self
            .client
            .call_found("looking up", &path, self.client.s3.head(&path))?
            .is_some();
        self.client
            .call("removing", &path, self.client.s3.delete(&path))?;
        Ok(existed)
    }

    fn clean_up(&self) -> Result<usize, StoreError> {
        let entries = fs::read_dir(&self.uploads_dir).map_err(IoError::with(format!(
            "listing {}",
            self.uploads_dir.display()
        )))?;
        let mut aborted = 0;
        for entry in entries.flatten() {
            let record = entry.path();
            if !record.to_string_lossy().ends_with(RECORD_SUFFIX) {
                continue;
            }
            let text = fs::read_to_string(&record).unwrap_or_default();
            let mut lines = text.lines();
            let (Some(key), Some(id)) = (lines.next(), lines.next()) else {
                // Torn by a crash while it was written: its upload has no parts
                // yet (they are sent only once the record is durable), and the
                // bucket's lifecycle rule removes the empty upload.
                remove_record(&record);
                continue;
            };
            let Ok(path) = ObjectPath::parse(key) else {
                remove_record(&record);
                continue;
            };
            match self.client.abort(&path, id, self.client.call_deadline) {
                Ok(()) => {
                    remove_record(&record);
                    aborted += 1;
                }
                Err(e) => tracing::warn!(
                    error = %e,
                    record = %record.display(),
                    "cannot abort an interrupted multipart upload; it is tried again at the next start"
                ),
            }
        }
        Ok(aborted)
    }

    fn location(&self, key: ArchiveKey) -> String {
        format!("s3://{}/{}", self.client.bucket, self.key(key))
    }
}

fn remove_record(record: &std::path::Path) {
    if let Err(e) = fs::remove_file(record) {
        tracing::warn!(error = %e, record = %record.display(), "cannot remove an upload record");
    }
}

/// A multipart upload in progress.
struct Upload {
    id: String,
    record: PathBuf,
    /// Each sent part's id, by part index, once it is uploaded.
    parts: Vec<Option<PartId>>,
    in_flight: JoinSet<(usize, object_store::Result<PartId>)>,
}

struct S3Pending {
    mode: WriteMode,
    client: Arc<Client>,
    uploads_dir: PathBuf,
    key: ArchiveKey,
    path: ObjectPath,
    known: Option<ArchiveMeta>,
    part_size: usize,
    concurrency: usize,
    /// The part being filled; sent when it is full and more bytes come.
    buf: Vec<u8>,
    upload: Option<Upload>,
    /// The first failure: every later write, and the commit, repeat it.
    failed: Option<Failure>,
    finished: bool,
}

impl S3Pending {
    fn location(&self) -> String {
        self.client.location(&self.path)
    }

    /// Sends the full buffer as the next part, starting the multipart upload
    /// with the first one and waiting while `concurrency` parts are in flight.
    fn send_part(&mut self) -> Result<(), StoreError> {
        if self.upload.is_none() {
            self.upload = Some(self.start_upload()?);
        }
        let upload = self.upload.as_mut().expect("started above");
        while upload.in_flight.len() >= self.concurrency {
            wait_for_part(&self.client, &self.path, upload)?;
        }
        let index = upload.parts.len();
        upload.parts.push(None);
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(self.part_size));
        let payload = PutPayload::from(Bytes::from(data));
        let (s3, path, id) = (self.client.s3.clone(), self.path.clone(), upload.id.clone());
        upload.in_flight.spawn_on(
            async move { (index, s3.put_part(&path, &id, index, payload).await) },
            &self.client.runtime,
        );
        Ok(())
    }

    fn start_upload(&self) -> Result<Upload, StoreError> {
        let options = PutMultipartOptions {
            attributes: self.known.as_ref().map(attributes).unwrap_or_default(),
            ..PutMultipartOptions::default()
        };
        let id = self.client.call(
            "starting a multipart upload of",
            &self.path,
            self.client.s3.create_multipart_opts(&self.path, options),
        )?;
        match record_upload(&self.uploads_dir, self.key, &self.path, &id) {
            Ok(record) => Ok(Upload {
                id,
                record,
                parts: Vec::new(),
                in_flight: JoinSet::new(),
            }),
            Err(e) => {
                let _ = self
                    .client
                    .abort(&self.path, &id, self.client.call_deadline);
                Err(IoError::new(
                    format!("recording the multipart upload of {}", self.location()),
                    e,
                )
                .into())
            }
        }
    }

    fn fail(&mut self, e: StoreError) -> io::Error {
        let failure = Failure::of(&e);
        self.failed = Some(failure);
        io::Error::other(e)
    }

    /// Room for `n` more bytes. A small archive's buffer grows by doubling, so
    /// it costs what it holds, never more than a part; once the archive has
    /// gone multipart each part's buffer is allocated whole.
    fn reserve(&mut self, n: usize) {
        let needed = self.buf.len() + n;
        if needed > self.buf.capacity() {
            let target = (self.buf.capacity() * 2)
                .max(needed)
                .max(FIRST_BUFFER)
                .min(self.part_size);
            self.buf.reserve_exact(target - self.buf.len());
        }
    }

    fn put_whole(&mut self, meta: &ArchiveMeta) -> Result<(), StoreError> {
        let data = Bytes::from(std::mem::take(&mut self.buf));
        let options = PutOptions {
            mode: match self.mode {
                WriteMode::Create => PutMode::Create,
                WriteMode::Replace => PutMode::Overwrite,
            },
            attributes: attributes(meta),
            ..PutOptions::default()
        };
        self.client.call(
            "writing",
            &self.path,
            self.client
                .s3
                .put_opts(&self.path, PutPayload::from(data), options),
        )?;
        Ok(())
    }

    fn complete(&mut self) -> Result<(), StoreError> {
        if !self.buf.is_empty() {
            // The last part may be smaller than S3's 5 MiB minimum.
            self.send_part()?;
        }
        let upload = self.upload.as_mut().expect("a multipart upload");
        while !upload.in_flight.is_empty() {
            wait_for_part(&self.client, &self.path, upload)?;
        }
        let parts: Vec<PartId> = upload.parts.iter().flatten().cloned().collect();
        let id = upload.id.clone();
        self.client.call(
            "completing the multipart upload of",
            &self.path,
            self.client.s3.complete_multipart(&self.path, &id, parts),
        )?;
        Ok(())
    }
}

/// Writes `key`'s upload `id` durably before any part is sent, so a crash
/// cannot leave parts that nobody knows about.
fn record_upload(
    uploads_dir: &std::path::Path,
    key: ArchiveKey,
    path: &ObjectPath,
    id: &str,
) -> io::Result<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "{}-{:020}-{}-{}{RECORD_SUFFIX}",
        key.shard_id,
        key.log_id,
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let record = uploads_dir.join(name);
    let mut file = File::create_new(&record)?;
    file.write_all(format!("{path}\n{id}\n").as_bytes())?;
    file.sync_all()?;
    sync_dir(uploads_dir)?;
    Ok(record)
}

/// A failure remembered by a pending upload, to repeat with its kind.
#[derive(Clone)]
enum Failure {
    Unavailable(String),
    Backend(String),
}

impl Failure {
    fn of(e: &StoreError) -> Failure {
        match e {
            StoreError::Unavailable(message) => Failure::Unavailable(message.clone()),
            other => Failure::Backend(other.to_string()),
        }
    }

    fn error(&self) -> StoreError {
        match self {
            Failure::Unavailable(message) => StoreError::Unavailable(message.clone()),
            Failure::Backend(message) => StoreError::Backend(message.clone()),
        }
    }
}

/// Waits for one part in flight to finish.
fn wait_for_part(
    client: &Client,
    path: &ObjectPath,
    upload: &mut Upload,
) -> Result<(), StoreError> {
    let joined = client
        .block_on(upload.in_flight.join_next())
        .map_err(|_| client.no_answer("uploading a part of", path))?;
    match joined {
        None => Ok(()),
        Some(Ok((index, Ok(part)))) => {
            upload.parts[index] = Some(part);
            Ok(())
        }
        Some(Ok((index, Err(e)))) => Err(classify(
            &format!("uploading part {} of", index + 1),
            &client.location(path),
            e,
        )),
        Some(Err(e)) => Err(StoreError::Backend(format!(
            "uploading a part of {}: {e}",
            client.location(path)
        ))),
    }
}

impl Write for S3Pending {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if let Some(failure) = &self.failed {
            return Err(io::Error::other(failure.error()));
        }
        if self.finished {
            return Err(io::Error::other("archive already committed"));
        }
        let mut rest = data;
        while !rest.is_empty() {
            if self.buf.len() >= self.part_size
                && let Err(e) = self.send_part()
            {
                return Err(self.fail(e));
            }
            let n = rest.len().min(self.part_size - self.buf.len());
            self.reserve(n);
            self.buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        match &self.failed {
            Some(failure) => Err(io::Error::other(failure.error())),
            None => Ok(()),
        }
    }
}

impl PendingArchive for S3Pending {
    fn commit(mut self: Box<Self>, meta: &ArchiveMeta) -> Result<(), StoreError> {
        if let Some(failure) = &self.failed {
            return Err(failure.error());
        }
        if self.upload.is_none() {
            self.put_whole(meta)?;
            self.finished = true;
            return Ok(());
        }
        // On failure, dropping `self` aborts the upload.
        self.complete()?;
        self.finished = true;
        if let Some(upload) = self.upload.take() {
            remove_record(&upload.record);
        }
        Ok(())
    }
}

impl Drop for S3Pending {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let Some(mut upload) = self.upload.take() else {
            return;
        };
        upload.in_flight.abort_all();
        let (client, path) = (self.client.clone(), self.path.clone());
        let abort = move || match client.abort(&path, &upload.id, client.attempt_deadline) {
            Ok(()) => remove_record(&upload.record),
            Err(e) => tracing::warn!(
                error = %e,
                "cannot abort a multipart upload; it is tried again at the next start"
            ),
        };
        // Blocking is fine on a worker thread; inside the runtime it would stall
        // (or panic), so the abort is handed to a blocking thread there.
        match Handle::try_current() {
            Ok(handle) => drop(handle.spawn_blocking(abort)),
            Err(_) => abort(),
        }
    }
}

/// An object's body as a blocking `Read`, one chunk at a time.
struct ObjectReader {
    client: Arc<Client>,
    location: String,
    stream: BoxStream<'static, object_store::Result<Bytes>>,
    chunk: Bytes,
}

impl Read for ObjectReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            let next = self.client.block_on(self.stream.next()).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    StoreError::Unavailable(format!(
                        "reading {}: no data within {:?}",
                        self.location, self.client.call_deadline
                    )),
                )
            })?;
            match next {
                None => return Ok(0),
                Some(Ok(bytes)) => self.chunk = bytes,
                Some(Err(e)) => {
                    return Err(io::Error::other(classify("reading", &self.location, e)));
                }
            }
        }
        let n = out.len().min(self.chunk.len());
        out[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk = self.chunk.slice(n..);
        Ok(n)
    }
}

fn attributes(meta: &ArchiveMeta) -> Attributes {
    let mut attributes = Attributes::new();
    attributes.insert(Attribute::ContentType, CONTENT_TYPE.into());
    for (name, value) in [
        (META_SHARD_ID, meta.key.shard_id.to_string()),
        (META_LOG_ID, meta.key.log_id.to_string()),
        (META_SIZE, meta.size.to_string()),
        (META_SHA256, meta.sha256.to_hex()),
    ] {
        attributes.insert(Attribute::Metadata(name.into()), value.into());
    }
    attributes
}

/// Sorts an object_store failure, after its retries, into what the engine acts
/// on: `Exists` (a create-only write found an object), `Unavailable` (it may
/// pass: timeouts, lost connections, throttling, 5xx), or `Backend` (it will
/// not: permissions, a missing bucket, a bad request).
fn classify(op: &str, location: &str, e: object_store::Error) -> StoreError {
    use object_store::Error as E;
    let message = format!("{op} {location}: {e}");
    match &e {
        E::AlreadyExists { .. } | E::Precondition { .. } => StoreError::Exists {
            location: location.to_owned(),
        },
        E::Generic { .. } | E::JoinError { .. } if is_transient(&e) => {
            StoreError::Unavailable(message)
        }
        _ => StoreError::Backend(message),
    }
}

/// Whether a failure is a passing one. object_store does not export its
/// request error, so a status is read from its message ("Server returned
/// non-2xx status code: 503 …"); a transport failure is an `HttpError`.
fn is_transient(e: &object_store::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(error) = cause {
        if error.downcast_ref::<HttpError>().is_some() {
            return true;
        }
        let text = error.to_string();
        if text.starts_with("Server returned error response") {
            // A 200 whose body says InternalError or SlowDown.
            return true;
        }
        if let Some(status) = text
            .strip_prefix("Server returned non-2xx status code: ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse::<u16>().ok())
        {
            return status >= 500 || status == 429 || status == 408;
        }
        cause = error.source();
    }
    false
}

/// A 404 about the bucket, not the object: a configuration error, never "no archive".
fn names_missing_bucket(e: &object_store::Error) -> bool {
    e.to_string().contains("NoSuchBucket")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(prefix: &str) -> S3Store {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        S3Store::new(
            S3Options {
                endpoint: Some("http://127.0.0.1:9".into()),
                bucket: "b".into(),
                region: "r".into(),
                prefix: prefix.into(),
                path_style: true,
                part_size: 5 << 20,
                upload_concurrency: 2,
                timeout: Duration::from_secs(1),
                retries: 0,
                credentials: S3Credentials {
                    access_key_id: "k".into(),
                    secret_access_key: "s".into(),
                    session_token: None,
                },
                uploads_dir: dir.path().join("u"),
            },
            runtime.handle().clone(),
        )
        .unwrap()
    }

    #[test]
    fn keys_follow_the_local_layout_and_parse_back() {
        for prefix in ["", "prod/eu/"] {
            let store = store(prefix);
            let key = ArchiveKey {
                shard_id: 7,
                log_id: 42,
            };
            let text = store.key(key);
            assert_eq!(
                text,
                format!("{prefix}shard-7/00000000000000000042.wal.zst")
            );
            assert_eq!(store.parse_key(&text), Some(key));
            assert_eq!(store.location(key), format!("s3://b/{text}"));
            assert_eq!(store.parse_key(&format!("{prefix}shard-7/notes.txt")), None);
            assert_eq!(store.parse_key("elsewhere/shard-7/1.wal.zst"), None);
        }
    }
}
