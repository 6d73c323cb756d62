//! Who may do what. Bearer tokens come from a TOML tokens file; each token has
//! a role and, for shards, the shards it speaks for:
//!
//! - `shard`: push and restore its own shards, and read their jobs and status;
//! - `observer`: read job and shard status (orchestration tools);
//! - `admin`: everything, cancel included.
//!
//! The interceptor authenticates (UNAUTHENTICATED without a known token);
//! handlers authorize, because the shard a request touches is often only known
//! inside it (a push names its shard in the first stream message). Secrets can
//! be stored as their SHA-256 (`sha256 = "<hex>"`) so the file holds no secret.
//! The file is re-read on SIGHUP and when it changes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use tonic::{Request, Status};

use super::status::status;
use crate::error::{Classified, ErrorKind};
use crate::types::{Digest, ShardId};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Shard,
    Observer,
    Admin,
}

/// The authenticated caller, put in the request's extensions by the interceptor.
#[derive(Clone, Debug)]
pub struct Caller {
    pub name: String,
    pub role: Role,
    pub shards: Vec<ShardId>,
    /// SHA-256 of the secret it presented, to find it again after a reload.
    token: Digest,
}

/// What a request wants to do.
#[derive(Clone, Copy, Debug)]
pub enum Access {
    Push(ShardId),
    Restore(ShardId),
    /// Read the status of one shard or one of its jobs.
    Read(ShardId),
    /// Read status across shards (ListJobs without a shard filter, Verify of all).
    ReadAll,
    Cancel,
    /// Give up a segment (ResolveSegment).
    Resolve,
}

impl Caller {
    fn may(&self, access: Access) -> bool {
        let own = |shard: ShardId| self.shards.contains(&shard);
        match (self.role, access) {
            (Role::Admin, _) => true,
            (Role::Shard, Access::Push(shard) | Access::Restore(shard) | Access::Read(shard)) => {
                own(shard)
            }
            (Role::Observer, Access::Read(_) | Access::ReadAll) => true,
            _ => false,
        }
    }
}

/// Why a call was refused before it reached the engine.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token: send `authorization: Bearer <token>`")]
    NoToken,
    #[error("the authorization header must be `Bearer <token>`")]
    MalformedHeader,
    #[error("unknown token")]
    UnknownToken,
    #[error("no authenticated caller")]
    NoCaller,
    #[error("token {0:?} was revoked while the call was running")]
    Revoked(String),
    #[error("token {name:?} ({role:?} role, shards {shards:?}) may not {action}")]
    Denied {
        name: String,
        role: Role,
        shards: Vec<ShardId>,
        action: String,
    },
}

impl Classified for AuthError {
    fn kind(&self) -> ErrorKind {
        match self {
            AuthError::Denied { .. } => ErrorKind::PermissionDenied,
            _ => ErrorKind::Unauthenticated,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("cannot read tokens file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("tokens file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    tokens: Vec<TokenEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    role: Role,
    #[serde(default)]
    shards: Vec<ShardId>,
    /// Hex SHA-256 of the secret.
    sha256: Option<String>,
    /// The secret itself (simpler, but the file then holds it).
    secret: Option<String>,
}

type TokenSet = HashMap<Digest, Caller>;

/// The tokens in force; `None` inside means authentication is off.
#[derive(Clone, Default)]
pub struct Tokens {
    set: Option<Arc<RwLock<Arc<TokenSet>>>>,
}

impl Tokens {
    pub fn disabled() -> Tokens {
        Tokens { set: None }
    }

    pub fn load(path: &Path) -> Result<Tokens, TokensError> {
        let set = read_tokens(path)?;
        Ok(Tokens {
            set: Some(Arc::new(RwLock::new(Arc::new(set)))),
        })
    }

    pub fn enabled(&self) -> bool {
        self.set.is_some()
    }

    /// Re-reads the file; on error the tokens in force stay.
    pub fn reload(&self, path: &Path) {
        let Some(set) = &self.set else { return };
        match read_tokens(path) {
            Ok(fresh) => {
                let count = fresh.len();
                *set.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
                tracing::info!(tokens = count, path = %path.display(), "tokens reloaded");
            }
            Err(e) => {
                metrics::counter!(crate::telemetry::TOKEN_RELOAD_FAILURES).increment(1);
                tracing::error!(error = %e, "tokens file not reloaded; the previous tokens stay in force")
            }
        }
    }

    /// Reloads on SIGHUP and whenever the file's modification time changes.
    pub fn watch(&self, path: PathBuf, poll: Duration) {
        if !self.enabled() {
            return;
        }
        let tokens = self.clone();
        tokio::spawn(async move {
            let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
            let mut seen: Option<SystemTime> = modified(&path);
            let mut hangup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            loop {
                let hup = async {
                    match hangup.as_mut() {
                        Some(signal) => signal.recv().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = hup => tokens.reload(&path),
                    () = tokio::time::sleep(poll) => {
                        let now = modified(&path);
                        if now != seen {
                            seen = now;
                            tokens.reload(&path);
                        }
                    }
                }
            }
        });
    }

    /// Interceptor: attaches the `Caller` or refuses with UNAUTHENTICATED.
    #[allow(clippy::result_large_err)]
    pub fn authenticate(&self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let Some(set) = &self.set else {
            return Ok(request);
        };
        let caller = {
            let tokens = set.read().unwrap_or_else(|p| p.into_inner());
            identify(&request, &tokens).map_err(|e| status(refused(request.extensions(), e)))?
        };
        request.extensions_mut().insert(caller);
        Ok(request)
    }

    /// The name of the request's token, for audit records ("" without authentication).
    pub fn caller_name(extensions: &tonic::Extensions) -> String {
        extensions
            .get::<Caller>()
            .map(|caller| caller.name.clone())
            .unwrap_or_default()
    }

    /// Asks again, against the tokens in force now, whether the caller may
    /// still do `access`: a long upload must not commit on a token revoked
    /// while it streamed.
    pub fn recheck(&self, extensions: &tonic::Extensions, access: Access) -> Result<(), AuthError> {
        let Some(set) = &self.set else {
            return Ok(());
        };
        let caller = extensions
            .get::<Caller>()
            .ok_or_else(|| refused(extensions, AuthError::NoCaller))?;
        let current = set
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&caller.token)
            .cloned()
            .ok_or_else(|| refused(extensions, AuthError::Revoked(caller.name.clone())))?;
        let mut now = tonic::Extensions::new();
        now.insert(current);
        self.authorize(&now, access)
    }

    /// PERMISSION_DENIED unless the request's caller may do `access`.
    pub fn authorize(
        &self,
        extensions: &tonic::Extensions,
        access: Access,
    ) -> Result<(), AuthError> {
        if !self.enabled() {
            return Ok(());
        }
        let caller = extensions
            .get::<Caller>()
            .ok_or_else(|| refused(extensions, AuthError::NoCaller))?;
        if caller.may(access) {
            Ok(())
        } else {
            Err(refused(
                extensions,
                AuthError::Denied {
                    name: caller.name.clone(),
                    role: caller.role,
                    shards: caller.shards.clone(),
                    action: describe(access),
                },
            ))
        }
    }
}

/// Every refused call is a security event: logged with the peer's address,
/// the token's name and the reason (never the secret, which no `AuthError`
/// carries).
fn refused(extensions: &tonic::Extensions, err: AuthError) -> AuthError {
    let token = extensions
        .get::<Caller>()
        .map_or("", |caller| caller.name.as_str());
    tracing::warn!(target: "security", peer = %peer(extensions), token, reason = %err, "call refused");
    err
}

/// The caller's address, over plain TCP or TLS ("unknown" over other transports).
fn peer(extensions: &tonic::Extensions) -> String {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    extensions
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|info| info.get_ref().remote_addr())
        })
        .map_or_else(|| "unknown".to_owned(), |addr| addr.to_string())
}

fn identify(request: &Request<()>, tokens: &TokenSet) -> Result<Caller, AuthError> {
    let header = request
        .metadata()
        .get("authorization")
        .ok_or(AuthError::NoToken)?;
    let token = header
        .to_str()
        .ok()
        .and_then(|value| value.strip_prefix("Bearer "))
        .ok_or(AuthError::MalformedHeader)?;
    tokens
        .get(&Digest::of(token.trim().as_bytes()))
        .cloned()
        .ok_or(AuthError::UnknownToken)
}

fn describe(access: Access) -> String {
    match access {
        Access::Push(shard) => format!("push to shard {shard}"),
        Access::Restore(shard) => format!("restore from shard {shard}"),
        Access::Read(shard) => format!("read shard {shard}"),
        Access::ReadAll => "read every shard".to_owned(),
        Access::Cancel => "cancel jobs".to_owned(),
        Access::Resolve => "resolve segments".to_owned(),
    }
}

/// Plain secrets in a file others can read are everyone's secrets.
fn warn_if_readable(path: &Path, file: &TokensFile) {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode())
        .unwrap_or(0);
    if mode & 0o077 != 0 && file.tokens.iter().any(|t| t.secret.is_some()) {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{:o}", mode & 0o777),
            "the tokens file is readable by group or others and holds plain secrets: chmod 600 it, or store each \
             secret's sha256 instead"
        );
    }
}

fn read_tokens(path: &Path) -> Result<TokenSet, TokensError> {
    let invalid = |message: String| TokensError::Invalid {
        path: path.to_owned(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|source| TokensError::Read {
        path: path.to_owned(),
        source,
    })?;
    let file: TokensFile = toml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    if file.tokens.is_empty() {
        return Err(invalid(
            "defines no tokens: every caller would be locked out (to serve without authentication, remove tokens_file)"
                .to_owned(),
        ));
    }
    warn_if_readable(path, &file);
    let mut set = TokenSet::new();
    for entry in file.tokens {
        let digest = match (&entry.sha256, &entry.secret) {
            (Some(hex), None) => hex
                .parse()
                .map_err(|e| invalid(format!("token {:?}: {e}", entry.name)))?,
            (None, Some(secret)) => Digest::of(secret.trim().as_bytes()),
            _ => {
                return Err(invalid(format!(
                    "token {:?}: give exactly one of sha256 or secret",
                    entry.name
                )));
            }
        };
        if entry.role == Role::Shard && entry.shards.is_empty() {
            return Err(invalid(format!(
                "token {:?}: a shard token needs its shards",
                entry.name
            )));
        }
        let caller = Caller {
            name: entry.name,
            role: entry.role,
            shards: entry.shards,
            token: digest,
        };
        if set.insert(digest, caller).is_some() {
            return Err(invalid("two tokens have the same secret".to_owned()));
        }
    }
    Ok(set)
}
