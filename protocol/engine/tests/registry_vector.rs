//! The registry vectors of `docs/vectors/registry-v1.json` are what the code computes: the
//! registry of the CHARTER vector, its deterministic CBOR and its content hash.

use kos_engine::Registry;
use kos_protocol::{Message, Payload};

#[test]
fn the_charter_registry_matches_the_published_vector() {
    let klp: serde_json::Value =
        serde_json::from_str(include_str!("../../../docs/vectors/klp-v1.json")).expect("json");
    let reg: serde_json::Value =
        serde_json::from_str(include_str!("../../../docs/vectors/registry-v1.json")).expect("json");
    let charter_hex = klp["envelopes"]
        .as_array()
        .expect("envelopes")
        .iter()
        .find(|e| e["name"] == "charter")
        .and_then(|e| e["envelope_hex"].as_str())
        .expect("charter vector");
    let msg = Message::decode(&hex::decode(charter_hex).expect("hex")).expect("charter");
    let Payload::Charter(charter) = msg.payload() else { panic!("not a charter") };
    let r = Registry::from_charter(charter);
    let v = reg["registries"]
        .as_array()
        .expect("registries")
        .iter()
        .find(|r| r["name"] == "charter_0")
        .expect("charter_0");
    assert_eq!(hex::encode(r.encode()), v["cbor_hex"].as_str().expect("cbor"));
    assert_eq!(r.hash().to_string(), v["hash_hex"].as_str().expect("hash"));
    // Deterministic: the §1.1 decoder accepts it (sorted keys, no null).
    assert!(kos_protocol::from_cbor::<ciborium::Value>(&r.encode()).is_ok());
}
