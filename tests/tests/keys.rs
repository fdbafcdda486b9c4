//! Keys that change, with real `kosd` processes: `kosctl id rotate` and `kosctl id revoke`.
//! After a rotation the old key's new messages are refused on every node, the member's vote
//! under the new key counts with the same weight, and a vote the old key signed before the
//! rotation, delivered after it, counts the same everywhere; a revoked key's vote is refused.

use kos_protocol::{Message, Payload, SecretKey, payload::*, vault::Vault};
use kos_tests::{Node, found, now_ms, wait_for, wait_status};
use serde_json::Value;

fn member(n: &Node, did: &str) -> Option<Value> {
    let fed = n.try_json(&["federation", "show"])?;
    fed["members"].as_array()?.iter().find(|m| m["did"] == did).cloned()
}

/// A key from a node's (development, unencrypted) vault.
fn vault_key(n: &Node, name: &str) -> SecretKey {
    let v = Vault::load(&n.dir.join("vault.bin"), b"").expect("vault");
    v.get(name).cloned().unwrap_or_else(|| panic!("no {name} in the vault"))
}

/// A VOTE signed by `key` at `at` (bypassing the node: what a thief or a late relay sends).
fn vote(key: &SecretKey, fed: &str, proposal: &str, choice: Choice, at: u64) -> Message {
    let body = Vote {
        choice,
        reason: None,
        proposal: proposal.parse().expect("proposal id"),
        revision: 0,
        federation: fed.parse().expect("federation id"),
    };
    Message::sign(key, at, at, None, Payload::Vote(body)).expect("sign")
}

/// Submits one envelope through `kosctl submit`; the answer (it exits 1 when it was refused).
fn submit(n: &Node, m: &Message) -> Value {
    let file = n.dir.with_extension(format!("{}.hex", m.id()));
    std::fs::write(&file, hex::encode(m.bytes())).expect("write");
    let run = n.ctl(&["submit", file.to_str().expect("utf-8")]);
    serde_json::from_str(&run.stdout).unwrap_or_else(|_| panic!("kosctl submit: {run:?}"))
}

fn tally(n: &Node, p: &str) -> Value {
    n.try_json(&["tally", p]).map_or(Value::Null, |v| v["tally"].clone())
}

#[test]
fn rotation_and_revocation_hold_on_every_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Node::start(dir.path().join("a"));
    let mut b = Node::start_with(dir.path().join("b"), &["--name", "node-b"]);
    let c = Node::start(dir.path().join("c"));
    let fed = found(&a, "keys", &[(&b, "trusted"), (&c, "standard")]);
    let p = a.json(&[
        "propose",
        "--kind",
        "resource_allocation",
        "--title",
        "keys",
        "--description",
        "d",
        "--voting-secs",
        "600",
    ])["id"]
        .as_str()
        .expect("id")
        .to_owned();
    wait_status(&[&a, &b, &c], &p, "voting");

    // B rotates. Its identity (the did in the registry) stays; its key moves.
    let old_key = vault_key(&b, "node");
    let old_did = b.did();
    let r = b.json(&["id", "rotate"]);
    let new_did = r["did"].as_str().expect("did").to_owned();
    let rotated_at = r["at_ms"].as_u64().expect("at_ms");
    assert_eq!(r["old_did"], old_did.as_str(), "{r}");
    assert_ne!(new_did, old_did);
    let id = b.json(&["id"]);
    assert_eq!(id["did"], new_did.as_str(), "{id}");
    assert_eq!(id["member"], old_did.as_str(), "{id}");
    assert_eq!(id["key_generation"], 1, "{id}");
    for n in [&a, &b, &c] {
        wait_for(60, "the rotation everywhere", || {
            (member(n, &old_did)?["key"] == new_did.as_str()).then_some(())
        });
    }
    // B's directory record is replaced: its name resolves to the new key (the old key's claim
    // no longer counts), and direct messages reach it there.
    let new_klp = r["klp_id"].as_str().expect("klp_id").to_owned();
    wait_for(60, "the name on the new key", || {
        (a.try_json(&["resolve", "klp://node-b"])?["klp_id"] == new_klp.as_str()).then_some(())
    });
    let task =
        serde_json::json!({"inputs": ["x"], "task_id": "after-rotation", "min_trust": "standard"});
    a.json(&[
        "send",
        "klp://node-b/tasks",
        "--type",
        "TASK_REQUEST",
        "--payload",
        &task.to_string(),
    ]);
    wait_for(60, "the task at B", || {
        b.try_json(&["inbox"])?["messages"]
            .as_array()?
            .iter()
            .any(|m| m["body"]["task_id"] == "after-rotation")
            .then_some(())
    });

    // The old key after its rotation (a thief's vote): refused on every node, by every path a
    // message enters through the API.
    let thief = vote(&old_key, &fed, &p, Choice::Veto, now_ms());
    for n in [&a, &b, &c] {
        let r = submit(n, &thief);
        assert_eq!(r["refused"], 1, "{r}");
        let why = r["errors"][0]["error"].as_str().unwrap_or_default();
        assert!(why.contains("retired"), "{why}");
    }

    // The race: a vote the old key signed just before the rotation, delivered after it, counts
    // — on every node, with B's weight (trusted: 3000).
    let early = vote(&old_key, &fed, &p, Choice::No, rotated_at - 1);
    let r = submit(&c, &early);
    assert_eq!(r["accepted"], 1, "{r}");
    for n in [&a, &b, &c] {
        wait_for(60, "the early vote everywhere", || {
            let t = tally(n, &p);
            (t["counted"] == 1 && t["participation"] == 3000).then_some(())
        });
    }
    // B votes under its new key: it replaces the old key's vote, with the same weight.
    b.json(&["vote", &p, "yes"]);
    for n in [&a, &b, &c] {
        wait_for(60, "the new key's vote everywhere", || {
            let t = tally(n, &p);
            (t["counted"] == 1 && t["participation"] == 3000 && t["totals"][0] == 3000)
                .then_some(())
        });
    }

    // C revokes its key: its own vote is refused, and so is one signed with that key elsewhere.
    let c_key = vault_key(&c, "node");
    let c_did = c.did();
    let r = c.json(&["id", "revoke", "--reason", "laptop stolen"]);
    assert_eq!(r["revoked"], c_did.as_str(), "{r}");
    let e = c.ctl(&["vote", &p, "yes"]).fails(1);
    assert!(e.contains("retired"), "{e}");
    for n in [&a, &b] {
        wait_for(60, "the revocation everywhere", || {
            (member(n, &c_did)?["revoked"] == true).then_some(())
        });
    }
    let late = vote(&c_key, &fed, &p, Choice::Yes, now_ms());
    let r = submit(&a, &late);
    assert_eq!(r["refused"], 1, "{r}");

    // Every node holds the same state.
    wait_for(60, "one state hash", || {
        let hashes: Vec<Value> =
            [&a, &b, &c].iter().map(|n| n.status()["state_hash"].clone()).collect();
        (hashes[0] == hashes[1] && hashes[1] == hashes[2]).then_some(())
    });

    // After a restart B's transport identity is the new key too, and it still votes as B.
    b.kill();
    let b = Node::start_with(dir.path().join("b"), &["--name", "node-b"]);
    assert_eq!(b.did(), new_did);
    assert_eq!(b.peer_id(), vault_key(&b, "node").public().to_peer_id().to_string());
    b.json(&["vote", &p, "abstain"]);
    wait_for(60, "the vote after the restart at A", || {
        let t = tally(&a, &p);
        (t["counted"] == 1 && t["totals"][0] == 0).then_some(())
    });
}
