//! REPUTATION_DELTA with real `kosd` processes: advisory, weighted by the receiver's trust in the
//! sender, capped per sender per day, shown with its sources in `kosctl peers`, and never a
//! change of trust.

use kos_tests::{Node, found, wait_for};
use serde_json::Value;

fn reputation_of(n: &Node, subject: &str) -> Option<Value> {
    let peers = n.try_json(&["peers"])?;
    peers["reputation"].as_array()?.iter().find(|r| r["subject"] == subject).cloned()
}

#[test]
fn reputation_changes_are_advisory_weighted_and_capped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Node::start(dir.path().join("a"));
    let b = Node::start(dir.path().join("b"));
    let c = Node::start(dir.path().join("c"));
    found(&a, "reputations", &[(&b, "trusted"), (&c, "standard")]);
    // The announcement topic's mesh is up once an announcement gets through.
    wait_for(60, "the announcement mesh", || {
        a.json(&["announce", "mesh check"]);
        let inbox = b.try_json(&["inbox"])?;
        inbox["messages"]
            .as_array()?
            .iter()
            .any(|m| m["type"] == "BROADCAST_ANNOUNCE")
            .then_some(())
    });
    let c_did = c.did();
    a.json(&["reputation", &c_did, "-500", "--reason", "relays spam"]);
    // Weighted by B's trust in A (core: 5): -500 × 5 = -2 500.
    let r = wait_for(60, "the change at B", || reputation_of(&b, &c_did));
    assert_eq!(r["advisory_score"], -2500, "{r}");
    assert_eq!(r["sources"][0]["sender"], a.did(), "{r}");
    assert_eq!(r["sources"][0]["weight"], 5000, "{r}");
    assert_eq!(r["sources"][0]["reason"], "relays spam", "{r}");
    // A's daily cap is 1 000: a second -500 counts, the -100 after it does not.
    a.json(&["reputation", &c_did, "-500", "--reason", "again"]);
    wait_for(60, "the second change", || {
        (reputation_of(&b, &c_did)?["sources"].as_array()?.len() == 2).then_some(())
    });
    a.json(&["reputation", &c_did, "-100", "--reason", "over the cap"]);
    a.json(&["announce", "after the capped change"]);
    wait_for(60, "the later announcement at B", || {
        let inbox = b.try_json(&["inbox"])?;
        inbox["messages"]
            .as_array()?
            .iter()
            .any(|m| m["body"]["text"] == "after the capped change")
            .then_some(())
    });
    let r = reputation_of(&b, &c_did).expect("reputation");
    assert_eq!(r["sources"].as_array().map(Vec::len), Some(2), "the capped change counted: {r}");
    assert_eq!(r["advisory_score"], -5000, "{r}");
    // Advisory only: C's trust in the registry and B's local trust did not move.
    let fed = b.json(&["federation", "show"]);
    let member = fed["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["did"] == c_did.as_str())
        .cloned();
    assert_eq!(member.expect("c")["trust"], "standard");
    assert_eq!(b.json(&["peers"])["trust"], serde_json::json!([]));
    // A node does not rate itself; a delta out of range is refused.
    let e = a.ctl(&["reputation", &a.did(), "100"]).fails(1);
    assert!(e.contains("does not rate itself"), "{e}");
    let e = a.ctl(&["reputation", &c_did, "5000"]).fails(1);
    assert!(e.contains("-1000 to 1000"), "{e}");
}
