//! Mutual TLS for every cluster connection (rustls 0.23 on aws-lc-rs, the one crypto provider of
//! the whole binary), configured here rather than by tonic, so that:
//! - a server verifies client certificates against the cluster's CA only, and accepts a client
//!   without one only for the bootstrap calls (each call checks: see `transport`);
//! - a node's own certificate is picked up anew after each renewal, without a restart (the
//!   resolver holds the current one);
//! - a client verifies that it talks to a manager of its cluster: the server's certificate must
//!   chain to the cluster's CA and name `bulkhead-manager`.
//!
//! TLS 1.3 only; ALPN h2 (gRPC).

use std::sync::{Arc, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::pki_types::UnixTime;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::pki::Error;

type Result<T> = std::result::Result<T, Error>;

/// The name every manager's certificate carries, and the one clients ask for.
pub const MANAGER_NAME: &str = "bulkhead-manager";

/// aws-lc-rs, as everywhere in bulkhead.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn bad(what: &str) -> impl Fn(rustls::Error) -> Error + '_ {
    move |e| Error::Invalid(format!("{what}: {e}"))
}

/// Certificates in a PEM text, in order.
pub fn certs(pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    let out: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::Invalid(format!("PEM certificates: {e}")))?;
    if out.is_empty() {
        return Err(Error::Invalid("no certificate in the PEM text".into()));
    }
    Ok(out)
}

/// The PEM blocks of a text of certificates, each as its own text.
pub fn pem_blocks(pem: &str) -> Vec<String> {
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = pem;
    while let (Some(b), Some(e)) = (rest.find("-----BEGIN CERTIFICATE-----"), rest.find(END)) {
        if e < b {
            rest = &rest[e + END.len()..];
            continue;
        }
        out.push(format!("{}\n", &rest[b..e + END.len()]));
        rest = &rest[e + END.len()..];
    }
    out
}

fn roots(ca_pem: &str) -> Result<Arc<RootCertStore>> {
    let mut r = RootCertStore::empty();
    for c in certs(ca_pem)? {
        r.add(c).map_err(bad("the cluster CA"))?;
    }
    Ok(Arc::new(r))
}

/// A node's certificate and key, replaced in place when it renews.
#[derive(Debug)]
pub struct Identity {
    current: RwLock<Arc<CertifiedKey>>,
}

impl Identity {
    /// From the node's certificate chain (PEM) and its key (PKCS#8 PEM).
    pub fn new(cert_pem: &str, key_pem: &str) -> Result<Arc<Identity>> {
        Ok(Arc::new(Identity {
            current: RwLock::new(Arc::new(certified(cert_pem, key_pem)?)),
        }))
    }

    /// Uses a renewed certificate and key from now on (connections made before keep theirs).
    pub fn replace(&self, cert_pem: &str, key_pem: &str) -> Result<()> {
        *self.current.write().expect("not poisoned") = Arc::new(certified(cert_pem, key_pem)?);
        Ok(())
    }

    fn get(&self) -> Arc<CertifiedKey> {
        self.current.read().expect("not poisoned").clone()
    }
}

fn certified(cert_pem: &str, key_pem: &str) -> Result<CertifiedKey> {
    use rustls::pki_types::pem::PemObject;
    let key = PrivatePkcs8KeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| Error::Invalid(format!("the node's key: {e}")))?;
    let signer = provider()
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(key))
        .map_err(bad("the node's key"))?;
    let ck = CertifiedKey::new(certs(cert_pem)?, signer);
    ck.keys_match().map_err(bad("the node's certificate and key"))?;
    Ok(ck)
}

impl ResolvesServerCert for Identity {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

impl ResolvesClientCert for Identity {
    fn resolve(&self, _root_hint_subjects: &[&[u8]], _sigschemes: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The roots a node trusts: the cluster's CA, and during a CA rotation the old root and the
/// new one. Replaced in place when they change (a rotation starts or ends), for the server and
/// the client side alike, without a restart: the configurations below ask it on every
/// handshake.
#[derive(Debug)]
pub struct Trust {
    current: RwLock<Roots>,
    /// Serials of certificates removed from the cluster, as managers said at check-ins: a
    /// server presenting one is refused.
    denied: RwLock<std::collections::BTreeSet<String>>,
}

/// The roots (PEM) and the verifiers made from them.
type Roots = (String, Arc<dyn ClientCertVerifier>, Arc<dyn ServerCertVerifier>);

fn verifiers(ca_pem: &str) -> Result<(Arc<dyn ClientCertVerifier>, Arc<dyn ServerCertVerifier>)> {
    let r = roots(ca_pem)?;
    let client = WebPkiClientVerifier::builder_with_provider(r.clone(), provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| Error::Invalid(format!("client verifier: {e}")))?;
    let server = rustls::client::WebPkiServerVerifier::builder_with_provider(r, provider())
        .build()
        .map_err(|e| Error::Invalid(format!("server verifier: {e}")))?;
    Ok((client, server))
}

impl Trust {
    /// Trusting the root certificates of `ca_pem` (one or more).
    pub fn new(ca_pem: &str) -> Result<Arc<Trust>> {
        let (c, s) = verifiers(ca_pem)?;
        Ok(Arc::new(Trust {
            current: RwLock::new((ca_pem.to_owned(), c, s)),
            denied: RwLock::default(),
        }))
    }

    /// Adds serials to refuse in servers' certificates (at most 100,000 are kept).
    pub fn deny(&self, serials: impl IntoIterator<Item = String>) {
        let mut d = self.denied.write().expect("not poisoned");
        for s in serials {
            if d.len() >= 100_000 {
                break;
            }
            d.insert(s);
        }
    }

    /// Trusts `ca_pem` from now on if a node may: every root in it is trusted already, or comes
    /// with `cross_pem` (the root cross-signed by one trusted now); and the node's own
    /// certificate (`own_pem`, with its chain) still verifies against it, so that no reply can
    /// cut the node off. Whether it changed; why not, when refused.
    pub fn replace_checked(&self, ca_pem: &str, cross_pem: &str, own_pem: &str) -> Result<bool> {
        if self.pem() == ca_pem {
            return Ok(false);
        }
        let new = certs(ca_pem)?;
        if new.len() > 2 {
            return Err(Error::Invalid("more than two roots".into()));
        }
        let current = certs(&self.pem())?;
        let trusted: Vec<&[u8]> = current.iter().map(|c| c.as_ref()).collect();
        let cross = if cross_pem.is_empty() { Vec::new() } else { certs(cross_pem)? };
        for root in &new {
            if !trusted.contains(&root.as_ref()) && !cross.iter().any(|c| crate::pki::successor_ok(&trusted, root, c)) {
                return Err(Error::Invalid("a new root without a cross-signature by a trusted one".into()));
            }
        }
        let own = certs(own_pem)?;
        let candidate = Trust::new(ca_pem)?;
        candidate
            .verify_client_cert(&own[0], &own[1..], UnixTime::now())
            .map_err(|e| Error::Invalid(format!("this node's certificate would not verify against the new roots: {e}")))?;
        self.replace(ca_pem)
    }

    /// Trusts `ca_pem` from now on (connections made before keep what they verified); whether
    /// it changed.
    pub fn replace(&self, ca_pem: &str) -> Result<bool> {
        if self.pem() == ca_pem {
            return Ok(false);
        }
        let (c, s) = verifiers(ca_pem)?;
        *self.current.write().expect("not poisoned") = (ca_pem.to_owned(), c, s);
        Ok(true)
    }

    /// The roots trusted now, PEM.
    pub fn pem(&self) -> String {
        self.current.read().expect("not poisoned").0.clone()
    }

    fn client(&self) -> Arc<dyn ClientCertVerifier> {
        self.current.read().expect("not poisoned").1.clone()
    }

    fn server(&self) -> Arc<dyn ServerCertVerifier> {
        self.current.read().expect("not poisoned").2.clone()
    }
}

impl ClientCertVerifier for Trust {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        // The bootstrap calls take a client without one; every other call checks (transport).
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        // No hints: a node has one certificate, and the roots change under a rotation.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        self.client().verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.client().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.client().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.client().supported_verify_schemes()
    }
}

impl ServerCertVerifier for Trust {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let ok = self
            .server()
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        let serial = crate::pki::identity(end_entity).map(|i| i.serial).unwrap_or_default();
        if self.denied.read().expect("not poisoned").contains(&serial) {
            return Err(rustls::Error::General("a manager removed from the cluster".into()));
        }
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        ServerCertVerifier::verify_tls12_signature(&*self.server(), message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        ServerCertVerifier::verify_tls13_signature(&*self.server(), message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        ServerCertVerifier::supported_verify_schemes(&*self.server())
    }
}

/// No TLS session resumption, on either side: a resumed session skips the certificates, so it
/// would carry a node's old certificate past its renewal (and its old role past a demotion), and
/// an old root past a CA rotation. A full handshake is a millisecond here.
fn no_resumption_server(c: &mut ServerConfig) {
    c.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    c.send_tls13_tickets = 0;
}

/// A manager's server side: its own certificate (renewable); client certificates verified
/// against the roots of `ca_pem` when given.
pub fn server_config(ca_pem: &str, me: Arc<Identity>) -> Result<Arc<ServerConfig>> {
    server_config_trusting(Trust::new(ca_pem)?, me)
}

/// As [`server_config`], with roots that may change (a CA rotation).
pub fn server_config_trusting(trust: Arc<Trust>, me: Arc<Identity>) -> Result<Arc<ServerConfig>> {
    let mut c = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(bad("TLS"))?
        .with_client_cert_verifier(trust)
        .with_cert_resolver(me);
    c.alpn_protocols = vec![b"h2".to_vec()];
    no_resumption_server(&mut c);
    Ok(Arc::new(c))
}

/// A node's client side: the server must be a manager of the cluster whose CA is `ca_pem`; the
/// node presents its own certificate if it has one (a joining node has none yet).
pub fn client_config(ca_pem: &str, me: Option<Arc<Identity>>) -> Result<Arc<ClientConfig>> {
    client_config_trusting(Trust::new(ca_pem)?, me)
}

/// As [`client_config`], with roots that may change (a CA rotation).
pub fn client_config_trusting(trust: Arc<Trust>, me: Option<Arc<Identity>>) -> Result<Arc<ClientConfig>> {
    let b = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(bad("TLS"))?
        .dangerous()
        .with_custom_certificate_verifier(trust);
    let mut c = match me {
        Some(id) => b.with_client_cert_resolver(id),
        None => b.with_no_client_auth(),
    };
    c.alpn_protocols = vec![b"h2".to_vec()];
    c.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(c))
}

/// The client side of the very first call of a join, which fetches the CA: the server cannot be
/// verified yet (the node has no CA). What it answers is checked against the token's digest
/// before anything else is sent, and every later call verifies the server against that CA.
pub fn fetch_ca_config() -> Result<Arc<ClientConfig>> {
    let mut c = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(bad("TLS"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider())))
        .with_no_client_auth();
    c.alpn_protocols = vec![b"h2".to_vec()];
    c.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(c))
}

/// Accepts any server certificate whose handshake signature holds (see [`fetch_ca_config`]).
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
