//! Checks the code against every published test vector in `docs/vectors/klp-v1.json`.

use kos_protocol::{
    Address, DecodeError, Message, MessageType, Payload, PublicKey, SecretKey,
    payload::{Choice, MessageId},
    seal, vote_commitment,
};
use serde_json::Value;

fn vectors() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/vectors/klp-v1.json");
    let text = std::fs::read_to_string(path).expect("read vectors");
    serde_json::from_str(&text).expect("parse vectors")
}

fn bytes(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("hex string")).expect("hex")
}

fn seed(v: &Value) -> SecretKey {
    SecretKey::from_seed(&bytes(v).try_into().expect("32-byte seed"))
}

fn id(v: &Value) -> MessageId {
    v.as_str().expect("hex").parse().expect("id")
}

#[test]
fn identities() {
    let v = vectors();
    let list = v["identities"].as_array().expect("identities");
    assert!(list.len() >= 3);
    for ident in list {
        let sk = seed(&ident["seed"]);
        let pk = sk.public();
        assert_eq!(hex::encode(pk.as_bytes()), ident["public_key"]);
        assert_eq!(pk.to_did(), ident["did"]);
        assert_eq!(pk.klp_id().to_string(), ident["klp_id"]);
        assert_eq!(pk.to_peer_id().to_string(), ident["peer_id"]);
        assert_eq!(hex::encode(sk.encryption_key().0), ident["x25519_public_key"]);
        // And back from the text forms.
        assert_eq!(PublicKey::from_did(ident["did"].as_str().expect("did")), Ok(pk));
        let peer = ident["peer_id"].as_str().expect("peer").parse().expect("peer id");
        assert_eq!(PublicKey::from_peer_id(&peer), Ok(pk));
    }
}

#[test]
fn envelopes() {
    let v = vectors();
    let list = v["envelopes"].as_array().expect("envelopes");
    assert!(list.iter().any(|e| e["type"] == "VOTE"));
    for e in list {
        let name = e["name"].as_str().expect("name");
        let kind = MessageType::from_name(e["type"].as_str().expect("type")).expect("known type");
        assert_eq!(u64::from(kind.code()), e["type_code"].as_u64().expect("code"), "{name}");
        let body = Payload::decode(kind, &bytes(&e["body_hex"])).expect("body decodes");
        let target = e["target"].as_str().map(|t| t.parse::<Address>().expect("target"));
        let msg = Message::sign(
            &seed(&e["author_seed"]),
            e["seq"].as_u64().expect("seq"),
            e["created_ms"].as_u64().expect("created"),
            target,
            body,
        )
        .expect("sign");
        // Ed25519 is deterministic: the same inputs give the same bytes.
        assert_eq!(hex::encode(msg.bytes()), e["envelope_hex"], "{name}: envelope");
        assert_eq!(msg.id().to_string(), e["id_hex"], "{name}: id");
        let got = Message::decode(&bytes(&e["envelope_hex"])).expect("decodes");
        assert_eq!(got, msg, "{name}");
        // The intermediate values a second implementation checks step by step.
        let header = bytes(&e["header_hex"]);
        let input = bytes(&e["signing_input_hex"]);
        assert!(input.ends_with(&header), "{name}: signing input ends with the header");
        assert!(msg.bytes().windows(header.len()).any(|w| w == header), "{name}");
        let sig: [u8; 64] = bytes(&e["signature_hex"]).try_into().expect("64 bytes");
        assert!(got.author().verify(&input, &sig), "{name}: signature over the signing input");
    }
}

#[test]
fn sealed_message_opens_with_the_recipient_key() {
    let v = vectors();
    for s in v["sealed"].as_array().expect("sealed") {
        let sender = seed(&s["sender_seed"]);
        let recipient = seed(&s["recipient_seed"]);
        assert_eq!(hex::encode(recipient.encryption_key().0), s["recipient_x25519_public_key"]);
        let msg = Message::decode(&bytes(&s["envelope_hex"])).expect("decodes");
        assert_eq!(msg.id().to_string(), s["id_hex"]);
        let inner = seal::open(&msg, &recipient).expect("opens");
        assert_eq!(inner.message_type().name(), s["inner_type"]);
        assert_eq!(seal::open(&msg, &sender), Err(seal::SealError::OpenFailed));
        // Re-sealing with the published ephemeral ikm reproduces the bytes exactly.
        let ikm: [u8; 32] = bytes(&s["ephemeral_ikm"]).try_into().expect("32 bytes");
        let again = seal::seal_with_ephemeral_ikm(
            &sender,
            &recipient.encryption_key(),
            s["seq"].as_u64().expect("seq"),
            s["created_ms"].as_u64().expect("created"),
            s["target"].as_str().expect("target").parse().expect("address"),
            &inner,
            ikm,
        )
        .expect("seal");
        assert_eq!(hex::encode(again.bytes()), s["envelope_hex"]);
        let Payload::Sealed(body) = msg.payload() else { panic!("not sealed") };
        assert_eq!(hex::encode(body.enc), s["enc"]);
        assert_eq!(hex::encode(&body.ct), s["ciphertext_hex"]);
    }
}

#[test]
fn vote_commitments() {
    let v = vectors();
    for c in v["vote_commitments"].as_array().expect("commitments") {
        let choice: Choice =
            ciborium::from_reader(bytes(&c["choice_cbor_hex"]).as_slice()).expect("choice");
        let got = vote_commitment(
            &id(&c["federation"]),
            &id(&c["proposal"]),
            &seed(&c["voter_seed"]).public(),
            u32::try_from(c["revision"].as_u64().expect("revision")).expect("u32"),
            &bytes(&c["salt"]).try_into().expect("salt"),
            &choice,
        );
        assert_eq!(got.to_string(), c["commitment"]);
    }
}

#[test]
fn rejections() {
    let v = vectors();
    for r in v["rejections"].as_array().expect("rejections") {
        let err = Message::decode(&bytes(&r["envelope_hex"])).expect_err("must be refused");
        let variant = match err {
            DecodeError::TooLarge { .. } => "TooLarge",
            DecodeError::Malformed(_) => "Malformed",
            DecodeError::TrailingBytes(_) => "TrailingBytes",
            DecodeError::NonCanonical => "NonCanonical",
            DecodeError::UnsupportedVersion(_) => "UnsupportedVersion",
            DecodeError::UnknownType(_) => "UnknownType",
            DecodeError::FieldLength { .. } => "FieldLength",
            DecodeError::InvalidAuthor => "InvalidAuthor",
            DecodeError::InvalidTarget(_) => "InvalidTarget",
            DecodeError::NonCanonicalTarget => "NonCanonicalTarget",
            DecodeError::MissingTarget(_) => "MissingTarget",
            DecodeError::BadSignature => "BadSignature",
            DecodeError::BadBody { .. } => "BadBody",
            DecodeError::InvalidBody { .. } => "InvalidBody",
        };
        assert_eq!(variant, r["error"], "{}", r["name"]);
    }
}
