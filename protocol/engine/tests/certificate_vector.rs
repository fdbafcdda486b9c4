//! The certificate vectors of `docs/vectors/certificate-v1.json` are what the code decides: the
//! registry bytes are epoch 1's deterministic CBOR and hash to the proposal's pin, each
//! certificate verifies with the published result or is refused with the published error, and
//! no encoding of the registry other than the documented bytes is accepted.

use ciborium::Value;
use kos_engine::{CertificateBundle, CertificateError, ReceiptBundle, Registry};
use kos_protocol::{Message, Payload};

fn vectors() -> serde_json::Value {
    serde_json::from_str(include_str!("../../../docs/vectors/certificate-v1.json")).expect("json")
}

fn bundle(v: &serde_json::Value) -> CertificateBundle {
    serde_json::from_value(v["bundle"].clone()).expect("a certificate bundle")
}

/// The variant's name, as the vector file writes it.
fn name(e: &CertificateError) -> String {
    format!("{e:?}").chars().take_while(|c| c.is_alphanumeric()).collect()
}

fn valid() -> CertificateBundle {
    let v = vectors();
    let c = v["certificates"]
        .as_array()
        .expect("certificates")
        .iter()
        .find(|c| c["name"] == "pinned_after_epoch_0")
        .expect("the valid vector");
    bundle(c)
}

#[test]
fn the_registry_bytes_are_the_pinned_versions_deterministic_cbor() {
    let v = vectors();
    let bytes = hex::decode(v["registry"]["cbor_hex"].as_str().expect("hex")).expect("hex");
    assert_eq!(bytes.len() as u64, v["registry"]["len"].as_u64().expect("len"));
    let reg = Registry::decode(&bytes).expect("the documented bytes decode");
    assert_eq!(reg.epoch, 1);
    assert_eq!(reg.encode(), bytes, "nothing is re-encoded differently");
    assert_eq!(Registry::hash_bytes(&bytes).to_string(), v["registry"]["hash_hex"]);
    assert_eq!(reg.hash().to_string(), v["registry"]["hash_hex"]);
    // The proposal pins exactly these bytes.
    let b = valid();
    let msg = Message::decode(&hex::decode(&b.proposal).expect("hex")).expect("proposal");
    let Payload::Proposal(p) = msg.payload() else { panic!("not a proposal") };
    assert_eq!(p.registry.hash, Registry::hash_bytes(&bytes));
    assert_eq!(b.registry.as_deref(), v["registry"]["cbor_hex"].as_str());
    // The struct-order encoding kosd once wrote is another byte string, another hash.
    let old =
        hex::decode(v["registry"]["struct_order"]["cbor_hex"].as_str().expect("hex")).expect("hex");
    assert_eq!(old, kos_protocol::to_cbor(&reg));
    assert_ne!(Registry::hash_bytes(&old), p.registry.hash);
    assert!(Registry::decode(&old).is_err());
}

#[test]
fn each_certificate_verifies_or_is_refused_as_published() {
    let v = vectors();
    let certs = v["certificates"].as_array().expect("certificates");
    assert!(certs.len() >= 10);
    for c in certs {
        let got = kos_engine::verify_certificate(&bundle(c));
        if c["valid"] == true {
            let ok = got.unwrap_or_else(|e| panic!("{}: refused: {e}", c["name"]));
            assert_eq!(u64::from(ok.round), c["round"].as_u64().expect("round"), "{}", c["name"]);
            assert_eq!(ok.key.outcome.as_str(), c["outcome"], "{}", c["name"]);
            assert_eq!(ok.key.votes_root.to_string(), c["votes_root"], "{}", c["name"]);
            assert_eq!(u64::from(ok.key.revision), c["revision"].as_u64().expect("revision"));
            assert_eq!(ok.weight, c["weight"].as_u64().expect("weight"), "{}", c["name"]);
            assert_eq!(ok.eligible, c["eligible"].as_u64().expect("eligible"), "{}", c["name"]);
            assert_eq!(ok.attesters as u64, c["attesters"].as_u64().expect("n"), "{}", c["name"]);
        } else {
            let e = got.err().unwrap_or_else(|| panic!("{}: accepted", c["name"]));
            assert_eq!(name(&e), c["error"], "{}: {e}", c["name"]);
            assert_eq!(e.to_string(), c["message"], "{}", c["name"]);
        }
    }
}

#[test]
fn the_receipt_verifies() {
    let v = vectors();
    for r in v["receipts"].as_array().expect("receipts") {
        let b: ReceiptBundle = serde_json::from_value(r["bundle"].clone()).expect("receipt");
        let ok = kos_engine::verify_receipt(&b).expect("valid");
        assert_eq!(ok.voter.to_did(), r["voter"]);
        assert_eq!(ok.ballot.to_string(), r["ballot"]);
        let mut forged = b.clone();
        forged.proof.clear();
        assert!(matches!(kos_engine::verify_receipt(&forged), Err(CertificateError::NotIncluded)));
    }
}

/// Every permutation of `items` (small inputs only).
fn permutations<T: Clone>(items: &[T]) -> Vec<Vec<T>> {
    if items.len() <= 1 {
        return vec![items.to_vec()];
    }
    let mut out = Vec::new();
    for i in 0..items.len() {
        let mut rest = items.to_vec();
        let x = rest.remove(i);
        for mut p in permutations(&rest) {
            p.insert(0, x.clone());
            out.push(p);
        }
    }
    out
}

#[test]
fn no_other_encoding_of_the_registry_is_accepted() {
    let b = valid();
    let bytes = hex::decode(b.registry.as_deref().expect("registry")).expect("hex");
    let with = |registry: Vec<u8>| CertificateBundle {
        registry: Some(hex::encode(registry)),
        ..b.clone()
    };
    assert!(kos_engine::verify_certificate(&with(bytes.clone())).is_ok());
    let Value::Map(top) = ciborium::from_reader::<Value, _>(bytes.as_slice()).expect("cbor") else {
        panic!("not a map")
    };
    // Every order of the top-level keys but the deterministic one is refused: 8! - 1 orders,
    // taken over the first six keys (720 orders) to keep the test quick.
    let (head, tail) = top.split_at(6);
    let mut refused = 0;
    for order in permutations(head) {
        let mut entries = order;
        entries.extend_from_slice(tail);
        let encoded = kos_protocol::to_cbor(&Value::Map(entries));
        let got = kos_engine::verify_certificate(&with(encoded.clone()));
        if encoded == bytes {
            assert!(got.is_ok());
            continue;
        }
        let e = got.expect_err("a re-ordered registry");
        assert!(matches!(e, CertificateError::RegistryEncoding(_)), "{e}");
        assert!(e.to_string().contains("length-first order"), "{e}");
        refused += 1;
    }
    assert_eq!(refused, 719);
    // Members in the other order, an explicit null policy, a long head, trailing bytes.
    let mut swapped = top.clone();
    for (k, v) in swapped.iter_mut() {
        if let (Value::Text(t), Value::Map(m)) = (k, v)
            && t == "members"
        {
            m.reverse();
        }
    }
    let mut null_policy = top.clone();
    null_policy.push((Value::Text("policy".into()), Value::Null));
    let mut long_head = bytes.clone();
    assert_eq!(long_head[1], 0x65, "`epoch` is a 5-character text key");
    long_head.splice(1..2, [0x78, 0x05]);
    let mut trailing = bytes.clone();
    trailing.push(0);
    for (what, encoded, words) in [
        ("members re-ordered", kos_protocol::to_cbor(&Value::Map(swapped)), "length-first"),
        ("policy: null", kos_protocol::to_cbor(&Value::Map(null_policy)), "null"),
        ("a long head", long_head, "shortest heads"),
        ("a trailing byte", trailing, "trailing"),
    ] {
        let e = kos_engine::verify_certificate(&with(encoded)).expect_err(what);
        assert!(matches!(e, CertificateError::RegistryEncoding(_)), "{what}: {e}");
        assert!(e.to_string().contains(words), "{what}: {e}");
    }
}

#[test]
fn attestations_omit_a_commit_phase_and_round_zero() {
    let b = valid();
    let v = vectors();
    let old = &v["certificates"][1]["bundle"]["attestations"][0];
    let msg = Message::decode(&hex::decode(old.as_str().expect("hex")).expect("hex")).expect("ok");
    let Payload::TallyAttestation(a) = msg.payload() else { panic!("not an attestation") };
    assert_eq!((a.phase, a.round), (kos_protocol::payload::AttestationPhase::Commit, 0));
    let body = msg.payload().encode();
    let Value::Map(entries) = ciborium::from_reader::<Value, _>(body.as_slice()).expect("cbor")
    else {
        panic!("not a map")
    };
    for extra in [("phase", Value::Text("commit".into())), ("round", Value::Integer(0.into()))] {
        let mut e = vec![(Value::Text(extra.0.into()), extra.1)];
        e.extend(entries.iter().cloned());
        let bytes = kos_protocol::to_cbor(&Value::Map(e));
        let got = Payload::decode(msg.kind(), &bytes);
        assert!(
            matches!(got, Err(kos_protocol::DecodeError::BadBody { .. })),
            "{}: {got:?}",
            extra.0
        );
    }
    // A round-1 commit carries `round` and no `phase`.
    let r1 = Message::decode(&hex::decode(&b.attestations[0]).expect("hex")).expect("ok");
    let Payload::TallyAttestation(a) = r1.payload() else { panic!("not an attestation") };
    assert_eq!(a.round, 1);
    let diag = kos_protocol::diagnostic(&r1.payload().encode()).expect("cbor");
    assert!(diag.starts_with("{\"round\": 1, \"totals\""), "{diag}");
}
