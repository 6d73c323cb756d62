//! `wal-archiver config check [FILE]`: the configuration `serve` would run
//! with (file, `WAL_ARCHIVER_*` variables and flags, as `serve` reads them),
//! printed as TOML with where each value came from, and every problem `serve`
//! would meet at start found now, before a deploy: a bad key or value, named
//! with its source, and tokens, TLS or S3 key files that cannot be used.
//! Nothing secret is printed: tokens and S3 keys stay in their files.

use std::process::ExitCode;

use super::args::ConfigCheckArgs;
use super::output::exit_for;
use wal_archiver::config::{Config, KEYS, Loaded, StorageKind};

pub fn check(args: ConfigCheckArgs) -> anyhow::Result<ExitCode> {
    let env: Vec<(String, String)> = std::env::vars().collect();
    let loaded = Config::load_explained(args.file.as_deref(), env.clone(), &args.flags)?;
    print_effective(&loaded);
    let problems = problems(&loaded.config, env);
    for problem in &problems {
        eprintln!("error: {problem}");
    }
    if problems.is_empty() {
        eprintln!("configuration ok");
    }
    Ok(exit_for(problems.is_empty()))
}

fn print_effective(loaded: &Loaded) {
    println!(
        "# The configuration serve would run with: defaults, then the config file, \
         WAL_ARCHIVER_* variables and flags."
    );
    let table = loaded.config.redacted();
    for key in KEYS {
        let origin = loaded
            .origins
            .get(key)
            .map(|origin| format!("  # from {origin}"))
            .unwrap_or_default();
        match table.get(*key) {
            Some(value) => println!("{key} = {value}{origin}"),
            None => println!("# {key} is unset{origin}"),
        }
    }
    let config = &loaded.config;
    if config.storage == StorageKind::S3 && config.s3_access_key_id_file.is_none() {
        println!(
            "# S3 credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (values not shown)"
        );
    }
}

/// What would stop `serve` after the configuration itself loaded.
fn problems(config: &Config, env: Vec<(String, String)>) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(path) = &config.tokens_file
        && let Err(e) = wal_archiver::service::auth::Tokens::load(path)
    {
        problems.push(format!("tokens_file: {e}"));
    }
    if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key)
        && let Err(e) = wal_archiver::tls::read_identity(cert, key)
    {
        problems.push(format!("tls_cert/tls_key: {e}"));
    }
    if let Some(ca) = &config.tls_client_ca
        && let Err(e) = wal_archiver::tls::read_certificates(ca)
    {
        problems.push(format!("tls_client_ca: {e}"));
    }
    if config.storage == StorageKind::S3
        && let Err(e) = wal_archiver::store::S3Options::from_config(config, env)
    {
        problems.push(format!("storage = s3: {e}"));
    }
    if config.data_dir.exists() && !config.data_dir.is_dir() {
        problems.push(format!(
            "data_dir {} is not a directory",
            config.data_dir.display()
        ));
    }
    problems
}
