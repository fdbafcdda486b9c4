//! Identities: Ed25519 keys and the names derived from them.
//!
//! One Ed25519 key gives a node (or a local agent) all of its names:
//! - the libp2p [`PeerId`] (identity multihash of the protobuf-encoded public key),
//! - a `did:key` (`did:key:z` + base58btc(`0xed 0x01` ‖ public key)),
//! - the 128-bit [`KlpId`] (first 16 bytes of SHA-256(public key), lower-case base32, no padding),
//! - an X25519 encryption key for sealed direct messages, derived from the secret seed
//!   (see [`crate::seal`]).

use std::{fmt, str::FromStr};

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use libp2p_identity::PeerId;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Length of an Ed25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
/// The multicodec prefix of an Ed25519 public key (`ed25519-pub`, 0xed, as unsigned varint).
pub const ED25519_MULTICODEC: [u8; 2] = [0xed, 0x01];
const DID_KEY_PREFIX: &str = "did:key:z";

/// Why an identity string or key could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The 32 bytes are not a valid Ed25519 point (or are a small-order point).
    #[error("not a valid Ed25519 public key")]
    InvalidPublicKey,
    /// The string does not start with `did:key:z`.
    #[error("not a did:key with a base58btc multibase value (expected prefix `did:key:z`)")]
    NotDidKey,
    /// The base58btc part of a did:key does not decode.
    #[error("did:key value is not valid base58btc")]
    BadBase58,
    /// The did:key names a key type other than Ed25519.
    #[error("did:key is not an Ed25519 key (multicodec 0xed01 expected)")]
    NotEd25519,
    /// The did:key has the right multicodec but the wrong key length.
    #[error("did:key carries {0} key bytes, 32 expected")]
    BadKeyLength(usize),
    /// The KLP-ID string is not 26 characters of lower-case base32.
    #[error("not a KLP-ID (26 characters of lower-case base32 without padding)")]
    BadKlpId,
    /// The peer id is not the identity multihash of an Ed25519 key.
    #[error("peer id does not embed an Ed25519 public key")]
    PeerIdNotEd25519,
}

/// An Ed25519 secret key. Zeroized on drop; never printed.
#[derive(Clone)]
pub struct SecretKey(SigningKey);

impl SecretKey {
    /// A fresh key from the operating system's random number generator.
    #[cfg(feature = "os-rng")]
    pub fn generate() -> Self {
        SecretKey(SigningKey::generate(&mut rand_core::OsRng))
    }

    /// The key whose 32-byte seed (RFC 8032 private key) is `seed`.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        SecretKey(SigningKey::from_bytes(seed))
    }

    /// The 32-byte seed. Handle with care: it is the whole secret.
    pub fn seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes())
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// Signs `message` (RFC 8032 Ed25519, deterministic).
    pub fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.0.sign(message).to_bytes()
    }

    /// The libp2p keypair of the same key, for the node's swarm identity.
    pub fn to_libp2p(&self) -> libp2p_identity::Keypair {
        let mut seed = self.0.to_bytes();
        match libp2p_identity::ed25519::SecretKey::try_from_bytes(&mut seed) {
            Ok(sk) => libp2p_identity::Keypair::from(libp2p_identity::ed25519::Keypair::from(sk)),
            // 32 bytes is always a valid Ed25519 seed.
            Err(_) => unreachable!("an Ed25519 seed of 32 bytes is always valid"),
        }
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

/// An Ed25519 public key: the identity of a node, agent or person.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Parses 32 bytes, refusing encodings that are not valid curve points and small-order
    /// ("weak") keys, which `verify_strict` would refuse anyway.
    pub fn from_bytes(bytes: &[u8; PUBLIC_KEY_LEN]) -> Result<Self, IdentityError> {
        let key = VerifyingKey::from_bytes(bytes).map_err(|_| IdentityError::InvalidPublicKey)?;
        if key.is_weak() {
            return Err(IdentityError::InvalidPublicKey);
        }
        Ok(PublicKey(key))
    }

    /// The 32 key bytes.
    pub fn to_bytes(&self) -> [u8; PUBLIC_KEY_LEN] {
        self.0.to_bytes()
    }

    /// The 32 key bytes, borrowed.
    pub fn as_bytes(&self) -> &[u8; PUBLIC_KEY_LEN] {
        self.0.as_bytes()
    }

    /// Verifies `signature` over `message` with `verify_strict` (rejects non-canonical `S`,
    /// small-order `R` and weak keys).
    pub fn verify(&self, message: &[u8], signature: &[u8; SIGNATURE_LEN]) -> bool {
        let sig = ed25519_dalek::Signature::from_bytes(signature);
        self.0.verify_strict(message, &sig).is_ok()
    }

    /// The KLP-ID of this key.
    pub fn klp_id(&self) -> KlpId {
        let digest = Sha256::digest(self.as_bytes());
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        KlpId(id)
    }

    /// The `did:key:z6Mk…` form of this key.
    pub fn to_did(&self) -> String {
        let mut raw = Vec::with_capacity(34);
        raw.extend_from_slice(&ED25519_MULTICODEC);
        raw.extend_from_slice(self.as_bytes());
        format!("{DID_KEY_PREFIX}{}", bs58::encode(raw).into_string())
    }

    /// Parses a `did:key` naming an Ed25519 key.
    pub fn from_did(did: &str) -> Result<Self, IdentityError> {
        let value = did.strip_prefix(DID_KEY_PREFIX).ok_or(IdentityError::NotDidKey)?;
        // An Ed25519 did:key value is 48 characters; refuse absurd lengths before decoding.
        if value.len() > 64 {
            return Err(IdentityError::BadKeyLength(value.len()));
        }
        let raw = bs58::decode(value).into_vec().map_err(|_| IdentityError::BadBase58)?;
        let key = raw.strip_prefix(&ED25519_MULTICODEC).ok_or(IdentityError::NotEd25519)?;
        let key: &[u8; 32] = key.try_into().map_err(|_| IdentityError::BadKeyLength(key.len()))?;
        Self::from_bytes(key)
    }

    /// The libp2p peer id of this key.
    pub fn to_peer_id(&self) -> PeerId {
        self.to_libp2p().to_peer_id()
    }

    /// The libp2p public key of this key.
    pub fn to_libp2p(&self) -> libp2p_identity::PublicKey {
        match libp2p_identity::ed25519::PublicKey::try_from_bytes(self.as_bytes()) {
            Ok(pk) => libp2p_identity::PublicKey::from(pk),
            Err(_) => unreachable!("a validated Ed25519 key is a valid libp2p key"),
        }
    }

    /// Recovers the key from a peer id (Ed25519 peer ids embed the key in an identity
    /// multihash).
    pub fn from_peer_id(peer: &PeerId) -> Result<Self, IdentityError> {
        let mh = peer.as_ref();
        if mh.code() != 0 {
            return Err(IdentityError::PeerIdNotEd25519);
        }
        let pk = libp2p_identity::PublicKey::try_decode_protobuf(mh.digest())
            .map_err(|_| IdentityError::PeerIdNotEd25519)?
            .try_into_ed25519()
            .map_err(|_| IdentityError::PeerIdNotEd25519)?;
        Self::from_bytes(&pk.to_bytes())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.klp_id())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_did())
    }
}

impl PartialOrd for PublicKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for PublicKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl FromStr for PublicKey {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_did(s)
    }
}

impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.as_bytes())
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes: [u8; 32] = crate::cbor::fixed_bytes::deserialize(d)?;
        PublicKey::from_bytes(&bytes).map_err(serde::de::Error::custom)
    }
}

/// The 128-bit KLP-ID: the first 16 bytes of SHA-256 of an Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KlpId(pub [u8; 16]);

/// Length of a KLP-ID in its text form.
pub const KLP_ID_TEXT_LEN: usize = 26;

fn base32_lower() -> &'static data_encoding::Encoding {
    static ENC: std::sync::OnceLock<data_encoding::Encoding> = std::sync::OnceLock::new();
    ENC.get_or_init(|| {
        let mut spec = data_encoding::Specification::new();
        spec.symbols.push_str("abcdefghijklmnopqrstuvwxyz234567");
        match spec.encoding() {
            Ok(enc) => enc,
            Err(e) => unreachable!("static base32 alphabet is valid: {e}"),
        }
    })
}

impl fmt::Display for KlpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&base32_lower().encode(&self.0))
    }
}

impl fmt::Debug for KlpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KlpId({self})")
    }
}

impl FromStr for KlpId {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != KLP_ID_TEXT_LEN {
            return Err(IdentityError::BadKlpId);
        }
        // data-encoding checks that the unused trailing bits are zero, so each id has exactly
        // one text form.
        let raw = base32_lower().decode(s.as_bytes()).map_err(|_| IdentityError::BadKlpId)?;
        let id: [u8; 16] = raw.try_into().map_err(|_| IdentityError::BadKlpId)?;
        Ok(KlpId(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_key_debug_hides_the_key() {
        let sk = SecretKey::from_seed(&[7u8; 32]);
        let shown = format!("{sk:?}");
        assert_eq!(shown, "SecretKey(..)");
        assert!(!shown.contains("07"));
    }

    #[test]
    fn did_klp_id_and_peer_id_round_trip() {
        let pk = SecretKey::from_seed(&[1u8; 32]).public();
        let did = pk.to_did();
        assert!(did.starts_with("did:key:z6Mk"), "{did}");
        assert_eq!(PublicKey::from_did(&did), Ok(pk));
        let id = pk.klp_id();
        assert_eq!(id.to_string().len(), KLP_ID_TEXT_LEN);
        assert_eq!(id.to_string().parse::<KlpId>(), Ok(id));
        assert_eq!(PublicKey::from_peer_id(&pk.to_peer_id()), Ok(pk));
        assert_eq!(
            SecretKey::from_seed(&[1u8; 32]).to_libp2p().public().to_peer_id(),
            pk.to_peer_id()
        );
    }

    #[test]
    fn identity_rejections_are_typed() {
        assert_eq!(PublicKey::from_did("did:web:x"), Err(IdentityError::NotDidKey));
        assert_eq!(PublicKey::from_did("did:key:z0OIl"), Err(IdentityError::BadBase58));
        // A secp256k1 did:key (multicodec 0xe7 0x01).
        let mut raw = vec![0xe7, 0x01];
        raw.extend_from_slice(&[2u8; 33]);
        let did = format!("did:key:z{}", bs58::encode(raw).into_string());
        assert_eq!(PublicKey::from_did(&did), Err(IdentityError::NotEd25519));
        let mut raw = vec![0xed, 0x01];
        raw.extend_from_slice(&[2u8; 31]);
        let did = format!("did:key:z{}", bs58::encode(raw).into_string());
        assert_eq!(PublicKey::from_did(&did), Err(IdentityError::BadKeyLength(31)));
        // The identity point is small-order: refused.
        let mut ident = [0u8; 32];
        ident[0] = 1;
        assert_eq!(PublicKey::from_bytes(&ident), Err(IdentityError::InvalidPublicKey));
        assert_eq!("ABC".parse::<KlpId>(), Err(IdentityError::BadKlpId));
        // Upper case is not the canonical text form.
        let id = SecretKey::from_seed(&[1u8; 32]).public().klp_id().to_string();
        assert_eq!(id.to_uppercase().parse::<KlpId>(), Err(IdentityError::BadKlpId));
        // A non-Ed25519 (hashed) peer id.
        let peer = PeerId::random();
        assert_eq!(PublicKey::from_peer_id(&peer), Err(IdentityError::PeerIdNotEd25519));
    }
}
