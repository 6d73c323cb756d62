//! One server per data dir. Two servers on one data dir would each recover
//! the other's work in progress — delete its temporaries, re-queue the job it
//! is compressing — so the first takes an exclusive lock (flock) on a file in
//! the data dir, holds it for its whole life, and writes its pid there for
//! the error a second one prints.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::StoreError;
use crate::error::IoError;

const LOCK_FILE: &str = "wal-archiver.lock";

/// Held while the server runs; the lock goes with the process.
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    pub fn acquire(data_dir: &Path) -> Result<DataDirLock, StoreError> {
        let path = data_dir.join(LOCK_FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(IoError::with(format!("opening {}", path.display())))?;
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                return Err(StoreError::Locked {
                    data_dir: data_dir.to_owned(),
                    holder: holder.trim().to_owned(),
                });
            }
            return Err(IoError::new(format!("locking {}", path.display()), error).into());
        }
        let write_pid = |file: &mut File| -> std::io::Result<()> {
            file.set_len(0)?;
            file.rewind()?;
            writeln!(file, "pid {}", std::process::id())?;
            file.sync_all()
        };
        write_pid(&mut file).map_err(IoError::with(format!("writing {}", path.display())))?;
        Ok(DataDirLock { _file: file })
    }

    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(LOCK_FILE)
    }
}
