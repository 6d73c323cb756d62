//! Configuration mistakes caught, and named, through the real binary:
//! unknown `WAL_ARCHIVER_*` variables, values that do not parse (each named
//! with its file key, variable or flag), sizes and durations with units,
//! `config check`, TLS files that cannot be used, and `list --limit`.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;

/// `wal-archiver ARGS` with `env` added and no `WAL_ARCHIVER_*` variable of
/// the caller's own.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(BIN);
    for (name, _) in std::env::vars() {
        if name.starts_with("WAL_ARCHIVER_") {
            command.env_remove(name);
        }
    }
    command
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run wal-archiver")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `config check` that must fail, saying `says` on stderr.
fn check_refuses(args: &[&str], env: &[(&str, &str)], says: &str) {
    let mut full = vec!["config", "check"];
    full.extend_from_slice(args);
    let output = run(&full, env);
    assert!(
        !output.status.success(),
        "config check {args:?} passed:\n{}",
        stdout(&output)
    );
    assert!(
        stderr(&output).contains(says),
        "config check {args:?} should say {says:?}; stderr:\n{}",
        stderr(&output)
    );
}

/// `serve` that must stop at once (not listen), saying `says` on stderr.
fn serve_refuses(args: &[&str], env: &[(&str, &str)], says: &str) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr");
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn wal-archiver serve");
    let status = wait_with_timeout(&mut child, Duration::from_secs(30));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "serve {args:?} {env:?} started:\n{text}");
    assert!(
        text.contains(says),
        "serve {args:?} {env:?} should say {says:?}; stderr:\n{text}"
    );
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn an_unknown_variable_is_refused_naming_it() {
    serve_refuses(
        &[],
        &[("WAL_ARCHIVER_RETAIN_DAYZ", "3")],
        "environment variable WAL_ARCHIVER_RETAIN_DAYZ is not a configuration key \
         (did you mean WAL_ARCHIVER_RETAIN_DAYS?)",
    );
    check_refuses(
        &[],
        &[("WAL_ARCHIVER_LISTN", "127.0.0.1:1")],
        "WAL_ARCHIVER_LISTN is not a configuration key",
    );
    // The CLI's own variables are not server keys, and not refused either.
    let output = run(
        &["config", "check"],
        &[
            ("WAL_ARCHIVER_SERVER", "http://127.0.0.1:1"),
            ("WAL_ARCHIVER_TOKEN", "t"),
            ("WAL_ARCHIVER_CA", "/ca.pem"),
            ("WAL_ARCHIVER_CERT", "/cert.pem"),
            ("WAL_ARCHIVER_KEY", "/key.pem"),
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
}

#[test]
fn a_bad_value_names_its_source() {
    let dir = tempfile::tempdir().unwrap();
    check_refuses(
        &[],
        &[("WAL_ARCHIVER_ARCHIVE_QUEUE_SIZE", "abc")],
        "environment variable WAL_ARCHIVER_ARCHIVE_QUEUE_SIZE=abc",
    );
    let file = write(dir.path(), "sizes.toml", "max_segment_size = \"lots\"\n");
    check_refuses(
        &[&file],
        &[],
        &format!("config file {file}, key max_segment_size: \"lots\" is not a size"),
    );
    let file = write(dir.path(), "typed.toml", "archive_queue_size = \"many\"\n");
    check_refuses(
        &[&file],
        &[],
        &format!("config file {file}, key archive_queue_size"),
    );
    let file = write(dir.path(), "typo.toml", "retain_dayz = 3\n");
    check_refuses(
        &[&file],
        &[],
        &format!("config file {file}, key retain_dayz: unknown key (did you mean retain_days?)"),
    );
    check_refuses(
        &["--shutdown-grace", "soon"],
        &[],
        "flag --shutdown-grace soon: \"soon\" is not a duration",
    );
    // A value that parses but is refused says where it was set.
    check_refuses(
        &[],
        &[("WAL_ARCHIVER_ARCHIVE_QUEUE_SIZE", "0")],
        "archive_queue_size must be at least 1 (archive_queue_size from environment variable \
         WAL_ARCHIVER_ARCHIVE_QUEUE_SIZE)",
    );
    serve_refuses(
        &["--max-chunk-size", "big"],
        &[],
        "flag --max-chunk-size big",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sizes_and_durations_take_units() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "units.toml",
        "max_segment_size = \"1GiB\"\nsmall_job_size = \"512MiB\"\nstall_timeout = \"5m\"\n",
    );
    let output = run(
        &[
            "config",
            "check",
            &file,
            "--retention-interval",
            "1h",
            "--unary-timeout-ms",
            "2s",
            "--max-chunk-size",
            "64KiB",
        ],
        &[("WAL_ARCHIVER_RECEIVE_IDLE_TIMEOUT", "30s")],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let effective = stdout(&output);
    for line in [
        format!("max_segment_size = 1073741824  # from config file {file}"),
        format!("small_job_size = 536870912  # from config file {file}"),
        format!("stall_timeout = 300  # from config file {file}"),
        "receive_idle_timeout = 30  # from environment variable WAL_ARCHIVER_RECEIVE_IDLE_TIMEOUT"
            .to_owned(),
        "retention_interval = 3600  # from flag --retention-interval".to_owned(),
        "unary_timeout_ms = 2000  # from flag --unary-timeout-ms".to_owned(),
        "max_chunk_size = 65536  # from flag --max-chunk-size".to_owned(),
        // Bare numbers keep their meaning.
        "shutdown_grace = 30".to_owned(),
    ] {
        assert!(
            effective.lines().any(|l| l == line),
            "no line {line:?} in:\n{effective}"
        );
    }

    // And the server runs with them.
    let server = Server::start(&[
        "--max-segment-size",
        "1GiB",
        "--receive-idle-timeout",
        "30s",
    ]);
    let health = run(&["health", "--server", &server.url()], &[]);
    assert!(health.status.success(), "{}", stderr(&health));
}

#[test]
fn config_check_prints_the_effective_config_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = write(
        dir.path(),
        "tokens.toml",
        "[[tokens]]\nname = \"operator\"\nrole = \"admin\"\nsecret = \"token-secret-1\"\n",
    );
    let key_id = write(dir.path(), "key-id", "GK-key-id-secret-2\n");
    let secret = write(dir.path(), "secret", "s3-secret-3\n");
    let file = write(
        dir.path(),
        "good.toml",
        &format!(
            "listen = \"127.0.0.1:7777\"\ntokens_file = \"{tokens}\"\nstorage = \"s3\"\n\
             s3_bucket = \"wal\"\ns3_endpoint = \"http://user:password-4@127.0.0.1:3900\"\n\
             s3_access_key_id_file = \"{key_id}\"\ns3_secret_access_key_file = \"{secret}\"\n"
        ),
    );
    let output = run(
        &["config", "check", &file],
        &[("WAL_ARCHIVER_DATA_DIR", "/srv/wal")],
    );
    let effective = stdout(&output);
    assert!(output.status.success(), "{effective}\n{}", stderr(&output));
    assert!(stderr(&output).contains("configuration ok"));
    for line in [
        format!("listen = \"127.0.0.1:7777\"  # from config file {file}"),
        "data_dir = \"/srv/wal\"  # from environment variable WAL_ARCHIVER_DATA_DIR".to_owned(),
        format!("tokens_file = \"{tokens}\"  # from config file {file}"),
        "s3_endpoint = \"http://user:***@127.0.0.1:3900\"".to_owned(),
        "archive_queue_size = 64".to_owned(),
        "# tls_cert is unset".to_owned(),
    ] {
        assert!(
            effective.lines().any(|l| l.starts_with(&line)),
            "no line {line:?} in:\n{effective}"
        );
    }
    for secret in [
        "token-secret-1",
        "key-id-secret-2",
        "s3-secret-3",
        "password-4",
    ] {
        assert!(
            !effective.contains(secret) && !stderr(&output).contains(secret),
            "{secret} printed:\n{effective}"
        );
    }
}

#[test]
fn config_check_fails_on_a_bad_file_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "zero.toml", "archive_queue_size = 0\n");
    check_refuses(
        &[&file],
        &[],
        &format!(
            "archive_queue_size must be at least 1 (archive_queue_size from config file {file})"
        ),
    );
    let file = write(dir.path(), "broken.toml", "listen = \n");
    check_refuses(&[&file], &[], &format!("config file {file}"));
    check_refuses(
        &["/nonexistent/wal-archiver.toml"],
        &[],
        "cannot read config file /nonexistent/wal-archiver.toml",
    );
    // The configuration loads, but serve could not start with it.
    let missing = dir.path().join("no-tokens.toml");
    let file = write(
        dir.path(),
        "tokens.toml",
        &format!("tokens_file = \"{}\"\n", missing.display()),
    );
    check_refuses(
        &[&file],
        &[],
        &format!("tokens_file: cannot read tokens file {}", missing.display()),
    );
}

#[test]
fn tls_files_that_cannot_be_used_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing-cert.pem");
    let key = write(dir.path(), "key.pem", "not a key\n");
    serve_refuses(
        &["--tls-cert", missing.to_str().unwrap(), "--tls-key", &key],
        &[],
        &format!("cannot read {}", missing.display()),
    );
    let not_pem = write(dir.path(), "not-pem.pem", "hello\n");
    serve_refuses(
        &["--tls-cert", &not_pem, "--tls-key", &key],
        &[],
        &format!("{not_pem} holds no PEM certificate"),
    );

    // A certificate with another certificate's key.
    let first = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let second = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = write(dir.path(), "cert.pem", &first.cert.pem());
    let other_key = write(
        dir.path(),
        "other-key.pem",
        &second.signing_key.serialize_pem(),
    );
    serve_refuses(
        &["--tls-cert", &cert, "--tls-key", &other_key],
        &[],
        &format!("{other_key} is not the private key of the certificate in {cert}"),
    );
    check_refuses(
        &["--tls-cert", &cert, "--tls-key", &not_pem],
        &[],
        &format!("{not_pem} holds no PEM private key"),
    );

    // The client names its files too, also when they come from WAL_ARCHIVER_CA.
    let output = run(
        &["status", "1", "--server", "https://127.0.0.1:1"],
        &[("WAL_ARCHIVER_CA", missing.to_str().unwrap())],
    );
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains(&format!("cannot read {}", missing.display())),
        "{}",
        stderr(&output)
    );
    let output = run(
        &["status", "1", "--server", "https://127.0.0.1:1"],
        &[
            ("WAL_ARCHIVER_CERT", &cert),
            ("WAL_ARCHIVER_KEY", &other_key),
        ],
    );
    assert!(
        stderr(&output).contains("is not the private key of the certificate"),
        "{}",
        stderr(&output)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_limit_cuts_with_a_note_and_all_does_not() {
    let server = Server::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let wal = dir.path().join("wal");
    let wal = wal.to_str().unwrap();
    let url = server.url();
    let client = |args: &[&str]| {
        let output = run(args, &[("WAL_ARCHIVER_SERVER", &url)]);
        assert!(output.status.success(), "{args:?}: {}", stderr(&output));
        output
    };
    client(&[
        "generate",
        "--dir",
        wal,
        "--segments",
        "3",
        "--size",
        "1000",
    ]);
    client(&[
        "push",
        "--shard",
        "1",
        "--wal-dir",
        wal,
        "--up-to",
        "100",
        "--wait",
    ]);

    let cut = client(&["list", "--limit", "2"]);
    assert_eq!(stdout(&cut).lines().count(), 2, "{}", stdout(&cut));
    assert!(
        stderr(&cut).contains("note: the first 2 jobs shown; more match"),
        "{}",
        stderr(&cut)
    );
    for args in [&["list", "--limit", "3"][..], &["list", "--all"][..]] {
        let whole = client(args);
        assert_eq!(stdout(&whole).lines().count(), 3, "{args:?}");
        assert!(
            !stderr(&whole).contains("note:"),
            "{args:?}: {}",
            stderr(&whole)
        );
    }
    let help = stdout(&client(&["list", "--help"]));
    assert!(
        help.contains("ARCHIVED") && help.contains("FAILED"),
        "{help}"
    );
}

#[test]
fn the_listening_line_follows_log_format() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn wal-archiver serve");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let json: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
    assert_eq!(json["level"], "INFO");
    assert!(
        json["fields"]["message"]
            .as_str()
            .unwrap()
            .starts_with("wal-archiver listening on 127.0.0.1:"),
        "{line}"
    );
}
