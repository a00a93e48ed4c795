//! TLS for the gateway's outgoing connections, set up in one place: the upstream client and the
//! OTLP exporter trust the same roots (`[upstream] tls_roots`, `extra_ca_file`).

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, pem::PemObject};

use crate::config::{TlsRoots, UpstreamConfig};

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
