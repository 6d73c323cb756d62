//! Free space of the data dir, and what uploads in progress have claimed of
//! it. statvfs only sees bytes already written, so two pushes checked at the
//! same moment could each see room for themselves and together fill the
//! disk: each upload reserves its declared size (or what it has received,
//! when no size was declared) until it ends, and a push is refused unless
//! the free space covers `min_free_bytes` plus every reservation plus itself.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::EngineError;
use crate::error::IoError;

pub(super) struct DiskBudget {
    dir: PathBuf,
    min_free: u64,
    reserved: AtomicU64,
}

/// Space claimed by one upload; given back on drop.
pub(super) struct Reservation {
    budget: Arc<DiskBudget>,
    bytes: u64,
}

impl DiskBudget {
    pub fn new(dir: PathBuf, min_free: u64) -> DiskBudget {
        DiskBudget {
            dir,
            min_free,
            reserved: AtomicU64::new(0),
        }
    }

    /// Reserves `bytes` if the data dir has room for them beside everything
    /// reserved already; `DiskFull` otherwise.
    pub fn reserve(self: &Arc<Self>, bytes: u64) -> Result<Reservation, EngineError> {
        let free =
            free_bytes(&self.dir).map_err(IoError::with("checking free space of the data dir"))?;
        let reserved = self.reserved.fetch_add(bytes, Ordering::SeqCst);
        let reservation = Reservation {
            budget: self.clone(),
            bytes,
        };
        let needed = self.min_free.saturating_add(reserved).saturating_add(bytes);
        if free < needed {
            return Err(EngineError::DiskFull { free, needed });
        }
        Ok(reservation)
    }
}

impl Reservation {
    /// The upload has received `total` bytes: claim them if that is more
    /// than reserved (an upload that declared no size).
    pub fn cover(&mut self, total: u64) {
        if total > self.bytes {
            self.budget
                .reserved
                .fetch_add(total - self.bytes, Ordering::SeqCst);
            self.bytes = total;
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.reserved.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

fn free_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path =
        std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: statvfs is plain data; all-zero bytes are a valid value.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is a valid NUL-terminated string and stat a valid out-pointer.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stat.f_bavail as u64 * stat.f_frsize as u64)
}
