//! Small real filesystems for tests that fill a disk: a tmpfs of a given size,
//! unmounted on drop. The tests run as root (CI does); a tmpfs that cannot be
//! mounted fails the test rather than skipping it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub struct SmallDisk {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    pub fn mount(size_mib: u64) -> SmallDisk {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("disk");
        std::fs::create_dir(&path).expect("mount point");
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(&path)
            .stdin(Stdio::null())
            .output()
            .expect("run mount");
        assert!(
            output.status.success(),
            "cannot mount a {size_mib} MiB tmpfs at {} (the tests need root): {}",
            path.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        SmallDisk { path, _dir: dir }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn free_bytes(&self) -> u64 {
        let out = Command::new("df")
            .args(["-B1", "--output=avail"])
            .arg(&self.path)
            .output()
            .expect("df");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .expect("df output")
    }

    /// Writes a file that leaves about `left` bytes free; returns its path.
    pub fn fill_leaving(&self, left: u64) -> PathBuf {
        let filler = self.path.join("filler");
        let size = self.free_bytes().saturating_sub(left);
        std::fs::write(&filler, vec![0u8; size as usize]).expect("write filler");
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Bytes that do not compress (xorshift), so an archive is as big as its segment.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    let mut x = seed | 1;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}
