//! Sealed direct messages: end-to-end encryption of a body to one recipient.
//!
//! A sealed message is an ordinary signed envelope of type `SEALED` whose target names the
//! recipient. Its body holds an HPKE (RFC 9180) base-mode ciphertext with the suite
//! DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / AES-256-GCM: a fresh ephemeral X25519 key per
//! message, `info = "kos-klp-v1/seal"`, and as associated data the deterministic CBOR array
//! `[version, type, author, seq, created_ms, target]` of the envelope header. The plaintext is
//! the CBOR array `[inner type, inner body]`. The envelope signature covers the ciphertext, so
//! the sender is authenticated by its Ed25519 key; relays see only the outer header.
//!
//! Each identity's X25519 key is derived from its Ed25519 seed:
//! `DeriveKeyPair(SHA-256("kos-klp-v1/x25519" 0x00 ‖ seed))` (RFC 9180 §7.1.3).

use std::fmt;

use hpke::{
    Deserializable, Kem as _, OpModeR, OpModeS, Serializable, aead::AesGcm256, kdf::HkdfSha256,
    kem::X25519HkdfSha256,
};
use serde_bytes::ByteBuf;
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use crate::{
    address::Address,
    cbor,
    envelope::{
        DecodeError, EncodeError, Header, Message, MessageType, PROTOCOL_VERSION, Payload,
        structural,
    },
    identity::SecretKey,
    payload::Sealed,
};

/// HPKE `info` of sealed messages.
pub const SEAL_INFO: &[u8] = b"kos-klp-v1/seal";
/// Domain prefix of the X25519 key derivation.
pub const X25519_DERIVATION_DOMAIN: &[u8] = b"kos-klp-v1/x25519\0";

type Kem = X25519HkdfSha256;

/// Why sealing or opening failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The message is not of type SEALED.
    #[error("message is not a SEALED message")]
    NotSealed,
    /// SEALED bodies cannot themselves be sealed.
    #[error("a SEALED message cannot be sealed again")]
    Nested,
    /// The 32 bytes are not a usable X25519 public key.
    #[error("invalid X25519 public key")]
    InvalidKey,
    /// Decryption failed: the message was sealed to another key, or altered.
    #[error("cannot open: not sealed to this key, or altered in transit")]
    OpenFailed,
    /// The decrypted plaintext is not a valid inner message.
    #[error("sealed plaintext is invalid: {0}")]
    BadPlaintext(DecodeError),
    /// Building the outer envelope failed.
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

/// An X25519 public key for sealed messages (published in directory records).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct EncryptionKey(pub [u8; 32]);

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EncryptionKey(")?;
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))?;
        write!(f, ")")
    }
}

fn derive(secret: &SecretKey) -> (<Kem as hpke::Kem>::PrivateKey, <Kem as hpke::Kem>::PublicKey) {
    let seed = secret.seed();
    let mut h = Sha256::new();
    h.update(X25519_DERIVATION_DOMAIN);
    h.update(seed.as_slice());
    let ikm = Zeroizing::new(<[u8; 32]>::from(h.finalize()));
    Kem::derive_keypair(ikm.as_slice())
}

impl SecretKey {
    /// This identity's X25519 encryption public key.
    pub fn encryption_key(&self) -> EncryptionKey {
        let (_, pk) = derive(self);
        let mut out = [0u8; 32];
        out.copy_from_slice(&pk.to_bytes());
        EncryptionKey(out)
    }
}

/// Seals `inner` from `sender` to the holder of `recipient`, addressed to `target`.
#[cfg(feature = "os-rng")]
pub fn seal(
    sender: &SecretKey,
    recipient: &EncryptionKey,
    seq: u64,
    created_ms: u64,
    target: Address,
    inner: &Payload,
) -> Result<Message, SealError> {
    seal_inner(sender, recipient, seq, created_ms, target, inner, None)
}

/// [`seal`] with the ephemeral key derived from `ikm`. Only for test vectors: reusing an `ikm`
/// destroys confidentiality.
#[doc(hidden)]
pub fn seal_with_ephemeral_ikm(
    sender: &SecretKey,
    recipient: &EncryptionKey,
    seq: u64,
    created_ms: u64,
    target: Address,
    inner: &Payload,
    ikm: [u8; 32],
) -> Result<Message, SealError> {
    seal_inner(sender, recipient, seq, created_ms, target, inner, Some(ikm))
}

fn seal_inner(
    sender: &SecretKey,
    recipient: &EncryptionKey,
    seq: u64,
    created_ms: u64,
    target: Address,
    inner: &Payload,
    ephemeral_ikm: Option<[u8; 32]>,
) -> Result<Message, SealError> {
    let kind = inner.message_type();
    if kind == MessageType::Sealed {
        return Err(SealError::Nested);
    }
    inner
        .validate()
        .map_err(|error| SealError::Encode(EncodeError::InvalidBody { kind, error }))?;
    let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(&recipient.0)
        .map_err(|_| SealError::InvalidKey)?;
    let header = Header {
        version: PROTOCOL_VERSION,
        kind: MessageType::Sealed,
        author: sender.public(),
        seq,
        created_ms,
        target: Some(target.clone()),
    };
    let aad = header.encode_without_body();
    let plaintext = Zeroizing::new(cbor::to_vec(&(
        u64::from(kind.code()),
        serde_bytes::Bytes::new(&inner.encode()),
    )));
    let (enc, ct) = match ephemeral_ikm {
        // Only `seal`, which exists with the `os-rng` feature, passes no ikm.
        #[cfg(not(feature = "os-rng"))]
        None => return Err(SealError::InvalidKey),
        // The system random number generator (getrandom).
        #[cfg(feature = "os-rng")]
        None => hpke::single_shot_seal::<AesGcm256, HkdfSha256, Kem>(
            &OpModeS::Base,
            &pk,
            SEAL_INFO,
            &plaintext,
            &aad,
        ),
        Some(ikm) => hpke::single_shot_seal_with_rng::<AesGcm256, HkdfSha256, Kem>(
            &OpModeS::Base,
            &pk,
            SEAL_INFO,
            &plaintext,
            &aad,
            &mut FixedRng(ikm, 0),
        ),
    }
    .map_err(|_| SealError::InvalidKey)?;
    let mut enc_bytes = [0u8; 32];
    enc_bytes.copy_from_slice(&enc.to_bytes());
    let body = Payload::Sealed(Sealed { ct: ByteBuf::from(ct), enc: enc_bytes });
    Ok(Message::sign(sender, seq, created_ms, Some(target), body)?)
}

/// Opens a SEALED message with the recipient's identity key. Returns the inner body; its author
/// is `message.author()`, already verified by the envelope signature.
pub fn open(message: &Message, recipient: &SecretKey) -> Result<Payload, SealError> {
    let Payload::Sealed(sealed) = message.payload() else {
        return Err(SealError::NotSealed);
    };
    let (sk, _) = derive(recipient);
    let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(&sealed.enc)
        .map_err(|_| SealError::OpenFailed)?;
    let aad = message.header().encode_without_body();
    let plaintext = Zeroizing::new(
        hpke::single_shot_open::<AesGcm256, HkdfSha256, Kem>(
            &OpModeR::Base,
            &sk,
            &enc,
            SEAL_INFO,
            &sealed.ct,
            &aad,
        )
        .map_err(|_| SealError::OpenFailed)?,
    );
    let (code, body): (u64, ByteBuf) = cbor::from_slice_canonical_array(&plaintext, 2)
        .map_err(|e| SealError::BadPlaintext(structural(e)))?;
    let kind = MessageType::from_code(code)
        .ok_or(SealError::BadPlaintext(DecodeError::UnknownType(code)))?;
    if kind == MessageType::Sealed {
        return Err(SealError::Nested);
    }
    Payload::decode(kind, &body).map_err(SealError::BadPlaintext)
}

/// A "random" source that yields a fixed 32-byte string, for reproducible test vectors.
struct FixedRng([u8; 32], usize);

impl hpke::rand_core::TryRng for FixedRng {
    type Error = core::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        let mut b = [0u8; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        let mut b = [0u8; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        for d in dst {
            *d = self.0[self.1 % 32];
            self.1 += 1;
        }
        Ok(())
    }
}

impl hpke::rand_core::TryCryptoRng for FixedRng {}
