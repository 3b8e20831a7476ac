//! TLS termination: certificates from PEM files, picked by the name the
//! client asks for (SNI), reloaded when their files change.
//!
//! Each route may name a certificate for its hosts; the default one (from
//! the agent's configuration) serves every other name, and clients that
//! send no name. A handshake reads the current set through one lock-free
//! pointer swap, so a reload never touches a connection already open: new
//! handshakes get the new certificate, established ones keep theirs.
//!
//! Files are checked every [`POLL`] (modification time and size) and on
//! [`Certs::reload`] (SIGHUP). A pair that fails to load keeps serving its
//! last good certificate, and the error names the file; a pair never
//! loaded is left out (its names get the default certificate) until it
//! loads. Certificates from an ACME client would be one more source of
//! pairs here.

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

/// How often certificate files are checked for changes.
pub const POLL: Duration = Duration::from_secs(2);

/// A PEM file larger than this is not a certificate chain or key.
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// A certificate chain and its private key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What a file looked like when it was read.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

fn read_pem(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut buf = Vec::new();
    f.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if buf.len() as u64 > MAX_PEM_BYTES {
        return Err(format!(
            "{}: larger than {MAX_PEM_BYTES} bytes",
            path.display()
        ));
    }
    Ok(buf)
}

/// Loads and checks one pair: a chain of at least one certificate, a key
/// the provider accepts, and the key matching the first certificate.
pub fn load(files: &CertFiles, provider: &CryptoProvider) -> Result<CertifiedKey, String> {
    let pem = read_pem(&files.cert)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", files.cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{}: no PEM certificate in the file",
            files.cert.display()
        ));
    }
    let pem = read_pem(&files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| format!("{}: no usable PEM private key ({e})", files.key.display()))?;
    CertifiedKey::from_der(chain, key, provider)
        .map_err(|e| format!("{} and {}: {e}", files.cert.display(), files.key.display()))
}

/// One loaded pair and the stamps of its files then.
struct Entry {
    stamps: (Stamp, Stamp),
    key: Arc<CertifiedKey>,
}

/// Which certificate answers which name: built from the routes and the
/// loaded pairs, replaced whole.
#[derive(Default)]
struct Lookup {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `.example.com` for `*.example.com`, longest first.
    suffixes: Vec<(String, Arc<CertifiedKey>)>,
    default: Option<Arc<CertifiedKey>>,
}

impl Lookup {
    fn find(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = name else {
            return self.default.clone();
        };
        let name = name.to_ascii_lowercase();
        if let Some(k) = self.exact.get(&name) {
            return Some(Arc::clone(k));
        }
        self.suffixes
            .iter()
            .find(|(s, _)| name.ends_with(s.as_str()) && name.len() > s.len())
            .map(|(_, k)| Arc::clone(k))
            .or_else(|| self.default.clone())
    }
}

/// What certificates are wanted: the default and each route's.
#[derive(Default, Clone, PartialEq, Eq)]
struct Wanted {
    default: Option<CertFiles>,
    /// (host names, pair) per route that names a certificate.
    routes: Vec<(Vec<String>, CertFiles)>,
}

/// The proxy's certificates.
pub struct Certs {
    provider: Arc<CryptoProvider>,
    wanted: Mutex<Wanted>,
    loaded: Mutex<HashMap<CertFiles, Entry>>,
    lookup: RwLock<Arc<Lookup>>,
}

impl std::fmt::Debug for Certs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certs").finish_non_exhaustive()
    }
}

impl Certs {
    /// Certificates with `default` answering names no route claims.
    /// Fails when the default pair does not load: a TLS listener without
    /// its certificate is a configuration error, found at start.
    pub fn new(default: Option<CertFiles>) -> Result<Certs, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs = Certs {
            provider,
            wanted: Mutex::new(Wanted {
                default,
                routes: Vec::new(),
            }),
            loaded: Mutex::new(HashMap::new()),
            lookup: RwLock::new(Arc::new(Lookup::default())),
        };
        // Only the default is wanted yet: any failure is its.
        match certs.refresh(false, true).into_iter().next() {
            Some(why) => Err(why),
            None => Ok(certs),
        }
    }

    /// The routes' certificates changed: `(hosts, pair)` per route.
    pub(crate) fn set_routes(&self, routes: Vec<(Vec<String>, CertFiles)>) {
        {
            let mut w = crate::sync::lock(&self.wanted);
            if w.routes == routes {
                return;
            }
            w.routes = routes;
        }
        self.refresh(false, true);
    }

    /// Reads every file again (SIGHUP).
    pub fn reload(&self) {
        self.refresh(true, true);
    }

    /// Loads the pairs whose files changed (all of them with `reread`) and
    /// rebuilds the lookup when a pair changed or `wanted_changed`.
    /// Returns why each pair that failed did.
    pub(crate) fn refresh(&self, reread: bool, wanted_changed: bool) -> Vec<String> {
        // `loaded` first: refreshes run one at a time, each reading what is
        // wanted then, so the last one builds from the latest routes.
        let mut loaded = crate::sync::lock(&self.loaded);
        let wanted = crate::sync::lock(&self.wanted).clone();
        let mut pairs: Vec<&CertFiles> = wanted.routes.iter().map(|(_, f)| f).collect();
        pairs.extend(wanted.default.iter());
        let mut failed = Vec::new();
        let mut changed = wanted_changed;
        for files in &pairs {
            let stamps = (stamp(&files.cert), stamp(&files.key));
            let current = loaded.get(*files);
            if !reread && current.is_some_and(|e| e.stamps == stamps) {
                continue;
            }
            match load(files, &self.provider) {
                Ok(key) => {
                    tracing::info!(cert = %files.cert.display(), "TLS certificate loaded");
                    loaded.insert(
                        (*files).clone(),
                        Entry {
                            stamps,
                            key: Arc::new(key),
                        },
                    );
                    changed = true;
                }
                Err(why) => {
                    let keeps = current.is_some();
                    tracing::error!(cause = %why, keeps_previous = keeps, "TLS certificate not loaded");
                    failed.push(why);
                    // Not again until the files change once more.
                    if let Some(e) = loaded.get_mut(*files) {
                        e.stamps = stamps;
                    }
                }
            }
        }
        let before = loaded.len();
        loaded.retain(|f, _| pairs.contains(&f));
        if !changed && loaded.len() == before {
            return failed;
        }
        let mut lookup = Lookup {
            default: wanted
                .default
                .as_ref()
                .and_then(|d| loaded.get(d))
                .map(|e| Arc::clone(&e.key)),
            ..Lookup::default()
        };
        for (hosts, files) in &wanted.routes {
            let Some(e) = loaded.get(files) else { continue };
            for h in hosts {
                match h.strip_prefix('*') {
                    Some(suffix) => lookup
                        .suffixes
                        .push((suffix.to_string(), Arc::clone(&e.key))),
                    None => {
                        lookup.exact.insert(h.clone(), Arc::clone(&e.key));
                    }
                }
            }
        }
        lookup
            .suffixes
            .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        drop(loaded);
        *crate::sync::write(&self.lookup) = Arc::new(lookup);
        failed
    }

    /// The server configuration for TLS listeners: TLS 1.2 and 1.3 only,
    /// the provider's AEAD suites, ALPN `h2` (when `http2`) and
    /// `http/1.1`, session resumption by tickets and by ID.
    pub fn server_config(self: &Arc<Self>, http2: bool) -> Result<rustls::ServerConfig, String> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(Arc::clone(self))));
        cfg.alpn_protocols = if http2 {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        cfg.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| e.to_string())?;
        Ok(cfg)
    }

    /// Checks the files every [`POLL`] for as long as the proxy lives.
    pub(crate) async fn watch_files(certs: std::sync::Weak<Certs>) {
        loop {
            tokio::time::sleep(POLL).await;
            let Some(c) = certs.upgrade() else { return };
            // Metadata and PEM parsing are blocking file work.
            let _ = tokio::task::spawn_blocking(move || c.refresh(false, false)).await;
        }
    }
}

#[derive(Debug)]
struct Resolver(Arc<Certs>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let lookup = Arc::clone(&crate::sync::read(&self.0.lookup));
        lookup.find(hello.server_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> Arc<CertifiedKey> {
        // Never used to sign here: any key type will do as a marker.
        struct Marker(u8);
        impl std::fmt::Debug for Marker {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "Marker({})", self.0)
            }
        }
        impl rustls::sign::SigningKey for Marker {
            fn choose_scheme(
                &self,
                _: &[rustls::SignatureScheme],
            ) -> Option<Box<dyn rustls::sign::Signer>> {
                None
            }
            fn algorithm(&self) -> rustls::SignatureAlgorithm {
                rustls::SignatureAlgorithm::ECDSA
            }
        }
        Arc::new(CertifiedKey::new(
            vec![CertificateDer::from(vec![n])],
            Arc::new(Marker(n)),
        ))
    }

    fn which(l: &Lookup, name: Option<&str>) -> Option<u8> {
        l.find(name).map(|k| k.cert[0].as_ref()[0])
    }

    #[test]
    fn exact_names_beat_wildcards_which_beat_the_default() {
        let mut l = Lookup {
            default: Some(key(0)),
            ..Lookup::default()
        };
        l.exact.insert("shop.example.com".into(), key(1));
        l.suffixes.push((".api.example.com".into(), key(3)));
        l.suffixes.push((".example.com".into(), key(2)));
        assert_eq!(which(&l, Some("shop.example.com")), Some(1));
        assert_eq!(which(&l, Some("SHOP.example.com")), Some(1));
        assert_eq!(which(&l, Some("www.example.com")), Some(2));
        assert_eq!(which(&l, Some("v1.api.example.com")), Some(3));
        assert_eq!(which(&l, Some("example.com")), Some(0), "*. needs a label");
        assert_eq!(which(&l, Some("other.org")), Some(0));
        assert_eq!(which(&l, None), Some(0), "no SNI: the default");
        let empty = Lookup::default();
        assert_eq!(which(&empty, Some("x")), None, "nothing: no handshake");
    }

    #[test]
    fn bad_files_are_errors_naming_the_file() {
        let dir = std::env::temp_dir().join(format!("dockhand-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cert = dir.join("c.pem");
        let keyf = dir.join("k.pem");
        std::fs::write(&cert, "not pem\n").unwrap();
        std::fs::write(&keyf, "not pem either\n").unwrap();
        let provider = rustls::crypto::ring::default_provider();
        let files = CertFiles {
            cert: cert.clone(),
            key: keyf.clone(),
        };
        let e = load(&files, &provider).unwrap_err();
        assert!(
            e.contains("c.pem") && e.contains("no PEM certificate"),
            "{e}"
        );
        let missing = CertFiles {
            cert: dir.join("missing.pem"),
            key: keyf,
        };
        let e = load(&missing, &provider).unwrap_err();
        assert!(e.contains("missing.pem"), "{e}");
        let e = Certs::new(Some(files)).unwrap_err();
        assert!(e.contains("c.pem"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
