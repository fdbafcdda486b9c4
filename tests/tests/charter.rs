//! A federation founded from the example charter file: members with roles, stake and trust, the
//! Security Board, voting defaults per proposal type — as every node sees them.

use kos_tests::{Node, wait_for};
use serde_json::json;

#[test]
fn a_federation_from_the_example_charter_file_is_what_the_file_says_on_every_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Node::start(dir.path().join("a"));
    let b = Node::start(dir.path().join("b"));
    let c = Node::start(dir.path().join("c"));
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/charter.example.toml"
    ))
    .expect("example charter");
    let text =
        example.replace("did:key:<member-b>", &b.did()).replace("did:key:<member-c>", &c.did());
    let file = dir.path().join("charter.toml");
    std::fs::write(&file, text).expect("write charter");
    let fed = a.json(&[
        "federation",
        "create",
        "example",
        "--charter",
        file.to_str().expect("path"),
    ])["federation"]
        .as_str()
        .expect("federation")
        .to_owned();
    for n in [&b, &c] {
        n.json(&["federation", "join", &fed, "--bootstrap", &a.bootstrap_addr()]);
    }
    for n in [&a, &b, &c] {
        let f = wait_for(60, "the charter on every node", || {
            let f = n.json(&["federation", "show"]);
            (f["synced"] == true).then_some(f)
        });
        let member = |did: &str| {
            f["members"]
                .as_array()
                .expect("members")
                .iter()
                .find(|m| m["did"] == did)
                .cloned()
                .unwrap_or_else(|| panic!("{did} is not a member: {f}"))
        };
        assert_eq!(f["members"].as_array().map(Vec::len), Some(3), "{f}");
        let founder = member(&a.did());
        assert_eq!(founder["trust"], "core");
        assert_eq!(founder["stake"], 10);
        assert_eq!(founder["roles"], json!(["citizen", "validator", "emergency_responder"]));
        let mb = member(&b.did());
        assert_eq!((mb["trust"].clone(), mb["stake"].clone()), (json!("trusted"), json!(5)));
        assert_eq!(member(&c.did())["roles"], json!(["citizen", "validator"]), "default roles");
        assert_eq!(
            f["bodies"],
            json!([{"kind": "security_board", "members": [a.did(), b.did()]}]),
            "{f}"
        );
        let defaults = f["defaults"].as_array().expect("defaults");
        let config = defaults.iter().find(|d| d["kind"] == "configuration").expect("configuration");
        assert_eq!(config["config"]["rule"], json!({"supermajority": [2, 3]}));
        assert_eq!(config["config"]["quorum"], json!([1, 2]));
        assert_eq!(config["config"]["weighting"], "hybrid");
        assert_eq!(config["config"]["early_close"], true);
        let alloc = defaults.iter().find(|d| d["kind"] == "resource_allocation").expect("alloc");
        assert_eq!(alloc["config"]["rule"], "plurality");
        assert_eq!(alloc["config"]["sponsors"], 1);
        assert_eq!(alloc["config"]["quorum"], json!([3, 10]), "unnamed fields keep the default");
        assert_eq!(f["timing"]["grace_ms"], 2000);
        assert_eq!(f["role_weights"], json!([{"role": "validator", "weight": 2000}]));
        assert_eq!(f["registry_epoch"], 0);
    }

    // A charter file with a mistake is refused in one line, and the node follows nothing.
    let d = Node::start(dir.path().join("d"));
    for (bad, says) in [
        ("[[members]]\ndid = \"self\"\ncolour = \"blue\"\n", "colour"),
        ("[[members]]\ndid = \"did:key:nonsense\"\n", "did:key:nonsense"),
        ("[[defaults]]\nkind = \"configuration\"\nquorum = [3, 2]\n", "charter"),
    ] {
        let f = dir.path().join("bad.toml");
        std::fs::write(&f, bad).expect("write");
        let err = d
            .ctl(&["federation", "create", "bad", "--charter", f.to_str().expect("path")])
            .fails(1);
        assert!(err.contains(says), "{err}");
        assert_eq!(d.status()["federation"], serde_json::Value::Null);
    }
}
