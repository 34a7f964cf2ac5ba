//! TLS to Redis (feature `tls`): rustls with the ring provider, configured from our own settings.
//!
//! A `rediss://` (or `rediss-cluster://`, `rediss-sentinel://`, `valkeys://`) URL turns TLS on.
//! Without a CA file the system's trusted roots are used. Every TLS option given for a URL that
//! does not ask for TLS is an error, and so is a TLS URL without the `tls` feature: fred would
//! otherwise connect in plain text after a log line.

use std::path::PathBuf;

use fred::prelude::Config;

use crate::error::{Error, Result};

/// The TLS settings of a [`RedisCacheBuilder`](super::RedisCacheBuilder).
#[derive(Debug, Default, Clone)]
pub(crate) struct TlsSettings {
    pub(crate) ca_file: Option<PathBuf>,
    pub(crate) client_cert: Option<(PathBuf, PathBuf)>,
    pub(crate) server_name: Option<String>,
}

impl TlsSettings {
    fn any(&self) -> bool {
        self.ca_file.is_some() || self.client_cert.is_some() || self.server_name.is_some()
    }
}

/// Whether `url` asks for TLS.
pub(crate) fn url_uses_tls(url: &str) -> bool {
    let scheme = url.split("://").next().unwrap_or("").to_ascii_lowercase();
    scheme.starts_with("rediss") || scheme.starts_with("valkeys")
}

/// `url` with its TLS scheme replaced by the plain one (`rediss-cluster://` →
/// `redis-cluster://`): TLS is set up by [`apply`], not by the client's URL parser (which would
/// load the system's roots, or silently connect in plain text without a TLS feature).
pub(crate) fn plain_scheme(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let lower = scheme.to_ascii_lowercase();
    let plain = if let Some(tail) = lower.strip_prefix("rediss") {
        format!("redis{tail}")
    } else if let Some(tail) = lower.strip_prefix("valkeys") {
        format!("valkey{tail}")
    } else {
        return url.to_owned();
    };
    format!("{plain}://{rest}")
}

/// Check the settings against the URL and, with the `tls` feature, set up `config`.
pub(crate) fn apply(config: &mut Config, url: &str, settings: &TlsSettings) -> Result<()> {
    let wanted = url_uses_tls(url);
    if !wanted {
        if settings.any() {
            return Err(Error::config(
                "TLS options were set but the URL does not ask for TLS (use rediss://)",
            ));
        }
        return Ok(());
    }
    configure(config, settings)
}

#[cfg(not(feature = "tls"))]
fn configure(_config: &mut Config, _settings: &TlsSettings) -> Result<()> {
    Err(Error::config(
        "a rediss:// URL needs the `tls` feature of layercache",
    ))
}

#[cfg(feature = "tls")]
fn configure(config: &mut Config, settings: &TlsSettings) -> Result<()> {
    use std::sync::Arc;

    use fred::prelude::ServerConfig;
    use fred::types::config::{TlsConfig, TlsHostMapping};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let read_certs = |path: &PathBuf, what: &str| -> Result<Vec<CertificateDer<'static>>> {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
            .map_err(|e| {
                Error::config(format!("cannot read the {what} {}: {e}", path.display()))
            })?;
        if certs.is_empty() {
            return Err(Error::config(format!(
                "the {what} {} holds no PEM certificate",
                path.display()
            )));
        }
        Ok(certs)
    };

    let mut roots = rustls::RootCertStore::empty();
    match &settings.ca_file {
        Some(path) => {
            for cert in read_certs(path, "CA file")? {
                roots.add(cert).map_err(|e| {
                    Error::config(format!("the CA file {} is not usable: {e}", path.display()))
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                // A system certificate rustls cannot parse is skipped, as browsers do.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(Error::config(
                    "no trusted root certificates found on this system; give a CA file",
                ));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::config(format!("TLS setup failed: {e}")))?
        .with_root_certificates(roots);
    let client = match &settings.client_cert {
        Some((cert, key)) => {
            let chain = read_certs(cert, "client certificate")?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                Error::config(format!("cannot read the client key {}: {e}", key.display()))
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| Error::config(format!("the client certificate is not usable: {e}")))?
        }
        None => builder.with_no_client_auth(),
    };
    config.tls = Some(TlsConfig {
        connector: client.into(),
        hostnames: TlsHostMapping::None,
    });
    if let Some(name) = &settings.server_name {
        let servers = match &mut config.server {
            ServerConfig::Centralized { server } => std::slice::from_mut(server),
            ServerConfig::Clustered { hosts, .. } => hosts.as_mut_slice(),
            ServerConfig::Sentinel { hosts, .. } => hosts.as_mut_slice(),
            #[allow(unreachable_patterns)]
            _ => &mut [],
        };
        for server in servers {
            server.tls_server_name = Some(name.as_str().into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_urls_are_recognised() {
        assert!(url_uses_tls("rediss://h:6380"));
        assert!(url_uses_tls("REDISS-cluster://h:6380"));
        assert!(url_uses_tls("valkeys://h"));
        assert!(!url_uses_tls("redis://h"));
        assert!(!url_uses_tls("redis-sentinel://h"));
        assert_eq!(
            plain_scheme("rediss-cluster://h:1?node=g:2"),
            "redis-cluster://h:1?node=g:2"
        );
        assert_eq!(plain_scheme("valkeys://h"), "valkey://h");
        assert_eq!(plain_scheme("redis://h"), "redis://h");
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn a_tls_url_without_the_feature_is_an_error_not_plain_text() {
        let mut config = Config::default();
        assert!(matches!(
            apply(
                &mut config,
                "rediss://127.0.0.1:6380",
                &TlsSettings::default()
            ),
            Err(Error::Config { .. })
        ));
    }

    #[test]
    fn tls_options_without_a_tls_url_are_an_error() {
        let mut config = Config::default();
        let settings = TlsSettings {
            server_name: Some("localhost".into()),
            ..TlsSettings::default()
        };
        assert!(matches!(
            apply(&mut config, "redis://127.0.0.1:6379", &settings),
            Err(Error::Config { .. })
        ));
    }
}
