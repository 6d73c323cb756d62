//! TLS files read and checked before tonic is given them, by the server and
//! the client alike. tonic only says `transport error` about a bad file; here
//! each problem names the file and what is wrong with it: unreadable, no PEM
//! certificate or key in it, a certificate rustls cannot use (an X.509 v1
//! certificate without extensions, say), or a key that is not the
//! certificate's.

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} holds no PEM certificate (a -----BEGIN CERTIFICATE----- block){detail}", path.display())]
    NoCertificate { path: PathBuf, detail: String },
    #[error("{} holds no PEM private key (a -----BEGIN PRIVATE KEY-----, RSA or EC PRIVATE KEY block){detail}", path.display())]
    NoKey { path: PathBuf, detail: String },
    #[error("{} is not the private key of the certificate in {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("the certificate in {} with the key in {} cannot be used: {message}", cert.display(), key.display())]
    Unusable {
        cert: PathBuf,
        key: PathBuf,
        message: String,
    },
}

/// A PEM bundle of one or more certificates (a CA, or a certificate chain).
pub fn read_certificates(path: &Path) -> Result<Vec<u8>, TlsFileError> {
    let pem = read(path)?;
    let no_certificate = |detail: String| TlsFileError::NoCertificate {
        path: path.to_owned(),
        detail,
    };
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| no_certificate(format!(": {e}")))?;
    if certificates.is_empty() {
        return Err(no_certificate(String::new()));
    }
    Ok(pem)
}

/// A certificate chain and its private key, checked to belong together.
/// Returns the two files' PEM text.
pub fn read_identity(cert: &Path, key: &Path) -> Result<(Vec<u8>, Vec<u8>), TlsFileError> {
    let cert_pem = read_certificates(cert)?;
    let key_pem = read(key)?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsFileError::NoKey {
        path: key.to_owned(),
        detail: match e {
            rustls::pki_types::pem::Error::NoItemsFound => String::new(),
            other => format!(": {other}"),
        },
    })?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .unwrap_or_default();
    let provider = rustls::crypto::ring::default_provider();
    match rustls::sign::CertifiedKey::from_der(chain, key_der, &provider) {
        Ok(_) => Ok((cert_pem, key_pem)),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(TlsFileError::KeyMismatch {
                cert: cert.to_owned(),
                key: key.to_owned(),
            })
        }
        Err(e) => Err(TlsFileError::Unusable {
            cert: cert.to_owned(),
            key: key.to_owned(),
            message: e.to_string(),
        }),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|source| TlsFileError::Read {
        path: path.to_owned(),
        source,
    })
}
