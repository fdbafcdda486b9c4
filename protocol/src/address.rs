//! KLP addresses: `klp://<host>/<path>`, `peer://<peer-id>` and `agent://<host>`, where a host is
//! a [`KlpId`] or a directory name.
//!
//! Parsing accepts upper-case letters in names (DNS names are case-insensitive) and lower-cases
//! them; [`Address`]'s `Display` gives the canonical text form, which is what travels in an
//! envelope's target field.

use std::{fmt, str::FromStr};

use libp2p_identity::PeerId;

use crate::identity::{KLP_ID_TEXT_LEN, KlpId};

/// Longest address accepted, in bytes.
pub const MAX_ADDRESS_LEN: usize = 1024;
/// Longest directory name, in bytes (as for DNS).
pub const MAX_NAME_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

/// Why an address could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// Longer than [`MAX_ADDRESS_LEN`].
    #[error("address is {0} bytes long, at most {MAX_ADDRESS_LEN} are allowed")]
    TooLong(usize),
    /// Not `klp://`, `peer://` or `agent://`.
    #[error("unknown address scheme (expected klp://, peer:// or agent://)")]
    UnknownScheme,
    /// Nothing after the scheme.
    #[error("address has an empty host")]
    EmptyHost,
    /// The host is neither a KLP-ID nor a valid name.
    #[error("invalid name `{name}`: {reason}")]
    InvalidName {
        /// The offending host part.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `peer://` does not name a valid libp2p peer id.
    #[error("invalid peer id in peer:// address")]
    InvalidPeerId,
    /// The path of a `klp://` address holds a character outside the allowed set.
    #[error("invalid character {0:?} in address path")]
    InvalidPath(char),
    /// `peer://` and `agent://` addresses take no path.
    #[error("{0}:// addresses take no path")]
    UnexpectedPath(&'static str),
}

/// The host of a `klp://` or `agent://` address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    /// A KLP-ID.
    Id(KlpId),
    /// A directory name (lower-case labels of `a-z`, `0-9` and `-`, separated by dots).
    Name(String),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Id(id) => id.fmt(f),
            Host::Name(n) => f.write_str(n),
        }
    }
}

impl FromStr for Host {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(AddressError::EmptyHost);
        }
        if s.len() == KLP_ID_TEXT_LEN
            && let Ok(id) = s.parse::<KlpId>()
        {
            return Ok(Host::Id(id));
        }
        let name = s.to_ascii_lowercase();
        let bad = |reason| AddressError::InvalidName { name: s.to_owned(), reason };
        if name.len() > MAX_NAME_LEN {
            return Err(bad("longer than 253 bytes"));
        }
        for label in name.split('.') {
            if label.is_empty() {
                return Err(bad("empty label"));
            }
            if label.len() > MAX_LABEL_LEN {
                return Err(bad("label longer than 63 bytes"));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(bad("label starts or ends with '-'"));
            }
            if !label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
                return Err(bad("only letters, digits, '-' and '.' are allowed"));
            }
        }
        Ok(Host::Name(name))
    }
}

/// A KLP address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Address {
    /// `klp://<host>/<path>`: a resource on an instance or agent. `path` has no leading `/` and
    /// may be empty.
    Klp {
        /// The instance or agent.
        host: Host,
        /// The resource path, without its leading `/`.
        path: String,
    },
    /// `peer://<peer-id>`: a node, by its libp2p peer id.
    Peer(PeerId),
    /// `agent://<host>`: an agent or person.
    Agent(Host),
}

fn path_char_ok(c: char) -> bool {
    // RFC 3986 pchar plus '/', without percent-decoding.
    c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@/%".contains(c)
}

impl FromStr for Address {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > MAX_ADDRESS_LEN {
            return Err(AddressError::TooLong(s.len()));
        }
        if let Some(rest) = s.strip_prefix("klp://") {
            let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
            if let Some(c) = path.chars().find(|c| !path_char_ok(*c)) {
                return Err(AddressError::InvalidPath(c));
            }
            Ok(Address::Klp { host: host.parse()?, path: path.to_owned() })
        } else if let Some(rest) = s.strip_prefix("peer://") {
            if rest.contains('/') {
                return Err(AddressError::UnexpectedPath("peer"));
            }
            if rest.is_empty() {
                return Err(AddressError::EmptyHost);
            }
            rest.parse::<PeerId>().map(Address::Peer).map_err(|_| AddressError::InvalidPeerId)
        } else if let Some(rest) = s.strip_prefix("agent://") {
            if rest.contains('/') {
                return Err(AddressError::UnexpectedPath("agent"));
            }
            Ok(Address::Agent(rest.parse()?))
        } else {
            Err(AddressError::UnknownScheme)
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Klp { host, path } if path.is_empty() => write!(f, "klp://{host}"),
            Address::Klp { host, path } => write!(f, "klp://{host}/{path}"),
            Address::Peer(p) => write!(f, "peer://{p}"),
            Address::Agent(h) => write!(f, "agent://{h}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::SecretKey;

    #[test]
    fn parses_and_formats_every_form() {
        let pk = SecretKey::from_seed(&[3u8; 32]).public();
        let id = pk.klp_id();
        let cases = [
            format!("klp://{id}/commands"),
            "klp://agent.kai.earth/commands".to_owned(),
            "klp://doc.172.docs.kos/manifest.json".to_owned(),
            "klp://node.usa.kai".to_owned(),
            format!("peer://{}", pk.to_peer_id()),
            format!("agent://{id}"),
            "agent://gamma.node-1".to_owned(),
        ];
        for text in cases {
            let addr: Address = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(addr.to_string(), text);
        }
        let addr: Address = format!("klp://{id}/x").parse().expect("parses");
        assert_eq!(addr, Address::Klp { host: Host::Id(id), path: "x".into() });
        // Names are case-insensitive; the canonical form is lower case.
        let addr: Address = "klp://doc.docs.kOS/a".parse().expect("parses");
        assert_eq!(addr.to_string(), "klp://doc.docs.kos/a");
    }

    #[test]
    fn rejections_are_typed() {
        use AddressError::*;
        let long = format!("klp://a/{}", "x".repeat(MAX_ADDRESS_LEN));
        assert_eq!(long.parse::<Address>(), Err(TooLong(long.len())));
        assert_eq!("http://x".parse::<Address>(), Err(UnknownScheme));
        assert_eq!("klp://".parse::<Address>(), Err(EmptyHost));
        assert!(matches!("klp://a..b".parse::<Address>(), Err(InvalidName { .. })));
        assert!(matches!("klp://-a".parse::<Address>(), Err(InvalidName { .. })));
        assert!(matches!("agent://a_b".parse::<Address>(), Err(InvalidName { .. })));
        assert!(matches!(
            format!("klp://{}", "a".repeat(64)).parse::<Address>(),
            Err(InvalidName { .. })
        ));
        assert_eq!("klp://a/b c".parse::<Address>(), Err(InvalidPath(' ')));
        assert_eq!("peer://notapeer".parse::<Address>(), Err(InvalidPeerId));
        assert_eq!("peer://".parse::<Address>(), Err(EmptyHost));
        assert_eq!("peer://x/y".parse::<Address>(), Err(UnexpectedPath("peer")));
        assert_eq!("agent://x/y".parse::<Address>(), Err(UnexpectedPath("agent")));
    }
}
