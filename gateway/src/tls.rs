//! TLS for the web service: rustls with the ring provider. The certificate
//! comes from PEM files the admin configured, or — when none are configured —
//! from a self-signed certificate generated once in the data directory and
//! reused after (devices are given that file to trust).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::settings::TlsSource;

/// The certificate in use and where it came from.
pub struct TlsMaterial {
    pub config: Arc<ServerConfig>,
    pub cert_path: PathBuf,
    pub generated: bool,
}

/// Loads or generates the certificate for an instance.
pub fn load(
    source: &TlsSource,
    tls_dir: &Path,
    instance: &str,
    hostnames: &[String],
) -> anyhow::Result<TlsMaterial> {
    let (cert_path, key_path, generated) = match source {
        TlsSource::Files { cert, key } => (cert.clone(), key.clone(), false),
        TlsSource::SelfSigned => {
            let cert = tls_dir.join(format!("{instance}.cert.pem"));
            let key = tls_dir.join(format!("{instance}.key.pem"));
            let generated = !(cert.exists() && key.exists());
            if generated {
                generate_self_signed(&cert, &key, hostnames)?;
            }
            (cert, key, generated)
        }
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .with_context(|| format!("cannot read certificate {}", cert_path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("certificate file {} is not valid PEM", cert_path.display()))?;
    if certs.is_empty() {
        bail!(
            "certificate file {} holds no certificate",
            cert_path.display()
        );
    }
    let key = PrivateKeyDer::from_pem_file(&key_path).with_context(|| {
        format!(
            "cannot read a private key from {} — it must be a PEM file with one PKCS#8, PKCS#1 or SEC1 key",
            key_path.display()
        )
    })?;
    let config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .with_context(|| {
                format!(
                    "the certificate {} and key {} do not form a usable pair",
                    cert_path.display(),
                    key_path.display()
                )
            })?;
    Ok(TlsMaterial {
        config: Arc::new(config),
        cert_path,
        generated,
    })
}

fn generate_self_signed(cert: &Path, key: &Path, hostnames: &[String]) -> anyhow::Result<()> {
    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    for h in hostnames {
        if !names.contains(h) {
            names.push(h.clone());
        }
    }
    let certified = rcgen::generate_simple_self_signed(names)
        .context("generating a self-signed certificate")?;
    if let Some(dir) = cert.parent() {
        plugins::fsutil::create_private_dir_all(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    write_private(key, certified.signing_key.serialize_pem().as_bytes())
        .with_context(|| format!("cannot write {}", key.display()))?;
    // The certificate is public, but it lives among private files: the same
    // mode, so the data directory has one rule. Devices get it from an admin.
    write_private(cert, certified.cert.pem().as_bytes())
        .with_context(|| format!("cannot write {}", cert.display()))?;
    Ok(())
}

/// Writes a file readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_is_generated_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = load(&TlsSource::SelfSigned, dir.path(), "gw1", &[]).unwrap();
        assert!(a.generated);
        let first = std::fs::read(&a.cert_path).unwrap();
        let b = load(&TlsSource::SelfSigned, dir.path(), "gw1", &[]).unwrap();
        assert!(!b.generated);
        assert_eq!(std::fs::read(&b.cert_path).unwrap(), first);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("gw1.key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn bad_files_say_which_and_why() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("c.pem");
        let key = dir.path().join("k.pem");
        std::fs::write(&cert, "not pem").unwrap();
        std::fs::write(&key, "not pem").unwrap();
        let err = load(
            &TlsSource::Files {
                cert: cert.clone(),
                key,
            },
            dir.path(),
            "gw1",
            &[],
        )
        .err()
        .unwrap();
        assert!(format!("{err:#}").contains("c.pem"), "{err:#}");
        let missing = TlsSource::Files {
            cert: dir.path().join("nope.pem"),
            key: dir.path().join("nope.key"),
        };
        let err = load(&missing, dir.path(), "gw1", &[]).err().unwrap();
        assert!(
            format!("{err:#}").contains("cannot read certificate"),
            "{err:#}"
        );
    }
}
