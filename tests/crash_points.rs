//! Steered crashes: the server (a debug build) aborts at a named point of a
//! segment's way (`WAL_ARCHIVER_TEST_CRASH_AT`), is started again on what it
//! left, and must say in its recovery report that it took the recovery path
//! that point calls for, then archive the segment byte-exact (or, where the
//! segment was never acknowledged or its spool was lost, fail it and take it
//! again when pushed again). Across the cases every path of the report runs.

mod common;

use std::collections::BTreeMap;
use std::io::Cursor;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use common::*;
use wal_archiver::client::{Client, PushOptions, RetryPolicy};
use wal_archiver::engine::CRASH_AT_VARIABLE;
use wal_archiver::types::{AckLevel, ContentKind, Digest, Job, JobFilter, JobState};

const SHARD: u32 = 1;
const LOG_ID: u64 = 7;

struct Case {
    point: &'static str,
    /// Extra `serve` flags of the run that crashes.
    args: &'static [&'static str],
    /// Delete the spool while the server is down (a lost spool volume).
    lose_spool: bool,
    /// Report fields that must be non-zero after the restart.
    expect: &'static [&'static str],
    /// Whether the segment's job survives the crash (else it is FAILED and pushed again).
    survives: bool,
}

/// Compression waits for the whole upload, so where a crash lands is fixed.
const SPOOL_FIRST: &[&str] = &["--compress-while-receiving", "false"];

const CASES: &[Case] = &[
    Case {
        point: "receiving",
        args: SPOOL_FIRST,
        lose_spool: false,
        expect: &["interrupted"],
        survives: false,
    },
    Case {
        point: "compressing",
        args: SPOOL_FIRST,
        lose_spool: false,
        expect: &["requeued", "temporaries_removed"],
        survives: true,
    },
    Case {
        point: "committed",
        args: SPOOL_FIRST,
        lose_spool: false,
        expect: &["adopted"],
        survives: true,
    },
    Case {
        // The same point reached by the compress-while-receiving pipeline.
        point: "committed",
        args: &[],
        lose_spool: false,
        expect: &["adopted"],
        survives: true,
    },
    Case {
        point: "archived",
        args: SPOOL_FIRST,
        lose_spool: false,
        expect: &["orphan_spools_removed"],
        survives: true,
    },
    Case {
        point: "compressing",
        args: SPOOL_FIRST,
        lose_spool: true,
        expect: &["lost", "temporaries_removed"],
        survives: false,
    },
];

const REPORT_FIELDS: &[&str] = &[
    "requeued",
    "adopted",
    "interrupted",
    "lost",
    "temporaries_removed",
    "orphan_spools_removed",
];

fn options() -> PushOptions {
    PushOptions {
        kind: ContentKind::JsonLines,
        ack: AckLevel::Queued,
        zstd_level: Some(3),
        chunk_size: 64 << 10,
        progress: None,
    }
}

async fn push(client: &Client, data: &[u8]) -> Result<Job, String> {
    client
        .push_reader(
            SHARD,
            LOG_ID,
            Some(data.len() as u64),
            Cursor::new(data.to_vec()),
            &options(),
        )
        .await
        .map(|pushed| pushed.job)
        .map_err(|e| e.to_string())
}

/// The job of the segment, found by listing (its push may have lost its
/// answer to the crash).
async fn segment_jobs(client: &Client) -> Vec<Job> {
    let filter = JobFilter {
        shard_id: Some(SHARD),
        log_id_min: Some(LOG_ID),
        log_id_max: Some(LOG_ID),
        limit: 100,
        ..Default::default()
    };
    client.list(&filter).await.expect("list jobs").0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_recovery_path_runs_after_a_crash_steered_into_it() {
    let data = json_segment(11, 2 << 20);
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    for case in CASES {
        let name = format!(
            "{} {:?} lose_spool={}",
            case.point, case.args, case.lose_spool
        );
        let mut server = Server::start_with_env(case.args, &[(CRASH_AT_VARIABLE, case.point)]);
        let client = server.client().await.retry_policy(RetryPolicy::none());
        let pushed = push(&client, &data).await;
        let status = server.wait_exit(Duration::from_secs(60));
        assert_eq!(
            status.signal(),
            Some(libc::SIGABRT),
            "{name}: the server did not abort at its crash point ({status:?}); push: {pushed:?}"
        );
        let log = server.log_text();
        assert!(
            log.contains(&format!("crash point {}: aborting", case.point)),
            "{name}: {log}"
        );
        if case.point == "receiving" {
            assert!(
                pushed.is_err(),
                "{name}: acknowledged mid-upload: {pushed:?}"
            );
        }
        if case.lose_spool {
            let spooled = server.spool_files();
            assert!(!spooled.is_empty(), "{name}: nothing spooled to lose");
            for file in spooled {
                std::fs::remove_file(&file).expect("remove spool file");
            }
        }

        server.set_env(&[]);
        server.restart();
        let log = server.log_text();
        let report = recovery_report(&log)
            .unwrap_or_else(|| panic!("no recovery report in the log:\n{log}"));
        println!("{name}: {report:?}");
        for field in case.expect {
            assert!(
                report.get(*field).copied().unwrap_or(0) > 0,
                "{name}: recovery did not take the {field} path: {report:?}"
            );
        }
        for (field, count) in &report {
            *seen.entry(field.clone()).or_default() += count;
        }

        let client = server.client().await;
        let jobs = segment_jobs(&client).await;
        assert_eq!(jobs.len(), 1, "{name}: {jobs:?}");
        let job = if case.survives {
            client.wait(jobs[0].id).await.expect("wait")
        } else {
            let failed = client.job(jobs[0].id).await.expect("job");
            assert_eq!(failed.state, JobState::Failed, "{name}: {failed:?}");
            let again = push(&client, &data).await.expect("push again");
            client.wait(again.id).await.expect("wait")
        };
        assert_eq!(job.state, JobState::Archived, "{name}: {job:?}");

        let mut restored = Cursor::new(Vec::new());
        client
            .restore_to(SHARD, LOG_ID, &mut restored, None)
            .await
            .expect("restore");
        assert_eq!(
            Digest::of(&restored.into_inner()),
            Digest::of(&data),
            "{name}: restored other bytes"
        );
        assert_eq!(
            zstd_decode(&server.archive_path(SHARD, LOG_ID)),
            data,
            "{name}"
        );
        assert_eq!(server.archives(SHARD).len(), 1, "{name}: one archive");
        assert!(server.temporaries().is_empty(), "{name}");
        eventually(Duration::from_secs(30), || async {
            server.spool_files().is_empty().then_some(())
        })
        .await;
    }
    for field in REPORT_FIELDS {
        assert!(
            seen.get(*field).copied().unwrap_or(0) > 0,
            "the {field} recovery path never ran: {seen:?}"
        );
    }
}
