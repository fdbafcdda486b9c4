//! Property tests and rejection paths of the KLP envelope, driven through the public API only.

mod common;

use ciborium::Value;
use common::payload;
use kos_protocol::{
    Address, DecodeError, EncodeError, MAX_ENVELOPE_LEN, Message, MessageType, Payload,
    SIGNATURE_DOMAIN, SecretKey, message_id,
    payload::{AgentMigration, Choice, Digest, MessageId, Sealed, ValidationError, Vote},
    seal,
};
use proptest::prelude::*;
use serde_bytes::ByteBuf;
use sha2::{Digest as _, Sha256};

fn target() -> impl Strategy<Value = Option<Address>> {
    proptest::option::of(prop_oneof![
        Just("klp://agent.kai.earth/commands".parse::<Address>().expect("addr")),
        any::<[u8; 32]>().prop_map(|s| {
            format!("agent://{}", SecretKey::from_seed(&s).public().klp_id()).parse().expect("addr")
        }),
    ])
}

/// Asserts that every CBOR map inside `v` has its keys in RFC 8949 §4.2.1 order.
fn assert_deterministic_order(v: &Value) {
    match v {
        Value::Map(entries) => {
            let keys: Vec<Vec<u8>> = entries
                .iter()
                .map(|(k, _)| {
                    let mut b = Vec::new();
                    ciborium::into_writer(k, &mut b).expect("encode key");
                    b
                })
                .collect();
            for w in keys.windows(2) {
                assert!(
                    (w[0].len(), &w[0]) < (w[1].len(), &w[1]),
                    "map keys out of deterministic order: {:?}",
                    entries.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>()
                );
            }
            entries.iter().for_each(|(k, v)| {
                assert_deterministic_order(k);
                assert_deterministic_order(v);
            });
        }
        Value::Array(items) => items.iter().for_each(assert_deterministic_order),
        Value::Tag(_, inner) => assert_deterministic_order(inner),
        _ => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn every_message_type_round_trips(
        p in payload(), seed in any::<[u8; 32]>(), seq in any::<u64>(), created in any::<u64>(),
        target in target(),
    ) {
        let sk = SecretKey::from_seed(&seed);
        let msg = Message::sign(&sk, seq, created, target.clone(), p.clone()).expect("sign");
        let got = Message::decode(msg.bytes()).expect("decode");
        prop_assert_eq!(&got, &msg);
        prop_assert_eq!(got.payload(), &p);
        prop_assert_eq!(got.author(), sk.public());
        prop_assert_eq!(got.header().seq, seq);
        prop_assert_eq!(got.header().created_ms, created);
        prop_assert_eq!(&got.header().target, &target);
        prop_assert_eq!(got.id(), MessageId(Sha256::digest(msg.bytes()).into()));
        // The body is RFC 8949 deterministic CBOR.
        let body: Value = ciborium::from_reader(p.encode().as_slice()).expect("cbor");
        assert_deterministic_order(&body);
    }

    #[test]
    fn any_flipped_byte_is_rejected(
        p in payload(), seed in any::<[u8; 32]>(), index in any::<prop::sample::Index>(),
        mask in 1u8..,
    ) {
        let msg = Message::sign(&SecretKey::from_seed(&seed), 1, 2, None, p).expect("sign");
        let mut bytes = msg.bytes().to_vec();
        let i = index.index(bytes.len());
        bytes[i] ^= mask;
        prop_assert!(Message::decode(&bytes).is_err(), "flip at {} accepted", i);
    }

    #[test]
    fn any_truncation_is_rejected(p in payload(), index in any::<prop::sample::Index>()) {
        let msg = Message::sign(&SecretKey::from_seed(&[9; 32]), 1, 2, None, p).expect("sign");
        let cut = index.index(msg.bytes().len());
        prop_assert!(Message::decode(&msg.bytes()[..cut]).is_err());
    }

    #[test]
    fn sealed_messages_open_only_for_their_recipient(
        p in payload(), s in any::<[u8; 32]>(), r in any::<[u8; 32]>(), o in any::<[u8; 32]>(),
    ) {
        prop_assume!(r != o);
        let (sender, recipient, other) =
            (SecretKey::from_seed(&s), SecretKey::from_seed(&r), SecretKey::from_seed(&o));
        let to: Address = format!("agent://{}", recipient.public().klp_id()).parse().expect("addr");
        let msg = seal::seal(&sender, &recipient.encryption_key(), 5, 6, to, &p).expect("seal");
        // It travels as an ordinary envelope.
        let received = Message::decode(msg.bytes()).expect("decode");
        prop_assert_eq!(received.kind(), MessageType::Sealed);
        prop_assert_eq!(seal::open(&received, &recipient).expect("open"), p.clone());
        prop_assert_eq!(seal::open(&received, &other), Err(seal::SealError::OpenFailed));
        prop_assert_eq!(seal::open(&received, &sender), Err(seal::SealError::OpenFailed));
        // The plaintext body does not appear in what relays see.
        let body = p.encode();
        if body.len() >= 16 {
            prop_assert!(!msg.bytes().windows(16).any(|w| w == &body[..16]));
        }
    }
}

// ---- Hand-built envelopes: an independent encoder, used to reach each rejection path. ----

struct Raw {
    version: u64,
    code: u64,
    author: Vec<u8>,
    target: Option<String>,
    body: Vec<u8>,
}

fn vote_body() -> Vec<u8> {
    Payload::Vote(Vote {
        choice: Choice::Yes,
        reason: None,
        proposal: MessageId([1; 32]),
        revision: 0,
        federation: MessageId([2; 32]),
    })
    .encode()
}

impl Raw {
    fn vote(sk: &SecretKey) -> Raw {
        Raw {
            version: 1,
            code: 7,
            author: sk.public().to_bytes().to_vec(),
            target: None,
            body: vote_body(),
        }
    }
    fn header(&self) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(
            &(
                self.version,
                self.code,
                ByteBuf::from(self.author.clone()),
                3u64,
                4u64,
                self.target.clone(),
                ByteBuf::from(self.body.clone()),
            ),
            &mut out,
        )
        .expect("encode");
        out
    }
    fn signed(&self, sk: &SecretKey) -> Vec<u8> {
        let header = self.header();
        let mut input = SIGNATURE_DOMAIN.to_vec();
        input.extend_from_slice(&(self.version as u16).to_be_bytes());
        input.extend_from_slice(&(self.code as u16).to_be_bytes());
        input.extend_from_slice(&header);
        envelope(&header, &sk.sign(&input))
    }
}

fn envelope(header: &[u8], sig: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(&(ByteBuf::from(header.to_vec()), ByteBuf::from(sig.to_vec())), &mut out)
        .expect("encode");
    out
}

fn sk() -> SecretKey {
    SecretKey::from_seed(&[42; 32])
}

#[test]
fn the_hand_built_envelope_is_accepted() {
    // Guards the tests below: each changes one thing in an envelope that is otherwise valid.
    let bytes = Raw::vote(&sk()).signed(&sk());
    let msg = Message::decode(&bytes).expect("valid");
    assert_eq!(msg.id(), message_id(&bytes));
    assert_eq!(msg.kind(), MessageType::Vote);
}

#[test]
fn oversized_envelope_is_refused_before_parsing() {
    let bytes = vec![0u8; MAX_ENVELOPE_LEN + 1];
    assert_eq!(
        Message::decode(&bytes),
        Err(DecodeError::TooLarge { len: MAX_ENVELOPE_LEN + 1, max: MAX_ENVELOPE_LEN })
    );
}

#[test]
fn malformed_cbor_is_refused() {
    for bytes in [&b""[..], b"\xff", b"\x82\x01\x02", b"\x83\x40\x40\x40", b"\x5a\xff\xff\xff\xff"]
    {
        assert!(matches!(Message::decode(bytes), Err(DecodeError::Malformed(_))), "{bytes:?}");
    }
}

#[test]
fn trailing_bytes_are_refused() {
    let mut bytes = Raw::vote(&sk()).signed(&sk());
    bytes.push(0);
    assert_eq!(Message::decode(&bytes), Err(DecodeError::TrailingBytes(1)));
}

#[test]
fn non_canonical_encodings_are_refused() {
    let good = Raw::vote(&sk()).signed(&sk());
    // The same envelope with the signature's length written in two bytes instead of one.
    let split = good.len() - 64 - 2;
    assert_eq!(&good[split..split + 2], &[0x58, 64]);
    let mut long_form = good[..split].to_vec();
    long_form.extend_from_slice(&[0x59, 0, 64]);
    long_form.extend_from_slice(&good[split + 2..]);
    assert_eq!(Message::decode(&long_form), Err(DecodeError::NonCanonical));
    // An indefinite-length outer array.
    let mut indefinite = vec![0x9f];
    indefinite.extend_from_slice(&good[1..]);
    indefinite.push(0xff);
    assert_eq!(Message::decode(&indefinite), Err(DecodeError::NonCanonical));
}

#[test]
fn unknown_version_and_type_are_refused() {
    let mut raw = Raw::vote(&sk());
    raw.version = 2;
    assert_eq!(Message::decode(&raw.signed(&sk())), Err(DecodeError::UnsupportedVersion(2)));
    let mut raw = Raw::vote(&sk());
    raw.code = 999;
    assert_eq!(Message::decode(&raw.signed(&sk())), Err(DecodeError::UnknownType(999)));
}

#[test]
fn bad_field_lengths_are_refused() {
    let mut raw = Raw::vote(&sk());
    raw.author.pop();
    assert_eq!(
        Message::decode(&raw.signed(&sk())),
        Err(DecodeError::FieldLength { field: "author", expected: 32, actual: 31 })
    );
    let raw = Raw::vote(&sk());
    let bytes = envelope(&raw.header(), &[0u8; 63]);
    assert_eq!(
        Message::decode(&bytes),
        Err(DecodeError::FieldLength { field: "signature", expected: 64, actual: 63 })
    );
}

#[test]
fn weak_author_key_is_refused() {
    let mut raw = Raw::vote(&sk());
    let mut identity_point = vec![0u8; 32];
    identity_point[0] = 1;
    raw.author = identity_point;
    assert_eq!(Message::decode(&raw.signed(&sk())), Err(DecodeError::InvalidAuthor));
}

#[test]
fn bad_targets_are_refused() {
    let mut raw = Raw::vote(&sk());
    raw.target = Some("http://example".into());
    assert_eq!(
        Message::decode(&raw.signed(&sk())),
        Err(DecodeError::InvalidTarget(kos_protocol::AddressError::UnknownScheme))
    );
    raw.target = Some("klp://Node.Kai".into());
    assert_eq!(Message::decode(&raw.signed(&sk())), Err(DecodeError::NonCanonicalTarget));
    let mut raw = Raw::vote(&sk());
    raw.code = MessageType::Sealed.code().into();
    assert_eq!(
        Message::decode(&raw.signed(&sk())),
        Err(DecodeError::MissingTarget(MessageType::Sealed))
    );
}

#[test]
fn forged_signatures_are_refused() {
    // Signed by another key than the author's.
    let raw = Raw::vote(&sk());
    assert_eq!(
        Message::decode(&raw.signed(&SecretKey::from_seed(&[1; 32]))),
        Err(DecodeError::BadSignature)
    );
    // Signed without the domain prefix.
    let header = raw.header();
    assert_eq!(
        Message::decode(&envelope(&header, &sk().sign(&header))),
        Err(DecodeError::BadSignature)
    );
    // A valid signature with a non-canonical S (S + L): verify_strict refuses it.
    let mut bytes = raw.signed(&sk());
    let n = bytes.len();
    let s = &mut bytes[n - 32..];
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let mut carry = 0u16;
    for (b, l) in s.iter_mut().zip(L) {
        let sum = u16::from(*b) + u16::from(l) + carry;
        *b = sum as u8;
        carry = sum >> 8;
    }
    assert_eq!(Message::decode(&bytes), Err(DecodeError::BadSignature));
}

#[test]
fn bad_bodies_are_refused() {
    let mut raw = Raw::vote(&sk());
    raw.body = vec![0x01];
    assert!(matches!(
        Message::decode(&raw.signed(&sk())),
        Err(DecodeError::BadBody {
            kind: MessageType::Vote,
            error: kos_protocol::CborError::Malformed(_)
        })
    ));
    // An explicit null for an absent optional field is not the canonical form.
    let mut map: Vec<(Value, Value)> = match ciborium::from_reader(vote_body().as_slice()) {
        Ok(Value::Map(m)) => m,
        other => panic!("{other:?}"),
    };
    map.insert(1, (Value::Text("reason".into()), Value::Null));
    let mut body = Vec::new();
    ciborium::into_writer(&Value::Map(map), &mut body).expect("encode");
    raw.body = body;
    assert_eq!(
        Message::decode(&raw.signed(&sk())),
        Err(DecodeError::BadBody {
            kind: MessageType::Vote,
            error: kos_protocol::CborError::NonCanonical
        })
    );
    // A field past its limit.
    raw.body = Payload::Vote(Vote {
        choice: Choice::No,
        reason: Some("x".repeat(2001)),
        proposal: MessageId([1; 32]),
        revision: 0,
        federation: MessageId([2; 32]),
    })
    .encode();
    assert_eq!(
        Message::decode(&raw.signed(&sk())),
        Err(DecodeError::InvalidBody {
            kind: MessageType::Vote,
            error: ValidationError::TooLong { field: "reason", len: 2001, max: 2000 }
        })
    );
}

#[test]
fn signing_refuses_what_peers_would_refuse() {
    let bad = Payload::Vote(Vote {
        choice: Choice::Rank(vec![]),
        reason: None,
        proposal: MessageId([1; 32]),
        revision: 0,
        federation: MessageId([2; 32]),
    });
    assert_eq!(
        Message::sign(&sk(), 1, 1, None, bad),
        Err(EncodeError::InvalidBody {
            kind: MessageType::Vote,
            error: ValidationError::Empty { field: "choice" }
        })
    );
    let big = Payload::AgentMigration(AgentMigration {
        name: "a".into(),
        agent: sk().public(),
        snapshot: ByteBuf::from(vec![0u8; MAX_ENVELOPE_LEN]),
        audit_root: Digest([0; 32]),
    });
    assert!(matches!(Message::sign(&sk(), 1, 1, None, big), Err(EncodeError::TooLarge { .. })));
    let sealed = Payload::Sealed(Sealed { ct: ByteBuf::new(), enc: [0; 32] });
    assert_eq!(
        Message::sign(&sk(), 1, 1, None, sealed),
        Err(EncodeError::MissingTarget(MessageType::Sealed))
    );
}

#[test]
fn sealing_rejections_are_typed() {
    let to: Address = "agent://bob".parse().expect("addr");
    let vote = Message::decode(&Raw::vote(&sk()).signed(&sk())).expect("valid");
    assert_eq!(seal::open(&vote, &sk()), Err(seal::SealError::NotSealed));
    let inner = Payload::Sealed(Sealed { ct: ByteBuf::new(), enc: [0; 32] });
    assert_eq!(
        seal::seal(&sk(), &sk().encryption_key(), 1, 1, to.clone(), &inner),
        Err(seal::SealError::Nested)
    );
    // A ciphertext moved under another header (different seq) no longer opens: the header is
    // the associated data.
    let bob = SecretKey::from_seed(&[5; 32]);
    let msg =
        seal::seal(&sk(), &bob.encryption_key(), 1, 1, to.clone(), vote.payload()).expect("seal");
    let moved = Message::sign(&sk(), 2, 1, Some(to), msg.payload().clone()).expect("sign");
    assert_eq!(seal::open(&moved, &bob), Err(seal::SealError::OpenFailed));
    assert_eq!(seal::open(&msg, &bob).expect("opens"), vote.payload().clone());
}

#[test]
fn message_type_codes_are_stable() {
    let codes: Vec<(u16, &str)> = MessageType::ALL.iter().map(|t| (t.code(), t.name())).collect();
    assert_eq!(codes.len(), 21);
    assert!(codes.contains(&(514, "DIRECTORY_RECORD")));
    for (code, name) in codes {
        let t = MessageType::from_code(code.into()).expect("known");
        assert_eq!(t.name(), name);
        assert_eq!(MessageType::from_name(name), Some(t));
    }
}

#[test]
fn huge_declared_lengths_are_refused_cheaply() {
    // An array of 2^32 items, a map of 2^32 entries, a byte string of 2^63 bytes: each a few
    // bytes long. They must fail as malformed (truncated) without allocating what they claim.
    for bytes in [
        &b"\x9b\x00\x00\x00\x01\x00\x00\x00\x00"[..],
        b"\xbb\x00\x00\x00\x01\x00\x00\x00\x00",
        b"\x82\x5b\x7f\xff\xff\xff\xff\xff\xff\xff\x40",
    ] {
        assert!(matches!(Message::decode(bytes), Err(DecodeError::Malformed(_))), "{bytes:?}");
    }
}
