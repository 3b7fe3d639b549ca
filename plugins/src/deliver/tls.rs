//! Trust roots for the deliveries' TLS clients: the system's CA bundle, or
//! only the certificates of a configured `ca_file` (a private CA). It must
//! not open connections.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// Where Debian's `ca-certificates` package keeps the system's trusted CAs.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Reads every certificate of a PEM file, refusing a file with none.
pub fn read_pem_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = std::fs::read(path).map_err(|e| {
        format!(
            "cannot read {}: {}",
            path.display(),
            crate::fsutil::io_cause(&e)
        )
    })?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// The roots a client trusts: the configured CA certificates only, or the
/// system bundle when none are configured.
pub fn root_store(ca: Option<&[CertificateDer<'static>]>) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    match ca {
        Some(certs) => {
            for cert in certs {
                store
                    .add(cert.clone())
                    .map_err(|e| format!("the CA certificate cannot be used: {e}"))?;
            }
        }
        None => {
            let certs = read_pem_certificates(Path::new(SYSTEM_CA_BUNDLE))
                .map_err(|e| format!("{e}; install ca-certificates or set `ca_file`"))?;
            // Some bundles carry certificates rustls rejects; skip those.
            store.add_parsable_certificates(certs);
        }
    }
    Ok(store)
}

/// A rustls client configuration on the ring provider (the only one this
/// product builds with), trusting `roots`.
pub fn client_config(roots: RootCertStore) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
