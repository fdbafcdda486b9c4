//! Prints the certificate test vectors as JSON: `cargo run -p kos-engine --example
//! gen_certificate_vector > docs/vectors/certificate-v1.json`.
//!
//! A federation of three founders (A core, B and C trusted) admits D (standard) at epoch 1; a
//! configuration proposal pins that version, so its certificate file must carry the registry's
//! bytes. Four votes, then commits of round 1 from A, B and D: 9000 of 12000 milli-weight under
//! trust weighting, more than 2/3. The file lists certificates that verify (round 1, and round 0
//! in the attestation format without `phase` and `round`), certificates that must be refused
//! with the named `CertificateError` (the registry in struct order with `"policy": null` as kosd
//! once wrote it, re-ordered keys, another version, no registry, exactly 2/3, weight split over
//! two rounds, a prepare counted as a commit, a commit before its round opened, a non-member)
//! and one receipt. `tests/certificate_vector.rs` checks the code against the file, and
//! `tests/interop/klp_check.py` checks the file against `docs/` alone.

use std::sync::Arc;

use ciborium::Value;
use kos_engine::{CertificateBundle, ReceiptBundle, Registry, merkle_proof, merkle_root};
use kos_protocol::{Message, Payload, SecretKey, payload::*};
use serde_json::json;

fn seed(n: u8) -> [u8; 32] {
    match n {
        1 => std::array::from_fn(|i| i as u8),
        _ => [n; 32],
    }
}

fn key(n: u8) -> SecretKey {
    SecretKey::from_seed(&seed(n))
}

fn member(n: u8, roles: Vec<Role>, stake: u64, trust: TrustLevel) -> Member {
    Member { key: key(n).public(), roles, stake, trust }
}

const DISCUSSION_END: u64 = 1_700_086_400_000;
const VOTING_END: u64 = 1_700_259_200_000;

/// Every map of `v`, at every level, with its entries in reverse order.
fn reversed(v: Value) -> Value {
    match v {
        Value::Map(e) => Value::Map(e.into_iter().rev().map(|(k, x)| (k, reversed(x))).collect()),
        Value::Array(a) => Value::Array(a.into_iter().map(reversed).collect()),
        other => other,
    }
}

fn main() {
    let config = VotingConfig {
        rule: DecisionRule::SimpleMajority,
        veto: Ratio(334, 1000),
        quorum: Ratio(3, 10),
        secret: false,
        sponsors: 0,
        reasoning: false,
        weighting: Weighting::Trust,
        early_close: false,
    };
    let charter = Charter {
        name: "Certificate Federation".into(),
        nonce: 1,
        bodies: vec![],
        hybrid: HybridWeights { role: 0, stake: 0, trust: 1000 },
        timing: Timing::standard(),
        members: vec![
            // Roles in the charter's order, which the registry keeps (not sorted).
            member(1, vec![Role::Validator, Role::Citizen], 10, TrustLevel::Core),
            member(2, vec![Role::Citizen], 1, TrustLevel::Trusted),
            member(3, vec![Role::Citizen], 1, TrustLevel::Trusted),
        ],
        defaults: [ProposalType::Configuration, ProposalType::Membership]
            .into_iter()
            .map(|kind| TypeDefault { kind, config: config.clone(), overrides: vec![] })
            .collect(),
        role_weights: vec![RoleWeight { role: Role::Validator, weight: 2000 }],
        max_delegation_depth: 3,
        min_protocol_version: 1,
    };
    let grace = charter.timing.grace_ms;
    let charter_msg =
        Message::sign(&key(1), 1, 1_699_000_000_000, None, Payload::Charter(charter.clone()))
            .expect("sign");
    let fed = charter_msg.id();
    let base = Registry::from_charter(&charter);
    // Epoch 1: a Membership proposal admitted D.
    let mut epoch1 = base.clone();
    epoch1.epoch = 1;
    let mut members = (*epoch1.members).clone();
    let d = member(4, vec![Role::Citizen], 1, TrustLevel::Standard);
    members.insert(d.key, d);
    epoch1.members = Arc::new(members);
    let registry_bytes = epoch1.encode();
    let proposal = Proposal {
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
        registry: RegistryVersion { hash: epoch1.hash(), epoch: 1 },
        timeline: Timeline {
            reveal_end_ms: None,
            voting_end_ms: VOTING_END,
            discussion_end_ms: DISCUSSION_END,
            execution_delay_ms: 0,
        },
        federation: fed,
        description: "Doubles the per-peer relay quota.".into(),
    };
    let proposal_msg =
        Message::sign(&key(1), 2, 1_700_000_000_000, None, Payload::Proposal(proposal.clone()))
            .expect("sign");
    let pid = proposal_msg.id();
    let votes: Vec<Message> =
        [(1u8, Choice::Yes), (2, Choice::Yes), (3, Choice::No), (4, Choice::Yes)]
            .into_iter()
            .map(|(n, choice)| {
                let v = Vote { choice, reason: None, proposal: pid, revision: 0, federation: fed };
                Message::sign(
                    &key(n),
                    3,
                    DISCUSSION_END + u64::from(n) * 1000,
                    None,
                    Payload::Vote(v),
                )
                .expect("sign")
            })
            .collect();
    let ids: Vec<MessageId> = votes.iter().map(Message::id).collect();
    let root = merkle_root(&ids);
    // Trust weighting: A 5000 + B 3000 + D 1000 yes, C 3000 no.
    let earliest = VOTING_END + grace;
    let attest = |n: u8, phase: AttestationPhase, round: u32, at: u64| {
        let a = TallyAttestation {
            phase,
            round,
            totals: vec![9000, 3000, 0, 0],
            winner: None,
            counted: 4,
            outcome: Outcome::Approved,
            eligible: 12_000,
            proposal: pid,
            revision: 0,
            federation: fed,
            votes_root: root,
            participation: 12_000,
        };
        let seq = 10 + u64::from(round) * 2 + u64::from(phase == AttestationPhase::Commit);
        Message::sign(&key(n), seq, at, None, Payload::TallyAttestation(a)).expect("sign")
    };
    let opens = |round: u32| earliest + u64::from(round) * grace;
    let commit = |n: u8, round: u32| {
        attest(n, AttestationPhase::Commit, round, opens(round) + 1000 * u64::from(n))
    };
    let (a1, b1, d1) = (commit(1, 1), commit(2, 1), commit(4, 1));
    let (a0, b0, c0, d0) = (commit(1, 0), commit(2, 0), commit(3, 0), commit(4, 0));
    let d1_prepare = attest(4, AttestationPhase::Prepare, 1, opens(1) + 4000);
    let d1_early = attest(4, AttestationPhase::Commit, 1, opens(1) - 1);
    let e1 = commit(5, 1);

    let hex_of = |m: &Message| hex::encode(m.bytes());
    let bundle = |registry: Option<String>, atts: &[&Message]| CertificateBundle {
        kind: kos_engine::CERTIFICATE_KIND.to_owned(),
        charter: hex_of(&charter_msg),
        proposal: hex_of(&proposal_msg),
        registry,
        attestations: atts.iter().map(|m| hex_of(m)).collect(),
    };
    let canonical = Some(hex::encode(&registry_bytes));
    let struct_order = kos_protocol::to_cbor(&epoch1);
    let reordered = kos_protocol::to_cbor(&reversed(
        ciborium::from_reader::<Value, _>(registry_bytes.as_slice()).expect("cbor"),
    ));
    let valid = |name: &str, about: &str, b: CertificateBundle| {
        let c = kos_engine::verify_certificate(&b).expect("a valid vector");
        json!({
            "name": name,
            "about": about,
            "bundle": b,
            "valid": true,
            "round": c.round,
            "outcome": c.key.outcome.as_str(),
            "winner": c.key.winner,
            "revision": c.key.revision,
            "votes_root": c.key.votes_root.to_string(),
            "weight": c.weight,
            "eligible": c.eligible,
            "attesters": c.attesters,
        })
    };
    let refused = |name: &str, about: &str, b: CertificateBundle| {
        let e = kos_engine::verify_certificate(&b).expect_err("a refused vector");
        let debug = format!("{e:?}");
        let error: String = debug.chars().take_while(|c| c.is_alphanumeric()).collect();
        json!({ "name": name, "about": about, "bundle": b, "valid": false, "error": error,
                "message": e.to_string() })
    };
    let certificates = vec![
        valid(
            "pinned_after_epoch_0",
            "commits of round 1 from A, B and D (9000 of 12000); the registry is epoch 1's \
             deterministic CBOR, whose hash is the pin",
            bundle(canonical.clone(), &[&a1, &b1, &d1]),
        ),
        valid(
            "round_0_without_phase_and_round",
            "commits of round 0 from A, B and C (11000 of 12000), encoded without `phase` and \
             `round` exactly as attestations were before rounds existed",
            bundle(canonical.clone(), &[&a0, &b0, &c0]),
        ),
        refused(
            "registry_in_struct_order_with_null_policy",
            "the registry as kosd wrote it before: fields in struct order, `\"policy\": null`",
            bundle(Some(hex::encode(&struct_order)), &[&a1, &b1, &d1]),
        ),
        refused(
            "registry_with_reordered_keys",
            "the same registry value with every map's keys in reverse order",
            bundle(Some(hex::encode(&reordered)), &[&a1, &b1, &d1]),
        ),
        refused(
            "registry_of_another_version",
            "the charter's registry (epoch 0), deterministic, but not the pinned version",
            bundle(Some(hex::encode(base.encode())), &[&a1, &b1, &d1]),
        ),
        refused(
            "registry_missing",
            "the pin is not the charter's version and the file has no registry",
            bundle(None, &[&a1, &b1, &d1]),
        ),
        refused(
            "exactly_two_thirds",
            "commits of round 1 from A and B: 8000 of 12000 is not more than 2/3",
            bundle(canonical.clone(), &[&a1, &b1]),
        ),
        refused(
            "commits_of_two_rounds",
            "A and B commit in round 1, D in round 0: rounds do not add up",
            bundle(canonical.clone(), &[&a1, &b1, &d0]),
        ),
        refused(
            "a_prepare_is_not_a_commit",
            "A and B commit in round 1, D only prepares: prepares never count",
            bundle(canonical.clone(), &[&a1, &b1, &d1_prepare]),
        ),
        refused(
            "commit_before_its_round_opened",
            "D's round-1 commit is signed 1 ms before close + grace + 1 × grace",
            bundle(canonical.clone(), &[&a1, &b1, &d1_early]),
        ),
        refused(
            "attester_not_in_the_pinned_version",
            "a round-1 commit by a key that is no member of epoch 1",
            bundle(canonical.clone(), &[&a1, &b1, &d1, &e1]),
        ),
    ];
    let d_vote = &votes[3];
    let receipt = ReceiptBundle {
        kind: kos_engine::RECEIPT_KIND.to_owned(),
        certificate: bundle(canonical, &[&a1, &b1, &d1]),
        ballot: hex_of(d_vote),
        proof: merkle_proof(&ids, &d_vote.id()).expect("a leaf"),
    };
    let r = kos_engine::verify_receipt(&receipt).expect("a valid receipt");
    let hash_of = |b: &[u8]| Registry::hash_bytes(b).to_string();
    let out = json!({
        "description": "Certificate files (docs/protocol.md §10) for a proposal pinned after epoch 0, and a receipt. Seeds: member n of the federation signs with seed n (seed 1 is 00 01 … 1f, others n repeated); seed 5 is no member. `registry.cbor_hex` is epoch 1's deterministic CBOR (docs/governance.md §2) and hashes to the proposal's pin; `struct_order` is the encoding kosd wrote before (refused). Each certificate is valid with the given result, or refused with the named kos_engine::CertificateError.",
        "seeds": (1..=5).map(|n| hex::encode(seed(n))).collect::<Vec<_>>(),
        "registry": {
            "epoch": 1,
            "cbor_hex": hex::encode(&registry_bytes),
            "diagnostic": kos_protocol::diagnostic(&registry_bytes).expect("cbor"),
            "len": registry_bytes.len(),
            "hash_hex": hash_of(&registry_bytes),
            "struct_order": {
                "cbor_hex": hex::encode(&struct_order),
                "len": struct_order.len(),
                "hash_hex": hash_of(&struct_order),
            },
        },
        "votes": votes.iter().map(|v| json!({ "envelope_hex": hex_of(v), "id_hex": v.id().to_string() })).collect::<Vec<_>>(),
        "certificates": certificates,
        "receipts": [{
            "name": "d_vote_under_round_1_certificate",
            "bundle": receipt,
            "valid": true,
            "voter": r.voter.to_did(),
            "ballot": r.ballot.to_string(),
        }],
    });
    println!("{}", serde_json::to_string_pretty(&out).expect("json"));
}
