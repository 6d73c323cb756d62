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
