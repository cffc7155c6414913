//! Who a network is: its name, as its certificates carry it.
//!
//! A network's identity on the border is a DNS-style name (`alpha.example`)
//! written as the subject alternative name, and the common name, of its border
//! gateway's certificate. The name, not anything a message says, is what the
//! receiving network charges and logs (`docs/architecture.md`, trust model).

use std::fmt;
use std::str::FromStr;

use rustls::pki_types::ServerName;

/// Longest network name: a DNS name's limit.
pub const NETWORK_NAME_LEN_MAX: usize = 253;
/// Longest label between dots.
pub const NETWORK_LABEL_LEN_MAX: usize = 63;

/// A network's name on the border: lowercase DNS labels (`a-z`, `0-9`, `-`)
/// joined by dots, 1–253 characters, each label 1–63 characters and not
/// starting or ending with `-`.
///
/// Invariant: the string obeys those rules, so it is always a valid TLS server
/// name and compares byte for byte (no case folding anywhere).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetworkName(Box<str>);

/// Why a string is not a network name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NetworkNameError {
    /// Empty, or longer than 253 characters.
    #[error("a network name has 1 to {NETWORK_NAME_LEN_MAX} characters, this one has {0}")]
    Length(usize),
    /// A label (between dots) is empty or longer than 63 characters.
    #[error("label {0:?} must have 1 to {NETWORK_LABEL_LEN_MAX} characters")]
    LabelLength(String),
    /// A character outside `a-z`, `0-9`, `-`, `.`.
    #[error("character {0:?} is not allowed (use lowercase a-z, 0-9, '-' and '.')")]
    Character(char),
    /// A label starts or ends with `-`.
    #[error("label {0:?} starts or ends with '-'")]
    Hyphen(String),
}

impl NetworkName {
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as a TLS server name (for dialing and name checks).
    pub fn server_name(&self) -> ServerName<'static> {
        // The invariant makes this infallible; the fallback keeps it panic-free.
        ServerName::try_from(self.0.to_string())
            .unwrap_or_else(|_| ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into()))
    }
}

impl FromStr for NetworkName {
    type Err = NetworkNameError;

    fn from_str(s: &str) -> Result<NetworkName, NetworkNameError> {
        if s.is_empty() || s.len() > NETWORK_NAME_LEN_MAX {
            return Err(NetworkNameError::Length(s.len()));
        }
        if let Some(bad) = s
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '.'))
        {
            return Err(NetworkNameError::Character(bad));
        }
        for label in s.split('.') {
            if label.is_empty() || label.len() > NETWORK_LABEL_LEN_MAX {
                return Err(NetworkNameError::LabelLength(label.to_string()));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(NetworkNameError::Hyphen(label.to_string()));
            }
        }
        Ok(NetworkName(s.into()))
    }
}

impl fmt::Display for NetworkName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NetworkName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NetworkName({})", self.0)
    }
}

/// A peer network's position in the trust list of one TLS generation
/// ([`crate::BgTls`]). Positions are renumbered on reload; names are not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerIndex(pub u16);

impl PeerIndex {
    /// The position as a `usize`, for indexing per-peer tables.
    pub fn get(self) -> usize {
        usize::from(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_lowercase_dns_names() {
        for ok in ["alpha.example", "a", "net-b.operator.example", "x1.y2"] {
            let name: NetworkName = ok.parse().unwrap();
            assert_eq!(name.as_str(), ok);
            assert!(matches!(name.server_name(), ServerName::DnsName(_)));
        }
    }

    #[test]
    fn refuses_what_a_certificate_name_check_could_fold_or_misread() {
        assert_eq!(
            "Alpha.example".parse::<NetworkName>(),
            Err(NetworkNameError::Character('A'))
        );
        assert_eq!(
            "a..b".parse::<NetworkName>(),
            Err(NetworkNameError::LabelLength(String::new()))
        );
        assert_eq!(
            "-a.b".parse::<NetworkName>(),
            Err(NetworkNameError::Hyphen("-a".into()))
        );
        assert_eq!(
            "*.b".parse::<NetworkName>(),
            Err(NetworkNameError::Character('*'))
        );
        assert_eq!("".parse::<NetworkName>(), Err(NetworkNameError::Length(0)));
        let long = "a".repeat(64);
        assert!(matches!(
            long.parse::<NetworkName>(),
            Err(NetworkNameError::LabelLength(_))
        ));
    }
}
