//! Encrypted KLP messages between instances, with real `kosd` processes on loopback: a
//! TASK_REQUEST to a *name* reaches its node through a relay when the two have no connection,
//! the relay never holds the plaintext, only the recipient's key opens it, the TASK_RESULT comes
//! back bound to the request, and a message in flight while the recipient is SIGKILLed arrives
//! after it restarts.

use kos_protocol::{Message, Payload, SecretKey, seal, vault::Vault};
use kos_tests::{Node, wait_for};
use serde_json::Value;

/// The node key of a development node (its vault is under an empty passphrase).
fn node_key(dir: &std::path::Path) -> SecretKey {
    let vault = Vault::load(&dir.join("vault.bin"), b"").expect("vault");
    vault.get("node").expect("node key").clone()
}

/// Every byte under `dir`, concatenated (sled files, journal, logs).
fn all_bytes(dir: &std::path::Path) -> Vec<u8> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(b) = std::fs::read(&p) {
                out.extend(b);
            }
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn inbox(n: &Node) -> Vec<Value> {
    n.try_json(&["inbox"]).and_then(|v| v["messages"].as_array().cloned()).unwrap_or_default()
}

fn send_task(a: &Node, task: &str, input: &str) -> String {
    let payload = serde_json::json!({"inputs": [input], "task_id": task, "min_trust": "standard"})
        .to_string();
    let sent =
        a.json(&["send", "klp://worker-c/tasks", "--type", "TASK_REQUEST", "--payload", &payload]);
    assert_eq!(sent["status"], "queued", "{sent}");
    sent["id"].as_str().expect("id").to_owned()
}

#[test]
fn a_task_request_reaches_a_named_node_through_a_relay_and_its_result_comes_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Node::start(dir.path().join("a"));
    let b = Node::start(dir.path().join("b"));
    let mut c = Node::start_with(dir.path().join("c"), &["--name", "worker-c"]);
    // A and C never talk directly: each blocks the other. Both know B.
    a.json(&["block", &c.peer_id()]);
    c.json(&["block", &a.peer_id()]);
    a.json(&["connect", &b.bootstrap_addr()]);
    c.json(&["connect", &b.bootstrap_addr()]);

    // The name resolves through the DHT (C's record, held by B) to C's identity.
    let c_status = c.status();
    let record = wait_for(60, "klp://worker-c in A's directory", || {
        a.try_json(&["resolve", "klp://worker-c/tasks"])
    });
    assert_eq!(record["klp_id"], c_status["klp_id"], "{record}");
    assert_eq!(record["did"], c_status["did"], "{record}");
    assert!(record["types"].as_array().expect("types").contains(&"TASK_REQUEST".into()));
    let err = a.ctl(&["resolve", "klp://nobody-here/x"]).fails(1);
    assert!(err.contains("no directory record"), "{err}");

    // A sends; C receives through B.
    let secret = "the launch code is 7-4-1-1";
    let id = send_task(&a, "t-1", secret);
    let got = wait_for(90, "the request in C's inbox", || {
        inbox(&c).into_iter().find(|m| m["id"] == id.as_str())
    });
    assert_eq!(got["type"], "TASK_REQUEST", "{got}");
    assert_eq!(got["body"]["inputs"][0], secret, "{got}");
    assert_eq!(got["sender"], a.did(), "{got}");
    let shown = c.json(&["inbox", "show", &id]);
    assert_eq!(shown["from_peer"], b.peer_id(), "it came through B: {shown}");
    let text = c.human(&["inbox", "show", &id]);
    for line in [
        "Type          TASK_REQUEST".to_owned(),
        format!("Input         {secret}"),
        format!("From peer     {}", b.peer_id()),
        format!("Addressed to  klp://{}/tasks", c_status["klp_id"].as_str().expect("klp id")),
    ] {
        assert!(text.contains(&line), "missing {line:?}:\n{text}");
    }

    // B held only ciphertext: nothing under its data directory contains the plaintext, and its
    // inbox is empty. Only C's key opens the envelope.
    assert!(inbox(&b).is_empty());
    assert!(!contains(&all_bytes(&dir.path().join("b")), secret.as_bytes()), "plaintext at B");
    assert!(!contains(&all_bytes(&dir.path().join("b.log")), secret.as_bytes()));
    let envelope = hex::decode(shown["envelope"].as_str().expect("envelope")).expect("hex");
    let msg = Message::decode(&envelope).expect("a valid envelope");
    assert!(!contains(&envelope, secret.as_bytes()), "the envelope is encrypted");
    assert!(seal::open(&msg, &node_key(&dir.path().join("b"))).is_err(), "B cannot open it");
    assert!(seal::open(&msg, &node_key(&dir.path().join("a"))).is_err(), "nor can A");
    match seal::open(&msg, &node_key(&dir.path().join("c"))).expect("C opens it") {
        Payload::TaskRequest(t) => assert_eq!(t.inputs, [secret]),
        other => panic!("not a task request: {other:?}"),
    }

    // C answers; the result comes back to A bound to the request.
    c.json(&["reply", &id, "--output", "done: launched"]);
    let result = wait_for(90, "the result in A's inbox", || {
        inbox(&a).into_iter().find(|m| m["type"] == "TASK_RESULT")
    });
    assert_eq!(result["body"]["request"], id.as_str(), "{result}");
    assert_eq!(result["body"]["task_id"], "t-1", "{result}");
    assert_eq!(result["body"]["outputs"][0], "done: launched", "{result}");
    assert_eq!(result["sender"], c.did(), "{result}");
    // C deletes the request it answered: gone from its inbox, and a repeat is not filed again.
    c.json(&["inbox", "delete", &id]);
    assert!(inbox(&c).iter().all(|m| m["id"] != id.as_str()));

    // C is SIGKILLed; a message sent meanwhile waits at B and arrives after C restarts.
    c.kill();
    let late = send_task(&a, "t-2", "sent while C was down");
    wait_for(60, "B to hold the message for C", || {
        let out = b.try_json(&["outbox"])?;
        out["pending"].as_array()?.iter().any(|p| p["id"] == late.as_str()).then_some(())
    });
    // For people: B's outbox shows it waiting, held for A.
    let held = b.human(&["outbox"]);
    let row = held.lines().find(|l| l.starts_with(&late[..16])).unwrap_or_else(|| panic!("{held}"));
    assert!(row.contains(&format!("(relayed for peer {}…)", &a.peer_id()[..16])), "{held}");
    assert!(held.starts_with("Waiting for a next hop (1)"), "{held}");
    let c = Node::start_with(dir.path().join("c"), &["--name", "worker-c"]);
    let got = wait_for(120, "the late request in C's inbox", || {
        inbox(&c).into_iter().find(|m| m["id"] == late.as_str())
    });
    assert_eq!(got["body"]["task_id"], "t-2", "{got}");
    // Delivered once, even though B and A may both have tried.
    assert_eq!(inbox(&c).iter().filter(|m| m["id"] == late.as_str()).count(), 1);
}

#[test]
fn a_name_claimed_by_two_keys_is_a_conflict_and_announcements_and_policy_reach_gossip_and_sync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Node::start(dir.path().join("a"));
    let b = Node::start_with(dir.path().join("b"), &["--name", "shared-name"]);
    let d = Node::start_with(dir.path().join("d"), &["--name", "shared-name"]);
    a.json(&["connect", &b.bootstrap_addr()]);
    a.json(&["connect", &d.bootstrap_addr()]);
    // Both claims reach A: the name is a conflict, listed, never silently picked.
    let (b_id, d_id) = (b.status()["klp_id"].clone(), d.status()["klp_id"].clone());
    let err = wait_for(60, "both claims at A", || {
        let run = a.ctl(&["resolve", "klp://shared-name/x"]);
        let e = run.stderr.clone();
        (run.code == Some(1) && e.contains("conflict")).then_some(e)
    });
    for id in [&b_id, &d_id] {
        assert!(err.contains(id.as_str().expect("id")), "{err}");
    }
    // Each is still reachable by its KLP-ID.
    let by_id = a.json(&["resolve", &format!("klp://{}/x", b_id.as_str().expect("id"))]);
    assert_eq!(by_id["did"], b.did());

    // Announcements travel on the federation's topic into members' inboxes.
    let fed = kos_tests::found(&a, "announcements", &[(&b, "trusted")]);
    wait_for(60, "the announcement at B", || {
        a.json(&["announce", "--topic", "maintenance", "down at noon for 5 minutes"]);
        inbox(&b).into_iter().find(|m| m["type"] == "BROADCAST_ANNOUNCE")
    });
    let got = inbox(&b).into_iter().find(|m| m["type"] == "BROADCAST_ANNOUNCE").expect("it");
    assert_eq!(got["body"]["text"], "down at noon for 5 minutes", "{got}");
    assert_eq!(got["sender"], a.did(), "{got}");

    // The policy applies to gossip and sync too: B denies COMMENT; A's proposal arrives, its
    // comment does not.
    let f = dir.path().join("p.toml");
    std::fs::write(&f, "[types]\ndeny = [\"COMMENT\"]\n").expect("write");
    b.json(&["policy", "apply", f.to_str().expect("path")]);
    let p = a.propose_open("commented");
    a.json(&["comment", &p, "a comment B does not take"]);
    wait_for(60, "the proposal at B", || b.try_json(&["show", &p]));
    wait_for(60, "the refusal counted at B", || {
        let m = b.metrics();
        m.lines()
            .any(|l| {
                l.starts_with("kos_policy_refusals_total{path=\"gossip\"}")
                    || l.starts_with("kos_policy_refusals_total{path=\"sync\"}")
            })
            .then_some(())
    });
    assert_eq!(b.json(&["show", &p])["comments_total"], 0);
    assert_eq!(a.json(&["show", &p])["comments_total"], 1);

    // And on the sync path alone: a node that joins later, with COMMENT denied from its first
    // start, gets the history by sync (the comment is older than gossipsub's message cache,
    // 5 heartbeats of 0.5 s, so no peer can gossip it again) and refuses the comment there.
    let commented = a.json(&["show", &p])["discussion"][0]["created_ms"].as_u64().expect("time");
    wait_for(30, "the comment to age out of the gossip cache", || {
        (kos_tests::now_ms() > commented + 4_000).then_some(())
    });
    let late = dir.path().join("e");
    std::fs::create_dir_all(&late).expect("dir");
    std::fs::write(late.join("klp-policy.toml"), "[types]\ndeny = [\"COMMENT\"]\n").expect("write");
    let e = Node::start(late);
    kos_tests::join(&a, &fed, &[&e]);
    wait_for(60, "the proposal at E", || e.try_json(&["show", &p]));
    wait_for(60, "the refusal on E's sync path", || {
        e.metrics().lines().any(|l| l == "kos_policy_refusals_total{path=\"sync\"} 1").then_some(())
    });
    assert_eq!(e.json(&["show", &p])["comments_total"], 0);
    assert!(
        !e.metrics().lines().any(|l| l.starts_with("kos_policy_refusals_total{path=\"gossip\"} 1"))
    );
}

#[test]
fn an_agent_migration_with_an_altered_audit_trail_is_refused() {
    use kos_protocol::agent::{AgentSnapshot, AuditRecord, audit_root, encode_snapshot};
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Node::start(dir.path().join("a"));
    let c = Node::start(dir.path().join("c"));
    a.json(&["connect", &c.bootstrap_addr()]);
    let to = format!("klp://{}/agents", c.status()["klp_id"].as_str().expect("klp id"));
    wait_for(60, "C's record at A", || a.try_json(&["resolve", &to]));
    let agent = SecretKey::from_seed(&[42; 32]).public().to_did();
    let trail = serde_json::json!([
        {"at_ms": 1000, "event": "created"},
        {"at_ms": 2000, "event": "answered 12 tasks"},
    ]);
    // A bundle whose trail matches its root (computed by the node): accepted and verified.
    let good = serde_json::json!({"name": "summariser", "agent": agent, "config": "model = \"small\"", "audit": trail});
    let id =
        a.json(&["send", &to, "--type", "AGENT_MIGRATION", "--payload", &good.to_string()])["id"]
            .as_str()
            .expect("id")
            .to_owned();
    let got = wait_for(60, "the migration in C's inbox", || {
        inbox(&c).into_iter().find(|m| m["id"] == id.as_str())
    });
    assert_eq!(got["body"]["verified"], true, "{got}");
    assert_eq!(got["body"]["audit"][1]["event"], "answered 12 tasks", "{got}");

    // The same agent with one audit entry rewritten after the root was taken: refused.
    let honest = vec![
        AuditRecord { at_ms: 1000, event: "created".into() },
        AuditRecord { at_ms: 2000, event: "answered 12 tasks".into() },
    ];
    let mut altered = honest.clone();
    altered[1].event = "answered 0 tasks".into();
    let snapshot =
        encode_snapshot(&AgentSnapshot { audit: altered, config: "model = \"small\"".into() });
    let bad = serde_json::json!({
        "name": "summariser", "agent": agent,
        "snapshot": hex::encode(snapshot), "audit_root": audit_root(&honest).to_string(),
    });
    let id =
        a.json(&["send", &to, "--type", "AGENT_MIGRATION", "--payload", &bad.to_string()])["id"]
            .as_str()
            .expect("id")
            .to_owned();
    let why = wait_for(60, "the refusal", || {
        let out = a.try_json(&["outbox"])?;
        let f = out["failed"].as_array()?.iter().find(|f| f["id"] == id.as_str())?.clone();
        f["last_error"].as_str().map(str::to_owned)
    });
    assert!(why.contains("audit trail does not match its root"), "{why}");
    assert!(inbox(&c).iter().all(|m| m["id"] != id.as_str()), "the altered bundle was not kept");
}

#[test]
fn a_queued_message_survives_a_sigkill_of_its_sender() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut a = Node::start(dir.path().join("a"));
    let mut c = Node::start(dir.path().join("c"));
    a.json(&["connect", &c.bootstrap_addr()]);
    let to = format!("klp://{}/tasks", c.status()["klp_id"].as_str().expect("klp id"));
    wait_for(60, "C's record at A", || a.try_json(&["resolve", &to]));
    // C is down: the message waits in A's outbox; then A is SIGKILLed too.
    c.kill();
    let payload = serde_json::json!({"inputs": ["x"], "task_id": "t-9", "min_trust": "standard"});
    let id =
        a.json(&["send", &to, "--type", "TASK_REQUEST", "--payload", &payload.to_string()])["id"]
            .as_str()
            .expect("id")
            .to_owned();
    let pending = a.json(&["outbox"]);
    assert!(pending["pending"].as_array().expect("pending").iter().any(|p| p["id"] == id.as_str()));
    a.kill();
    // Both come back (on new ports: C dials A, as a bootstrap list would): the message A
    // queued before its kill is delivered, once.
    let c = Node::start(dir.path().join("c"));
    let a = Node::start(dir.path().join("a"));
    c.json(&["connect", &a.bootstrap_addr()]);
    let got = wait_for(120, "the message at C", || {
        inbox(&c).into_iter().find(|m| m["id"] == id.as_str())
    });
    assert_eq!(got["body"]["task_id"], "t-9", "{got}");
    wait_for(60, "A's outbox empty", || {
        (a.try_json(&["outbox"])?["pending"].as_array()?.is_empty()).then_some(())
    });
}
