//! wal-archiver as PostgreSQL's archive_command and restore_command, with a
//! real PostgreSQL (tests/postgres/cluster.rs) and the real server: archive
//! a pgbench load, recover a base backup from the archive alone, across a
//! timeline switch, and with the service killed in the middle of the load.
//! A recovered cluster must hold exactly the primary's data.
//!
//! Needs PostgreSQL's server programs (Debian: `apt-get install -y
//! postgresql-15`); as root they run as the `postgres` user.

#[path = "postgres/cluster.rs"]
mod cluster;
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cluster::{Cluster, PATIENCE, Pg, Workdir, quote, tail};
use common::Server;
use wal_archiver::postgres::{ArchiveFile, WalSegment, is_side_file, side_file_log_id};
use wal_archiver::types::{Job, JobFilter, JobState, LogId};

const SHARD: u32 = 1;
const MIB: u64 = 1 << 20;

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(future)
}

/// A primary whose archive_command pushes to `server`'s shard 1; the URL
/// comes through the postmaster's environment, as docs/POSTGRESQL.md says.
fn archiving_primary(work: &Workdir, server: &Server, wal_segsize_mb: u32) -> Cluster {
    let mut primary = work.init("primary", wal_segsize_mb);
    primary.configure(&[
        ("archive_mode", "on".into()),
        ("archive_command", quote(work.archive_command(SHARD))),
    ]);
    primary.env = server_env(server);
    primary.start();
    primary
}

fn server_env(server: &Server) -> Vec<(String, String)> {
    vec![("WAL_ARCHIVER_SERVER".into(), server.url())]
}

/// Recovers a copy of the base backup from the archive alone (the backup
/// holds no WAL), to the archive's end unless `target` says otherwise.
fn recover(
    work: &Workdir,
    server: &Server,
    base: &std::path::Path,
    name: &str,
    target: &[(&str, String)],
) -> Cluster {
    let mut recovered = work.restore_base_backup(base, name);
    recovered.configure(&[
        ("restore_command", quote(work.restore_command(SHARD))),
        ("recovery_target_timeline", "'latest'".into()),
    ]);
    recovered.configure(target);
    recovered.touch("recovery.signal");
    recovered.env = server_env(server);
    recovered.start();
    recovered.wait_promoted();
    recovered
}

/// Every job of the shard, once none is still on its way to ARCHIVED.
fn settled_jobs(server: &Server) -> Vec<Job> {
    block_on(async {
        let client = server.client().await;
        let deadline = Instant::now() + PATIENCE;
        loop {
            let status = client.shard(SHARD).await.expect("shard");
            if status.receiving + status.queued + status.running == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "jobs still pending: {status:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut jobs = Vec::new();
        let mut filter = JobFilter {
            shard_id: Some(SHARD),
            limit: 1000,
            ..JobFilter::default()
        };
        loop {
            let (page, next) = client.list(&filter).await.expect("list");
            jobs.extend(page);
            match next {
                Some(next) => filter.after = Some(next),
                None => break,
            }
        }
        jobs
    })
}

/// The archived WAL segments per timeline, by segment number. Asserts what
/// must hold for any shard PostgreSQL archives into: every segment that was
/// ever pushed is ARCHIVED (a FAILED push, from a server killed in the
/// middle of it, was pushed again), and each timeline's segments form one
/// run without holes.
fn archived_segments(jobs: &[Job], segment_size: u64) -> BTreeMap<u32, Vec<u64>> {
    let archived: Vec<LogId> = jobs
        .iter()
        .filter(|job| job.state == JobState::Archived)
        .map(|job| job.log_id)
        .collect();
    for job in jobs {
        assert!(
            archived.contains(&job.log_id),
            "log_id {} never archived: {job:?}",
            job.log_id
        );
    }
    let mut timelines: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for log_id in archived.iter().filter(|id| !is_side_file(**id)) {
        let segment = WalSegment::from_log_id(*log_id, segment_size).expect("a segment");
        timelines
            .entry(segment.timeline)
            .or_default()
            .push(segment.number(segment_size).expect("number"));
    }
    for (timeline, numbers) in &mut timelines {
        numbers.sort();
        numbers.dedup();
        let (first, last) = (numbers[0], numbers[numbers.len() - 1]);
        assert_eq!(
            numbers.len() as u64,
            last - first + 1,
            "timeline {timeline}: segments {first}..={last} have holes: {numbers:?}"
        );
    }
    timelines
}

fn log_id_of(name: &str, segment_size: u64) -> LogId {
    ArchiveFile::from_name(name)
        .and_then(|file| file.log_id(segment_size))
        .expect("log_id")
}

/// The shard's watermark must cover `segment` (every segment up to it is archived).
fn assert_watermark_covers(server: &Server, segment: &str, segment_size: u64) {
    let watermark = block_on(async { server.client().await.shard(SHARD).await })
        .expect("shard")
        .archived_watermark
        .expect("a watermark");
    let last = log_id_of(segment, segment_size);
    assert!(
        watermark >= last,
        "watermark {watermark} does not cover {segment} (log_id {last})"
    );
}

/// docs/POSTGRESQL.md's query for the log_id of pg_stat_archiver's last segment.
fn last_archived_log_id_sql(cluster: &Cluster) -> LogId {
    cluster
        .sql(
            "SELECT ('x' || substr(f, 1, 8))::bit(32)::bigint * 1099511627776
                  + ('x' || substr(f, 9, 8))::bit(32)::bigint * (4294967296 / s.setting::bigint)
                  + ('x' || substr(f, 17, 8))::bit(32)::bigint
             FROM (SELECT last_archived_wal AS f FROM pg_stat_archiver) a, pg_settings s
             WHERE s.name = 'wal_segment_size'",
        )
        .parse()
        .expect("a log_id")
}

/// docs/POSTGRESQL.md's query for the segment a log_id (a watermark, say) stands for.
fn segment_name_sql(cluster: &Cluster, log_id: LogId) -> String {
    cluster.sql(&format!(
        "SELECT upper(lpad(to_hex(w >> 40), 8, '0')
                   || lpad(to_hex((w & 1099511627775) / (4294967296 / s.setting::bigint)), 8, '0')
                   || lpad(to_hex((w & 1099511627775) % (4294967296 / s.setting::bigint)), 8, '0'))
         FROM (SELECT {log_id}::bigint AS w) a, pg_settings s
         WHERE s.name = 'wal_segment_size'"
    ))
}

/// Tests 1 and 2: archive a pgbench load through archive_command (a few
/// dozen 1 MiB segments), then recover the base backup through
/// restore_command, once to a named restore point and once to the end of
/// the archive: each time exactly the primary's data at that point.
#[test]
fn archive_and_recover_with_1mib_segments() {
    archive_and_recover(
        1,
        &["-i", "-s", "2", "-q"],
        &["-c", "2", "-j", "2", "-t", "1500"],
    );
}

/// The same with PostgreSQL's default 16 MiB segments (a lighter load: a
/// few segments, most of them completed by pg_switch_wal).
#[test]
fn archive_and_recover_with_16mib_segments() {
    archive_and_recover(
        16,
        &["-i", "-s", "1", "-q"],
        &["-c", "2", "-j", "2", "-t", "300"],
    );
}

fn archive_and_recover(wal_segsize_mb: u32, init: &[&str], load: &[&str]) {
    let segment_size = u64::from(wal_segsize_mb) * MIB;
    let server = Server::start(&[]);
    let work = Pg::find().workdir();
    let mut primary = archiving_primary(&work, &server, wal_segsize_mb);
    let base = work.path().join("base");
    primary.base_backup(&base);

    primary.pgbench(init);
    primary.pgbench(load);
    primary.switch_wal();
    primary.sql("SELECT pg_create_restore_point('middle')");
    let middle = primary.checksum();
    primary.pgbench(load);
    let end = primary.checksum();
    let last = primary.switch_wal();
    let failed = primary.wait_archived(&last);
    assert_eq!(
        failed,
        0,
        "archive_command failed; log:\n{}",
        tail(&primary.log_text(), 4000)
    );

    let jobs = settled_jobs(&server);
    let timelines = archived_segments(&jobs, segment_size);
    assert_eq!(timelines.keys().collect::<Vec<_>>(), [&1]);
    let segments = &timelines[&1];
    assert_eq!(
        *segments.last().unwrap(),
        WalSegment::parse(&last)
            .unwrap()
            .number(segment_size)
            .unwrap(),
        "the last segment archived is the one pg_switch_wal completed"
    );
    eprintln!("{wal_segsize_mb} MiB segments: {} archived", segments.len());
    if wal_segsize_mb == 1 {
        assert!(
            segments.len() >= 30,
            "a few dozen segments: {}",
            segments.len()
        );
    }
    assert_watermark_covers(&server, &last, segment_size);
    assert_eq!(
        last_archived_log_id_sql(&primary),
        log_id_of(&last, segment_size)
    );
    assert_eq!(
        segment_name_sql(&primary, log_id_of(&last, segment_size)),
        last
    );
    // The base backup's label is archived too, as a side file.
    assert!(
        jobs.iter().any(|job| is_side_file(job.log_id)),
        "no .backup label archived"
    );
    primary.stop();

    let to_end = recover(&work, &server, &base, "to_end", &[]);
    assert_eq!(
        to_end.checksum(),
        end,
        "recovered to the end of the archive"
    );
    drop(to_end);

    let to_middle = recover(
        &work,
        &server,
        &base,
        "to_middle",
        &[
            ("recovery_target_name", "'middle'".into()),
            ("recovery_target_action", "'promote'".into()),
        ],
    );
    assert_eq!(
        to_middle.checksum(),
        middle,
        "recovered to the restore point"
    );
}

/// Test 3: a standby (streaming, with restore_command) is promoted after its
/// primary stops: it archives 00000002.history, the last segment of
/// timeline 1 as `.partial`, and timeline 2's segments into the same shard.
/// A recovery of the original base backup follows the switch to timeline 2
/// and ends with the data written after the promotion.
#[test]
fn timeline_switch_is_archived_and_recovered() {
    let segment_size = MIB;
    let server = Server::start(&[]);
    let work = Pg::find().workdir();
    let mut primary = archiving_primary(&work, &server, 1);
    let base = work.path().join("base");
    primary.base_backup(&base);
    primary.pgbench(&["-i", "-s", "1", "-q"]);

    let mut standby = work.standby_of(&primary, "standby");
    standby.configure(&[
        ("archive_mode", "on".into()),
        ("archive_command", quote(work.archive_command(SHARD))),
        ("restore_command", quote(work.restore_command(SHARD))),
    ]);
    standby.env = server_env(&server);
    standby.start();

    primary.pgbench(&["-c", "2", "-j", "2", "-t", "500"]);
    let primary_lsn = primary.sql("SELECT pg_current_wal_lsn()");
    standby.wait_sql(
        "the standby to replay the primary's WAL",
        &format!("SELECT pg_last_wal_replay_lsn() >= '{primary_lsn}'"),
        |r| r == "t",
    );
    let before_switch = standby.checksum();
    let last_of_1 = primary.switch_wal();
    assert_eq!(primary.wait_archived(&last_of_1), 0);
    primary.stop();

    standby.promote();
    standby.wait_promoted();
    assert_eq!(timeline(&standby), 2);
    standby.pgbench(&["-c", "2", "-j", "2", "-t", "500"]);
    let after_switch = standby.checksum();
    assert_ne!(after_switch, before_switch);
    let last_of_2 = standby.switch_wal();
    assert!(last_of_2.starts_with("00000002"), "{last_of_2}");
    assert_eq!(
        standby.wait_archived(&last_of_2),
        0,
        "log:\n{}",
        tail(&standby.log_text(), 4000)
    );

    let jobs = settled_jobs(&server);
    let timelines = archived_segments(&jobs, segment_size);
    assert_eq!(timelines.keys().collect::<Vec<_>>(), [&1, &2]);
    assert_watermark_covers(&server, &last_of_2, segment_size);
    let has = |name: &str| jobs.iter().any(|job| job.log_id == side_file_log_id(name));
    assert!(has("00000002.history"), "no 00000002.history archived");
    // The history file names the switch point; the segment of timeline 1
    // holding it was archived as .partial unless the switch fell on a boundary.
    let history = get_file(&work, &server, "00000002.history");
    let switch_lsn = history
        .lines()
        .find_map(|line| line.split('\t').nth(1))
        .expect("a switch point in the history file");
    let (high, low) = switch_lsn.split_once('/').expect("an LSN");
    let lsn =
        (u64::from_str_radix(high, 16).unwrap() << 32) | u64::from_str_radix(low, 16).unwrap();
    if lsn % segment_size != 0 {
        let partial = format!(
            "{}.partial",
            WalSegment::from_log_id((1 << 40) + lsn / segment_size, segment_size)
                .unwrap()
                .name()
        );
        assert!(has(&partial), "no {partial} archived");
        eprintln!("timeline switch at {switch_lsn}: {partial} archived");
    }
    standby.stop();

    let recovered = recover(&work, &server, &base, "recovered", &[]);
    assert_eq!(
        recovered.checksum(),
        after_switch,
        "recovered across the timeline switch"
    );
    assert!(timeline(&recovered) >= 3, "a new timeline after 2");
}

/// `archive-get` run by hand, as the postgres user: the file's contents.
fn get_file(work: &Workdir, server: &Server, name: &str) -> String {
    let out = work.path().join(format!("got-{name}"));
    let mut command = std::process::Command::new(&work.bin);
    command
        .args(["archive-get", "--shard", &SHARD.to_string(), name])
        .arg(&out)
        .env("WAL_ARCHIVER_SERVER", server.url());
    work.pg.drop_privileges(&mut command);
    cluster::run(&mut command);
    std::fs::read_to_string(&out).expect("read what archive-get wrote")
}

/// Test 4: the service is killed (SIGKILL) in the middle of a pgbench load
/// and started again on the same data dir and port. PostgreSQL's archiver
/// retries what failed; nothing is lost: every segment ends up archived and
/// a recovery matches the primary.
#[test]
fn service_killed_during_load_loses_nothing() {
    let segment_size = MIB;
    let port = common::free_port();
    let mut server = Server::start_listening(&format!("127.0.0.1:{port}"), &[]);
    let work = Pg::find().workdir();
    let mut primary = archiving_primary(&work, &server, 1);
    let base = work.path().join("base");
    primary.base_backup(&base);
    primary.pgbench(&["-i", "-s", "1", "-q"]);

    let mut load = primary.spawn_pgbench(&["-c", "2", "-j", "2", "-t", "8000"]);
    let archived_before = archived_count(&primary);
    primary.wait_sql(
        "a few segments archived under load",
        "SELECT archived_count FROM pg_stat_archiver",
        |r| r.parse::<u64>().is_ok_and(|n| n >= archived_before + 5),
    );
    assert!(
        load.try_wait().expect("pgbench").is_none(),
        "the load still runs"
    );
    server.kill();
    // archive-push rides out a short outage by itself; stay down until
    // PostgreSQL's archiver has seen a push fail, so its retry is tested too.
    primary.wait_sql(
        "archive_command to fail while the service is down",
        "SELECT failed_count FROM pg_stat_archiver",
        |r| r != "0",
    );
    server.restart();
    assert_eq!(server.addr.port(), port);

    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = load.try_wait().expect("wait for pgbench") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "pgbench did not finish within {PATIENCE:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "pgbench failed: {status}");

    let end = primary.checksum();
    let last = primary.switch_wal();
    let failed = primary.wait_archived(&last);
    let jobs = settled_jobs(&server);
    let timelines = archived_segments(&jobs, segment_size);
    assert_eq!(
        *timelines[&1].last().unwrap(),
        WalSegment::parse(&last)
            .unwrap()
            .number(segment_size)
            .unwrap()
    );
    assert_watermark_covers(&server, &last, segment_size);
    primary.stop();
    let failed_jobs = jobs
        .iter()
        .filter(|job| job.state == JobState::Failed)
        .count();
    eprintln!(
        "killed under load: {} segments archived, archiver failures {failed}, FAILED jobs {failed_jobs}",
        timelines[&1].len()
    );

    let recovered = recover(&work, &server, &base, "recovered", &[]);
    assert_eq!(recovered.checksum(), end);
}

/// The timeline the cluster writes WAL on.
fn timeline(cluster: &Cluster) -> u32 {
    let name = cluster.sql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    u32::from_str_radix(&name[..8], 16).expect("a timeline")
}

fn archived_count(cluster: &Cluster) -> u64 {
    cluster
        .sql("SELECT archived_count FROM pg_stat_archiver")
        .parse()
        .expect("archived_count")
}

/// The exit codes PostgreSQL acts on, without PostgreSQL: a push succeeds
/// once durable and again for the same bytes; other bytes under the same
/// name fail and say both digests; a get of what is not there exits 1
/// without a word; a get that cannot reach the service exits 2 with one.
#[test]
fn archive_commands_exit_codes() {
    let server = Server::start(&[]);
    let dir = tempfile::tempdir().expect("temp dir");
    let run = |args: &[&str], url: &str| {
        std::process::Command::new(common::BIN)
            .args(args)
            .current_dir(dir.path())
            .env("WAL_ARCHIVER_SERVER", url)
            .output()
            .expect("run wal-archiver")
    };
    let url = server.url();
    let segment = "000000030000000A00000002";
    let bytes: Vec<u8> = (0..MIB).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(dir.path().join(segment), &bytes).unwrap();

    let push = run(&["archive-push", "--shard", "7", segment], &url);
    assert_eq!(push.status.code(), Some(0), "{push:?}");
    assert!(
        push.stderr.is_empty(),
        "a successful push is quiet: {push:?}"
    );
    let again = run(&["archive-push", "--shard", "7", segment], &url);
    assert_eq!(
        again.status.code(),
        Some(0),
        "re-archiving the same file: {again:?}"
    );

    std::fs::write(dir.path().join(segment), vec![1u8; MIB as usize]).unwrap();
    let other = run(&["archive-push", "--shard", "7", segment], &url);
    assert_eq!(other.status.code(), Some(1), "{other:?}");
    let message = String::from_utf8_lossy(&other.stderr);
    assert!(
        message.contains("ALREADY_EXISTS")
            && message.contains(&wal_archiver::types::Digest::of(&bytes).to_hex()),
        "{message}"
    );

    std::fs::write(dir.path().join("000000030000000A00000003"), b"short").unwrap();
    let short = run(
        &["archive-push", "--shard", "7", "000000030000000A00000003"],
        &url,
    );
    assert_eq!(short.status.code(), Some(1), "{short:?}");
    assert!(String::from_utf8_lossy(&short.stderr).contains("not a WAL segment size"));

    std::fs::create_dir(dir.path().join("pg_wal")).unwrap();
    let get = run(
        &[
            "archive-get",
            "--shard",
            "7",
            segment,
            "pg_wal/RECOVERYXLOG",
        ],
        &url,
    );
    assert_eq!(get.status.code(), Some(0), "{get:?}");
    assert_eq!(
        std::fs::read(dir.path().join("pg_wal/RECOVERYXLOG")).unwrap(),
        bytes
    );
    assert_eq!(
        common::list(&dir.path().join("pg_wal")).len(),
        1,
        "no temporary left"
    );

    for missing in ["000000030000000A00000004", "00000004.history"] {
        let get = run(&["archive-get", "--shard", "7", missing, "pg_wal/X"], &url);
        assert_eq!(get.status.code(), Some(1), "{missing}: {get:?}");
        assert!(get.stderr.is_empty(), "not found is quiet: {get:?}");
    }
    let empty_shard = run(&["archive-get", "--shard", "8", segment, "pg_wal/X"], &url);
    assert_eq!(empty_shard.status.code(), Some(1), "{empty_shard:?}");

    let port = common::free_port();
    let down = run(
        &["archive-get", "--shard", "7", segment, "pg_wal/X"],
        &format!("http://127.0.0.1:{port}"),
    );
    assert_eq!(down.status.code(), Some(2), "{down:?}");
    assert!(String::from_utf8_lossy(&down.stderr).contains("cannot connect"));
    assert!(!dir.path().join("pg_wal/X").exists());
}

/// The measurement behind docs/POSTGRESQL.md's numbers (run by hand, on an
/// otherwise idle machine, with the release build):
///
/// ```sh
/// cargo test --release --test postgres pg_bench -- --ignored --nocapture
/// ```
///
/// The same pgbench load on 16 MiB segments twice: archive_command through
/// wal-archiver (service on this machine), then `cp` + `sync` into a
/// directory. A wrapper script times every archive_command; the count of
/// `.ready` files (the archiver's backlog) is sampled every second. Prints a
/// markdown table. `PG_BENCH_SCALE` (default 20) and `PG_BENCH_SECONDS`
/// (default 60) size the load.
#[test]
#[ignore = "a measurement, run by hand"]
fn pg_bench() {
    let scale = std::env::var("PG_BENCH_SCALE").unwrap_or_else(|_| "20".into());
    let seconds = std::env::var("PG_BENCH_SECONDS").unwrap_or_else(|_| "60".into());
    let server = Server::start(&[]);
    let work = Pg::find().workdir();
    let timer = work.path().join("timed.sh");
    std::fs::write(
        &timer,
        "#!/bin/sh\n# Times one archive_command: $1 is the log, the rest the command.\n\
         log=$1; shift\nstart=$(date +%s%N)\n\"$@\"\nrc=$?\n\
         echo \"$start $(date +%s%N) $rc\" >> \"$log\"\nexit $rc\n",
    )
    .unwrap();
    let copier = work.path().join("cp-archive.sh");
    std::fs::write(
        &copier,
        "#!/bin/sh\n# PostgreSQL's documented cp example, plus an fsync of the copy.\n\
         test ! -f \"$2/$1\" && cp \"$3\" \"$2/$1\" && sync \"$2/$1\"\n",
    )
    .unwrap();
    for script in [&timer, &copier] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let cp_dir = work.path().join("cp-archive");
    std::fs::create_dir(&cp_dir).unwrap();
    let mut owner = std::process::Command::new("chown");
    owner.arg("--reference").arg(work.path()).arg(&cp_dir);
    cluster::run(&mut owner);

    let contenders = [
        ("wal-archiver archive-push", work.archive_command(SHARD)),
        (
            "cp + sync",
            format!("{} %f {} %p", copier.display(), cp_dir.display()),
        ),
    ];
    let mut rows = Vec::new();
    for (index, (label, command)) in contenders.iter().enumerate() {
        let log = work.path().join(format!("times-{index}.log"));
        let mut primary = work.init(&format!("bench{index}"), 16);
        primary.configure(&[
            ("archive_mode", "on".into()),
            (
                "archive_command",
                quote(format!("{} {} {command}", timer.display(), log.display())),
            ),
            ("max_wal_size", "'1GB'".into()),
        ]);
        primary.env = server_env(&server);
        primary.start();

        let started = Instant::now();
        let sampler = Sampler::start(&primary);
        primary.pgbench(&["-i", "-s", &scale, "-q"]);
        primary.pgbench(&["-c", "2", "-j", "2", "-T", &seconds, "-n"]);
        let load_secs = started.elapsed().as_secs_f64();
        let last = primary.switch_wal();
        let backlog_at_end = sampler.last();
        primary.wait_archived(&last);
        let drained_secs = started.elapsed().as_secs_f64() - load_secs;
        let samples = sampler.stop();
        let wal_bytes: f64 = primary
            .sql("SELECT pg_current_wal_lsn() - '0/0'")
            .parse()
            .unwrap();
        primary.stop();

        let mut times: Vec<f64> = std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .filter_map(|line| {
                let fields: Vec<u128> = line.split(' ').filter_map(|f| f.parse().ok()).collect();
                (fields.len() == 3 && fields[2] == 0).then(|| (fields[1] - fields[0]) as f64 / 1e6)
            })
            .collect();
        times.sort_by(f64::total_cmp);
        let pct =
            |p: f64| times[((times.len() as f64 * p).ceil() as usize).clamp(1, times.len()) - 1];
        let max_backlog = samples.iter().max().copied().unwrap_or(0);
        rows.push(format!(
            "| {label} | {} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} | {max_backlog} | {backlog_at_end} | {drained_secs:.1} |",
            times.len(),
            wal_bytes / MIB as f64 / load_secs,
            pct(0.5),
            pct(0.9),
            pct(0.99),
            times.last().copied().unwrap_or(0.0),
        ));
        eprintln!("{label}: .ready backlog per second: {samples:?}");
    }
    println!(
        "\nPostgreSQL {} archive_command, 16 MiB segments, pgbench -i -s {scale} then -c 2 -T {seconds} \
         (synchronous_commit = off), {} cores, service on the same machine\n",
        Pg::find().version(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    println!(
        "| archive_command | segments | WAL MiB/s | p50 ms | p90 ms | p99 ms | max ms | max .ready | .ready at end of load | drain s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
}

/// Samples the archiver's backlog (`.ready` files) every second.
struct Sampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    samples: std::sync::Arc<std::sync::Mutex<Vec<u64>>>,
    thread: std::thread::JoinHandle<()>,
}

impl Sampler {
    fn start(cluster: &Cluster) -> Sampler {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let samples = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let query = cluster.sql_command(
            "SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'",
        );
        let thread = {
            let (stop, samples) = (stop.clone(), samples.clone());
            std::thread::spawn(move || {
                let mut query = query;
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(output) = query.output()
                        && let Ok(n) = String::from_utf8_lossy(&output.stdout).trim().parse()
                    {
                        samples.lock().unwrap().push(n);
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            })
        };
        Sampler {
            stop,
            samples,
            thread,
        }
    }

    fn last(&self) -> u64 {
        self.samples.lock().unwrap().last().copied().unwrap_or(0)
    }

    fn stop(self) -> Vec<u64> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap();
        std::mem::take(&mut *self.samples.lock().unwrap())
    }
}

/// A file acknowledged (QUEUED) but not compressed yet is in the archive as
/// far as PostgreSQL is concerned: archive-get waits for it instead of
/// answering "not found", which would end a recovery early.
#[test]
fn archive_get_waits_for_a_pushed_file_not_yet_archived() {
    // One worker, kept busy by a slow segment of another shard.
    let server = Server::start(&["--archive-parallelism", "1", "--multithread-min-size", "0"]);
    let dir = tempfile::tempdir().expect("temp dir");
    let slow = dir.path().join("slow.log");
    std::fs::write(&slow, common::json_segment(3, 8 << 20)).unwrap();
    let segment = "000000010000000000000007";
    let bytes: Vec<u8> = (0..MIB).map(|i| (i * 13 % 253) as u8).collect();
    std::fs::write(dir.path().join(segment), &bytes).unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(common::BIN)
            .args(args)
            .current_dir(dir.path())
            .env("WAL_ARCHIVER_SERVER", server.url())
            .output()
            .expect("run wal-archiver")
    };

    // One runtime for the client: its connection lives on it.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let client = runtime.block_on(server.client());
    let options = wal_archiver::client::PushOptions {
        zstd_level: Some(19),
        ..Default::default()
    };
    runtime
        .block_on(client.push_file(2, 1, &slow, &options))
        .expect("push the slow segment");
    let push = run(&["archive-push", "--shard", "1", segment]);
    assert_eq!(push.status.code(), Some(0), "{push:?}");
    let job = runtime
        .block_on(client.active_job(1, log_id_of(segment, MIB)))
        .expect("list")
        .expect("the pushed segment's job");
    assert_ne!(
        job.state,
        JobState::Archived,
        "the slow segment should still hold the only worker"
    );

    let get = run(&["archive-get", "--shard", "1", segment, "RECOVERYXLOG"]);
    assert_eq!(get.status.code(), Some(0), "{get:?}");
    assert_eq!(
        std::fs::read(dir.path().join("RECOVERYXLOG")).unwrap(),
        bytes
    );
}
