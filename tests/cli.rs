//! The README tour through the real `wal-archiver` command.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::calls::{assert_status, push_archived};
use common::*;

fn cli(server: &Server, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("WAL_ARCHIVER_SERVER", server.url())
        .output()
        .expect("run wal-archiver")
}

/// `wal-archiver push --shard SHARD --wal-dir DIR --up-to UP_TO`, then `more`.
fn push_dir(server: &Server, shard: &str, dir: &Path, up_to: &str, more: &[&str]) -> Output {
    let dir = dir.to_str().expect("utf-8 path");
    let mut args = vec!["push", "--shard", shard, "--wal-dir", dir, "--up-to", up_to];
    args.extend_from_slice(more);
    cli(server, &args)
}

/// `wal-archiver restore --shard 1 --log-id 1 -o OUT`.
fn restore_shard_1_log_1(server: &Server, out: &Path) -> Output {
    let out = out.to_str().expect("utf-8 path");
    cli(
        server,
        &["restore", "--shard", "1", "--log-id", "1", "-o", out],
    )
}

fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "command failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

fn json(output: Output) -> serde_json::Value {
    serde_json::from_str(&ok(output)).expect("--json prints JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tour_push_dir_watch_restore_inspect() {
    let server = Server::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let wal = dir.path().join("wal");
    let wal_str = wal.to_str().unwrap();
    ok(cli(
        &server,
        &[
            "generate",
            "--dir",
            wal_str,
            "--segments",
            "12",
            "--size",
            "100000",
        ],
    ));
    // Mixed padding: numeric order must win over name order (wal-9 < wal-00010).
    std::fs::rename(wal.join("wal-00009.log"), wal.join("wal-9.log")).unwrap();
    std::fs::write(wal.join("notes.txt"), "not a segment").unwrap();

    let report = json(push_dir(
        &server,
        "4",
        &wal,
        "11",
        &["--kind", "json-lines", "--delete", "--json"],
    ));
    let pushed: Vec<u64> = report["pushed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[0].as_u64().unwrap())
        .collect();
    assert_eq!(
        pushed,
        (1..=10).collect::<Vec<_>>(),
        "ids below --up-to, in numeric order"
    );
    assert!(report["failed"].as_array().unwrap().is_empty());
    assert_eq!(report["deleted"].as_array().unwrap().len(), 10);
    let left: Vec<String> = list(&wal)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, vec!["notes.txt", "wal-00011.log", "wal-00012.log"]);

    let shard = json(cli(&server, &["shard", "4", "--json"]));
    assert_eq!(shard["archived_watermark"], 10);
    assert_eq!(shard["archived"], 10);

    let jobs = json(cli(
        &server,
        &["list", "--shard", "4", "--state", "archived", "--json"],
    ));
    assert_eq!(jobs.as_array().unwrap().len(), 10);
    let first_job = jobs[0]["id"].as_u64().unwrap().to_string();
    let status = json(cli(&server, &["status", &first_job, "--json"]));
    assert_eq!(status["state"], "ARCHIVED");
    let watched = ok(cli(&server, &["watch", &first_job]));
    assert!(watched.contains("ARCHIVED"), "{watched}");

    // Single-file push with --wait, then restore and inspect.
    let segment = wal.join("wal-00011.log");
    let line = ok(cli(
        &server,
        &[
            "push",
            "--shard",
            "4",
            "--log-id",
            "11",
            segment.to_str().unwrap(),
            "--kind",
            "json-lines",
            "--wait",
        ],
    ));
    assert!(line.contains("ARCHIVED"), "{line}");
    let restored = dir.path().join("restored");
    ok(cli(
        &server,
        &[
            "restore",
            "--shard",
            "4",
            "--log-id",
            "11",
            "-o",
            restored.to_str().unwrap(),
        ],
    ));
    assert_eq!(
        std::fs::read(&restored).unwrap(),
        std::fs::read(&segment).unwrap()
    );

    let archive = server.archive_path(4, 11);
    let inspected = Command::new(BIN)
        .args(["inspect", "--verify", "--json", archive.to_str().unwrap()])
        .output()
        .unwrap();
    let metadata: serde_json::Value = serde_json::from_str(&ok(inspected)).unwrap();
    assert_eq!(metadata["log_id"], 11);
    assert_eq!(metadata["content_kind"], "json_lines");
    assert!(metadata["json"]["entries"].as_u64().unwrap() > 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_keeps_every_file_when_anything_failed() {
    let server = Server::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let wal = dir.path();
    std::fs::write(wal.join("wal-1.log"), json_segment(1, 50_000)).unwrap();
    std::fs::write(wal.join("wal-2.log"), b"{\"ok\":1}\nnot json\n").unwrap();
    std::fs::write(wal.join("wal-3.log"), json_segment(3, 50_000)).unwrap();
    let output = push_dir(
        &server,
        "1",
        wal,
        "10",
        &["--kind", "json-lines", "--delete"],
    );
    assert!(
        !output.status.success(),
        "a failed segment makes the command fail"
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("line 2"), "{stdout}");
    for name in ["wal-1.log", "wal-2.log", "wal-3.log"] {
        assert!(
            Path::new(&wal.join(name)).exists(),
            "{name} must not be deleted"
        );
    }
}

/// A WAL directory whose segments are symlinks (to another volume, say) is
/// pushed like one of regular files; a directory with nothing to push says
/// so instead of printing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_dir_follows_symlinks_and_says_when_nothing_matched() {
    let server = Server::start(&[]);
    let elsewhere = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let wal = dir.path();
    let target = elsewhere.path().join("segment-1");
    std::fs::write(&target, json_segment(1, 20_000)).unwrap();
    std::os::unix::fs::symlink(&target, wal.join("wal-1.log")).unwrap();
    std::fs::write(wal.join("wal-2.log"), json_segment(2, 20_000)).unwrap();
    let stdout = ok(push_dir(&server, "1", wal, "10", &["--wait"]));
    assert_eq!(stdout.matches("ARCHIVED").count(), 2, "{stdout}");
    let restored = dir.path().join("restored-1");
    ok(restore_shard_1_log_1(&server, &restored));
    assert_eq!(
        std::fs::read(&restored).unwrap(),
        std::fs::read(&target).unwrap()
    );

    let nothing = push_dir(&server, "1", wal, "1", &[]);
    assert!(nothing.status.success(), "nothing to push is not an error");
    let stderr = String::from_utf8_lossy(&nothing.stderr);
    assert!(
        stderr.contains("no wal-<log_id>.log below log_id 1"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_print_code_and_exit_non_zero() {
    let server = Server::start(&[]);
    let output = cli(&server, &["status", "424242"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("NOT_FOUND") && stderr.contains("424242"),
        "{stderr}"
    );

    let output = cli(
        &server,
        &[
            "restore",
            "--shard",
            "1",
            "--log-id",
            "5",
            "-o",
            "/tmp/never-written",
        ],
    );
    assert!(!output.status.success());
    assert!(!Path::new("/tmp/never-written").exists());

    let unreachable = Command::new(BIN)
        .args(["shard", "1", "--server", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!unreachable.status.success());
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("cannot connect"));
}

#[test]
fn bench_quick_runs_all_three_contenders() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(BIN)
        .args(["bench", "--quick", "--work-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Four workloads (raw; JSON lines with 1 and 4 shards; one large segment),
    // each with a row per contender.
    for method in ["in-database baseline", "zstd CLI", "wal-archiver service"] {
        let rows = stdout
            .lines()
            .filter(|line| line.trim_start().starts_with(method))
            .count();
        assert_eq!(rows, 4, "{method} in each of the 4 workloads:\n{stdout}");
    }
    // Restores of a small raw, a small JSON and the large segment, beside
    // zstd -d: rows, where figures follow the method (not the header, not
    // the targets that name it).
    for method in ["wal-archiver restore", "zstd -d"] {
        let rows = stdout
            .lines()
            .filter(|line| {
                line.split_once(method).is_some_and(|(before, after)| {
                    !before.contains(['≤', '÷'])
                        && after.trim_start().starts_with(|c: char| c.is_ascii_digit())
                })
            })
            .count();
        assert_eq!(rows, 3, "{method} in each restore:\n{stdout}");
    }
    assert!(stdout.contains("\nTargets (floor"), "{stdout}");
    // Each wall-time target carries the floor timed in this run beside what
    // was measured: the target's ratio, the measured one and the floor.
    let raw_target = stdout
        .lines()
        .find(|line| line.contains("raw, 1 shard: service ≤"))
        .unwrap_or_else(|| panic!("no raw target:\n{stdout}"));
    assert_eq!(raw_target.matches('×').count(), 4, "{raw_target}");
    let ack_target = stdout
        .lines()
        .find(|line| line.contains("ack QUEUED p99 ≤"))
        .unwrap_or_else(|| panic!("no ack target:\n{stdout}"));
    assert!(ack_target.contains(" mean "), "{ack_target}");
}

/// A restore that ends with DATA_LOSS (the archive was damaged on disk) exits
/// non-zero with the code and message, and leaves neither the output file nor
/// its temporary: only a verified segment is ever renamed into place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_of_a_damaged_archive_leaves_no_file() {
    let server = Server::start(&[]);
    let mut rpc = server.rpc().await;
    // Several restore chunks, so bytes reach the temporary before the damage does.
    let data = json_segment(21, 4 << 20);
    push_archived(&mut rpc, 1, 1, &data).await;
    let path = server.archive_path(1, 1);
    let mut bytes = std::fs::read(&path).unwrap();
    let late = bytes.len() * 3 / 4;
    bytes[late] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();

    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("wal-1.restored");
    let output = restore_shard_1_log_1(&server, &out);
    assert!(!output.status.success(), "a DATA_LOSS restore must fail");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("error: DATA_LOSS: ") && stderr.contains("archive data is corrupt"),
        "{stderr}"
    );
    assert!(!out.exists(), "no output file");
    let left: Vec<_> = list(out_dir.path());
    assert!(
        left.is_empty(),
        "nothing left in the output directory: {left:?}"
    );
}

/// A restore onto a volume too small for the segment fails naming the write
/// and the temporary file, and leaves nothing behind; the same restore to a
/// roomy place then gives the segment byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_onto_a_full_volume_leaves_no_file() {
    let server = Server::start(&[]);
    let mut rpc = server.rpc().await;
    let data = json_segment(22, 6 << 20);
    push_archived(&mut rpc, 1, 1, &data).await;
    let small = common::disk::SmallDisk::mount(4);
    let restore_to = |out: &Path| restore_shard_1_log_1(&server, out);

    let output = restore_to(&small.path().join("wal-1.restored"));
    assert!(
        !output.status.success(),
        "a restore that cannot be written must fail"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("writing ") && stderr.contains(".wal-1.restored.restoring"),
        "{stderr}"
    );
    assert!(stderr.contains("No space left on device"), "{stderr}");
    let left = list(small.path());
    assert!(
        left.is_empty(),
        "nothing left on the small volume: {left:?}"
    );

    let roomy = tempfile::tempdir().unwrap();
    let out = roomy.path().join("wal-1.restored");
    ok(restore_to(&out));
    assert_eq!(std::fs::read(&out).unwrap(), data);
}

/// `serve --config FILE`: the file sets keys, `WAL_ARCHIVER_<KEY>` variables
/// override it, flags override both — each observed through what the
/// running server refuses, whose message names the value in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_config_file_env_and_flags_in_that_order() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("wal-archiver.toml");
    std::fs::write(
        &config,
        "# only in the file\nmax_zstd_level = 5\n\
         # the file, then the environment\narchive_queue_size = 3\n\
         # the file, the environment, then a flag\nmax_chunk_size = 70000\n",
    )
    .unwrap();
    let server = Server::start_with_env(
        &[
            "--config",
            config.to_str().unwrap(),
            "--max-chunk-size",
            "80000",
        ],
        &[
            ("WAL_ARCHIVER_ARCHIVE_QUEUE_SIZE", "2"),
            ("WAL_ARCHIVER_MAX_CHUNK_SIZE", "75000"),
        ],
    );
    let mut rpc = server.rpc().await;
    let data = json_segment(22, 200_000);

    // The file's max_zstd_level.
    let mut level = header(1, 1, &data);
    level.zstd_level = Some(6);
    let refused = push(&mut rpc, level, &data).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("zstd level 6 is out of range")
            && refused.message().contains("..=5, max_zstd_level"),
        "{}",
        refused.message()
    );

    // The flag's max_chunk_size: a 79,000-byte chunk passes (the file and
    // the environment would refuse it), one of 80,001 does not.
    let mut messages = vec![header_msg(header(2, 1, &data))];
    messages.extend(data_msgs(&data, 79_000));
    send(&mut rpc, messages).await.unwrap();
    let mut messages = vec![header_msg(header(3, 1, &data))];
    messages.extend(data_msgs(&data, 80_001));
    let refused = send(&mut rpc, messages).await.unwrap_err();
    assert_status(
        &refused,
        tonic::Code::InvalidArgument,
        "data chunk of 80001 bytes exceeds max_chunk_size (80000 bytes)",
    );

    // The environment's archive_queue_size: two uploads held open fill shard 4's queue.
    let mut held = Vec::new();
    for log_id in 1..=2 {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(header_msg(header(4, log_id, &data))).await.unwrap();
        let mut uploader = server.rpc().await;
        let call = tokio::spawn(async move {
            uploader
                .archive(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
        });
        held.push((tx, call));
    }
    let client = server.client().await;
    eventually(std::time::Duration::from_secs(30), || async {
        (client.shard(4).await.ok()?.receiving == 2).then_some(())
    })
    .await;
    let refused = push(&mut rpc, header(4, 3, &data), &data)
        .await
        .unwrap_err();
    assert_status(
        &refused,
        tonic::Code::ResourceExhausted,
        "shard 4's queue is full (2 segments received or waiting)",
    );
    drop(held);
}

/// A config file with a key the server does not know stops it at start,
/// naming the file and the key.
#[test]
fn serve_refuses_an_unknown_key_in_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("wal-archiver.toml");
    std::fs::write(
        &config,
        "archive_queue_size = 3\narchive_queue_lenght = 4\n",
    )
    .unwrap();
    let output = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&config.display().to_string()) && stderr.contains("archive_queue_lenght"),
        "{stderr}"
    );
}
