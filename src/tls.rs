//! TLS, set up in one place: for outgoing connections the upstream client and the OTLP exporter
//! trust the same roots (`[upstream] tls_roots`, `extra_ca_file`); for the gateway's own
//! listeners, the certificate of `[tls]`, swapped on reload.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use rustls::{
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

use crate::config::{TlsConfig, TlsRoots, UpstreamConfig};

/// The TLS settings for outgoing connections: to providers and to the OTLP collector.
pub fn client_config(cfg: &UpstreamConfig) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    if matches!(cfg.tls_roots, TlsRoots::Webpki | TlsRoots::Both) {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if matches!(cfg.tls_roots, TlsRoots::Native | TlsRoots::Both) {
        let native = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(native.certs);
        if added == 0 {
            return Err(format!(
                "upstream.tls_roots includes native, but no certificate could be loaded from the system store ({} errors)",
                native.errors.len()
            ));
        }
    }
    if let Some(path) = &cfg.extra_ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("upstream.extra_ca_file {}: {e}", path.display()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("upstream.extra_ca_file {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "upstream.extra_ca_file {}: no certificate in it",
                path.display()
            ));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("upstream.extra_ca_file {}: {e}", path.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The certificate the listeners serve, swapped whole on reload (SIGHUP): handshakes after the
/// swap get the new one, connections already open keep theirs.
#[derive(Debug)]
pub struct ServerCerts {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ServerCerts {
    /// Reads and checks the PEM files (the chain, leaf first, and its private key).
    pub fn load(cfg: &TlsConfig) -> Result<Option<Arc<ServerCerts>>, String> {
        let (Some(cert_file), Some(key_file)) = (&cfg.cert_file, &cfg.key_file) else {
            return match (&cfg.cert_file, &cfg.key_file) {
                (None, None) => Ok(None),
                _ => Err("tls.cert_file and tls.key_file go together: set both or neither".into()),
            };
        };
        let key = certified_key(cert_file, key_file)?;
        Ok(Some(Arc::new(ServerCerts {
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
            current: RwLock::new(Arc::new(key)),
        })))
    }

    /// Reads the same files again; on any error the old certificate stays.
    pub fn reload(&self) -> Result<(), String> {
        let key = certified_key(&self.cert_file, &self.key_file)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
        Ok(())
    }

    /// A rustls server config over these certificates: TLS 1.2 and 1.3, ALPN h2 then
    /// http/1.1 (hyper's auto builder serves whichever the client chose).
    pub fn server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

impl ResolvesServerCert for ServerCerts {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

fn certified_key(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, String> {
    let certs = CertificateDer::pem_file_iter(cert_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("tls.cert_file {}: {e}", cert_file.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "tls.cert_file {}: no certificate in it",
            cert_file.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| format!("tls.key_file {}: {e}", key_file.display()))?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("tls.key_file {}: {e}", key_file.display()))?;
    let key = CertifiedKey::new(certs, signing);
    key.keys_match().map_err(|e| {
        format!(
            "tls.key_file {} does not belong to tls.cert_file {}: {e}",
            key_file.display(),
            cert_file.display()
        )
    })?;
    Ok(key)
}
