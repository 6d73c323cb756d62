//! The archive store under test, local or S3, and how tests look at it from
//! outside the server: read, plant, damage, remove and list archives.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{Attribute, GetOptions, ObjectStore, ObjectStoreExt, PutPayload};

use object_store::aws::AmazonS3;

use super::garage::{self, Garage};
use super::{Server, list};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Local,
    S3,
}

/// A key prefix no other server of this test run uses.
pub fn unique_prefix() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "test-{}-{}/",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Where an S3-backed server keeps its archives.
pub struct S3Target {
    pub bucket: AmazonS3,
    /// Ends with `/`.
    pub prefix: String,
}

impl Server {
    /// Starts a server on a fresh data dir with archives on `backend`; with
    /// S3, in the test binary's Garage under a prefix of its own.
    pub fn start_with(backend: Backend, args: &[&str]) -> Server {
        match backend {
            Backend::Local => Server::start(args),
            Backend::S3 => Server::start_on(garage::shared(), args),
        }
    }

    /// Starts a server with archives in `garage`, under a prefix of its own.
    pub fn start_on(garage: &Garage, args: &[&str]) -> Server {
        Server::start_on_prefix(garage, &unique_prefix(), args)
    }

    /// Starts a server on `garage` under `prefix`: several of them share one
    /// bucket the way replicas do.
    pub fn start_on_prefix(garage: &Garage, prefix: &str, args: &[&str]) -> Server {
        let prefix = prefix.to_owned();
        let mut all = garage.server_args(&prefix);
        all.extend(args.iter().map(|a| a.to_string()));
        let dir = tempfile::tempdir().expect("temp dir");
        let target = S3Target {
            bucket: garage.bucket(),
            prefix,
        };
        let mut server = Server::spawn_with(
            &dir.path().join("data"),
            "127.0.0.1:0",
            all,
            garage.env(),
            Backend::S3,
            Some(target),
        );
        server._dir = Some(dir);
        server
    }

    fn target(&self) -> &S3Target {
        self.s3.as_ref().expect("a server on S3")
    }

    fn object_path(&self, shard: u32, log_id: u64) -> ObjectPath {
        let prefix = &self.target().prefix;
        ObjectPath::from(format!("{prefix}shard-{shard}/{log_id:020}.wal.zst"))
    }

    /// The archive's bytes as stored; `None` when there is none.
    pub async fn archive_bytes(&self, shard: u32, log_id: u64) -> Option<Vec<u8>> {
        match self.backend {
            Backend::Local => std::fs::read(self.archive_path(shard, log_id)).ok(),
            Backend::S3 => {
                match self
                    .target()
                    .bucket
                    .get(&self.object_path(shard, log_id))
                    .await
                {
                    Ok(got) => Some(got.bytes().await.expect("object body").to_vec()),
                    Err(object_store::Error::NotFound { .. }) => None,
                    Err(e) => panic!("reading an archive: {e}"),
                }
            }
        }
    }

    /// Writes `bytes` under the archive's key as a hand copy would: a plain
    /// file, or a plain PUT without the server's metadata.
    pub async fn put_archive(&self, shard: u32, log_id: u64, bytes: Vec<u8>) {
        match self.backend {
            Backend::Local => {
                let path = self.archive_path(shard, log_id);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, bytes).unwrap();
            }
            Backend::S3 => {
                self.target()
                    .bucket
                    .put(&self.object_path(shard, log_id), PutPayload::from(bytes))
                    .await
                    .expect("planting an object");
            }
        }
    }

    pub async fn remove_archive(&self, shard: u32, log_id: u64) {
        match self.backend {
            Backend::Local => std::fs::remove_file(self.archive_path(shard, log_id)).unwrap(),
            Backend::S3 => self
                .target()
                .bucket
                .delete(&self.object_path(shard, log_id))
                .await
                .expect("removing an object"),
        }
    }

    /// The log_ids of a shard's archives, sorted.
    pub async fn archive_ids(&self, shard: u32) -> Vec<u64> {
        let names: Vec<String> = match self.backend {
            Backend::Local => self
                .archives(shard)
                .iter()
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect(),
            Backend::S3 => {
                let shard_prefix =
                    ObjectPath::from(format!("{}shard-{shard}", self.target().prefix));
                self.target()
                    .bucket
                    .list(Some(&shard_prefix))
                    .map_ok(|meta| meta.location.filename().unwrap_or_default().to_owned())
                    .try_collect()
                    .await
                    .expect("listing objects")
            }
        };
        let mut ids: Vec<u64> = names
            .iter()
            .filter_map(|name| name.strip_suffix(".wal.zst")?.parse().ok())
            .collect();
        ids.sort();
        ids
    }

    /// The object's user metadata (`x-amz-meta-*`), with the S3 backend.
    pub async fn archive_metadata(&self, shard: u32, log_id: u64) -> HashMap<String, String> {
        let options = GetOptions {
            head: true,
            ..GetOptions::default()
        };
        let head = self
            .target()
            .bucket
            .get_opts(&self.object_path(shard, log_id), options)
            .await
            .expect("head object");
        head.attributes
            .iter()
            .filter_map(|(attribute, value)| match attribute {
                Attribute::Metadata(name) => Some((name.to_string(), value.to_string())),
                _ => None,
            })
            .collect()
    }

    /// Multipart uploads the server has recorded as in progress.
    pub fn upload_records(&self) -> Vec<PathBuf> {
        list(&self.data_dir.join("s3-uploads"))
    }

    /// Whether an archive is being written right now: a multipart upload in
    /// progress (S3) or a temporary file (local).
    pub fn archive_in_progress(&self) -> bool {
        match self.backend {
            Backend::Local => !self.temporaries().is_empty(),
            Backend::S3 => !self.upload_records().is_empty(),
        }
    }

    /// Decodes the stored archive with the stock `zstd -d`.
    pub async fn decode_archive(&self, shard: u32, log_id: u64) -> Vec<u8> {
        let bytes = self.archive_bytes(shard, log_id).await.expect("an archive");
        let dir = tempfile::tempdir().unwrap();
        let path: &Path = &dir.path().join("archive.wal.zst");
        std::fs::write(path, bytes).unwrap();
        super::zstd_decode(path)
    }
}
