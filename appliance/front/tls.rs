//! TLS certificates: loading PEM pairs, choosing one per SNI name, and swapping
//! them in when their files change.
//!
//! Each instance lists its own certificates. On a handshake the SNI name is
//! routed like a `Host` header ([`VhostTable`]) to an instance, and the first of
//! its certificates valid for that name (webpki's name check, wildcards
//! included) is offered; without SNI, the default instance's first certificate.
//! Reloading builds new [`CertifiedKey`]s and swaps them atomically, so
//! established connections keep theirs and new handshakes get the new ones.
//! It reads only the configured certificate and key files.

use super::vhost::VhostTable;
use crate::config::TlsCertConfig;
use arc_swap::ArcSwap;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: no PEM certificate found")]
    NoCert(PathBuf),
    #[error("{0}: no PEM private key found (PKCS#8, PKCS#1 or SEC1)")]
    NoKey(PathBuf),
    #[error("{path}: unusable private key: {problem}")]
    BadKey { path: PathBuf, problem: String },
    #[error("{key}: the private key does not match the certificate {cert}")]
    Mismatch { cert: PathBuf, key: PathBuf },
}

/// Load one certificate chain and its private key.
pub fn load_pair(pair: &TlsCertConfig) -> Result<CertifiedKey, TlsError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| TlsError::Read {
            path: p.to_path_buf(),
            source,
        })
    };
    let cert_pem = read(&pair.cert)?;
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(TlsError::NoCert(pair.cert.clone()));
    }
    let key_pem = read(&pair.key)?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .ok()
        .flatten()
        .ok_or_else(|| TlsError::NoKey(pair.key.clone()))?;
    let signer =
        rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| TlsError::BadKey {
            path: pair.key.clone(),
            problem: e.to_string(),
        })?;
    let ck = CertifiedKey::new(chain, signer);
    if ck.keys_match().is_err() {
        return Err(TlsError::Mismatch {
            cert: pair.cert.clone(),
            key: pair.key.clone(),
        });
    }
    Ok(ck)
}

/// Does this certificate cover `name`? (webpki's RFC 6125 check.)
fn covers(ck: &CertifiedKey, name: &ServerName<'_>) -> bool {
    let Some(leaf) = ck.cert.first() else {
        return false;
    };
    match webpki::EndEntityCert::try_from(leaf) {
        Ok(ee) => ee.verify_is_valid_for_subject_name(name).is_ok(),
        Err(_) => false,
    }
}

/// The certificates of every site, indexed like the sites, hot-swappable.
#[derive(Debug)]
pub struct CertStore {
    files: Vec<Vec<TlsCertConfig>>,
    loaded: ArcSwap<Vec<Vec<Arc<CertifiedKey>>>>,
    stamps: std::sync::Mutex<Vec<Vec<Stamp>>>,
    vhosts: VhostTable,
}

impl CertStore {
    /// Load every site's certificates now; any failure is returned with its file.
    pub fn load(files: Vec<Vec<TlsCertConfig>>, vhosts: VhostTable) -> Result<Self, TlsError> {
        let mut loaded = Vec::new();
        for site in &files {
            let mut v = Vec::new();
            for pair in site {
                v.push(Arc::new(load_pair(pair)?));
            }
            loaded.push(v);
        }
        let stamps = files
            .iter()
            .map(|site| site.iter().map(stamp).collect())
            .collect();
        Ok(Self {
            files,
            loaded: ArcSwap::from_pointee(loaded),
            stamps: std::sync::Mutex::new(stamps),
            vhosts,
        })
    }

    /// Each loaded certificate's site index, file and expiry (`notAfter`,
    /// unix seconds; `None` if its DER does not parse), for `/metrics`.
    pub fn expiries(&self) -> Vec<(usize, PathBuf, Option<i64>)> {
        let loaded = self.loaded.load();
        let mut out = Vec::new();
        for (site, (files, keys)) in self.files.iter().zip(loaded.iter()).enumerate() {
            for (pair, ck) in files.iter().zip(keys) {
                let not_after = ck.cert.first().and_then(|der| {
                    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
                    Some(cert.validity().not_after.timestamp())
                });
                out.push((site, pair.cert.clone(), not_after));
            }
        }
        out
    }

    /// Whether any site has a certificate (so HTTPS listeners are needed).
    pub fn any(&self) -> bool {
        self.files.iter().any(|f| !f.is_empty())
    }

    /// Whether the site has a certificate (then plain HTTP redirects to HTTPS).
    pub fn site_has_cert(&self, site: usize) -> bool {
        self.files.get(site).is_some_and(|f| !f.is_empty())
    }

    /// Reload every pair whose cert or key file changed since the last look.
    /// A pair that fails to load keeps its previous certificate; the error is
    /// returned for logging. Returns how many pairs were swapped in.
    pub fn reload_changed(&self) -> (usize, Vec<TlsError>) {
        let Ok(mut stamps) = self.stamps.lock() else {
            return (0, Vec::new());
        };
        let current = self.loaded.load_full();
        let mut next = (*current).clone();
        let (mut swapped, mut errors) = (0, Vec::new());
        for (s, site) in self.files.iter().enumerate() {
            for (i, pair) in site.iter().enumerate() {
                let now = stamp(pair);
                if now.is_none() || now == stamps[s][i] {
                    continue;
                }
                match load_pair(pair) {
                    Ok(ck) => {
                        next[s][i] = Arc::new(ck);
                        stamps[s][i] = now;
                        swapped += 1;
                    }
                    Err(e) => errors.push(e),
                }
            }
        }
        if swapped > 0 {
            self.loaded.store(Arc::new(next));
        }
        (swapped, errors)
    }

    fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let all = self.loaded.load();
        let site = match sni {
            Some(name) => self.vhosts.lookup(name),
            None => self.vhosts.default_target(),
        };
        let from_site = site.and_then(|s| all.get(s)).filter(|c| !c.is_empty());
        let candidates = match from_site {
            Some(c) => c,
            // No site for this name: any certificate that covers it, else the first one.
            None => all.iter().find(|c| !c.is_empty())?,
        };
        if let Some(name) = sni.and_then(|n| ServerName::try_from(n.to_string()).ok()) {
            if let Some(ck) = candidates.iter().find(|ck| covers(ck, &name)) {
                return Some(ck.clone());
            }
            if from_site.is_none() {
                if let Some(ck) = all.iter().flatten().find(|ck| covers(ck, &name)) {
                    return Some(ck.clone());
                }
            }
        }
        candidates.first().cloned()
    }
}

/// Modification times of a pair's cert and key files, when both exist.
type Stamp = Option<(SystemTime, SystemTime)>;

fn stamp(pair: &TlsCertConfig) -> Stamp {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Some((m(&pair.cert)?, m(&pair.key)?))
}

/// rustls's hook: the certificate for a ClientHello.
#[derive(Debug)]
pub struct Resolver(pub Arc<CertStore>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.pick(hello.server_name())
    }
}
