//! Archives on a local filesystem: `<root>/shard-<id>/<log_id, 20 digits>.wal.zst`,
//! so names sort by log_id. Writes go to a temporary name in the same directory,
//! are fsynced, renamed into place, and the directory is fsynced.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::{
    ArchiveKey, ArchiveMeta, ArchiveStore, ObjectInfo, PendingArchive, StoreError, WriteMode,
    create_dir_durably, sync_dir,
};
use crate::error::IoError;
use crate::types::ShardId;

const TEMP_PREFIX: &str = ".tmp-";
pub const ARCHIVE_SUFFIX: &str = ".wal.zst";

pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        create_dir_durably(&root)?;
        Ok(LocalStore { root })
    }

    fn shard_dir(&self, key: ArchiveKey) -> PathBuf {
        self.root.join(format!("shard-{}", key.shard_id))
    }

    pub fn path(&self, key: ArchiveKey) -> PathBuf {
        self.shard_dir(key)
            .join(format!("{:020}{ARCHIVE_SUFFIX}", key.log_id))
    }
}

impl ArchiveStore for LocalStore {
    fn create(
        &self,
        key: ArchiveKey,
        _known: Option<&ArchiveMeta>,
        // Nothing else writes into this directory (one server per data
        // dir): the engine's identity check is enough, and a rename replaces.
        _mode: WriteMode,
    ) -> Result<Box<dyn PendingArchive>, StoreError> {
        let dir = self.shard_dir(key);
        if !dir.exists() {
            fs::create_dir_all(&dir)
                .map_err(IoError::with(format!("creating {}", dir.display())))?;
            sync_dir(&self.root)
                .map_err(IoError::with(format!("syncing {}", self.root.display())))?;
        }
        let final_path = self.path(key);
        let temp_path = dir.join(format!(
            "{TEMP_PREFIX}{:020}-{}",
            key.log_id,
            std::process::id()
        ));
        let file = File::create(&temp_path)
            .map_err(IoError::with(format!("creating {}", temp_path.display())))?;
        Ok(Box::new(LocalPending {
            file: Some(BufWriter::with_capacity(256 << 10, file)),
            temp_path,
            final_path,
            dir,
        }))
    }

    fn open(&self, key: ArchiveKey) -> Result<Option<Box<dyn Read + Send>>, StoreError> {
        let path = self.path(key);
        match File::open(&path) {
            Ok(file) => Ok(Some(Box::new(file))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(IoError::new(format!("opening {}", path.display()), e).into()),
        }
    }

    fn stat(&self, key: ArchiveKey) -> Result<Option<ObjectInfo>, StoreError> {
        let path = self.path(key);
        match fs::metadata(&path) {
            Ok(meta) => Ok(Some(ObjectInfo {
                size: meta.len(),
                sha256: None,
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(IoError::new(format!("reading {}", path.display()), e).into()),
        }
    }

    fn list(&self, shard: Option<ShardId>) -> Result<Vec<ArchiveKey>, StoreError> {
        let mut keys = Vec::new();
        for shard_dir in list_dir(&self.root)? {
            let Some(shard_id) = shard_dir
                .file_name()
                .and_then(|n| n.to_str()?.strip_prefix("shard-")?.parse::<ShardId>().ok())
            else {
                continue;
            };
            if shard.is_some_and(|only| only != shard_id) {
                continue;
            }
            for file in list_dir(&shard_dir)? {
                let log_id = file
                    .file_name()
                    .and_then(|n| n.to_str()?.strip_suffix(ARCHIVE_SUFFIX)?.parse().ok());
                if let Some(log_id) = log_id {
                    keys.push(ArchiveKey { shard_id, log_id });
                }
            }
        }
        keys.sort();
        Ok(keys)
    }

    fn remove(&self, key: ArchiveKey) -> Result<bool, StoreError> {
        let path = self.path(key);
        match fs::remove_file(&path) {
            Ok(()) => {
                sync_dir(&self.shard_dir(key)).map_err(IoError::with("syncing shard directory"))?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(IoError::new(format!("removing {}", path.display()), e).into()),
        }
    }

    fn clean_up(&self) -> Result<usize, StoreError> {
        let mut removed = 0;
        let shards = fs::read_dir(&self.root)
            .map_err(IoError::with(format!("listing {}", self.root.display())))?;
        for shard in shards.flatten() {
            if !shard.path().is_dir() {
                continue;
            }
            removed += remove_prefixed(&shard.path(), TEMP_PREFIX)?;
        }
        Ok(removed)
    }

    fn location(&self, key: ArchiveKey) -> String {
        self.path(key).display().to_string()
    }

    fn shared(&self) -> bool {
        // The data dir lock makes this server its only writer.
        false
    }
}

fn list_dir(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let entries = fs::read_dir(dir).map_err(IoError::with(format!("listing {}", dir.display())))?;
    Ok(entries.flatten().map(|entry| entry.path()).collect())
}

fn remove_prefixed(dir: &Path, prefix: &str) -> Result<usize, StoreError> {
    let mut removed = 0;
    let entries = fs::read_dir(dir).map_err(IoError::with(format!("listing {}", dir.display())))?;
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(prefix) {
            fs::remove_file(entry.path()).map_err(IoError::with(format!(
                "removing {}",
                entry.path().display()
            )))?;
            removed += 1;
        }
    }
    Ok(removed)
}

struct LocalPending {
    file: Option<BufWriter<File>>,
    temp_path: PathBuf,
    final_path: PathBuf,
    dir: PathBuf,
}

impl Write for LocalPending {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.as_mut().ok_or_else(closed)?.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file.as_mut().ok_or_else(closed)?.write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.as_mut().ok_or_else(closed)?.flush()
    }
}

fn closed() -> io::Error {
    io::Error::other("archive already committed")
}

impl PendingArchive for LocalPending {
    fn commit(mut self: Box<Self>, _meta: &ArchiveMeta) -> Result<(), StoreError> {
        let writer = self
            .file
            .take()
            .ok_or_else(|| IoError::new("committing archive", closed()))?;
        let file = writer.into_inner().map_err(|e| {
            IoError::new(
                format!("writing {}", self.temp_path.display()),
                e.into_error(),
            )
        })?;
        file.sync_all().map_err(IoError::with(format!(
            "syncing {}",
            self.temp_path.display()
        )))?;
        drop(file);
        fs::rename(&self.temp_path, &self.final_path).map_err(IoError::with(format!(
            "renaming into {}",
            self.final_path.display()
        )))?;
        sync_dir(&self.dir).map_err(IoError::with(format!("syncing {}", self.dir.display())))?;
        Ok(())
    }
}

impl Drop for LocalPending {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.temp_path);
        }
    }
}
