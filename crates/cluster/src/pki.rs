//! The cluster's PKI: a root CA (ECDSA P-256, made with rcgen), node certificates it issues from
//! a node's certificate signing request, and join tokens that pin the CA.
//!
//! - **The CA builds every certificate from its own parameters.** From a CSR it takes the public
//!   key, and nothing else: not a name, not a CA flag, not a key usage. The CSR's signature is
//!   checked (proof that the node holds the key), and its key must be ECDSA P-256.
//! - **A node certificate** says who the node is: CN = node id, OU = its role (from the store,
//!   never from the node), O = the cluster id; DNS names for the role and the node id; server and
//!   client authentication; a random 128-bit serial; not-before an hour back (clock skew);
//!   24 h by default. Each renewal comes with a fresh key.
//! - **A join token** is `BKTKN-1-<sha256 of the root CA certificate>-<secret>`. A joining node
//!   fetches the CA and refuses one whose digest is not the token's (a fake manager cannot
//!   stand in), then sends a CSR with the token. The store keeps only the secret's hash, compared
//!   in constant time, with an expiry and a use count if given (moby/moby#29489).

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::crypt::random;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Invalid(String),
    #[error("join token refused: {0}")]
    Token(&'static str),
}

pub type Result<T> = std::result::Result<T, Error>;

fn rc(what: &str) -> impl Fn(rcgen::Error) -> Error + '_ {
    move |e| Error::Invalid(format!("{what}: {e}"))
}

/// A node's role, from the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Manager,
    Worker,
    /// A person administering the cluster from elsewhere (`cluster ca --issue-admin`): no node,
    /// never in Raft; only the `Admin` service takes it.
    Admin,
}

impl Role {
    /// As a certificate says it (OU, and a DNS name).
    pub fn ou(self) -> &'static str {
        match self {
            Role::Manager => "bulkhead-manager",
            Role::Worker => "bulkhead-worker",
            Role::Admin => "bulkhead-admin",
        }
    }

    pub fn from_ou(s: &str) -> Option<Role> {
        match s {
            "bulkhead-manager" => Some(Role::Manager),
            "bulkhead-worker" => Some(Role::Worker),
            "bulkhead-admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// Who a node certificate says its holder is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub node_id: String,
    pub role: Role,
    pub cluster_id: String,
    /// Hex, as on a deny list.
    pub serial: String,
    pub not_before: i64,
    pub not_after: i64,
    /// The key identifier of the CA that issued it (hex; its authority key identifier): which
    /// root a node's certificate comes from, during a CA rotation.
    pub issuer_key: Option<String>,
}

/// The root CA: its certificate, and its key (kept in the encrypted store).
pub struct Ca {
    cert_pem: String,
    cert_der: Vec<u8>,
    key: KeyPair,
}

/// The SHA-256 of a certificate (DER), hex: what a join token pins.
pub fn digest(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

fn serial() -> Result<SerialNumber> {
    let mut b = random::<16>().map_err(|e| Error::Invalid(e.to_string()))?;
    // Positive, and never shorter than 16 bytes with a leading zero stripped.
    b[0] = (b[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&b))
}

/// A root's parameters: CA for one level of node certificates below it (and a cross-signed
/// copy of a successor between), named with a random suffix so that two roots of a cluster
/// never share a subject.
fn root_params(cluster_id: &str, now: i64, years: i64) -> Result<CertificateParams> {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    let tag = hex::encode(random::<4>().map_err(|e| Error::Invalid(e.to_string()))?);
    dn.push(DnType::CommonName, format!("bulkhead cluster root CA {tag}"));
    dn.push(DnType::OrganizationName, cluster_id);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.serial_number = Some(serial()?);
    p.not_before = offset(now - 3600)?;
    p.not_after = offset(now + years * 365 * 86400)?;
    p.use_authority_key_identifier_extension = false;
    Ok(p)
}

fn offset(t: i64) -> Result<time::OffsetDateTime> {
    time::OffsetDateTime::from_unix_timestamp(t).map_err(|e| Error::Invalid(format!("time {t}: {e}")))
}

impl Ca {
    /// A new root for cluster `cluster_id`, valid `years` years.
    pub fn create(cluster_id: &str, now: i64, years: i64) -> Result<Ca> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(rc("CA key"))?;
        let p = root_params(cluster_id, now, years)?;
        let cert = p.self_signed(&key).map_err(rc("CA certificate"))?;
        Ok(Ca {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key,
        })
    }

    /// A CA rotation's new root (a new key), and the same root cross-signed by this one (PEM):
    /// a certificate the new root issues, sent with the cross-signed one, verifies for a node
    /// that trusts only this root as for one that trusts only the new one.
    pub fn successor(&self, cluster_id: &str, now: i64, years: i64) -> Result<(Ca, String)> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(rc("CA key"))?;
        let mut p = root_params(cluster_id, now, years)?;
        let root = p.self_signed(&key).map_err(rc("CA certificate"))?;
        // Same subject and key (so the same key identifier), another serial, and no longer valid
        // than the old root that signs it.
        p.serial_number = Some(serial()?);
        let old_end = x509_parser::parse_x509_certificate(&self.cert_der)
            .map_err(|e| Error::Invalid(format!("the CA: {e}")))?
            .1
            .validity()
            .not_after
            .timestamp();
        p.not_after = offset(old_end.min(now + years * 365 * 86400))?;
        let issuer = Issuer::from_ca_cert_der(&self.cert_der.clone().into(), &self.key).map_err(rc("CA"))?;
        let cross = p.signed_by(&key, &issuer).map_err(rc("cross-signed certificate"))?;
        Ok((
            Ca {
                cert_pem: root.pem(),
                cert_der: root.der().to_vec(),
                key,
            },
            cross.pem(),
        ))
    }

    /// The CA from its certificate and key (PEM), as the store keeps them.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca> {
        let key = KeyPair::from_pem(key_pem).map_err(rc("CA key"))?;
        let der = pem_der(cert_pem)?;
        Ok(Ca {
            cert_pem: cert_pem.to_owned(),
            cert_der: der,
            key,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The key, PEM (PKCS#8): only ever into the encrypted store.
    pub fn key_pem(&self) -> zeroize::Zeroizing<String> {
        zeroize::Zeroizing::new(self.key.serialize_pem())
    }

    pub fn digest(&self) -> String {
        digest(&self.cert_der)
    }

    /// Its key identifier (hex), as the certificates it issues name it.
    pub fn key_id(&self) -> Result<String> {
        key_id(&self.cert_der)
    }

    /// A node certificate for `node_id` with `role` in `cluster_id`, for the key of `csr_der`
    /// (its signature checked; ECDSA P-256 only), valid from an hour before `now` for `lifetime`
    /// seconds. Nothing of the CSR but its key is used.
    pub fn issue(&self, csr_der: &[u8], node_id: &str, role: Role, cluster_id: &str, now: i64, lifetime: i64) -> Result<String> {
        if !valid_node_id(node_id) {
            return Err(Error::Invalid(format!("node id {node_id:?}: 1 to 64 of [a-z0-9]")));
        }
        let csr = CertificateSigningRequestParams::from_der(&csr_der.to_vec().into())
            .map_err(|e| Error::Invalid(format!("certificate request refused: {e}")))?;
        // The key itself, not the signature's algorithm (a P-384 key signed with SHA-256 would
        // pass that): an EC public key on prime256v1, an uncompressed 65-byte point.
        if !is_p256_key(csr_der) {
            return Err(Error::Invalid("certificate request refused: the key must be ECDSA P-256".into()));
        }
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node_id);
        dn.push(DnType::OrganizationalUnitName, role.ou());
        dn.push(DnType::OrganizationName, cluster_id);
        p.distinguished_name = dn;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if role == Role::Admin {
            // A client only: no name a server could be asked for.
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        } else {
            p.subject_alt_names = vec![
                SanType::DnsName(role.ou().try_into().map_err(rc("name"))?),
                SanType::DnsName(node_id.try_into().map_err(rc("name"))?),
            ];
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        }
        p.serial_number = Some(serial()?);
        p.not_before = offset(now - 3600)?;
        p.not_after = offset(now + lifetime)?;
        p.use_authority_key_identifier_extension = true;
        let issuer = Issuer::from_ca_cert_der(&self.cert_der.clone().into(), &self.key).map_err(rc("CA"))?;
        let cert = p.signed_by(&csr.public_key, &issuer).map_err(rc("node certificate"))?;
        Ok(cert.pem())
    }
}

/// The SPIFFE ID of a service's tasks: `spiffe://<cluster id>/ns/<stack or default>/svc/<name>`
/// (the cluster id is the trust domain). Stack and service names are the store's checked names
/// (letters, digits, `-`, `_`, `.`), which SPIFFE path segments allow; the `spiffe` crate checks
/// the result.
pub fn spiffe_id(cluster_id: &str, stack: Option<&str>, service: &str) -> Result<String> {
    let id = format!(
        "spiffe://{}/ns/{}/svc/{service}",
        cluster_id.to_ascii_lowercase(),
        stack.unwrap_or("default")
    );
    spiffe::SpiffeId::new(&id).map_err(|e| Error::Invalid(format!("SPIFFE ID {id:?}: {e}")))?;
    Ok(id)
}

impl Ca {
    /// The workload CA under this root: it issues the tasks' X509-SVIDs and nothing else (a
    /// CA for one level, pathLen 0, naming the trust domain in a URI SAN as SPIFFE advises),
    /// valid a year or as long as the root if that is sooner.
    pub fn workload_ca(&self, cluster_id: &str, now: i64) -> Result<(Ca, String)> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(rc("workload CA key"))?;
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "bulkhead workload CA");
        dn.push(DnType::OrganizationName, cluster_id);
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let td = format!("spiffe://{}", cluster_id.to_ascii_lowercase());
        p.subject_alt_names = vec![SanType::URI(td.as_str().try_into().map_err(rc("trust domain"))?)];
        p.serial_number = Some(serial()?);
        p.not_before = offset(now - 3600)?;
        let root_end = x509_parser::parse_x509_certificate(&self.cert_der)
            .map_err(|e| Error::Invalid(format!("the CA: {e}")))?
            .1
            .validity()
            .not_after
            .timestamp();
        p.not_after = offset(root_end.min(now + 365 * 86400))?;
        p.use_authority_key_identifier_extension = true;
        let issuer = Issuer::from_ca_cert_der(&self.cert_der.clone().into(), &self.key).map_err(rc("CA"))?;
        let cert = p.signed_by(&key, &issuer).map_err(rc("workload CA certificate"))?;
        let pem = cert.pem();
        Ok((
            Ca {
                cert_pem: pem.clone(),
                cert_der: cert.der().to_vec(),
                key,
            },
            pem,
        ))
    }

    /// An X509-SVID for the key of `csr_der` (ECDSA P-256, its signature checked): exactly one
    /// URI SAN, `spiffe_id`; no subject, not a CA, digital signature only; server and client
    /// authentication; from a minute before `now` for `lifetime` seconds. Nothing of the CSR but
    /// its key is used.
    pub fn issue_svid(&self, csr_der: &[u8], spiffe_id: &str, now: i64, lifetime: i64) -> Result<String> {
        let csr = CertificateSigningRequestParams::from_der(&csr_der.to_vec().into())
            .map_err(|e| Error::Invalid(format!("certificate request refused: {e}")))?;
        if !is_p256_key(csr_der) {
            return Err(Error::Invalid("certificate request refused: the key must be ECDSA P-256".into()));
        }
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        p.subject_alt_names = vec![SanType::URI(spiffe_id.try_into().map_err(rc("SPIFFE ID"))?)];
        p.serial_number = Some(serial()?);
        p.not_before = offset(now - 60)?;
        p.not_after = offset(now + lifetime)?;
        p.use_authority_key_identifier_extension = true;
        let issuer = Issuer::from_ca_cert_der(&self.cert_der.clone().into(), &self.key).map_err(rc("workload CA"))?;
        let cert = p.signed_by(&csr.public_key, &issuer).map_err(rc("SVID"))?;
        Ok(cert.pem())
    }
}

fn is_p256_key(csr_der: &[u8]) -> bool {
    use x509_parser::prelude::FromDer;
    let Ok((_, csr)) = x509_parser::certification_request::X509CertificationRequest::from_der(csr_der) else {
        return false;
    };
    let spki = &csr.certification_request_info.subject_pki;
    let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok());
    spki.algorithm.algorithm == x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
        && curve == Some(x509_parser::oid_registry::OID_EC_P256)
        && spki.subject_public_key.data.len() == 65
        && spki.subject_public_key.data[0] == 4
}

/// Whether `root` (DER) may be trusted by a node that trusts `trusted` (DER roots): `cross`
/// (DER) names the same subject and key as `root`, and is signed by one of `trusted`; and `root`
/// signs itself. (A check-in's new root during a CA rotation.)
pub fn successor_ok(trusted: &[&[u8]], root: &[u8], cross: &[u8]) -> bool {
    let (Ok((_, r)), Ok((_, c))) = (
        x509_parser::parse_x509_certificate(root),
        x509_parser::parse_x509_certificate(cross),
    ) else {
        return false;
    };
    if r.subject().as_raw() != c.subject().as_raw()
        || r.public_key().raw != c.public_key().raw
        || !r.is_ca()
        || r.verify_signature(None).is_err()
    {
        return false;
    }
    trusted.iter().any(|t| {
        x509_parser::parse_x509_certificate(t)
            .is_ok_and(|(_, t)| c.issuer().as_raw() == t.subject().as_raw() && c.verify_signature(Some(t.public_key())).is_ok())
    })
}

/// A CA certificate's subject key identifier (hex).
pub fn key_id(der: &[u8]) -> Result<String> {
    let (_, c) = x509_parser::parse_x509_certificate(der).map_err(|e| Error::Invalid(format!("the CA: {e}")))?;
    c.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => Some(hex::encode(k.0)),
            _ => None,
        })
        .ok_or_else(|| Error::Invalid("the CA has no key identifier".into()))
}

/// Node ids: lower-case hex or letters and digits, at most 64 (they are DNS names too).
pub fn valid_node_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// A fresh ECDSA P-256 key and a certificate request for it (the node's side of a join or a
/// renewal). The request names nobody: the CA decides what the certificate says.
pub fn key_and_request() -> Result<(KeyPair, Vec<u8>)> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(rc("node key"))?;
    let p = CertificateParams::default();
    let csr = p.serialize_request(&key).map_err(rc("certificate request"))?;
    Ok((key, csr.der().to_vec()))
}

fn pem_der(pem: &str) -> Result<Vec<u8>> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| Error::Invalid(format!("not a PEM certificate: {e}")))?;
    if p.label != "CERTIFICATE" {
        return Err(Error::Invalid(format!("PEM {:?}, not CERTIFICATE", p.label)));
    }
    Ok(p.contents)
}

/// What a node certificate (PEM or DER) says, read with x509-parser (for authorization: the
/// caller's role, cluster and id come from here, checked against the store).
pub fn identity(cert: &[u8]) -> Result<Identity> {
    let der = if cert.starts_with(b"-----") {
        pem_der(std::str::from_utf8(cert).map_err(|_| Error::Invalid("not UTF-8".into()))?)?
    } else {
        cert.to_vec()
    };
    let (_, c) = x509_parser::parse_x509_certificate(&der).map_err(|e| Error::Invalid(format!("not a certificate: {e}")))?;
    let one = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue>, what: &str| -> Result<String> {
        let all: Vec<String> = it
            .map(|a| a.as_str().map(str::to_owned))
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| Error::Invalid(format!("{what}: not a string")))?;
        match all.as_slice() {
            [v] => Ok(v.clone()),
            _ => Err(Error::Invalid(format!("the certificate has {} {what}", all.len()))),
        }
    };
    // A workload's SVID chains to the same root through the workload CA: it is never a node.
    if !uris_of(&c).is_empty() {
        return Err(Error::Invalid(
            "a workload's certificate (it has a URI name) is not a node's".into(),
        ));
    }
    let s = c.subject();
    let node_id = one(&mut s.iter_common_name(), "common names")?;
    let ou = one(&mut s.iter_organizational_unit(), "organisational units")?;
    let cluster_id = one(&mut s.iter_organization(), "organisations")?;
    let role = Role::from_ou(&ou).ok_or_else(|| Error::Invalid(format!("unknown role {ou:?}")))?;
    Ok(Identity {
        node_id,
        role,
        cluster_id,
        serial: c.raw_serial_as_string().replace(':', ""),
        not_before: c.validity().not_before.timestamp(),
        not_after: c.validity().not_after.timestamp(),
        issuer_key: c.extensions().iter().find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => a.key_identifier.as_ref().map(|k| hex::encode(k.0)),
            _ => None,
        }),
    })
}

/// The URI names of a certificate (its SPIFFE ID, for an SVID).
fn uris_of(c: &x509_parser::certificate::X509Certificate<'_>) -> Vec<String> {
    let Ok(Some(san)) = c.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        })
        .collect()
}

/// The URI names of a certificate (PEM or DER); none for what does not parse.
pub fn uri_names(cert: &[u8]) -> Vec<String> {
    let der = if cert.starts_with(b"-----") {
        match std::str::from_utf8(cert).ok().and_then(|p| pem_der(p).ok()) {
            Some(d) => d,
            None => return Vec::new(),
        }
    } else {
        cert.to_vec()
    };
    x509_parser::parse_x509_certificate(&der).map_or_else(|_| Vec::new(), |(_, c)| uris_of(&c))
}

/// A node's proof that it holds the key of its last certificate: an ECDSA P-256 signature of
/// `msg` (its new certificate request) by that key (PKCS#8 PEM).
pub fn prove(key_pem: &str, msg: &[u8]) -> Result<Vec<u8>> {
    use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
    let der = rustls::pki_types::PrivatePkcs8KeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| Error::Invalid(format!("the old key: {e}")))?;
    let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, der.secret_pkcs8_der())
        .map_err(|e| Error::Invalid(format!("the old key: {e}")))?;
    let rng = aws_lc_rs::rand::SystemRandom::new();
    kp.sign(&rng, msg)
        .map(|s| s.as_ref().to_vec())
        .map_err(|e| Error::Invalid(format!("signing: {e}")))
}

/// What an old (possibly expired) certificate of one of `roots` (DER: the CA, and during a
/// rotation the old root too) says, if it is one: its signature is the root's, and `proof` is a
/// signature of `msg` by its key. Expiry is not judged here: this is how a node whose
/// certificate ran out while it was away proves who it is.
pub fn old_identity(roots: &[&[u8]], old_der: &[u8], msg: &[u8], proof: &[u8]) -> Result<Identity> {
    let (_, cert) = x509_parser::parse_x509_certificate(old_der).map_err(|e| Error::Invalid(format!("the old certificate: {e}")))?;
    let mut signed = false;
    for root in roots {
        let (_, cac) = x509_parser::parse_x509_certificate(root).map_err(|e| Error::Invalid(format!("the CA: {e}")))?;
        signed |= cert.verify_signature(Some(cac.public_key())).is_ok();
    }
    if !signed {
        return Err(Error::Invalid("the old certificate is not this cluster's".into()));
    }
    let key = aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1,
        cert.public_key().subject_public_key.data.as_ref(),
    );
    key.verify(msg, proof)
        .map_err(|_| Error::Invalid("no proof of the old certificate's key".into()))?;
    identity(old_der)
}

const TOKEN_PREFIX: &str = "BKTKN-1-";

/// A join token: the root CA's digest and a secret.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub ca_digest: String,
    secret: [u8; 32],
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JoinToken(ca {}, secret ..)", self.ca_digest)
    }
}

impl Drop for JoinToken {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.secret);
    }
}

impl JoinToken {
    pub fn generate(ca_digest: &str) -> Result<JoinToken> {
        Ok(JoinToken {
            ca_digest: ca_digest.to_owned(),
            secret: random::<32>().map_err(|e| Error::Invalid(e.to_string()))?,
        })
    }

    /// `BKTKN-1-<64 hex: the CA's digest>-<64 hex: the secret>`.
    pub fn text(&self) -> zeroize::Zeroizing<String> {
        zeroize::Zeroizing::new(format!("{TOKEN_PREFIX}{}-{}", self.ca_digest, hex::encode(self.secret)))
    }

    pub fn parse(s: &str) -> Result<JoinToken> {
        let bad = Error::Token("not a join token (BKTKN-1-<CA digest>-<secret>)");
        let rest = s
            .trim()
            .strip_prefix(TOKEN_PREFIX)
            .ok_or(Error::Token("not a join token (BKTKN-1-<CA digest>-<secret>)"))?;
        let (digest, secret) = rest
            .split_once('-')
            .ok_or(Error::Token("not a join token (BKTKN-1-<CA digest>-<secret>)"))?;
        let hex64 = |x: &str| x.len() == 64 && x.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
        if !hex64(digest) || !hex64(secret) {
            return Err(bad);
        }
        let mut b = [0u8; 32];
        hex::decode_to_slice(secret, &mut b).map_err(|_| Error::Token("not a join token (BKTKN-1-<CA digest>-<secret>)"))?;
        Ok(JoinToken {
            ca_digest: digest.to_owned(),
            secret: b,
        })
    }

    /// What the store keeps of it.
    pub fn hash(&self) -> String {
        hex::encode(Sha256::digest(self.secret))
    }
}

/// A join token as the store keeps it: the secret's hash, the role it admits, and its limits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub role: Role,
    pub hash: String,
    /// The token itself, for `cluster join-token` to show (the store is sealed at rest; joins
    /// are judged by the hash).
    #[serde(default)]
    pub text: Option<String>,
    /// Unix time after which it admits no one.
    pub expires: Option<i64>,
    /// Joins it still admits (None: any number).
    pub uses_left: Option<u32>,
}

impl TokenRecord {
    /// The record of a new token: its hash (what joins are judged by), its text (for `cluster
    /// join-token` to show), and its limits.
    pub fn new(token: &JoinToken, role: Role, expires: Option<i64>, uses_left: Option<u32>) -> TokenRecord {
        TokenRecord {
            role,
            hash: token.hash(),
            text: Some(token.text().to_string()),
            expires,
            uses_left,
        }
    }

    /// Whether `presented` is this token, now: compared in constant time (the hash, so the
    /// comparison's time says nothing of the secret either way), within its expiry and uses.
    /// The caller counts the use down in the same write that admits the node.
    pub fn admits(&self, presented: &JoinToken, ca_digest: &str, now: i64) -> Result<()> {
        if presented.ca_digest != ca_digest {
            return Err(Error::Token("it pins another CA"));
        }
        let want = hex::decode(&self.hash).map_err(|_| Error::Token("the stored token is corrupt"))?;
        let got = Sha256::digest(presented.secret);
        if !bool::from(got.as_slice().ct_eq(&want)) {
            return Err(Error::Token("wrong or rotated token"));
        }
        if self.expires.is_some_and(|e| now >= e) {
            return Err(Error::Token("the token has expired"));
        }
        if self.uses_left == Some(0) {
            return Err(Error::Token("the token is used up"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn a_node_certificate_says_only_what_the_ca_decides() {
        let ca = Ca::create("c0ffee", NOW, 10).unwrap();
        let (_key, csr) = key_and_request().unwrap();
        let pem = ca.issue(&csr, "n1", Role::Worker, "c0ffee", NOW, 86400).unwrap();
        let id = identity(pem.as_bytes()).unwrap();
        assert_eq!(
            (id.node_id.as_str(), id.role, id.cluster_id.as_str()),
            ("n1", Role::Worker, "c0ffee")
        );
        assert_eq!(id.not_after, NOW + 86400);
        assert_eq!(id.serial.len(), 32, "{}", id.serial);
        let der = pem_der(&pem).unwrap();
        let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert_eq!(c.validity().not_before.timestamp(), NOW - 3600);
        assert!(!c.is_ca());
        // Signed by the CA.
        let ca_der = ca.cert_der().to_vec();
        let (_, cac) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        c.verify_signature(Some(cac.public_key())).unwrap();
        // Two issues for one request: different serials.
        let again = identity(ca.issue(&csr, "n1", Role::Worker, "c0ffee", NOW, 86400).unwrap().as_bytes()).unwrap();
        assert_ne!(again.serial, id.serial);
    }

    #[test]
    fn a_request_asking_for_more_gets_nothing_of_it() {
        let ca = Ca::create("c0ffee", NOW, 10).unwrap();
        // A request for CA:true, another node's name, a manager's OU, and certificate signing.
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = CertificateParams::new(vec!["n2".to_owned(), "bulkhead-manager".to_owned()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, "n2");
        p.distinguished_name.push(DnType::OrganizationalUnitName, "bulkhead-manager");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let csr = p.serialize_request(&key).unwrap().der().to_vec();
        let pem = ca.issue(&csr, "n1", Role::Worker, "c0ffee", NOW, 86400).unwrap();
        let id = identity(pem.as_bytes()).unwrap();
        assert_eq!((id.node_id.as_str(), id.role), ("n1", Role::Worker));
        let der = pem_der(&pem).unwrap();
        let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert!(!c.is_ca());
        let ku = c.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && !ku.key_cert_sign());
        let names: Vec<String> = c
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(names, ["DNSName(bulkhead-worker)", "DNSName(n1)"]);
        // A request whose signature does not hold, or with another kind of key: refused.
        let mut forged = csr.clone();
        let n = forged.len();
        forged[n - 5] ^= 0xff;
        assert!(ca.issue(&forged, "n1", Role::Worker, "c0ffee", NOW, 86400).is_err());
        let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let ed_csr = CertificateParams::default().serialize_request(&ed).unwrap().der().to_vec();
        assert!(ca
            .issue(&ed_csr, "n1", Role::Worker, "c0ffee", NOW, 86400)
            .unwrap_err()
            .to_string()
            .contains("P-256"));
        // A P-384 key whose request is signed with SHA-256 (the signature's algorithm says
        // nothing of the key's curve).
        let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let p384_csr = CertificateParams::default().serialize_request(&p384).unwrap().der().to_vec();
        assert!(ca
            .issue(&p384_csr, "n1", Role::Worker, "c0ffee", NOW, 86400)
            .unwrap_err()
            .to_string()
            .contains("P-256"));
        assert!(ca.issue(&csr, "N1/../x", Role::Worker, "c0ffee", NOW, 86400).is_err());
    }

    #[test]
    fn a_mangled_request_never_panics_and_never_names_another() {
        // (cargo-fuzz is not installed here: fuzz/fuzz_targets/cluster_bootstrap.rs does this
        // with coverage; every single-byte change of a real request, here.)
        let ca = Ca::create("c0ffee", NOW, 10).unwrap();
        let (_k, csr) = key_and_request().unwrap();
        for i in 0..csr.len() {
            for x in [0x01u8, 0x80, 0xff] {
                let mut m = csr.clone();
                m[i] ^= x;
                if let Ok(pem) = ca.issue(&m, "n1", Role::Worker, "c0ffee", NOW, 60) {
                    let id = identity(pem.as_bytes()).unwrap();
                    assert_eq!((id.node_id.as_str(), id.role), ("n1", Role::Worker));
                }
                let _ = identity(&m);
            }
        }
    }

    #[test]
    fn a_successor_root_is_trusted_through_the_old_one_and_by_itself() {
        use rustls::client::danger::ServerCertVerifier;
        use rustls::server::danger::ClientCertVerifier;
        let old = Ca::create("c0ffee", NOW, 10).unwrap();
        let (new, cross) = old.successor("c0ffee", NOW, 10).unwrap();
        assert_ne!(old.key_id().unwrap(), new.key_id().unwrap());
        let (_k, csr) = key_and_request().unwrap();
        let leaf = new.issue(&csr, "n1", Role::Manager, "c0ffee", NOW, 86400).unwrap();
        assert_eq!(identity(leaf.as_bytes()).unwrap().issuer_key, Some(new.key_id().unwrap()));
        let chain = crate::tls::certs(&format!("{leaf}{cross}")).unwrap();
        let at = rustls::pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_secs(NOW as u64));
        let name = rustls::pki_types::ServerName::try_from(crate::tls::MANAGER_NAME).unwrap();
        let both = format!("{}{}", new.cert_pem(), old.cert_pem());
        // A node that trusts only the old root, only the new one, or both: all accept it.
        for roots in [old.cert_pem(), new.cert_pem(), both.as_str()] {
            let t = crate::tls::Trust::new(roots).unwrap();
            t.verify_server_cert(&chain[0], &chain[1..], &name, &[], at).unwrap();
            t.verify_client_cert(&chain[0], &chain[1..], at).unwrap();
        }
        // Without the cross-signed certificate, the old root alone does not; a third root's
        // does not either; and once the old root is dropped, its certificates are refused.
        let t = crate::tls::Trust::new(old.cert_pem()).unwrap();
        assert!(t.verify_client_cert(&chain[0], &[], at).is_err());
        let (_other, foreign_cross) = Ca::create("c0ffee", NOW, 10).unwrap().successor("c0ffee", NOW, 10).unwrap();
        let foreign = crate::tls::certs(&format!("{leaf}{foreign_cross}")).unwrap();
        assert!(t.verify_client_cert(&foreign[0], &foreign[1..], at).is_err());
        let old_leaf = crate::tls::certs(&old.issue(&csr, "n1", Role::Manager, "c0ffee", NOW, 86400).unwrap()).unwrap();
        let t = crate::tls::Trust::new(new.cert_pem()).unwrap();
        assert!(t.verify_client_cert(&old_leaf[0], &[], at).is_err());
        t.replace(&both).unwrap();
        t.verify_client_cert(&old_leaf[0], &[], at).unwrap();
    }

    #[test]
    fn a_check_in_cannot_make_a_node_trust_a_root_without_a_trusted_cross_signature() {
        use rustls::client::danger::ServerCertVerifier;
        // (Checked against the clock: the certificates are made now.)
        let now = crate::node::now();
        let old = Ca::create("c0ffee", now, 10).unwrap();
        let (new, cross) = old.successor("c0ffee", now, 10).unwrap();
        let (evil, evil_cross) = Ca::create("c0ffee", now, 10).unwrap().successor("c0ffee", now, 10).unwrap();
        let (_k, csr) = key_and_request().unwrap();
        let own_old = old.issue(&csr, "n1", Role::Worker, "c0ffee", now, 86400).unwrap();
        let both = format!("{}{}", new.cert_pem(), old.cert_pem());
        let t = crate::tls::Trust::new(old.cert_pem()).unwrap();
        // An attacker's root: alone, beside the old one, or with a cross-signature not by a
        // trusted root. Refused, and nothing changes.
        for (roots, x) in [
            (evil.cert_pem().to_owned(), String::new()),
            (format!("{}{}", evil.cert_pem(), old.cert_pem()), String::new()),
            (format!("{}{}", evil.cert_pem(), old.cert_pem()), evil_cross.clone()),
            (format!("{}{}", evil.cert_pem(), old.cert_pem()), cross.clone()),
        ] {
            assert!(t.replace_checked(&roots, &x, &own_old).is_err(), "{roots}");
            assert_eq!(t.pem(), old.cert_pem());
        }
        // The rotation's new root with its cross-signature: trusted beside the old one.
        assert!(t.replace_checked(&both, &cross, &own_old).unwrap());
        // The old root cannot be dropped while this node's certificate needs it...
        assert!(t.replace_checked(new.cert_pem(), "", &own_old).is_err());
        // ...and can once it has one of the new root.
        let own_new = format!("{}{cross}", new.issue(&csr, "n1", Role::Worker, "c0ffee", now, 86400).unwrap());
        assert!(t.replace_checked(new.cert_pem(), "", &own_new).unwrap());
        // A manager on the deny list a check-in brought is refused as a server.
        let m = crate::tls::certs(&new.issue(&csr, "m1", Role::Manager, "c0ffee", now, 86400).unwrap()).unwrap();
        let at = rustls::pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_secs(now as u64));
        let name = rustls::pki_types::ServerName::try_from(crate::tls::MANAGER_NAME).unwrap();
        t.verify_server_cert(&m[0], &[], &name, &[], at).unwrap();
        t.deny([identity(&m[0]).unwrap().serial]);
        assert!(t.verify_server_cert(&m[0], &[], &name, &[], at).is_err());
    }

    #[test]
    fn the_ca_survives_its_pem_form() {
        let ca = Ca::create("c0ffee", NOW, 10).unwrap();
        let again = Ca::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
        assert_eq!(again.digest(), ca.digest());
        let (_k, csr) = key_and_request().unwrap();
        identity(again.issue(&csr, "n9", Role::Manager, "c0ffee", NOW, 60).unwrap().as_bytes()).unwrap();
    }

    #[test]
    fn join_tokens_pin_the_ca_and_honour_their_limits() {
        let ca = Ca::create("c0ffee", NOW, 10).unwrap();
        let t = JoinToken::generate(&ca.digest()).unwrap();
        let text = t.text();
        assert!(text.starts_with("BKTKN-1-") && text.len() == 8 + 64 + 1 + 64);
        let parsed = JoinToken::parse(&text).unwrap();
        assert_eq!(parsed, t);
        let rec = TokenRecord {
            role: Role::Worker,
            hash: t.hash(),
            text: None,
            expires: Some(NOW + 60),
            uses_left: Some(1),
        };
        rec.admits(&parsed, &ca.digest(), NOW).unwrap();
        // Another CA, a wrong secret, expired, used up.
        let other = Ca::create("c0ffee", NOW, 10).unwrap();
        assert!(rec
            .admits(&parsed, &other.digest(), NOW)
            .unwrap_err()
            .to_string()
            .contains("another CA"));
        let wrong = JoinToken::generate(&ca.digest()).unwrap();
        assert!(rec
            .admits(&wrong, &ca.digest(), NOW)
            .unwrap_err()
            .to_string()
            .contains("wrong or rotated"));
        assert!(rec
            .admits(&parsed, &ca.digest(), NOW + 60)
            .unwrap_err()
            .to_string()
            .contains("expired"));
        let used = TokenRecord {
            uses_left: Some(0),
            ..rec.clone()
        };
        assert!(used.admits(&parsed, &ca.digest(), NOW).unwrap_err().to_string().contains("used up"));
        // Malformed: one line each, never a panic.
        let bad_digest = format!("BKTKN-1-{}-{}", "Z".repeat(64), "0".repeat(64));
        for bad in [
            "",
            "BKTKN-1-",
            "BKTKN-2-aa-bb",
            &text[..text.len() - 1],
            &text.to_uppercase(),
            bad_digest.as_str(),
        ] {
            assert!(JoinToken::parse(bad).is_err(), "{bad}");
        }
    }
}
