//! How to reach the bucket: endpoint, bucket, region, prefix, credentials and bounds.

use super::*;

/// S3 credentials; never taken from flags, where `ps` would show them.
#[derive(Clone)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// Everything the S3 store needs, taken from the configuration.
#[derive(Clone, Debug)]
pub struct S3Options {
    pub endpoint: Option<String>,
    pub bucket: String,
    pub region: String,
    /// Empty, or ending with `/`.
    pub prefix: String,
    pub path_style: bool,
    pub part_size: usize,
    pub upload_concurrency: usize,
    /// Per request attempt (and per read of a streamed body).
    pub timeout: Duration,
    pub retries: u32,
    pub credentials: S3Credentials,
    /// Where upload ids in progress are recorded (in the data dir).
    pub uploads_dir: PathBuf,
}

impl S3Options {
    /// The S3 keys of `config`; credentials from its key files, else from
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`) in `env`.
    pub fn from_config(
        config: &Config,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, StoreError> {
        let env: std::collections::HashMap<String, String> = env.into_iter().collect();
        let credentials = match (
            &config.s3_access_key_id_file,
            &config.s3_secret_access_key_file,
        ) {
            (Some(id_file), Some(secret_file)) => S3Credentials {
                access_key_id: read_secret(id_file)?,
                secret_access_key: read_secret(secret_file)?,
                session_token: env.get("AWS_SESSION_TOKEN").cloned(),
            },
            _ => match (
                env.get("AWS_ACCESS_KEY_ID"),
                env.get("AWS_SECRET_ACCESS_KEY"),
            ) {
                (Some(id), Some(secret)) if !id.is_empty() && !secret.is_empty() => S3Credentials {
                    access_key_id: id.clone(),
                    secret_access_key: secret.clone(),
                    session_token: env.get("AWS_SESSION_TOKEN").cloned(),
                },
                _ => {
                    return Err(StoreError::Backend(
                        "storage = s3 needs credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, \
                         or s3_access_key_id_file and s3_secret_access_key_file"
                            .into(),
                    ));
                }
            },
        };
        Ok(S3Options {
            endpoint: config.s3_endpoint.clone(),
            bucket: config.s3_bucket.clone().unwrap_or_default(),
            region: config.s3_region.clone(),
            prefix: normalise_prefix(&config.s3_prefix),
            path_style: config.s3_path_style,
            part_size: usize::try_from(config.s3_part_size).unwrap_or(usize::MAX),
            upload_concurrency: config.s3_upload_concurrency.max(1),
            timeout: Duration::from_secs(config.storage_timeout),
            retries: config.storage_retries,
            credentials,
            uploads_dir: config.data_dir.join(UPLOADS_DIR),
        })
    }
}

fn read_secret(path: &std::path::Path) -> Result<String, StoreError> {
    let text =
        fs::read_to_string(path).map_err(IoError::with(format!("reading {}", path.display())))?;
    Ok(text.trim().to_owned())
}
