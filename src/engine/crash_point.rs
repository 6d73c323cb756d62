//! Steered crashes for the recovery tests: `WAL_ARCHIVER_TEST_CRASH_AT=<point>`
//! aborts the process the first time the named point is reached, so a test
//! can land a crash inside each recovery path instead of hoping a random kill
//! does. Compiled into debug builds only: a release binary has no such points
//! and ignores the variable.

/// Where a crash leaves which recovery path to run at the next start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CrashPoint {
    /// Spool bytes written, the job still RECEIVING: "interrupted".
    Receiving,
    /// Archive temporary half written, the job COMPRESSING: "requeued" and
    /// "temporaries_removed".
    Compressing,
    /// Archive at its final name, its row not yet ARCHIVED: "adopted".
    Committed,
    /// Row ARCHIVED, spool file not yet removed: "orphan_spools_removed".
    Archived,
}

impl CrashPoint {
    #[cfg(debug_assertions)]
    fn name(self) -> &'static str {
        match self {
            CrashPoint::Receiving => "receiving",
            CrashPoint::Compressing => "compressing",
            CrashPoint::Committed => "committed",
            CrashPoint::Archived => "archived",
        }
    }
}

/// The variable that arms a crash point (debug builds only).
pub const CRASH_AT_VARIABLE: &str = "WAL_ARCHIVER_TEST_CRASH_AT";

#[inline]
pub(crate) fn reached(point: CrashPoint) {
    #[cfg(debug_assertions)]
    if std::env::var_os(CRASH_AT_VARIABLE).is_some_and(|armed| armed == point.name()) {
        eprintln!("crash point {}: aborting", point.name());
        std::process::abort();
    }
    #[cfg(not(debug_assertions))]
    let _ = point;
}
