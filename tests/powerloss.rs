//! The power-loss test: "acknowledged means durable", proved on a filesystem
//! that loses every write not made durable when the power goes
//! (tests/powerloss/lossyfs.py, a FUSE filesystem; see its README).
//!
//! A calibration run drives a fixed workload — segments pushed one at a time,
//! some acknowledged at QUEUED, some at ARCHIVED — against a real server whose
//! data dir (jobs database, spool, local archives) is the lossyfs mount, and
//! counts its durability operations. Then, for each chosen crash point (just
//! before or just after the N-th fsync of a spool file, the spool directory,
//! an archive, an archive directory, the jobs database …), the same workload
//! runs until the filesystem freezes at that op, the power is cut, and a
//! server restarts on what survived. Every acknowledged segment must come back
//! ARCHIVED and byte-exact; a segment reported ARCHIVED must restore to exactly
//! its bytes, acknowledged or not; an unacknowledged segment pushed again must
//! succeed; the restart must not panic.
//!
//! It fails (never skips) when lossyfs cannot mount: run
//! `bash tests/powerloss/install.sh` first.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::lossyfs::{DurabilityOp, Freeze, LossyFs, Service, Started};
use common::{json_segment, recovery_report};
use wal_archiver::client::{Client, PushOptions, RetryPolicy};
use wal_archiver::types::{AckLevel, ContentKind, Digest, JobFilter, JobState};

/// The workload: (shard, log_id, ack), pushed in this order, one at a time.
/// A QUEUED push is followed by a wait for its ARCHIVED state, so each run
/// issues the same durability operations in the same order.
const WORKLOAD: [(u32, u64, AckLevel); 6] = [
    (1, 1, AckLevel::Queued),
    (1, 2, AckLevel::Archived),
    (2, 1, AckLevel::Archived),
    (2, 2, AckLevel::Queued),
    (1, 3, AckLevel::Queued),
    (2, 3, AckLevel::Archived),
];

/// One compression worker, spool first (compressing while receiving runs the
/// worker beside the upload, so their fsyncs would interleave differently from
/// run to run and op N would not be the same op each time), and no free-space
/// floor (lossyfs reports plenty, but the floor is not what this test is about).
const SERVER_ARGS: [&str; 6] = [
    "--archive-parallelism",
    "1",
    "--compress-while-receiving",
    "false",
    "--min-free-bytes",
    "0",
];

/// Bounds of every wait (safety nets, not timing assertions).
const START_LIMIT: Duration = Duration::from_secs(60);
const CALL_LIMIT: Duration = Duration::from_secs(30);
const FREEZE_LIMIT: Duration = Duration::from_secs(60);
const ARCHIVED_LIMIT: Duration = Duration::from_secs(60);

/// Segments of 20–60 KiB: small enough for a slow FUSE mount, several chunks each.
fn segment(shard: u32, log_id: u64) -> Vec<u8> {
    let seed = shard as u64 * 1000 + log_id;
    json_segment(seed, (20 << 10) + (seed * 7919 % 40) as usize * 1024)
}

fn push_options(ack: AckLevel) -> PushOptions {
    PushOptions {
        kind: ContentKind::Raw,
        ack,
        zstd_level: None,
        chunk_size: 16 << 10,
        progress: None,
    }
}

/// Pushes acknowledged before the power cut: (shard, log_id) → job id.
type Ledger = Arc<Mutex<BTreeMap<(u32, u64), u64>>>;

/// Drives the workload until it ends or a call fails (the server froze or
/// died). A push is recorded the moment its acknowledgement arrives.
async fn drive(url: String, ledger: Ledger) {
    let Ok(Ok(client)) = tokio::time::timeout(CALL_LIMIT, Client::connect(&url)).await else {
        return;
    };
    let client = client.retry_policy(RetryPolicy::none());
    for (shard, log_id, ack) in WORKLOAD {
        let data = segment(shard, log_id);
        let size = Some(data.len() as u64);
        let options = push_options(ack);
        let push = client.push_reader(shard, log_id, size, Cursor::new(data), &options);
        let Ok(Ok(pushed)) = tokio::time::timeout(CALL_LIMIT, push).await else {
            return;
        };
        ledger
            .lock()
            .unwrap()
            .insert((shard, log_id), pushed.job.id.0);
        if ack == AckLevel::Queued {
            let Ok(Ok(_)) = tokio::time::timeout(CALL_LIMIT, client.wait(pushed.job.id)).await
            else {
                return;
            };
        }
    }
}

/// What one crash point showed.
struct Outcome {
    /// The marker (`N before|after KIND PATH`), `None` if the workload ended
    /// before op N (then the cut came after the workload).
    frozen: Option<String>,
    acknowledged: usize,
    /// Archived after the restart though never acknowledged (the service
    /// finished them before the cut).
    archived_unacknowledged: usize,
    /// The `RecoveryReport` the restarted server logged, if it logged one.
    recovery: Option<BTreeMap<String, u64>>,
    problems: Vec<String>,
}

/// A fresh lossyfs under `work`, the workload until `freeze` (or its end), a
/// power cut, a restart on what survived, and the checks. `None` runs the
/// calibration (no freeze, no cut): it returns the durability log.
async fn run(work: &Path, name: &str, freeze: Option<Freeze>) -> (Outcome, Vec<DurabilityOp>) {
    let backing = work.join(format!("{name}.backing"));
    let mount = work.join(format!("{name}.mnt"));
    let file = |suffix: &str| work.join(format!("{name}.{suffix}"));
    let mut fs = LossyFs::mount(&backing, &mount, &file("ops1"), &file("frozen1"), freeze);
    let mut service = Service::spawn(&mount, &SERVER_ARGS, &file("server1.log"));
    let ledger = Ledger::default();
    let workload = match service.started(&fs, START_LIMIT).await {
        Ok(Started::Listening(addr)) => Some(tokio::spawn(drive(
            format!("http://{addr}"),
            ledger.clone(),
        ))),
        Ok(Started::Frozen) => None,
        Err(e) => panic!("{name}: first start: {e}"),
    };
    // Until the freeze, or the end of the workload.
    let deadline = Instant::now() + FREEZE_LIMIT;
    let frozen = loop {
        if let Some(marker) = fs.frozen() {
            break Some(marker);
        }
        if workload.as_ref().is_none_or(|w| w.is_finished()) {
            break fs.frozen();
        }
        assert!(
            Instant::now() < deadline,
            "{name}: neither frozen nor done within {FREEZE_LIMIT:?}; server log:\n{}",
            service.log_text()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    if freeze.is_none() {
        assert!(frozen.is_none(), "the calibration froze: {frozen:?}");
        let server_log = service.log_text();
        let ops = fs.ops();
        let acknowledged = ledger.lock().unwrap().len();
        assert_eq!(
            acknowledged,
            WORKLOAD.len(),
            "calibration: not every push was acknowledged; server log:\n{server_log}"
        );
        service.stop();
        drop(fs);
        let _ = std::fs::remove_dir_all(&backing);
        let outcome = Outcome {
            frozen,
            acknowledged,
            archived_unacknowledged: 0,
            recovery: None,
            problems: Vec::new(),
        };
        return (outcome, ops);
    }

    // The power cut. The workload's calls then fail at once (connection gone).
    fs.cut_power(Some(&mut service));
    if let Some(workload) = workload {
        tokio::time::timeout(CALL_LIMIT * 2, workload)
            .await
            .unwrap_or_else(|_| panic!("{name}: the workload did not end after the cut"))
            .expect("workload task");
    }
    drop(fs);
    let acknowledged = ledger.lock().unwrap().clone();

    // What survived.
    let fs = LossyFs::mount(&backing, &mount, &file("ops2"), &file("frozen2"), None);
    let mut service = Service::spawn(&mount, &SERVER_ARGS, &file("server2.log"));
    let mut outcome = Outcome {
        frozen,
        acknowledged: acknowledged.len(),
        archived_unacknowledged: 0,
        recovery: None,
        problems: Vec::new(),
    };
    let addr = match service.started(&fs, START_LIMIT).await {
        Ok(Started::Listening(addr)) => addr,
        Ok(Started::Frozen) => unreachable!("no freeze on the second mount"),
        Err(e) => {
            outcome.problems.push(format!("restart failed: {e}"));
            return (outcome, Vec::new());
        }
    };
    check(&format!("http://{addr}"), &acknowledged, &mut outcome).await;
    let log = service.log_text();
    outcome.recovery = recovery_report(&log);
    for (which, log) in [
        (
            "before the cut",
            std::fs::read_to_string(file("server1.log")).unwrap_or_default(),
        ),
        ("after the restart", log),
    ] {
        if log.contains("panicked") {
            outcome
                .problems
                .push(format!("the server panicked {which}:\n{log}"));
        }
    }
    service.stop();
    drop(fs);
    let _ = std::fs::remove_dir_all(&backing);
    (outcome, Vec::new())
}

/// The checks after a restart.
async fn check(url: &str, acknowledged: &BTreeMap<(u32, u64), u64>, outcome: &mut Outcome) {
    let client = tokio::time::timeout(CALL_LIMIT, Client::connect(url))
        .await
        .expect("connect within the limit")
        .expect("connect");
    let problems = &mut outcome.problems;
    // Every acknowledged segment: ARCHIVED within the limit, and byte-exact.
    for (&(shard, log_id), &job_id) in acknowledged {
        match tokio::time::timeout(ARCHIVED_LIMIT, client.wait(job_id)).await {
            Ok(Ok(job)) if job.state == JobState::Archived => {}
            Ok(Ok(job)) => problems.push(format!(
                "acknowledged shard {shard} log_id {log_id} (job {job_id}) ended {:?}",
                job.state
            )),
            Ok(Err(e)) => problems.push(format!(
                "acknowledged shard {shard} log_id {log_id} (job {job_id}) is not archived: {e}"
            )),
            Err(_) => problems.push(format!(
                "acknowledged shard {shard} log_id {log_id} (job {job_id}) not ARCHIVED within \
                 {ARCHIVED_LIMIT:?}"
            )),
        }
        if let Some(problem) = restore_problem(&client, shard, log_id).await {
            problems.push(format!("acknowledged {problem}"));
        }
    }
    // Everything reported ARCHIVED restores to exactly its segment.
    let archived = tokio::time::timeout(
        CALL_LIMIT,
        client.list(&JobFilter {
            state: Some(JobState::Archived),
            limit: 1000,
            ..Default::default()
        }),
    )
    .await
    .expect("list within the limit")
    .expect("list ARCHIVED jobs")
    .0;
    let mut seen = BTreeSet::new();
    for job in archived {
        let key = (job.shard_id, job.log_id);
        if !WORKLOAD.iter().any(|&(s, l, _)| (s, l) == key) {
            problems.push(format!("an ARCHIVED job nobody pushed: {job:?}"));
            continue;
        }
        if !seen.insert(key) {
            problems.push(format!("shard {} log_id {} ARCHIVED twice", key.0, key.1));
        }
        if acknowledged.contains_key(&key) {
            continue;
        }
        outcome.archived_unacknowledged += 1;
        if let Some(problem) = restore_problem(&client, key.0, key.1).await {
            problems.push(format!("unacknowledged but ARCHIVED {problem}"));
        }
    }
    // An unacknowledged segment pushed again is accepted and archived right.
    for (shard, log_id, _) in WORKLOAD {
        if acknowledged.contains_key(&(shard, log_id)) {
            continue;
        }
        let data = segment(shard, log_id);
        let size = Some(data.len() as u64);
        let options = push_options(AckLevel::Archived);
        let push = client.push_reader(shard, log_id, size, Cursor::new(data), &options);
        match tokio::time::timeout(ARCHIVED_LIMIT, push).await {
            Ok(Ok(_)) => {
                if let Some(problem) = restore_problem(&client, shard, log_id).await {
                    problems.push(format!("re-pushed {problem}"));
                }
            }
            Ok(Err(e)) => problems.push(format!(
                "re-push of unacknowledged shard {shard} log_id {log_id} failed: {e}"
            )),
            Err(_) => problems.push(format!(
                "re-push of unacknowledged shard {shard} log_id {log_id} took over \
                 {ARCHIVED_LIMIT:?}"
            )),
        }
    }
}

/// `None` if shard `shard`'s `log_id` restores to exactly its segment.
async fn restore_problem(client: &Client, shard: u32, log_id: u64) -> Option<String> {
    let mut out = Cursor::new(Vec::new());
    let restore = client.restore_to(shard, log_id, &mut out, None);
    match tokio::time::timeout(CALL_LIMIT, restore).await {
        Ok(Ok(_)) => {
            let restored = out.into_inner();
            (Digest::of(&restored) != Digest::of(&segment(shard, log_id))).then(|| {
                format!(
                    "shard {shard} log_id {log_id} restored wrong bytes ({} bytes)",
                    restored.len()
                )
            })
        }
        Ok(Err(e)) => Some(format!(
            "shard {shard} log_id {log_id} failed to restore: {e}"
        )),
        Err(_) => Some(format!(
            "shard {shard} log_id {log_id}: restore took over {CALL_LIMIT:?}"
        )),
    }
}

/// The op a marker (`N<TAB>before|after<TAB>KIND<TAB>PATH`) names.
fn marker_op(marker: &str) -> Option<DurabilityOp> {
    let fields: Vec<&str> = marker.split('\t').collect();
    let [index, _, kind, path] = fields[..] else {
        return None;
    };
    Some(DurabilityOp {
        index: index.parse().ok()?,
        kind: kind.to_owned(),
        path: path.to_owned(),
        call: String::new(),
        status: String::new(),
    })
}

/// What a durability op touched, by the path lossyfs logged.
fn category(op: &DurabilityOp) -> &'static str {
    let path = op.path.as_str();
    match (op.kind.as_str(), path) {
        ("dir", ".") => "data dir",
        ("dir", "spool") => "spool dir",
        ("dir", p) if p.starts_with("archives") => "archive dir",
        ("file", p) if p.starts_with("spool/") => "spool file",
        ("file", p) if p.starts_with("archives/") => "archive file",
        ("file", "jobs.db") => "jobs DB",
        ("file", p) if p.starts_with("jobs.db-") => "jobs DB wal",
        ("file", "wal-archiver.lock") => "lock file",
        _ => "other",
    }
}

/// Ops of each category crashed at (before and after): the first, the last,
/// and evenly spread ones between, so every kind of fsync is cut around at
/// several places of the workload (the first segment's, the last one's …).
const OPS_PER_CATEGORY: usize = 3;

fn crash_points(ops: &[DurabilityOp]) -> Vec<Freeze> {
    let mut by_category: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for op in ops {
        by_category.entry(category(op)).or_default().push(op.index);
    }
    let mut chosen = BTreeSet::new();
    for indices in by_category.values() {
        let n = indices.len();
        let picks = OPS_PER_CATEGORY.min(n);
        for k in 0..picks {
            // k = 0 → first, k = picks - 1 → last.
            let at = if picks == 1 {
                0
            } else {
                k * (n - 1) / (picks - 1)
            };
            chosen.insert(indices[at]);
        }
    }
    chosen
        .into_iter()
        .flat_map(|op| [false, true].map(|after| Freeze { op, after }))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cut_at_each_durability_point_loses_nothing_acknowledged() {
    let started = Instant::now();
    let work = tempfile::tempdir().expect("work dir");
    let (_, ops) = run(work.path(), "calibration", None).await;
    assert!(!ops.is_empty(), "the calibration made no durability op");
    println!("powerloss: calibration: {} durability ops", ops.len());
    for op in &ops {
        println!(
            "  {:>3} {:<12} {:<9} {}",
            op.index,
            category(op),
            op.call,
            op.path
        );
    }
    let points = crash_points(&ops);
    println!(
        "powerloss: {} crash points (before and after {} of the {} ops)",
        points.len(),
        points.len() / 2,
        ops.len()
    );
    let mut failures = Vec::new();
    let mut covered: BTreeMap<(&str, bool), usize> = BTreeMap::new();
    let mut recovered: BTreeMap<String, u64> = BTreeMap::new();
    for point in &points {
        let planned = &ops[point.op - 1];
        let name = format!("{}-{}", if point.after { "a" } else { "b" }, point.op);
        let (outcome, _) = run(work.path(), &name, Some(*point)).await;
        // Coverage by what the freeze really hit (the marker), in case a run
        // issued its ops in another order than the calibration.
        if let Some(hit) = outcome.frozen.as_deref().and_then(marker_op) {
            *covered.entry((category(&hit), point.after)).or_default() += 1;
        }
        println!(
            "powerloss: {point} ({}, {}): {}, {} acknowledged, {} more archived, recovery {}{}",
            category(planned),
            planned.path,
            outcome.frozen.as_deref().map_or(
                "NOT REACHED (cut after the workload)".into(),
                |m| format!("froze at {}", m.replace('\t', " "))
            ),
            outcome.acknowledged,
            outcome.archived_unacknowledged,
            outcome
                .recovery
                .as_ref()
                .map_or("none logged".into(), |counts| format!("{counts:?}")),
            if outcome.problems.is_empty() {
                String::new()
            } else {
                format!(" — FAILED: {}", outcome.problems.join("; "))
            }
        );
        for (name, count) in outcome.recovery.iter().flatten() {
            *recovered.entry(name.clone()).or_default() += count;
        }
        if !outcome.problems.is_empty() {
            failures.push(format!(
                "{point} ({} {}): {}",
                category(planned),
                planned.path,
                outcome.problems.join("; ")
            ));
        }
    }
    println!("powerloss: crash points reached per category (before, after):");
    let categories: BTreeSet<&str> = ops.iter().map(category).collect();
    for category in &categories {
        println!(
            "  {category:<12} {:>3} {:>3}",
            covered.get(&(category, false)).unwrap_or(&0),
            covered.get(&(category, true)).unwrap_or(&0)
        );
    }
    println!("powerloss: recovery over all crash points: {recovered:?}");
    println!(
        "powerloss: {} crash points in {:.0} s",
        points.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} of {} crash points lost or corrupted data:\n{}",
        failures.len(),
        points.len(),
        failures.join("\n")
    );
    for needed in [
        "spool file",
        "spool dir",
        "archive file",
        "archive dir",
        "jobs DB wal",
    ] {
        for after in [false, true] {
            assert!(
                covered.get(&(needed, after)).is_some_and(|&n| n > 0),
                "no crash point {} a {needed} fsync was reached",
                if after { "after" } else { "before" }
            );
        }
    }
}
