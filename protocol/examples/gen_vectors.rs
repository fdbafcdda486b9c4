//! Prints the KLP v1 test vectors as JSON: `cargo run -p kos-protocol --example gen_vectors >
//! docs/vectors/klp-v1.json`. The vectors are normative once published: `tests/vectors.rs`
//! checks the code against the file, not against this program.

use ciborium::Value;
use kos_protocol::{
    Address, Message, Payload, SIGNATURE_DOMAIN, SecretKey, payload::*, seal, vote_commitment,
};
use serde_bytes::ByteBuf;
use serde_json::{Value as Json, json};

fn seed(n: u8) -> [u8; 32] {
    match n {
        0 => [0u8; 32],
        1 => std::array::from_fn(|i| i as u8),
        _ => [n; 32],
    }
}

fn diag_bytes(b: &[u8]) -> String {
    kos_protocol::diagnostic(b).expect("cbor")
}

fn identity(n: u8) -> Json {
    let sk = SecretKey::from_seed(&seed(n));
    let pk = sk.public();
    json!({
        "seed": hex::encode(seed(n)),
        "public_key": hex::encode(pk.as_bytes()),
        "did": pk.to_did(),
        "klp_id": pk.klp_id().to_string(),
        "peer_id": pk.to_peer_id().to_string(),
        "x25519_public_key": hex::encode(sk.encryption_key().0),
    })
}

/// Splits an envelope into its header bytes and signature (both are byte strings inside a
/// two-item array).
fn split(envelope: &[u8]) -> (Vec<u8>, Vec<u8>) {
    match ciborium::from_reader::<Value, _>(envelope).expect("cbor") {
        Value::Array(items) => match (&items[0], &items[1]) {
            (Value::Bytes(h), Value::Bytes(s)) => (h.clone(), s.clone()),
            _ => unreachable!(),
        },
        _ => unreachable!(),
    }
}

fn envelope_vector(
    name: &str,
    author: u8,
    seq: u64,
    created: u64,
    target: Option<&str>,
    p: Payload,
) -> Json {
    let sk = SecretKey::from_seed(&seed(author));
    let target_addr = target.map(|t| t.parse::<Address>().expect("address"));
    let msg = Message::sign(&sk, seq, created, target_addr, p.clone()).expect("sign");
    let (header, sig) = split(msg.bytes());
    let mut input = SIGNATURE_DOMAIN.to_vec();
    input.extend_from_slice(&1u16.to_be_bytes());
    input.extend_from_slice(&p.message_type().code().to_be_bytes());
    input.extend_from_slice(&header);
    let body = p.encode();
    json!({
        "name": name,
        "author_seed": hex::encode(seed(author)),
        "seq": seq,
        "created_ms": created,
        "target": target,
        "type": p.message_type().name(),
        "type_code": p.message_type().code(),
        "body_hex": hex::encode(&body),
        "body_diagnostic": diag_bytes(&body),
        "header_hex": hex::encode(&header),
        "header_diagnostic": diag_bytes(&header),
        "signing_input_hex": hex::encode(&input),
        "signature_hex": hex::encode(&sig),
        "envelope_hex": hex::encode(msg.bytes()),
        "id_hex": msg.id().to_string(),
    })
}

fn main() {
    let fed = MessageId([0x11; 32]);
    let prop = MessageId([0x22; 32]);
    let alice = SecretKey::from_seed(&seed(1));
    let bob = SecretKey::from_seed(&seed(2));

    let vote = Payload::Vote(Vote {
        choice: Choice::Yes,
        reason: Some("Lower fees help small members.".into()),
        proposal: prop,
        revision: 0,
        federation: fed,
    });
    let charter = Payload::Charter(Charter {
        name: "Test Federation".into(),
        nonce: 7,
        bodies: vec![Body { kind: BodyKind::SecurityBoard, members: vec![alice.public()] }],
        hybrid: HybridWeights { role: 0, stake: 0, trust: 1000 },
        timing: Timing::standard(),
        members: vec![
            Member {
                key: alice.public(),
                roles: vec![Role::Citizen, Role::Validator],
                stake: 10,
                trust: TrustLevel::Core,
            },
            Member {
                key: bob.public(),
                roles: vec![Role::Citizen],
                stake: 1,
                trust: TrustLevel::Standard,
            },
        ],
        defaults: vec![TypeDefault {
            overrides: Vec::new(),
            kind: ProposalType::Configuration,
            config: VotingConfig {
                rule: DecisionRule::SimpleMajority,
                veto: Ratio(334, 1000),
                quorum: Ratio(3, 10),
                secret: false,
                sponsors: 0,
                reasoning: false,
                weighting: Weighting::Trust,
                early_close: true,
            },
        }],
        role_weights: vec![RoleWeight { role: Role::Validator, weight: 2000 }],
        max_delegation_depth: 3,
        min_protocol_version: 1,
    });
    let proposal = Payload::Proposal(Proposal {
        kind: ProposalType::Configuration,
        scope: Scope::Global,
        title: "Raise the relay quota".into(),
        action: Action::Configuration {
            key: "relay.quota_per_minute".into(),
            new: "120".into(),
            old: Some("60".into()),
        },
        voting: None,
        options: vec![],
        registry: RegistryVersion { hash: Digest([0x33; 32]), epoch: 0 },
        timeline: Timeline {
            reveal_end_ms: None,
            voting_end_ms: 1_700_259_200_000,
            discussion_end_ms: 1_700_086_400_000,
            execution_delay_ms: 0,
        },
        federation: fed,
        description: "Doubles the per-peer relay quota.".into(),
    });
    let comment = Payload::Comment(Comment {
        kind: CommentKind::Objection,
        text: "120 is too high for small nodes.".into(),
        parent: None,
        proposal: prop,
        revision: 0,
        federation: fed,
    });
    let delegation = Payload::Delegation(Delegation {
        scope: DelegationScope::Kind(ProposalType::Configuration),
        delegate: Some(alice.public()),
        federation: fed,
    });
    let task = Payload::TaskRequest(TaskRequest {
        inputs: vec!["Generate short poem about sunrise".into()],
        task_id: "xyz123".into(),
        min_trust: TrustLevel::Trusted,
        deadline_ms: None,
    });
    let result = Payload::TaskResult(TaskResult {
        ok: true,
        error: None,
        outputs: vec!["Light spills over the hill.".into()],
        request: Some(MessageId([0x33; 32])),
        task_id: "xyz123".into(),
    });
    let record = Payload::DirectoryRecord(DirectoryRecord {
        name: Some("alice.example".into()),
        types: vec![257, 258, 261],
        x25519: alice.encryption_key().0,
        addresses: vec!["/ip4/127.0.0.1/tcp/4001".into()],
        expires_ms: 1_700_003_600_000,
    });
    let envelopes = vec![
        envelope_vector("vote", 2, 1, 1_700_000_000_000, None, vote.clone()),
        envelope_vector("charter", 1, 1, 1_700_000_000_000, None, charter),
        envelope_vector("proposal", 1, 2, 1_700_000_000_000, None, proposal),
        envelope_vector("comment", 2, 2, 1_700_000_000_500, None, comment),
        envelope_vector("delegation", 2, 3, 1_700_000_001_000, None, delegation),
        envelope_vector(
            "task_request",
            1,
            3,
            1_700_000_002_000,
            Some(&format!("klp://{}/tasks", bob.public().klp_id())),
            task.clone(),
        ),
        envelope_vector(
            "task_result",
            2,
            4,
            1_700_000_002_500,
            Some(&format!("klp://{}/tasks", alice.public().klp_id())),
            result,
        ),
        envelope_vector("directory_record", 1, 5, 1_700_000_000_000, None, record),
    ];

    let to: Address = format!("agent://{}", bob.public().klp_id()).parse().expect("address");
    let ikm = [0x44u8; 32];
    let sealed = seal::seal_with_ephemeral_ikm(
        &alice,
        &bob.encryption_key(),
        4,
        1_700_000_003_000,
        to.clone(),
        &task,
        ikm,
    )
    .expect("seal");
    let Payload::Sealed(s) = sealed.payload() else { unreachable!() };
    let mut aad = Vec::new();
    ciborium::into_writer(
        &(
            1u64,
            513u64,
            ByteBuf::from(alice.public().to_bytes().to_vec()),
            4u64,
            1_700_000_003_000u64,
            Some(to.to_string()),
        ),
        &mut aad,
    )
    .expect("aad");
    let mut plaintext = Vec::new();
    ciborium::into_writer(&(257u64, ByteBuf::from(task.encode())), &mut plaintext)
        .expect("plaintext");
    let (header, _) = split(sealed.bytes());

    let salt = [0x55u8; 32];
    let commitment = vote_commitment(&fed, &prop, &bob.public(), 0, &salt, &Choice::No);

    // Negative vectors: each must be refused with the named error.
    let vote_msg = Message::sign(&bob, 1, 1_700_000_000_000, None, vote).expect("sign");
    let good = vote_msg.bytes().to_vec();
    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    let mut trailing = good.clone();
    trailing.push(0);
    let mut long_sig = good[..good.len() - 66].to_vec();
    long_sig.extend_from_slice(&[0x59, 0, 64]);
    long_sig.extend_from_slice(&good[good.len() - 64..]);

    let out = json!({
        "description": "KLP v1 test vectors. See docs/protocol.md. All byte strings are hex.",
        "identities": [identity(0), identity(1), identity(2)],
        "envelopes": envelopes,
        "sealed": [{
            "sender_seed": hex::encode(seed(1)),
            "recipient_seed": hex::encode(seed(2)),
            "recipient_x25519_public_key": hex::encode(bob.encryption_key().0),
            "ephemeral_ikm": hex::encode(ikm),
            "enc": hex::encode(s.enc),
            "seq": 4,
            "created_ms": 1_700_000_003_000u64,
            "target": to.to_string(),
            "info": String::from_utf8_lossy(seal::SEAL_INFO),
            "aad_hex": hex::encode(&aad),
            "plaintext_hex": hex::encode(&plaintext),
            "plaintext_diagnostic": diag_bytes(&plaintext),
            "inner_type": "TASK_REQUEST",
            "ciphertext_hex": hex::encode(&s.ct),
            "header_diagnostic": diag_bytes(&header),
            "envelope_hex": hex::encode(sealed.bytes()),
            "id_hex": sealed.id().to_string(),
        }],
        "vote_commitments": [{
            "federation": fed.to_string(),
            "proposal": prop.to_string(),
            "voter_seed": hex::encode(seed(2)),
            "revision": 0,
            "salt": hex::encode(salt),
            "choice_cbor_hex": hex::encode({ let mut b = Vec::new(); ciborium::into_writer(&Choice::No, &mut b).expect("cbor"); b }),
            "commitment": commitment.to_string(),
        }],
        "direct_responses": [
            { "code": 0, "reason": "filed",
              "cbor_hex": hex::encode(kos_protocol::to_cbor(&(0u8, "filed"))) },
            { "code": 1, "reason": "",
              "cbor_hex": hex::encode(kos_protocol::to_cbor(&(1u8, ""))) },
            { "code": 5, "reason": "local policy: message type TASK_REQUEST is denied",
              "cbor_hex": hex::encode(kos_protocol::to_cbor(&(5u8, "local policy: message type TASK_REQUEST is denied"))) },
        ],
        "agent_bundles": [{
            "audit": [{"at_ms": 1000, "event": "created"}, {"at_ms": 2000, "event": "answered 12 tasks"}],
            "config": "model = \"small\"",
            "snapshot_hex": hex::encode(kos_protocol::agent::encode_snapshot(&kos_protocol::agent::AgentSnapshot {
                audit: vec![
                    kos_protocol::agent::AuditRecord { at_ms: 1000, event: "created".into() },
                    kos_protocol::agent::AuditRecord { at_ms: 2000, event: "answered 12 tasks".into() },
                ],
                config: "model = \"small\"".into(),
            })),
            "audit_root": kos_protocol::agent::audit_root(&[
                kos_protocol::agent::AuditRecord { at_ms: 1000, event: "created".into() },
                kos_protocol::agent::AuditRecord { at_ms: 2000, event: "answered 12 tasks".into() },
            ]).to_string(),
        }],
        "directory_keys": [{
            "klp_id": alice.public().klp_id().to_string(),
            "id_key_hex": hex::encode(kos_protocol::directory::id_key(&alice.public().klp_id())),
            "name": "alice.example",
            "name_key_hex": hex::encode(kos_protocol::directory::name_key("alice.example")),
        }],
        "rejections": [
            { "name": "flipped signature bit", "envelope_hex": hex::encode(&flipped), "error": "BadSignature" },
            { "name": "trailing byte", "envelope_hex": hex::encode(&trailing), "error": "TrailingBytes" },
            { "name": "signature length in a 2-byte head", "envelope_hex": hex::encode(&long_sig), "error": "NonCanonical" },
            { "name": "truncated", "envelope_hex": hex::encode(&good[..good.len() - 1]), "error": "Malformed" },
            { "name": "empty", "envelope_hex": "", "error": "Malformed" },
        ],
    });
    println!("{}", serde_json::to_string_pretty(&out).expect("json"));
}
