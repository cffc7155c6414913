//! TLS for the border: who we are, whom we trust, and the rustls
//! configurations built from that.
//!
//! Rules (`docs/operations.md`, trust model):
//! - TLS 1.3 only, with the `ring` provider; both sides present certificates.
//! - A peer is trusted by an explicit entry: its network name and either its
//!   CA certificate or its BG certificate pinned byte for byte.
//! - A certificate is accepted for entry *P* only if it verifies against
//!   *P*'s trust and is valid for *P*'s name: a certificate from network C's CA
//!   naming network A is refused, as is A's own certificate presented under a
//!   trust entry of C.
//! - Verification happens inside the handshake, so a refused peer never gets
//!   to send application data (and none is read).
//! - Session resumption is off: every connection is verified against the
//!   trust list of the generation that accepted it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_name, Resumption, WebPkiServerVerifier};
use rustls::crypto::{
    ring as ring_provider, verify_tls12_signature, verify_tls13_signature, CryptoProvider,
    WebPkiSupportedAlgorithms,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, Error as TlsError,
    InvalidMessage, RootCertStore, ServerConfig, SignatureScheme,
};

use crate::identity::{NetworkName, PeerIndex};

/// The ALPN protocol both sides must agree on: guards against a TLS client of
/// another kind that happens to hold a trusted certificate.
pub const ALPN_BORDER_V1: &[u8] = b"presence-bg/1";

/// How a peer network is trusted.
#[derive(Clone)]
pub enum Trust {
    /// Any certificate one of its CAs issued for its name. Usually one CA;
    /// two while the peer rotates its CA (a PEM bundle holding both).
    Ca(Vec<CertificateDer<'static>>),
    /// Exactly this BG certificate (still checked for its dates and name).
    Pinned(CertificateDer<'static>),
}

impl fmt::Debug for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trust::Ca(cas) => write!(f, "Ca({} certificates)", cas.len()),
            Trust::Pinned(der) => write!(f, "Pinned({} bytes)", der.len()),
        }
    }
}

/// One entry of the trust list.
#[derive(Clone, Debug)]
pub struct PeerTrust {
    /// The peer network's name, as its certificates must carry it.
    pub network: NetworkName,
    /// How its certificates are checked.
    pub trust: Trust,
}

/// Our own identity: the BG certificate chain and key.
pub struct Identity {
    /// Our network's name; must match the certificate.
    pub network: NetworkName,
    /// The BG certificate first, then any intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    /// The BG private key.
    pub key: PrivateKeyDer<'static>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("network", &self.network)
            .field("chain", &self.chain.len())
            .field("key", &"<secret>")
            .finish()
    }
}

/// Why TLS material could not be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// A PEM file could not be read or held nothing usable.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// A certificate given as our own does not name our network.
    #[error("our certificate is not valid for network {network}: {reason}")]
    OwnName {
        /// Our configured network name.
        network: NetworkName,
        /// rustls's reason.
        reason: TlsError,
    },
    /// A trust entry's CA certificate was refused by the verifier.
    #[error("trust entry for {network}: {reason}")]
    Trust {
        /// The peer.
        network: NetworkName,
        /// What was wrong.
        reason: String,
    },
    /// The same peer network is listed twice, or is our own network.
    #[error("trust entry for {0} is listed twice or names our own network")]
    DuplicatePeer(NetworkName),
    /// More peers than a [`PeerIndex`] can number.
    #[error("too many peers ({0}); at most 65535")]
    TooManyPeers(usize),
    /// rustls refused the configuration.
    #[error("TLS configuration refused: {0}")]
    Config(#[from] TlsError),
}

/// Reads all certificates in a PEM file.
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let pem_error = |reason: String| TlsSetupError::Pem {
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_error("no CERTIFICATE block".into()));
    }
    Ok(certs)
}

/// Reads the first certificate in a PEM file.
pub fn load_certificate(path: &Path) -> Result<CertificateDer<'static>, TlsSetupError> {
    let mut certs = load_certificates(path)?;
    Ok(certs.swap_remove(0))
}

/// Reads a private key from a PEM file.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsSetupError::Pem {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Parses PEM text held in memory (generated material in tests and the demo).
pub fn certificate_from_pem(pem: &str) -> Result<CertificateDer<'static>, TlsSetupError> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| TlsSetupError::Pem {
        path: PathBuf::from("<memory>"),
        reason: e.to_string(),
    })
}

/// Parses a PEM private key held in memory.
pub fn private_key_from_pem(pem: &str) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| TlsSetupError::Pem {
        path: PathBuf::from("<memory>"),
        reason: e.to_string(),
    })
}

/// The ring provider restricted to TLS 1.3 AEAD suites, AES-GCM first
/// (hardware AES on every server CPU this runs on).
pub fn provider() -> Arc<CryptoProvider> {
    let mut provider = ring_provider::default_provider();
    provider.cipher_suites = vec![
        ring_provider::cipher_suite::TLS13_AES_128_GCM_SHA256,
        ring_provider::cipher_suite::TLS13_AES_256_GCM_SHA384,
        ring_provider::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(provider)
}

/// How one trust entry checks a certificate.
#[derive(Debug)]
enum Checker {
    Ca {
        client: Arc<dyn ClientCertVerifier>,
        server: Arc<WebPkiServerVerifier>,
    },
    Pinned(CertificateDer<'static>),
}

#[derive(Debug)]
struct TrustedPeer {
    network: NetworkName,
    server_name: ServerName<'static>,
    checker: Checker,
}

/// The trust list of one generation, ready to check certificates.
#[derive(Debug)]
pub struct PeerSet {
    peers: Vec<TrustedPeer>,
    algorithms: WebPkiSupportedAlgorithms,
}

/// Which side of the handshake a certificate is checked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Usage {
    /// The peer dialed us: it presents a client certificate.
    Client,
    /// We dialed the peer: it presents a server certificate.
    Server,
}

impl PeerSet {
    fn new(
        own: &NetworkName,
        trusts: &[PeerTrust],
        provider: &Arc<CryptoProvider>,
    ) -> Result<PeerSet, TlsSetupError> {
        if trusts.len() > usize::from(u16::MAX) {
            return Err(TlsSetupError::TooManyPeers(trusts.len()));
        }
        let mut peers: Vec<TrustedPeer> = Vec::with_capacity(trusts.len());
        for entry in trusts {
            if &entry.network == own || peers.iter().any(|p| p.network == entry.network) {
                return Err(TlsSetupError::DuplicatePeer(entry.network.clone()));
            }
            let trust_error = |reason: String| TlsSetupError::Trust {
                network: entry.network.clone(),
                reason,
            };
            let checker = match &entry.trust {
                Trust::Ca(cas) => {
                    let mut roots = RootCertStore::empty();
                    for ca in cas {
                        roots
                            .add(ca.clone())
                            .map_err(|e| trust_error(e.to_string()))?;
                    }
                    let roots = Arc::new(roots);
                    let client = WebPkiClientVerifier::builder_with_provider(
                        roots.clone(),
                        provider.clone(),
                    )
                    .build()
                    .map_err(|e| trust_error(e.to_string()))?;
                    let server =
                        WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                            .build()
                            .map_err(|e| trust_error(e.to_string()))?;
                    Checker::Ca { client, server }
                }
                Trust::Pinned(cert) => {
                    ParsedCertificate::try_from(cert).map_err(|e| trust_error(e.to_string()))?;
                    Checker::Pinned(cert.clone())
                }
            };
            peers.push(TrustedPeer {
                server_name: entry.network.server_name(),
                network: entry.network.clone(),
                checker,
            });
        }
        Ok(PeerSet {
            peers,
            algorithms: provider.signature_verification_algorithms,
        })
    }

    /// Number of trusted peers.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether no peer is trusted.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// The name of the peer at `index`.
    pub fn name(&self, index: PeerIndex) -> Option<&NetworkName> {
        self.peers.get(index.get()).map(|p| &p.network)
    }

    /// The position of `network` in this list.
    pub fn index_of(&self, network: &NetworkName) -> Option<PeerIndex> {
        self.peers
            .iter()
            .position(|p| &p.network == network)
            .and_then(|i| u16::try_from(i).ok())
            .map(PeerIndex)
    }

    fn check(
        &self,
        peer: &TrustedPeer,
        usage: Usage,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), TlsError> {
        match &peer.checker {
            Checker::Ca { client, server } => {
                match usage {
                    Usage::Client => {
                        client.verify_client_cert(end_entity, intermediates, now)?;
                    }
                    Usage::Server => {
                        // Checks the chain, the dates, serverAuth and the name.
                        server.verify_server_cert(
                            end_entity,
                            intermediates,
                            &peer.server_name,
                            &[],
                            now,
                        )?;
                    }
                }
                verify_server_name(&ParsedCertificate::try_from(end_entity)?, &peer.server_name)?;
                check_exact_name(end_entity, &peer.network)
            }
            Checker::Pinned(pinned) => {
                if pinned.as_ref() != end_entity.as_ref() {
                    return Err(TlsError::InvalidCertificate(
                        CertificateError::UnknownIssuer,
                    ));
                }
                check_dates(end_entity, now)?;
                verify_server_name(&ParsedCertificate::try_from(end_entity)?, &peer.server_name)?;
                check_exact_name(end_entity, &peer.network)
            }
        }
    }

    /// Checks an established link's certificate again, against this list's
    /// entry `index` (after a reload changed the trust list): `dialed` links
    /// were checked as servers, accepted ones as clients.
    pub fn verify_established(
        &self,
        index: PeerIndex,
        dialed: bool,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), TlsError> {
        if dialed {
            let peer = self
                .peers
                .get(index.get())
                .ok_or(TlsError::InvalidCertificate(
                    CertificateError::UnknownIssuer,
                ))?;
            self.check(peer, Usage::Server, end_entity, intermediates, now)
        } else {
            match self.authenticate_client(end_entity, intermediates, now)? {
                found if found == index => Ok(()),
                _ => Err(TlsError::InvalidCertificate(
                    CertificateError::NotValidForName,
                )),
            }
        }
    }

    /// Which trusted peer `end_entity` belongs to, checked for a connection
    /// the peer dialed. The error is the most telling one across entries: a
    /// certificate that one entry's CA vouches for but that is expired or names
    /// another network says so, rather than "unknown issuer".
    pub fn authenticate_client(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<PeerIndex, TlsError> {
        let mut best = TlsError::InvalidCertificate(CertificateError::UnknownIssuer);
        for (i, peer) in self.peers.iter().enumerate() {
            match self.check(peer, Usage::Client, end_entity, intermediates, now) {
                Ok(()) => {
                    return u16::try_from(i)
                        .map(PeerIndex)
                        .map_err(|_| TlsError::General("peer index".into()))
                }
                Err(e) => {
                    if refusal_rank(&e) > refusal_rank(&best) {
                        best = e;
                    }
                }
            }
        }
        Err(best)
    }
}

/// A BG certificate names exactly one network: exactly one subject
/// alternative name of any kind, a DNS name equal byte for byte to the
/// network's name (webpki's own check folds case and honours wildcards; a
/// network identity must do neither; and a URI or IP entry beside it is
/// outside a CA's DNS name constraint, so it would name something the
/// network's CA was never allowed to vouch for).
fn check_exact_name(
    end_entity: &CertificateDer<'_>,
    network: &NetworkName,
) -> Result<(), TlsError> {
    let wrong = || TlsError::InvalidCertificate(CertificateError::NotValidForName);
    let (_, cert) = x509_parser::parse_x509_certificate(end_entity.as_ref())
        .map_err(|_| TlsError::InvalidCertificate(CertificateError::BadEncoding))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|_| TlsError::InvalidCertificate(CertificateError::BadEncoding))?
        .ok_or_else(wrong)?;
    match san.value.general_names.as_slice() {
        [x509_parser::extensions::GeneralName::DNSName(only)] if *only == network.as_str() => {
            Ok(())
        }
        _ => Err(wrong()),
    }
}

/// Checks `notBefore <= now <= notAfter` of a pinned certificate.
fn check_dates(end_entity: &CertificateDer<'_>, now: UnixTime) -> Result<(), TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(end_entity.as_ref())
        .map_err(|_| TlsError::InvalidCertificate(CertificateError::BadEncoding))?;
    let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    let validity = cert.validity();
    if now < validity.not_before.timestamp() {
        return Err(TlsError::InvalidCertificate(CertificateError::NotValidYet));
    }
    if now > validity.not_after.timestamp() {
        return Err(TlsError::InvalidCertificate(CertificateError::Expired));
    }
    Ok(())
}

/// Orders verification errors from least to most specific.
fn refusal_rank(error: &TlsError) -> u8 {
    match Refusal::classify(error) {
        Refusal::UnknownCa => 0,
        Refusal::BadCertificate => 1,
        Refusal::WrongNetwork => 2,
        Refusal::CertificateExpired => 3,
        _ => 0,
    }
}

/// The handshake-signature half of a verifier, the same for both sides:
/// rustls's own checks with the provider's algorithms (`self.peers`).
macro_rules! handshake_signature_checks {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, TlsError> {
            verify_tls12_signature(message, cert, dss, &self.peers.algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, TlsError> {
            verify_tls13_signature(message, cert, dss, &self.peers.algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.peers.algorithms.supported_schemes()
        }
    };
}

/// Verifies the certificate of a peer that dialed us.
#[derive(Debug)]
struct PeerClientVerifier {
    peers: Arc<PeerSet>,
}

impl ClientCertVerifier for PeerClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, TlsError> {
        self.peers
            .authenticate_client(end_entity, intermediates, now)
            .map(|_| ClientCertVerified::assertion())
    }

    handshake_signature_checks!();
}

/// Verifies the certificate of the one peer we dialed.
#[derive(Debug)]
struct PeerServerVerifier {
    peers: Arc<PeerSet>,
    index: usize,
}

impl ServerCertVerifier for PeerServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        // The name checked is the trust entry's, whatever name the dialer used.
        let peer = self
            .peers
            .peers
            .get(self.index)
            .ok_or(TlsError::InvalidCertificate(
                CertificateError::UnknownIssuer,
            ))?;
        self.peers
            .check(peer, Usage::Server, end_entity, intermediates, now)
            .map(|()| ServerCertVerified::assertion())
    }

    handshake_signature_checks!();
}

/// One generation of TLS material: our identity and the trust list, as
/// rustls configurations. Replaced whole on reload; links keep the generation
/// they were made with until they close.
#[derive(Debug)]
pub struct BgTls {
    generation: u64,
    own: NetworkName,
    peers: Arc<PeerSet>,
    server: Arc<ServerConfig>,
    clients: Vec<Arc<ClientConfig>>,
}

impl BgTls {
    /// Builds generation `generation` from our identity and the trust list.
    pub fn new(
        generation: u64,
        identity: Identity,
        trusts: &[PeerTrust],
    ) -> Result<BgTls, TlsSetupError> {
        let provider = provider();
        let peers = Arc::new(PeerSet::new(&identity.network, trusts, &provider)?);
        let own_cert = identity.chain.first().ok_or_else(|| TlsSetupError::Pem {
            path: PathBuf::from("<identity>"),
            reason: "empty certificate chain".into(),
        })?;
        ParsedCertificate::try_from(own_cert)
            .and_then(|cert| verify_server_name(&cert, &identity.network.server_name()))
            .map_err(|reason| TlsSetupError::OwnName {
                network: identity.network.clone(),
                reason,
            })?;

        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(Arc::new(PeerClientVerifier {
                peers: peers.clone(),
            }))
            .with_single_cert(identity.chain.clone(), identity.key.clone_key())?;
        server.alpn_protocols = vec![ALPN_BORDER_V1.to_vec()];
        server.session_storage = Arc::new(NoServerSessionStorage {});
        server.send_tls13_tickets = 0;
        server.max_early_data_size = 0;
        let server = Arc::new(server);

        let mut clients = Vec::with_capacity(peers.len());
        for index in 0..peers.len() {
            let mut client = ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&[&rustls::version::TLS13])?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PeerServerVerifier {
                    peers: peers.clone(),
                    index,
                }))
                .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())?;
            client.alpn_protocols = vec![ALPN_BORDER_V1.to_vec()];
            client.resumption = Resumption::disabled();
            clients.push(Arc::new(client));
        }
        Ok(BgTls {
            generation,
            own: identity.network,
            peers,
            server,
            clients,
        })
    }

    /// Loads our identity and the trust list from PEM files and builds
    /// generation `generation`.
    pub fn load(
        generation: u64,
        network: NetworkName,
        cert: &Path,
        key: &Path,
        trusts: &[(NetworkName, TrustFile)],
    ) -> Result<BgTls, TlsSetupError> {
        let identity = Identity {
            network,
            chain: load_certificates(cert)?,
            key: load_private_key(key)?,
        };
        let trusts = trusts
            .iter()
            .map(|(network, file)| {
                Ok(PeerTrust {
                    network: network.clone(),
                    trust: match file {
                        TrustFile::Ca(path) => Trust::Ca(load_certificates(path)?),
                        TrustFile::Pinned(path) => Trust::Pinned(load_certificate(path)?),
                    },
                })
            })
            .collect::<Result<Vec<_>, TlsSetupError>>()?;
        BgTls::new(generation, identity, &trusts)
    }

    /// This generation's number (rises on every reload).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Our network's name.
    pub fn own_network(&self) -> &NetworkName {
        &self.own
    }

    /// The trust list.
    pub fn peers(&self) -> &Arc<PeerSet> {
        &self.peers
    }

    /// The configuration for connections peers dial to us.
    pub fn server_config(&self) -> &Arc<ServerConfig> {
        &self.server
    }

    /// The configuration for dialing the peer at `index`.
    pub fn client_config(&self, index: PeerIndex) -> Option<&Arc<ClientConfig>> {
        self.clients.get(index.get())
    }
}

/// Where a trust entry's certificate comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrustFile {
    /// A PEM file holding the peer network's CA certificate (or several: a
    /// bundle, while the peer rotates its CA).
    Ca(PathBuf),
    /// A PEM file holding the peer's BG certificate, pinned.
    Pinned(PathBuf),
}

impl TrustFile {
    /// The file.
    pub fn path(&self) -> &Path {
        match self {
            TrustFile::Ca(path) | TrustFile::Pinned(path) => path,
        }
    }
}

/// Why a connection was refused during its handshake: the counter and log
/// label for each (`docs/operations.md`, counters).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The certificate chains to no trusted CA and matches no pin.
    UnknownCa,
    /// Trusted issuer, but not valid for the network it was checked for.
    WrongNetwork,
    /// Expired or not yet valid.
    CertificateExpired,
    /// Another certificate problem (encoding, purpose, extension).
    BadCertificate,
    /// The peer presented no certificate.
    NoCertificate,
    /// The bytes were not TLS at all (plain TCP, a presence frame in clear,
    /// an HTTP request, noise).
    NotTls,
    /// TLS, but broken or not what we speak (version, ALPN, alert, misbehaviour).
    Protocol,
    /// The peer refused us (it sent an alert).
    PeerRefused,
    /// The handshake did not finish in time.
    HandshakeTimeout,
    /// The connection closed before the handshake finished.
    ClosedDuringHandshake,
    /// A dial failed at the socket (refused, unreachable, reset).
    ConnectFailed,
    /// An unauthenticated inbound connection, idle, closed to make room for
    /// a newer one (see `endpoint::admission`).
    EvictedIdle,
}

impl Refusal {
    /// Every refusal, in counter order.
    pub const ALL: [Refusal; 12] = [
        Refusal::UnknownCa,
        Refusal::WrongNetwork,
        Refusal::CertificateExpired,
        Refusal::BadCertificate,
        Refusal::NoCertificate,
        Refusal::NotTls,
        Refusal::Protocol,
        Refusal::PeerRefused,
        Refusal::HandshakeTimeout,
        Refusal::ClosedDuringHandshake,
        Refusal::ConnectFailed,
        Refusal::EvictedIdle,
    ];

    /// Stable counter and log label.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::UnknownCa => "unknown_ca",
            Refusal::WrongNetwork => "wrong_network",
            Refusal::CertificateExpired => "certificate_expired",
            Refusal::BadCertificate => "bad_certificate",
            Refusal::NoCertificate => "no_certificate",
            Refusal::NotTls => "not_tls",
            Refusal::Protocol => "protocol",
            Refusal::PeerRefused => "peer_refused",
            Refusal::HandshakeTimeout => "handshake_timeout",
            Refusal::ClosedDuringHandshake => "closed_during_handshake",
            Refusal::ConnectFailed => "connect_failed",
            Refusal::EvictedIdle => "evicted_idle",
        }
    }

    /// Position in [`Refusal::ALL`].
    pub fn index(self) -> usize {
        Refusal::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }

    /// Maps a rustls handshake error to its refusal.
    pub fn classify(error: &TlsError) -> Refusal {
        match error {
            TlsError::InvalidCertificate(cert) => match cert {
                CertificateError::UnknownIssuer
                | CertificateError::BadSignature
                | CertificateError::ApplicationVerificationFailure => Refusal::UnknownCa,
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => Refusal::WrongNetwork,
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. } => Refusal::CertificateExpired,
                _ => Refusal::BadCertificate,
            },
            TlsError::NoCertificatesPresented => Refusal::NoCertificate,
            TlsError::InvalidMessage(
                InvalidMessage::InvalidContentType | InvalidMessage::UnknownProtocolVersion,
            ) => Refusal::NotTls,
            TlsError::AlertReceived(_) => Refusal::PeerRefused,
            _ => Refusal::Protocol,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
