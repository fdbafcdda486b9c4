//! # kos-protocol
//!
//! Identities and the KLP (Kind Link Protocol) wire format of kOS, with no networking and no
//! storage: everything here is a pure function of its inputs (key generation and sealing aside,
//! which draw from the OS random number generator).
//!
//! - [`identity`]: Ed25519 keys, `did:key`, KLP-IDs, libp2p peer ids.
//! - [`address`]: `klp://`, `peer://` and `agent://` addresses.
//! - [`Message`]: the signed CBOR envelope; [`Message::decode`] is the only way in from the
//!   network and checks everything.
//! - [`payload`]: the typed body of every message type.
//! - [`seal`]: end-to-end encrypted direct messages (HPKE, X25519, AES-256-GCM).
//! - [`vault`]: secret keys at rest under an Argon2id-derived key.
//!
//! ```
//! use kos_protocol::{Message, Payload, SecretKey, payload::{Choice, MessageId, Vote}};
//!
//! let voter = SecretKey::from_seed(&[7; 32]);
//! let vote = Payload::Vote(Vote {
//!     choice: Choice::Yes,
//!     reason: None,
//!     proposal: MessageId([1; 32]),
//!     revision: 0,
//!     federation: MessageId([2; 32]),
//! });
//! let msg = Message::sign(&voter, 1, 1_700_000_000_000, None, vote)?;
//! let received = Message::decode(msg.bytes())?;
//! assert_eq!(received.id(), msg.id());
//! assert_eq!(received.author(), voter.public());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

pub mod address;
pub mod agent;
mod cbor;
pub mod directory;
mod envelope;
pub mod identity;
pub mod payload;
pub mod seal;
pub mod time;
#[cfg(feature = "os-rng")]
pub mod vault;

use sha2::{Digest as _, Sha256};

pub use address::{Address, AddressError, Host};
pub use cbor::{
    CborError, diagnostic, from_slice_canonical as from_cbor, to_vec as to_cbor,
    to_vec_deterministic as to_cbor_deterministic,
};
pub use envelope::{
    DecodeError, EncodeError, Header, MAX_ENVELOPE_LEN, Message, MessageType, PROTOCOL_VERSION,
    Payload, SIGNATURE_DOMAIN, message_id,
};
pub use identity::{IdentityError, KlpId, PublicKey, SecretKey};
pub use payload::{Digest, MessageId};

/// Domain prefix of secret-ballot commitments.
pub const COMMIT_DOMAIN: &[u8] = b"kos-klp-v1/vote-commit\0";
/// Domain prefix of key-rotation statements.
pub const ROTATION_DOMAIN: &[u8] = b"kos-klp-v1/key-rotation\0";

/// The commitment a VOTE_COMMIT carries:
/// `SHA-256(COMMIT_DOMAIN ‖ federation ‖ proposal ‖ voter ‖ u32be(revision) ‖ salt ‖ CBOR(choice))`.
pub fn vote_commitment(
    federation: &MessageId,
    proposal: &MessageId,
    voter: &PublicKey,
    revision: u32,
    salt: &[u8; 32],
    choice: &payload::Choice,
) -> Digest {
    let mut h = Sha256::new();
    h.update(COMMIT_DOMAIN);
    h.update(federation.0);
    h.update(proposal.0);
    h.update(voter.as_bytes());
    h.update(revision.to_be_bytes());
    h.update(salt);
    h.update(cbor::to_vec(choice));
    Digest(h.finalize().into())
}

/// The kind of a node export file's body (`kosctl export`).
pub const EXPORT_KIND: &str = "kos-export/1";
/// Domain prefix of the statement an export's signature covers.
pub const EXPORT_DOMAIN: &[u8] = b"kos-export/1\0";

/// What a node export's signature covers: [`EXPORT_DOMAIN`] followed by the body's exact bytes.
pub fn export_statement(body: &[u8]) -> Vec<u8> {
    let mut m = EXPORT_DOMAIN.to_vec();
    m.extend_from_slice(body);
    m
}

/// The statement a new key signs in a KEY_ROTATION: `ROTATION_DOMAIN ‖ old key ‖ new key`.
pub fn rotation_statement(old: &PublicKey, new: &PublicKey) -> Vec<u8> {
    let mut m = Vec::with_capacity(ROTATION_DOMAIN.len() + 64);
    m.extend_from_slice(ROTATION_DOMAIN);
    m.extend_from_slice(old.as_bytes());
    m.extend_from_slice(new.as_bytes());
    m
}

/// Whether a KEY_ROTATION signed by `old` carries a valid proof by its new key.
pub fn rotation_is_valid(old: &PublicKey, rotation: &payload::KeyRotation) -> bool {
    rotation.new_key.verify(&rotation_statement(old, &rotation.new_key), &rotation.proof)
}
