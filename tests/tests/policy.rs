//! `.klp-policy` with real `kosd` processes: a denied type, a sender below the trust bar and a
//! peer on the deny list are refused with the rule that refused them — the sender's outbox says
//! why, the recipient's audit log and metrics record it — and each policy change, and a change
//! of local trust, takes effect without a restart.

use kos_tests::{Node, wait_for};
use serde_json::Value;

fn apply(n: &Node, dir: &std::path::Path, text: &str) {
    let f = dir.join("policy.toml");
    std::fs::write(&f, text).expect("write");
    n.json(&["policy", "apply", f.to_str().expect("path")]);
}

/// Sends a TASK_REQUEST from `a` to `to`; returns its id.
fn send(a: &Node, to: &str, task: &str) -> String {
    let payload =
        serde_json::json!({"inputs": ["x"], "task_id": task, "min_trust": "standard"}).to_string();
    a.json(&["send", to, "--type", "TASK_REQUEST", "--payload", &payload])["id"]
        .as_str()
        .expect("id")
        .to_owned()
}

/// Waits until `id` failed in `a`'s outbox; returns why.
fn refusal(a: &Node, id: &str) -> String {
    wait_for(60, "the refusal", || {
        let out = a.try_json(&["outbox"])?;
        let f = out["failed"].as_array()?.iter().find(|f| f["id"] == id)?.clone();
        f["last_error"].as_str().map(str::to_owned)
    })
}

fn delivered(c: &Node, id: &str) -> Value {
    wait_for(60, "the delivery", || {
        let inbox = c.try_json(&["inbox"])?;
        inbox["messages"].as_array()?.iter().find(|m| m["id"] == id).cloned()
    })
}

#[test]
fn policy_refusals_name_their_rule_and_changes_apply_without_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Node::start(dir.path().join("a"));
    let c = Node::start(dir.path().join("c"));
    a.json(&["connect", &c.bootstrap_addr()]);
    let to = format!("klp://{}/tasks", c.status()["klp_id"].as_str().expect("klp id"));
    let a_klp = a.status()["klp_id"].as_str().expect("klp id").to_owned();
    wait_for(60, "C's record at A", || a.try_json(&["resolve", &to]));

    // No policy: delivered.
    let first = send(&a, &to, "t-0");
    delivered(&c, &first);

    // A denied type.
    apply(&c, dir.path(), "[types]\ndeny = [\"TASK_REQUEST\"]\n");
    let shown = c.json(&["policy", "show"]);
    assert!(shown["local"].as_str().expect("text").contains("TASK_REQUEST"), "{shown}");
    let id = send(&a, &to, "t-1");
    let why = refusal(&a, &id);
    assert!(why.contains("Policy") && why.contains("message type TASK_REQUEST is denied"), "{why}");

    // A sender below the trust bar; then C trusts A, and the same request passes.
    apply(&c, dir.path(), "[min_trust]\nTASK_REQUEST = \"trusted\"\n");
    let id = send(&a, &to, "t-2");
    let why = refusal(&a, &id);
    assert!(why.contains("needs sender trust trusted or higher (sender has none)"), "{why}");
    // What is in force, for people: the rule as checked, not only the text.
    let text = c.human(&["policy", "show"]);
    assert!(text.contains("least trust             TASK_REQUEST trusted"), "{text}");
    assert!(text.contains("types                   any type\n"), "{text}");
    assert_eq!(c.json(&["policy", "show"])["local_rules"]["min_trust"]["TASK_REQUEST"], "trusted");
    c.json(&["trust", &format!("klp://{a_klp}"), "trusted"]);
    let id = send(&a, &to, "t-3");
    delivered(&c, &id);

    // A peer on the deny list.
    let a_peer = a.peer_id();
    apply(&c, dir.path(), &format!("[peers]\ndeny = [\"{a_peer}\"]\n"));
    let id = send(&a, &to, "t-4");
    let why = refusal(&a, &id);
    assert!(why.contains(&format!("peer {a_peer} is on the deny list")), "{why}");

    // The file edited in place and SIGHUP: the deny list is gone, A's request passes again.
    std::fs::write(c.dir.join("klp-policy.toml"), "# nothing denied\n").expect("write");
    c.signal("HUP");
    wait_for(30, "the reloaded policy", || {
        let p = c.try_json(&["policy", "show"])?;
        p["local"].as_str()?.contains("nothing denied").then_some(())
    });
    let id = send(&a, &to, "t-5");
    delivered(&c, &id);

    // Every refusal is in C's audit log and its metrics.
    let audit = c.json(&["audit", "show", "--last", "100"]);
    let events: Vec<&str> = audit["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["event"].as_str())
        .collect();
    for want in
        ["is denied", "needs sender trust", "on the deny list", "policy applied", "policy reloaded"]
    {
        assert!(
            events.iter().any(|e| e.contains(want)),
            "no audit entry with {want:?}: {events:?}"
        );
    }
    let m = c.metrics();
    assert!(m.contains("kos_policy_refusals_total{path=\"direct\"} 3"), "{m}");
    assert!(m.contains("kos_direct_messages_total{outcome=\"policy\"} 3"), "{m}");

    // A bad policy file is refused in one line and changes nothing.
    let f = dir.path().join("bad.toml");
    std::fs::write(&f, "[types]\ndeny = [\"NOT_A_TYPE\"]\n").expect("write");
    let err = c.ctl(&["policy", "apply", f.to_str().expect("path")]).fails(1);
    assert!(err.contains("NOT_A_TYPE"), "{err}");
    assert!(
        c.json(&["policy", "show"])["local"].as_str().expect("text").contains("nothing denied")
    );
}

#[test]
fn a_federation_policy_passed_by_proposal_applies_on_every_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Node::start(dir.path().join("a"));
    let c = Node::start(dir.path().join("c"));
    kos_tests::found(&a, "policed", &[(&c, "trusted")]);
    let doc = "[types]\ndeny = [\"TASK_REQUEST\"]\n";
    let p = a.json(&[
        "propose",
        "--kind",
        "service_policy",
        "--title",
        "No tasks",
        "--description",
        "Members take no tasks for now.",
        "--policy",
        doc,
        "--voting-secs",
        "4",
    ])["id"]
        .as_str()
        .expect("id")
        .to_owned();
    for n in [&a, &c] {
        wait_for(60, "voting open", || {
            (n.try_json(&["show", &p])?["status"] == "voting").then_some(())
        });
        n.json(&["vote", &p, "yes"]);
    }
    // Executed: the registry's policy is in force on both nodes (no file, no restart).
    for n in [&a, &c] {
        wait_for(120, "the federation policy in force", || {
            (n.try_json(&["policy", "show"])?["federation"] == doc).then_some(())
        });
    }
    let to = format!("klp://{}/tasks", c.status()["klp_id"].as_str().expect("klp id"));
    wait_for(60, "C's record at A", || a.try_json(&["resolve", &to]));
    let id = send(&a, &to, "t-1");
    let why = refusal(&a, &id);
    assert!(why.contains("federation policy: message type TASK_REQUEST is denied"), "{why}");
}
