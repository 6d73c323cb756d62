//! Running one contender as a child process and measuring that process alone:
//! its wall time, its CPU seconds and its own peak RSS.
//!
//! The peak cannot come from `wait4`'s `ru_maxrss`. Linux records, at
//! `execve`, the high-water mark of the memory the process had *before* the
//! exec; a child made with `posix_spawn` (what `std::process::Command` uses)
//! shares the parent's memory until then, so every child inherited this
//! process's own high-water mark — about 1 GiB once the 1 GiB segment had been
//! generated — and a forked child inherits the parent's RSS at the fork. So the
//! child is started traced (`PTRACE_TRACEME`, stopped at its exec) and asked to
//! stop once more when its main thread exits, before its memory is torn down
//! (`PTRACE_O_TRACEEXIT`): there `/proc/<pid>/status` still holds `VmHWM`, the
//! high-water mark of the memory its program had, and nothing else. No system
//! call is traced, so the child runs at full speed in between.
//!
//! A tracer is a thread, not a process: `run_measured` spawns, resumes and
//! reaps its child from the calling thread, and blocks it until the child ends.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{BenchError, io};

/// What one child cost.
#[derive(Clone, Copy, Debug)]
pub(super) struct ChildUsage {
    pub wall: Duration,
    /// User + system CPU of the child (and of any children it waited for).
    pub cpu_secs: f64,
    /// The child's own peak RSS (`VmHWM` at its exit), in bytes.
    pub peak_rss: u64,
}

/// Runs `command` to completion (it must exit 0) and measures it.
pub(super) fn run_measured(what: &str, mut command: Command) -> Result<ChildUsage, BenchError> {
    command.stdin(Stdio::null());
    // SAFETY: the closure runs in the forked child before exec and makes one
    // async-signal-safe system call.
    unsafe {
        command.pre_exec(|| {
            if libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let started = Instant::now();
    let child = command.spawn().map_err(io(format!("starting {what}")))?;
    let pid = child.id() as libc::pid_t;
    // Reaped below with wait4, which std's Child must not try again.
    std::mem::forget(child);
    let failed = |problem: String| BenchError::Failed(format!("{what}: {problem}"));

    let mut status = 0;
    // SAFETY: waitpid on our own child with a valid out-pointer.
    if unsafe { libc::waitpid(pid, &mut status, 0) } != pid
        || !libc::WIFSTOPPED(status)
        || libc::WSTOPSIG(status) != libc::SIGTRAP
    {
        return Err(failed(format!("did not stop at exec (status {status})")));
    }
    let options = libc::PTRACE_O_TRACEEXIT | libc::PTRACE_O_EXITKILL;
    // SAFETY: ptrace requests on our own stopped tracee.
    unsafe {
        if libc::ptrace(libc::PTRACE_SETOPTIONS, pid, 0, options) == -1
            || libc::ptrace(libc::PTRACE_CONT, pid, 0, 0) == -1
        {
            let e = std::io::Error::last_os_error();
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, &mut status, 0);
            return Err(failed(format!("ptrace: {e}")));
        }
    }

    let mut peak_at_exit = None;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: wait4 on our own child with valid out-pointers.
        if unsafe { libc::wait4(pid, &mut status, 0, &mut usage) } != pid {
            return Err(failed(format!(
                "wait4: {}",
                std::io::Error::last_os_error()
            )));
        }
        if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
            break;
        }
        // Stopped: at its exit (read the peak), or for a signal it must get.
        let exiting = status >> 8 == (libc::SIGTRAP | (libc::PTRACE_EVENT_EXIT << 8));
        let signal = if exiting {
            peak_at_exit = Some(vm_hwm(pid as u32)?);
            0
        } else {
            libc::WSTOPSIG(status)
        };
        // SAFETY: resuming our own stopped tracee.
        unsafe { libc::ptrace(libc::PTRACE_CONT, pid, 0, signal) };
    }
    let wall = started.elapsed();
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        return Err(failed(format!("failed (wait status {status})")));
    }
    let peak_rss = match peak_at_exit {
        Some(peak) => peak,
        None => {
            // Only if another thread ended the process while the main one
            // was being killed; the rusage figure is an upper bound.
            eprintln!("bench:   {what}: no exit stop; peak RSS from rusage (an upper bound)");
            usage.ru_maxrss as u64 * 1024
        }
    };
    Ok(ChildUsage {
        wall,
        cpu_secs: timeval_secs(usage.ru_utime) + timeval_secs(usage.ru_stime),
        peak_rss,
    })
}

/// `VmHWM` of a live process, in bytes.
pub(super) fn vm_hwm(pid: u32) -> Result<u64, BenchError> {
    proc_status_kib(pid as libc::pid_t, "VmHWM:").map(|kib| kib * 1024)
}

fn proc_status_kib(pid: libc::pid_t, field: &str) -> Result<u64, BenchError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(io(format!("reading /proc/{pid}/status")))?;
    status
        .lines()
        .find_map(|line| {
            line.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .ok_or_else(|| BenchError::Failed(format!("no {field} in /proc/{pid}/status")))
}

pub(super) fn timeval_secs(tv: libc::timeval) -> f64 {
    tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6
}

pub(super) fn self_cpu_secs() -> f64 {
    // SAFETY: getrusage fills a valid rusage.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    timeval_secs(usage.ru_utime) + timeval_secs(usage.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The point of this module: a child's peak is its own, whatever this
    /// process held before spawning it.
    #[test]
    fn a_childs_peak_is_its_own() {
        let held: Vec<u8> = vec![1; 256 << 20];
        std::hint::black_box(&held);
        let small = run_measured("true", Command::new("true")).unwrap();
        assert!(
            small.peak_rss < 32 << 20,
            "`true` peaked at {} bytes",
            small.peak_rss
        );
        drop(held);
        // A child that holds memory is seen holding it: the shell keeps the
        // 48 MiB of a command substitution.
        let mut command = Command::new("sh");
        command.args(["-c", "x=$(head -c 50331648 /dev/zero | tr '\\0' a)"]);
        let holding = run_measured("sh", command).unwrap();
        assert!(
            holding.peak_rss > 48 << 20,
            "sh peaked at {} bytes",
            holding.peak_rss
        );
        let mut fails = Command::new("false");
        fails.stdout(Stdio::null());
        assert!(run_measured("false", fails).is_err());
    }
}
