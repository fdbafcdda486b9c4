//! Prints the registry test vectors as JSON: `cargo run -p kos-engine --example
//! gen_registry_vector > docs/vectors/registry-v1.json`. The registry of the CHARTER vector of
//! `docs/vectors/klp-v1.json` (epoch 0), and a later version with governed configuration, a
//! policy and a changed member, each with its deterministic CBOR and its content hash
//! (`docs/governance.md` §2). `tests/registry_vector.rs` checks the code against the file.

use std::sync::Arc;

use kos_engine::Registry;
use kos_protocol::{Message, Payload, payload::TrustLevel};
use serde_json::json;

fn main() {
    let vectors: serde_json::Value =
        serde_json::from_str(include_str!("../../../docs/vectors/klp-v1.json")).expect("vectors");
    let charter_hex = vectors["envelopes"]
        .as_array()
        .expect("envelopes")
        .iter()
        .find(|e| e["name"] == "charter")
        .and_then(|e| e["envelope_hex"].as_str())
        .expect("the charter vector");
    let msg = Message::decode(&hex::decode(charter_hex).expect("hex")).expect("charter");
    let Payload::Charter(charter) = msg.payload() else { panic!("not a charter") };
    let base = Registry::from_charter(charter);
    let mut later = base.clone();
    later.epoch = 2;
    later.config.insert("max_agents".into(), "120".into());
    later.config.insert("fee".into(), "3".into());
    later.policy = Some("[types]\ndeny = [\"AGENT_MIGRATION\"]\n".into());
    let mut members = (*later.members).clone();
    if let Some(m) = members.values_mut().last() {
        m.trust = TrustLevel::Trusted;
    }
    later.members = Arc::new(members);
    let item = |name: &str, r: &Registry| {
        let bytes = r.encode();
        json!({
            "name": name,
            "cbor_hex": hex::encode(&bytes),
            "diagnostic": kos_protocol::diagnostic(&bytes).expect("cbor"),
            "hash_hex": r.hash().to_string(),
        })
    };
    let out = json!({
        "description": "Registry versions: deterministic CBOR and content hash SHA-256(\"kos-klp-v1/registry\" 0x00 || CBOR), docs/governance.md §2. `charter_0` is the registry of the CHARTER vector of klp-v1.json.",
        "registries": [item("charter_0", &base), item("epoch_2", &later)],
    });
    println!("{}", serde_json::to_string_pretty(&out).expect("json"));
}
