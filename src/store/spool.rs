//! The spool holds a segment's bytes from receipt until its archive is durable,
//! one file per job. It is what makes an acknowledgement at QUEUED safe: the
//! file is fsynced (and its directory) before the job row says QUEUED.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use super::StoreError;
use crate::error::IoError;
use crate::types::JobId;

pub struct Spool {
    dir: PathBuf,
}

impl Spool {
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let dir = dir.into();
        create_dir_durably(&dir)?;
        Ok(Spool { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self, job: JobId) -> PathBuf {
        self.dir.join(format!("{:020}.seg", job.0))
    }

    pub fn create(&self, job: JobId) -> Result<File, StoreError> {
        let path = self.path(job);
        Ok(File::create(&path).map_err(IoError::with(format!(
            "creating spool file {}",
            path.display()
        )))?)
    }

    pub fn open_file(&self, job: JobId) -> Result<File, StoreError> {
        let path = self.path(job);
        Ok(File::open(&path).map_err(IoError::with(format!(
            "opening spool file {}",
            path.display()
        )))?)
    }

    /// Makes a spool file and its directory entry durable.
    pub fn persist(&self, file: &File) -> Result<(), StoreError> {
        file.sync_all()
            .map_err(IoError::with("syncing spool file"))?;
        sync_dir(&self.dir).map_err(IoError::with("syncing spool directory"))?;
        Ok(())
    }

    pub fn remove(&self, job: JobId) -> Result<(), StoreError> {
        match fs::remove_file(self.path(job)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(IoError::new(format!("removing spool file of job {job}"), e).into()),
        }
    }

    /// Job ids that have a spool file.
    pub fn list(&self) -> Result<Vec<JobId>, StoreError> {
        let entries = fs::read_dir(&self.dir)
            .map_err(IoError::with(format!("listing {}", self.dir.display())))?;
        Ok(entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".seg")?.parse().ok())
            .collect())
    }
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Starts the kernel writing a file's pages every `step` bytes, so the fsync
/// that makes the file durable has only the tail left to wait for, and the
/// page cache does not fill with dirty pages that throttle the writes. A hint
/// only: the fsync is what makes the bytes durable, so a failure here
/// changes nothing.
pub struct WriteBack {
    step: u64,
    started: u64,
}

impl WriteBack {
    pub fn every(step: u64) -> WriteBack {
        WriteBack { step, started: 0 }
    }

    /// `written` bytes of `file` are written so far (from offset 0).
    pub fn wrote(&mut self, file: &File, written: u64) {
        use std::os::fd::AsRawFd;
        if written < self.started + self.step {
            return;
        }
        let (Ok(offset), Ok(length)) = (
            i64::try_from(self.started),
            i64::try_from(written - self.started),
        ) else {
            return;
        };
        // SAFETY: a plain syscall on a descriptor `file` keeps open; it touches no memory of ours.
        unsafe {
            libc::sync_file_range(
                file.as_raw_fd(),
                offset,
                length,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
        self.started = written;
    }
}

/// Creates `dir` (and its parents) with a durable entry: without its
/// parent's fsync a power cut can take the directory and every file in it,
/// fsynced or not (tests/powerloss.rs).
pub fn create_dir_durably(dir: &Path) -> Result<(), StoreError> {
    fs::create_dir_all(dir).map_err(IoError::with(format!("creating {}", dir.display())))?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent).map_err(IoError::with(format!("syncing {}", parent.display())))?;
    }
    Ok(())
}
