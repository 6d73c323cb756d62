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

mod client;
mod options;
mod upload;

use client::{Client, ObjectReader, classify};
pub use options::{S3Credentials, S3Options};
use upload::{S3Pending, remove_record};

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

    fn shared(&self) -> bool {
        true
    }
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
