use super::*;

fn flags(pairs: &[(&str, &str)]) -> ConfigFlags {
    let mut flags = ConfigFlags::default();
    for (key, value) in pairs {
        match *key {
            "listen" => flags.listen = Some(value.to_string()),
            "archive_queue_size" => flags.archive_queue_size = Some(value.to_string()),
            other => panic!("no test mapping for {other}"),
        }
    }
    flags
}

#[test]
fn layers_override_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(
        &file,
        "archive_queue_size = 5\ncompression_level = 7\nlisten = \"0.0.0.0:1\"\n",
    )
    .unwrap();
    let env = vec![
        ("WAL_ARCHIVER_COMPRESSION_LEVEL".to_owned(), "9".to_owned()),
        ("WAL_ARCHIVER_DATA_DIR".to_owned(), "/x".to_owned()),
        ("WAL_ARCHIVER_TLS_CERT".to_owned(), "/c.pem".to_owned()),
        ("WAL_ARCHIVER_TLS_KEY".to_owned(), "/k.pem".to_owned()),
        ("UNRELATED".to_owned(), "1".to_owned()),
    ];
    let config = Config::load(Some(&file), env, &flags(&[("listen", "127.0.0.1:9")])).unwrap();
    assert_eq!(config.archive_queue_size, 5);
    assert_eq!(config.compression_level, 9);
    assert_eq!(config.data_dir, PathBuf::from("/x"));
    assert_eq!(config.tls_cert, Some(PathBuf::from("/c.pem")));
    assert_eq!(config.listen, "127.0.0.1:9".parse().unwrap());
}

#[test]
fn unknown_keys_and_bad_values_are_refused_naming_their_source() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, "archive_queue_sise = 5\n").unwrap();
    assert!(Config::load(Some(&file), vec![], &ConfigFlags::default()).is_err());
    let env = vec![(
        "WAL_ARCHIVER_ARCHIVE_QUEUE_SIZE".to_owned(),
        "lots".to_owned(),
    )];
    let err = Config::load(None, env, &ConfigFlags::default()).unwrap_err();
    assert!(
        err.to_string()
            .contains("environment variable WAL_ARCHIVER_ARCHIVE_QUEUE_SIZE=lots"),
        "{err}"
    );
    let err = Config::load(None, vec![], &flags(&[("archive_queue_size", "x")])).unwrap_err();
    assert!(
        err.to_string().contains("flag --archive-queue-size x"),
        "{err}"
    );
}

#[test]
fn s3_storage_is_checked_and_its_prefix_normalised() {
    let load = |pairs: &[(&str, &str)]| {
        let env = pairs
            .iter()
            .map(|(k, v)| (format!("{ENV_PREFIX}{}", k.to_uppercase()), v.to_string()))
            .collect::<Vec<_>>();
        Config::load(None, env, &ConfigFlags::default())
    };
    let config = load(&[
        ("storage", "s3"),
        ("s3_bucket", "wal"),
        ("s3_endpoint", "http://127.0.0.1:3900"),
        ("s3_prefix", "/prod/eu"),
    ])
    .unwrap();
    assert_eq!(config.storage, StorageKind::S3);
    assert_eq!(config.s3_prefix, "prod/eu/");
    assert_eq!(config.s3_part_size, 8 << 20);
    assert!(config.s3_path_style);

    let refused = |pairs: &[(&str, &str)], says: &str| {
        let err = load(pairs).unwrap_err().to_string();
        assert!(err.contains(says), "{err}");
    };
    refused(&[("storage", "s3")], "needs s3_bucket");
    refused(&[("storage", "gcs")], "expected `local` or `s3`");
    refused(
        &[
            ("storage", "s3"),
            ("s3_bucket", "b"),
            ("s3_part_size", "1048576"),
        ],
        "s3_part_size must be between",
    );
    refused(
        &[
            ("storage", "s3"),
            ("s3_bucket", "b"),
            ("s3_endpoint", "127.0.0.1:3900"),
        ],
        "http:// or https://",
    );
    refused(
        &[("storage", "s3"), ("s3_bucket", "b"), ("s3_prefix", "a//b")],
        "single slashes",
    );
    refused(
        &[("storage", "s3"), ("s3_bucket", "b"), ("s3_region", "")],
        "s3_endpoint or s3_region",
    );
    refused(
        &[
            ("storage", "s3"),
            ("s3_bucket", "b"),
            ("s3_upload_concurrency", "0"),
        ],
        "s3_upload_concurrency",
    );
    refused(
        &[
            ("storage", "s3"),
            ("s3_bucket", "b"),
            ("s3_access_key_id_file", "/k"),
        ],
        "go together",
    );
    // The local store ignores the S3 keys.
    assert!(load(&[("s3_part_size", "1")]).is_ok());
}

#[test]
fn readme_documents_every_key() {
    let readme = include_str!("../../README.md");
    for key in KEYS {
        assert!(
            readme.contains(&format!("`{key}`")),
            "README.md's configuration table does not mention `{key}`"
        );
    }
}

#[test]
fn sizes_and_durations_take_units_and_bare_numbers() {
    use keys::Unit::{Bytes, Days, Millis, Seconds};
    let ok = |unit, text: &str, expected: u64| {
        assert_eq!(units::parse(unit, text), Ok(expected), "{text}");
    };
    ok(Bytes, "4096", 4096);
    ok(Bytes, "1GiB", 1 << 30);
    ok(Bytes, "512MiB", 512 << 20);
    ok(Bytes, "512 MiB", 512 << 20);
    ok(Bytes, "64KiB", 64 << 10);
    ok(Bytes, "64k", 64_000);
    ok(Bytes, "1GB", 1_000_000_000);
    ok(Seconds, "30", 30);
    ok(Seconds, "30s", 30);
    ok(Seconds, "5m", 300);
    ok(Seconds, "1h 30m", 5400);
    ok(Millis, "30000", 30_000);
    ok(Millis, "30s", 30_000);
    ok(Millis, "250ms", 250);
    ok(Days, "7", 7);
    ok(Days, "7d", 7);
    ok(Days, "2w", 14);
    for (unit, text) in [
        (Bytes, "lots"),
        (Bytes, "-1"),
        (Seconds, "soon"),
        (Seconds, "1500ms"),
        (Days, "36h"),
        (Days, "a week"),
    ] {
        assert!(units::parse(unit, text).is_err(), "{text}");
    }
}

#[test]
fn unknown_variables_are_refused_and_the_cli_s_let_through() {
    let load = |name: &str| {
        Config::load(
            None,
            vec![(name.to_owned(), "3".to_owned())],
            &ConfigFlags::default(),
        )
    };
    let err = load("WAL_ARCHIVER_RETAIN_DAYZ").unwrap_err().to_string();
    assert!(
        err.contains("environment variable WAL_ARCHIVER_RETAIN_DAYZ is not a configuration key")
            && err.contains("did you mean WAL_ARCHIVER_RETAIN_DAYS?"),
        "{err}"
    );
    let err = load("WAL_ARCHIVER_NOTHING_LIKE_IT")
        .unwrap_err()
        .to_string();
    assert!(!err.contains("did you mean"), "{err}");
    for (name, _) in OTHER_VARIABLES {
        assert!(load(name).is_ok(), "{name}");
    }
    assert!(load("OTHER_PROGRAM_RETAIN_DAYZ").is_ok());
}

/// Every `WAL_ARCHIVER_*` name the repository's files use is a key or one of
/// `OTHER_VARIABLES`: otherwise a test, a deploy file or a doc would start a
/// server that refuses to run.
#[test]
fn every_variable_the_repository_uses_is_known() {
    // Misspellings that tests and docs use on purpose.
    const DELIBERATE: &[&str] = &[
        "WAL_ARCHIVER_RETAIN_DAYZ",
        "WAL_ARCHIVER_LISTN",
        "WAL_ARCHIVER_NOTHING_LIKE_IT",
    ];
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    let mut dirs: Vec<PathBuf> = ["src", "tests", "deploy", "docs", ".ci", "examples"]
        .iter()
        .map(|d| root.join(d))
        .collect();
    files.push(root.join("README.md"));
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push(path);
            }
        }
    }
    let mut seen = 0;
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        for (at, _) in text.match_indices(ENV_PREFIX) {
            let name: String = text[at..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            if name.ends_with('_') || DELIBERATE.contains(&name.as_str()) {
                continue; // `WAL_ARCHIVER_<KEY>`, `WAL_ARCHIVER_*`, prefixes
            }
            let key = name[ENV_PREFIX.len()..].to_ascii_lowercase();
            assert!(
                KEYS.contains(&key.as_str()) || OTHER_VARIABLES.iter().any(|(n, _)| *n == name),
                "{} uses {name}, which is neither a config key nor in OTHER_VARIABLES",
                file.display()
            );
            seen += 1;
        }
    }
    assert!(seen > 20, "the repository was read ({seen} names)");
}

#[test]
fn file_errors_name_the_key_and_validation_errors_their_source() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, "max_chunk_size = \"2MiB\"\nretain_days = \"x\"\n").unwrap();
    let err = Config::load(Some(&file), vec![], &ConfigFlags::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("config file {}, key retain_days", file.display())),
        "{err}"
    );
    std::fs::write(&file, "max_chunk_size = \"32MiB\"\n").unwrap();
    let err = Config::load(Some(&file), vec![], &ConfigFlags::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("max_chunk_size must be between")
            && err.contains(&format!(
                "max_chunk_size from config file {}",
                file.display()
            )),
        "{err}"
    );
    std::fs::write(&file, "max_chunk_size = \"2MiB\"\n").unwrap();
    let loaded = Config::load_explained(Some(&file), vec![], &ConfigFlags::default()).unwrap();
    assert_eq!(loaded.config.max_chunk_size, 2 << 20);
    assert_eq!(
        loaded.origins.get("max_chunk_size").map(String::as_str),
        Some(format!("config file {}", file.display()).as_str())
    );
}

#[test]
fn redacted_masks_a_password_in_the_endpoint() {
    let config = Config {
        s3_endpoint: Some("https://id:secret@s3.example:9000/x".into()),
        ..Config::default()
    };
    let table = config.redacted();
    assert_eq!(
        table["s3_endpoint"].as_str(),
        Some("https://id:***@s3.example:9000/x")
    );
    assert!(!toml::to_string(&table).unwrap().contains("secret@"));
}
