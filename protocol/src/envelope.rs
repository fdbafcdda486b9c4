//! The KLP envelope: how every message is framed, signed, identified and checked.
//!
//! ```text
//! envelope  = [ header: bstr, signature: bstr(64) ]                 ; CBOR array of 2
//! header    = [ version, type, author: bstr(32), seq, created_ms,
//!               target: tstr / null, body: bstr ]                   ; CBOR array of 7
//! signed    = "kos-klp-v1/envelope" 0x00 ‖ u16be(version) ‖ u16be(type) ‖ header
//! id        = SHA-256(envelope)
//! ```
//!
//! The header travels as a byte string, so the signature covers exactly the bytes received and a
//! verifier never re-encodes anything to check it. All CBOR must be in deterministic encoding
//! (see [`crate::cbor`]), so every message has a single byte form and a single id.
//! `docs/protocol.md` is the normative description.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use sha2::{Digest as _, Sha256};

use crate::{
    address::{Address, AddressError},
    cbor::{self, CborError},
    identity::{PUBLIC_KEY_LEN, PublicKey, SIGNATURE_LEN, SecretKey},
    payload::*,
};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// Largest encoded envelope, in bytes. Leaves room under gossipsub's default 64 KiB transmit
/// size for gossipsub's own framing and signature.
pub const MAX_ENVELOPE_LEN: usize = 60 * 1024;
/// Domain-separation prefix of envelope signatures.
pub const SIGNATURE_DOMAIN: &[u8] = b"kos-klp-v1/envelope\0";

/// Why bytes were refused as a KLP envelope. Each rejection has its own variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Larger than [`MAX_ENVELOPE_LEN`]; nothing was parsed.
    #[error("envelope is {len} bytes, at most {max} are allowed")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The envelope or header is not CBOR of the required shape.
    #[error("malformed envelope: {0}")]
    Malformed(String),
    /// Bytes follow the envelope (or follow the header inside its byte string).
    #[error("{0} trailing byte(s) after the envelope")]
    TrailingBytes(usize),
    /// The envelope or header is valid CBOR but not in deterministic encoding.
    #[error("envelope is not in deterministic CBOR encoding")]
    NonCanonical,
    /// A protocol version this node does not speak.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u64),
    /// A message type this node does not know.
    #[error("unknown message type {0}")]
    UnknownType(u64),
    /// A fixed-length byte field has the wrong length.
    #[error("{field} is {actual} bytes, {expected} expected")]
    FieldLength {
        /// The field.
        field: &'static str,
        /// Required length.
        expected: usize,
        /// Actual length.
        actual: usize,
    },
    /// The author field is not a valid Ed25519 public key.
    #[error("author is not a valid Ed25519 public key")]
    InvalidAuthor,
    /// The target is not a valid address.
    #[error("invalid target address: {0}")]
    InvalidTarget(#[from] AddressError),
    /// The target parses but is not written in its canonical form.
    #[error("target address is not in canonical form")]
    NonCanonicalTarget,
    /// A message type that requires a target has none.
    #[error("{0} requires a target address")]
    MissingTarget(MessageType),
    /// The signature does not verify (strictly) under the author's key.
    #[error("signature does not verify")]
    BadSignature,
    /// The body is not valid CBOR for the message type.
    #[error("{kind} body: {error}")]
    BadBody {
        /// The message type.
        kind: MessageType,
        /// What is wrong.
        error: CborError,
    },
    /// The body decodes but breaks its type's rules.
    #[error("{kind} body invalid: {error}")]
    InvalidBody {
        /// The message type.
        kind: MessageType,
        /// Which rule.
        error: ValidationError,
    },
}

/// Why a message could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The payload breaks its type's rules.
    #[error("{kind} body invalid: {error}")]
    InvalidBody {
        /// The message type.
        kind: MessageType,
        /// Which rule.
        error: ValidationError,
    },
    /// The encoded envelope would exceed [`MAX_ENVELOPE_LEN`].
    #[error("envelope would be {len} bytes, at most {max} are allowed")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A message type that requires a target was given none.
    #[error("{0} requires a target address")]
    MissingTarget(MessageType),
}

macro_rules! message_types {
    ($($variant:ident($ty:ty) = $code:literal, $name:literal;)+) => {
        /// The type of a KLP message, with its wire code.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u16)]
        pub enum MessageType {
            $(#[doc = concat!("`", $name, "` (code ", stringify!($code), ")")] $variant = $code,)+
        }

        impl MessageType {
            /// Every message type.
            pub const ALL: &'static [MessageType] = &[$(MessageType::$variant),+];

            /// The type with wire code `code`.
            pub fn from_code(code: u64) -> Option<Self> {
                match code {
                    $($code => Some(MessageType::$variant),)+
                    _ => None,
                }
            }

            /// The wire code.
            pub fn code(self) -> u16 {
                self as u16
            }

            /// The upper-case name used in documents (`VOTE`, `TASK_REQUEST`, …).
            pub fn name(self) -> &'static str {
                match self { $(MessageType::$variant => $name,)+ }
            }

            /// Parses an upper-case name.
            pub fn from_name(name: &str) -> Option<Self> {
                match name { $($name => Some(MessageType::$variant),)+ _ => None }
            }
        }

        /// A typed message body.
        #[derive(Clone, Debug, PartialEq, Eq, Hash)]
        #[allow(missing_docs)]
        pub enum Payload {
            $($variant($ty),)+
        }

        impl Payload {
            /// The message type of this body.
            pub fn message_type(&self) -> MessageType {
                match self { $(Payload::$variant(_) => MessageType::$variant,)+ }
            }

            /// The body's canonical CBOR encoding.
            pub fn encode(&self) -> Vec<u8> {
                match self { $(Payload::$variant(p) => cbor::to_vec(p),)+ }
            }

            /// Decodes and validates a body of type `kind`.
            pub fn decode(kind: MessageType, bytes: &[u8]) -> Result<Self, DecodeError> {
                match kind {
                    $(MessageType::$variant => {
                        let p: $ty = cbor::from_slice_canonical(bytes)
                            .map_err(|error| DecodeError::BadBody { kind, error })?;
                        Validate::validate(&p).map_err(|error| DecodeError::InvalidBody { kind, error })?;
                        Ok(Payload::$variant(p))
                    })+
                }
            }

            /// Checks the body against its type's rules.
            pub fn validate(&self) -> Result<(), ValidationError> {
                match self { $(Payload::$variant(p) => Validate::validate(p),)+ }
            }
        }
    };
}

message_types! {
    Charter(Charter) = 1, "CHARTER";
    Proposal(Proposal) = 2, "PROPOSAL";
    Revision(Revision) = 3, "REVISION";
    Sponsor(Sponsor) = 4, "SPONSOR";
    Withdraw(Withdraw) = 5, "WITHDRAW";
    Comment(Comment) = 6, "COMMENT";
    Vote(Vote) = 7, "VOTE";
    VoteCommit(VoteCommit) = 8, "VOTE_COMMIT";
    VoteReveal(VoteReveal) = 9, "VOTE_REVEAL";
    Delegation(Delegation) = 10, "DELEGATION";
    TallyAttestation(TallyAttestation) = 11, "TALLY_ATTESTATION";
    KeyRotation(KeyRotation) = 12, "KEY_ROTATION";
    Revocation(Revocation) = 13, "REVOCATION";
    TaskRequest(TaskRequest) = 257, "TASK_REQUEST";
    TaskResult(TaskResult) = 258, "TASK_RESULT";
    AgentMigration(AgentMigration) = 259, "AGENT_MIGRATION";
    ReputationDelta(ReputationDelta) = 260, "REPUTATION_DELTA";
    BroadcastAnnounce(BroadcastAnnounce) = 261, "BROADCAST_ANNOUNCE";
    VectorSync(VectorSync) = 262, "VECTOR_SYNC";
    Sealed(Sealed) = 513, "SEALED";
    DirectoryRecord(DirectoryRecord) = 514, "DIRECTORY_RECORD";
}

impl Payload {
    /// The proposal a governance message belongs to: a PROPOSAL's own id (`own_id`), or the
    /// proposal named by a revision, sponsorship, withdrawal, comment, ballot or attestation.
    /// `None` for federation-level messages (charter, delegation, key management, federation
    /// traffic). Sync summarises messages per proposal with it.
    pub fn proposal(&self, own_id: &MessageId) -> Option<ProposalId> {
        match self {
            Payload::Proposal(_) => Some(*own_id),
            Payload::Revision(r) => Some(r.proposal),
            Payload::Sponsor(s) => Some(s.proposal),
            Payload::Withdraw(w) => Some(w.proposal),
            Payload::Comment(c) => Some(c.proposal),
            Payload::Vote(v) => Some(v.proposal),
            Payload::VoteCommit(v) => Some(v.proposal),
            Payload::VoteReveal(v) => Some(v.proposal),
            Payload::TallyAttestation(a) => Some(a.proposal),
            _ => None,
        }
    }
}

impl MessageType {
    /// Whether messages of this type must name a target address.
    pub fn requires_target(self) -> bool {
        matches!(self, MessageType::Sealed)
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The header as it travels: a CBOR array of seven items.
#[derive(Serialize, Deserialize)]
struct WireHeader(u64, u64, ByteBuf, u64, u64, Option<String>, ByteBuf);

/// The envelope as it travels: a CBOR array of two byte strings.
#[derive(Serialize, Deserialize)]
struct WireEnvelope(ByteBuf, ByteBuf);

/// The signed fields of a message, other than its body.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Header {
    /// Protocol version.
    pub version: u16,
    /// Message type.
    pub kind: MessageType,
    /// The signer.
    pub author: PublicKey,
    /// The author's sequence number.
    pub seq: u64,
    /// Creation time claimed by the author, ms since the Unix epoch.
    pub created_ms: u64,
    /// Optional target address.
    pub target: Option<Address>,
}

impl Header {
    /// The input to a signature over `header_bytes`.
    fn signing_input(version: u16, kind: MessageType, header_bytes: &[u8]) -> Vec<u8> {
        let mut m = Vec::with_capacity(SIGNATURE_DOMAIN.len() + 4 + header_bytes.len());
        m.extend_from_slice(SIGNATURE_DOMAIN);
        m.extend_from_slice(&version.to_be_bytes());
        m.extend_from_slice(&kind.code().to_be_bytes());
        m.extend_from_slice(header_bytes);
        m
    }

    /// The deterministic CBOR array `[version, type, author, seq, created_ms, target]`: the
    /// associated data of sealed messages.
    pub(crate) fn encode_without_body(&self) -> Vec<u8> {
        let target = self.target.as_ref().map(|t| t.to_string());
        cbor::to_vec(&(
            u64::from(self.version),
            u64::from(self.kind.code()),
            serde_bytes::Bytes::new(self.author.as_bytes()),
            self.seq,
            self.created_ms,
            target,
        ))
    }
}

/// A verified KLP message: decoded, signature checked, body typed and validated. Only
/// [`Message::decode`] and [`Message::sign`] make one, so holding a `Message` means it passed
/// every check.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Message {
    bytes: Vec<u8>,
    id: MessageId,
    header: Header,
    payload: Payload,
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("id", &self.id)
            .field("kind", &self.header.kind)
            .field("author", &self.header.author)
            .field("seq", &self.header.seq)
            .finish_non_exhaustive()
    }
}

/// The message id of encoded envelope bytes.
pub fn message_id(bytes: &[u8]) -> MessageId {
    MessageId(Sha256::digest(bytes).into())
}

impl Message {
    /// Builds and signs a message. The body is validated first, so a node cannot create a
    /// message its peers would refuse.
    pub fn sign(
        author: &SecretKey,
        seq: u64,
        created_ms: u64,
        target: Option<Address>,
        payload: Payload,
    ) -> Result<Message, EncodeError> {
        let kind = payload.message_type();
        payload.validate().map_err(|error| EncodeError::InvalidBody { kind, error })?;
        if kind.requires_target() && target.is_none() {
            return Err(EncodeError::MissingTarget(kind));
        }
        let header = Header {
            version: PROTOCOL_VERSION,
            kind,
            author: author.public(),
            seq,
            created_ms,
            target,
        };
        let header_bytes = cbor::to_vec(&WireHeader(
            u64::from(header.version),
            u64::from(kind.code()),
            ByteBuf::from(header.author.to_bytes().to_vec()),
            seq,
            created_ms,
            header.target.as_ref().map(|t| t.to_string()),
            ByteBuf::from(payload.encode()),
        ));
        let signature = author.sign(&Header::signing_input(header.version, kind, &header_bytes));
        let bytes = cbor::to_vec(&WireEnvelope(
            ByteBuf::from(header_bytes),
            ByteBuf::from(signature.to_vec()),
        ));
        if bytes.len() > MAX_ENVELOPE_LEN {
            return Err(EncodeError::TooLarge { len: bytes.len(), max: MAX_ENVELOPE_LEN });
        }
        Ok(Message { id: message_id(&bytes), bytes, header, payload })
    }

    /// Decodes and fully verifies an envelope: size, CBOR shape, deterministic encoding,
    /// version, type, author key, target, signature (`verify_strict`), then the typed body and
    /// its validation rules.
    pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
        if bytes.len() > MAX_ENVELOPE_LEN {
            return Err(DecodeError::TooLarge { len: bytes.len(), max: MAX_ENVELOPE_LEN });
        }
        let WireEnvelope(header_bytes, signature) =
            cbor::from_slice_canonical_array(bytes, 2).map_err(structural)?;
        let WireHeader(version, code, author, seq, created_ms, target, body) =
            cbor::from_slice_canonical_array(&header_bytes, 7).map_err(structural)?;
        if version != u64::from(PROTOCOL_VERSION) {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let kind = MessageType::from_code(code).ok_or(DecodeError::UnknownType(code))?;
        let author: &[u8; PUBLIC_KEY_LEN] =
            author.as_slice().try_into().map_err(|_| DecodeError::FieldLength {
                field: "author",
                expected: PUBLIC_KEY_LEN,
                actual: author.len(),
            })?;
        let signature: &[u8; SIGNATURE_LEN] =
            signature.as_slice().try_into().map_err(|_| DecodeError::FieldLength {
                field: "signature",
                expected: SIGNATURE_LEN,
                actual: signature.len(),
            })?;
        let author = PublicKey::from_bytes(author).map_err(|_| DecodeError::InvalidAuthor)?;
        let target = match target {
            None if kind.requires_target() => return Err(DecodeError::MissingTarget(kind)),
            None => None,
            Some(text) => {
                let addr: Address = text.parse()?;
                if addr.to_string() != text {
                    return Err(DecodeError::NonCanonicalTarget);
                }
                Some(addr)
            }
        };
        if !author.verify(&Header::signing_input(PROTOCOL_VERSION, kind, &header_bytes), signature)
        {
            return Err(DecodeError::BadSignature);
        }
        let payload = Payload::decode(kind, &body)?;
        let header = Header { version: PROTOCOL_VERSION, kind, author, seq, created_ms, target };
        Ok(Message { bytes: bytes.to_vec(), id: message_id(bytes), header, payload })
    }

    /// The exact bytes that travel and are stored.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// SHA-256 of [`Message::bytes`].
    pub fn id(&self) -> MessageId {
        self.id
    }

    /// The signed header fields.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The message type.
    pub fn kind(&self) -> MessageType {
        self.header.kind
    }

    /// The author's key.
    pub fn author(&self) -> PublicKey {
        self.header.author
    }

    /// The typed body.
    pub fn payload(&self) -> &Payload {
        &self.payload
    }
}

pub(crate) fn structural(e: CborError) -> DecodeError {
    match e {
        CborError::Malformed(m) => DecodeError::Malformed(m),
        CborError::TrailingBytes(n) => DecodeError::TrailingBytes(n),
        CborError::NonCanonical => DecodeError::NonCanonical,
    }
}
