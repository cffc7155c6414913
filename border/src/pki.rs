//! Certificate material for a network's border gateway, made with `rcgen`.
//!
//! Each network runs its own certificate authority. The CA is name-constrained
//! to the network's own name, so even a CA that peers trust cannot vouch for
//! another network. It signs the BG certificate, which carries the network's
//! name as its DNS subject alternative name and common name and may act as both
//! TLS server and TLS client (the link is mutual). Keys are ECDSA P-256.
//!
//! `presence-gw pki ca` and `presence-gw pki bg` wrap [`generate_network_ca`] and
//! [`issue_bg_certificate`]; tests and the demo call them directly.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, GeneralSubtree, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, NameConstraints,
};
use time::{Duration, OffsetDateTime};

use crate::identity::NetworkName;

/// File name of a network CA's certificate in a PKI directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of a network CA's private key.
pub const CA_KEY_FILE: &str = "ca.key";
/// File name of a BG certificate.
pub const BG_CERT_FILE: &str = "bg.pem";
/// File name of a BG private key.
pub const BG_KEY_FILE: &str = "bg.key";

/// Longest validity `presence-gw pki` issues: 100 years.
pub const VALIDITY_DAYS_MAX: u32 = 36_500;

/// When a certificate is valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    /// First moment of validity.
    pub not_before: OffsetDateTime,
    /// Last moment of validity.
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From an hour ago (tolerating clock skew between operators) for `days`
    /// (at most [`VALIDITY_DAYS_MAX`]).
    pub fn days_from_now(days: u32) -> Validity {
        let now = OffsetDateTime::now_utc();
        let days = i64::from(days.min(VALIDITY_DAYS_MAX));
        Validity {
            not_before: now.checked_sub(Duration::hours(1)).unwrap_or(now),
            not_after: now.checked_add(Duration::days(days)).unwrap_or(now),
        }
    }
}

/// A certificate and its private key, PEM-encoded.
#[derive(Clone)]
pub struct PemPair {
    /// The certificate.
    pub cert_pem: String,
    /// The PKCS#8 private key. Secret.
    pub key_pem: String,
}

impl std::fmt::Debug for PemPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PemPair")
            .field("cert_pem", &self.cert_pem.len())
            .field("key_pem", &"<secret>")
            .finish()
    }
}

/// Why certificate material could not be made or stored.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// `rcgen` refused the parameters or the CA material.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// The CA is constrained to another network's name (or to none).
    #[error("the CA may only sign for {ca:?}, not for {network}")]
    WrongCa {
        /// The names the CA may sign for.
        ca: Vec<String>,
        /// The network asked for.
        network: NetworkName,
    },
    /// The CA certificate could not be parsed.
    #[error("the CA certificate cannot be read: {0}")]
    BadCa(String),
    /// Writing would replace existing material (pass `overwrite` to allow it).
    #[error("{0} already exists; refusing to overwrite key material (use --force)")]
    Exists(PathBuf),
}

/// Makes a network's CA, valid for `validity`, allowed to sign only
/// certificates for `network` (and names under it).
pub fn generate_network_ca(network: &NetworkName, validity: Validity) -> Result<PemPair, PkiError> {
    let key = KeyPair::generate()?;
    let params = ca_params(network, validity)?;
    let cert = params.self_signed(&key)?;
    Ok(PemPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn ca_params(network: &NetworkName, validity: Validity) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{network} border CA"));
    params
        .distinguished_name
        .push(DnType::OrganizationName, network.as_str());
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.name_constraints = Some(NameConstraints {
        permitted_subtrees: vec![GeneralSubtree::DnsName(network.as_str().to_string())],
        excluded_subtrees: Vec::new(),
    });
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    Ok(params)
}

/// The DNS names a CA's name constraint permits (empty when unconstrained).
pub fn ca_permitted_names(ca_cert_pem: &str) -> Result<Vec<String>, PkiError> {
    let der = crate::tls::certificate_from_pem(ca_cert_pem)
        .map_err(|e| PkiError::BadCa(e.to_string()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| PkiError::BadCa(e.to_string()))?;
    let constraints = cert
        .name_constraints()
        .map_err(|e| PkiError::BadCa(e.to_string()))?;
    Ok(constraints
        .and_then(|c| c.value.permitted_subtrees.as_ref())
        .map(|subtrees| {
            subtrees
                .iter()
                .filter_map(|s| match &s.base {
                    x509_parser::extensions::GeneralName::DNSName(name) => Some(name.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

/// Issues a BG certificate for `network`, signed by the CA in `ca`, with a
/// fresh key. Call again to rotate: the new certificate has a new key.
/// Refuses a CA that is not constrained to `network` (peers would refuse the
/// certificate anyway; this says why up front).
pub fn issue_bg_certificate(
    ca: &PemPair,
    network: &NetworkName,
    validity: Validity,
) -> Result<PemPair, PkiError> {
    let permitted = ca_permitted_names(&ca.cert_pem)?;
    if !permitted.iter().any(|name| name == network.as_str()) {
        return Err(PkiError::WrongCa {
            ca: permitted,
            network: network.clone(),
        });
    }
    sign_bg_certificate(ca, network, validity)
}

/// Signs a BG certificate for `network` with `ca`, without checking the CA's
/// name constraint. For tests that need a certificate a peer must refuse.
#[doc(hidden)]
pub fn sign_bg_certificate(
    ca: &PemPair,
    network: &NetworkName,
    validity: Validity,
) -> Result<PemPair, PkiError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![network.as_str().to_string()])?;
    params
        .distinguished_name
        .push(DnType::CommonName, network.as_str());
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(PemPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Reads `stem.pem` and `stem.key` pairs written by [`write_pair`].
pub fn read_pair(cert: &Path, key: &Path) -> Result<PemPair, PkiError> {
    let read = |path: &Path| {
        fs::read_to_string(path).map_err(|source| PkiError::Io {
            path: path.to_path_buf(),
            source,
        })
    };
    Ok(PemPair {
        cert_pem: read(cert)?,
        key_pem: read(key)?,
    })
}

/// Writes `pair` to `cert` and `key`; the key file is created readable by its
/// owner only. Refuses to replace existing files unless `overwrite`.
pub fn write_pair(
    pair: &PemPair,
    cert: &Path,
    key: &Path,
    overwrite: bool,
) -> Result<(), PkiError> {
    if !overwrite {
        for path in [cert, key] {
            if path.exists() {
                return Err(PkiError::Exists(path.to_path_buf()));
            }
        }
    }
    write_file(key, pair.key_pem.as_bytes(), 0o600)?;
    write_file(cert, pair.cert_pem.as_bytes(), 0o644)
}

/// Writes `contents` to `path` with `mode`, atomically: into a temporary
/// file beside it (created new, never through a link: `O_EXCL` and
/// `O_NOFOLLOW`, so a planted file or symlink is refused rather than written
/// through), synced, then renamed over `path`. Folders it creates are 0700,
/// whatever the umask: they hold a private key.
fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let io = |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io)?;
        }
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(|source| PkiError::Io {
            path: tmp.clone(),
            source,
        })?;
    // The mode given at creation is cut by the umask: set it exactly.
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))
        .map_err(io)?;
    let written = file
        .write_all(contents)
        .and_then(|()| file.sync_all())
        .and_then(|()| fs::rename(&tmp, path));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written.map_err(io)
}

/// A network's complete border material, made in memory: its CA and a BG
/// certificate. What tests and the demo use; operators use `presence-gw pki`.
#[derive(Clone, Debug)]
pub struct NetworkMaterial {
    /// The network.
    pub network: NetworkName,
    /// Its CA.
    pub ca: PemPair,
    /// Its BG certificate and key.
    pub bg: PemPair,
}

impl NetworkMaterial {
    /// A CA valid for ten years and a BG certificate valid for one.
    pub fn generate(network: &NetworkName) -> Result<NetworkMaterial, PkiError> {
        let ca = generate_network_ca(network, Validity::days_from_now(3650))?;
        let bg = issue_bg_certificate(&ca, network, Validity::days_from_now(365))?;
        Ok(NetworkMaterial {
            network: network.clone(),
            ca,
            bg,
        })
    }

    /// The same network with a fresh BG key and certificate (rotation).
    pub fn rotated(&self) -> Result<NetworkMaterial, PkiError> {
        Ok(NetworkMaterial {
            bg: issue_bg_certificate(&self.ca, &self.network, Validity::days_from_now(365))?,
            ..self.clone()
        })
    }

    /// Our identity, for [`crate::BgTls::new`].
    pub fn identity(&self) -> Result<crate::tls::Identity, crate::tls::TlsSetupError> {
        Ok(crate::tls::Identity {
            network: self.network.clone(),
            chain: vec![crate::tls::certificate_from_pem(&self.bg.cert_pem)?],
            key: crate::tls::private_key_from_pem(&self.bg.key_pem)?,
        })
    }

    /// How a peer trusts this network: by its CA.
    pub fn trust_by_ca(&self) -> Result<crate::tls::PeerTrust, crate::tls::TlsSetupError> {
        Ok(crate::tls::PeerTrust {
            network: self.network.clone(),
            trust: crate::tls::Trust::Ca(vec![crate::tls::certificate_from_pem(
                &self.ca.cert_pem,
            )?]),
        })
    }

    /// How a peer trusts this network: by its BG certificate, pinned.
    pub fn trust_by_pin(&self) -> Result<crate::tls::PeerTrust, crate::tls::TlsSetupError> {
        Ok(crate::tls::PeerTrust {
            network: self.network.clone(),
            trust: crate::tls::Trust::Pinned(crate::tls::certificate_from_pem(&self.bg.cert_pem)?),
        })
    }

    /// TLS generation `generation` for this network, trusting `peers` by
    /// their CAs.
    pub fn tls(
        &self,
        generation: u64,
        peers: &[&NetworkMaterial],
    ) -> Result<crate::tls::BgTls, crate::tls::TlsSetupError> {
        let trusts = peers
            .iter()
            .map(|p| p.trust_by_ca())
            .collect::<Result<Vec<_>, _>>()?;
        crate::tls::BgTls::new(generation, self.identity()?, &trusts)
    }

    /// Writes `ca.pem`, `ca.key`, `bg.pem`, `bg.key` into `dir`.
    pub fn write_to(&self, dir: &Path, overwrite: bool) -> Result<(), PkiError> {
        write_pair(
            &self.ca,
            &dir.join(CA_CERT_FILE),
            &dir.join(CA_KEY_FILE),
            overwrite,
        )?;
        write_pair(
            &self.bg,
            &dir.join(BG_CERT_FILE),
            &dir.join(BG_KEY_FILE),
            overwrite,
        )
    }
}

/// A certificate's subject, names, dates and role, as text (`presence-gw pki show`).
pub fn describe_certificate(path: &Path) -> Result<String, crate::tls::TlsSetupError> {
    use std::fmt::Write as _;
    let der = crate::tls::load_certificate(path)?;
    let pem_error = |reason: String| crate::tls::TlsSetupError::Pem {
        path: path.to_path_buf(),
        reason,
    };
    let (_, cert) =
        x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| pem_error(e.to_string()))?;
    let mut text = String::new();
    let _ = writeln!(text, "subject:    {}", cert.subject());
    let _ = writeln!(text, "issuer:     {}", cert.issuer());
    let _ = writeln!(text, "serial:     {}", cert.raw_serial_as_string());
    let _ = writeln!(text, "not before: {}", cert.validity().not_before);
    let _ = writeln!(text, "not after:  {}", cert.validity().not_after);
    let _ = writeln!(text, "is CA:      {}", cert.is_ca());
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            let _ = writeln!(text, "name:       {name}");
        }
    }
    Ok(text)
}
