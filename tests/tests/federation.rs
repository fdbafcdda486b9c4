//! Real `kosd` processes on loopback with real sled stores, driven by `kosctl` exactly as the
//! README's quickstart does.

use kos_tests::{Node, wait_for};
use serde_json::Value;

fn id_of(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap_or_else(|| panic!("no {key} in {v}")).to_owned()
}

/// Founds a federation on `a` with `others` as trusted members; the others join through `a`.
fn federation(a: &Node, others: &[&Node]) -> String {
    let mut args = vec!["federation", "create", "test", "--dev-timing"];
    let members: Vec<String> = others.iter().map(|n| format!("{}=trusted", n.did())).collect();
    for m in &members {
        args.extend(["--member", m.as_str()]);
    }
    let fed = id_of(&a.json(&args), "federation");
    let boot = a.bootstrap_addr();
    for n in others {
        n.json(&["federation", "join", &fed, "--bootstrap", &boot]);
    }
    for n in others {
        wait_for(60, "the charter to sync", || {
            (n.json(&["federation", "show"])["synced"] == Value::Bool(true)).then_some(())
        });
    }
    fed
}

fn tally(n: &Node, p: &str) -> Value {
    n.json(&["tally", p])
}

/// Waits until every node has a final result counting `counted` ballots; returns their tallies,
/// after checking they agree.
fn final_everywhere(nodes: &[&Node], p: &str, counted: u64) -> Vec<Value> {
    let results: Vec<Value> = nodes
        .iter()
        .map(|n| {
            wait_for(120, "finality on every node", || {
                let t = tally(n, p);
                (t["final"].is_object() && t["tally"]["counted"] == counted).then_some(t)
            })
        })
        .collect();
    for r in &results {
        assert_eq!(r["tally"], results[0]["tally"]);
    }
    results
}

fn executed(n: &Node, p: &str) -> Option<Value> {
    let t = tally(n, p);
    (t["status"] == "executed").then_some(t)
}

#[test]
fn three_nodes_vote_reach_final_and_execute_and_a_late_joiner_catches_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Node::start(dir.path().join("a"));
    let b = Node::start(dir.path().join("b"));
    let c = Node::start(dir.path().join("c"));
    let fed = federation(&a, &[&b, &c]);

    let p = id_of(
        &a.json(&[
            "propose",
            "--kind",
            "configuration",
            "--title",
            "Raise the relay quota",
            "--description",
            "Doubles it.",
            "--key",
            "relay.quota",
            "--value",
            "120",
            "--discussion-secs",
            "2",
            "--voting-secs",
            "6",
        ]),
        "id",
    );
    // B and C see the proposal, then vote when voting opens.
    for n in [&b, &c] {
        wait_for(60, "the proposal on every node", || {
            (n.ctl(&["show", &p]).code == Some(0)).then_some(())
        });
    }
    wait_for(60, "voting to open", || {
        (a.try_json(&["show", &p])?["status"] == "voting").then_some(())
    });
    b.json(&["vote", &p, "yes", "--reason", "more headroom"]);
    c.json(&["vote", &p, "yes"]);

    // All three: the same tally, FINAL, executed, the configuration changed.
    let results: Vec<Value> = [&a, &b, &c]
        .iter()
        .map(|n| wait_for(90, "execution on every node", || executed(n, &p)))
        .collect();
    for r in &results {
        assert_eq!(r["tally"], results[0]["tally"]);
        // The attestations that made it final name the same root.
        let atts = r["attestations"].as_array().expect("attestations");
        assert!(atts.len() >= 2, "{r}");
        assert!(atts.iter().all(|a| a["votes_root"] == r["final"]["votes_root"]), "{r}");
        assert_eq!(r["final"]["outcome"], "approved");
        assert_eq!(r["final"]["votes_root"], results[0]["tally"]["votes_root"]);
        assert_eq!(r["execution"]["result"], "ok");
    }
    // Trust weights: A core 5, B and C trusted 3 each; yes = 6 of 11 eligible.
    assert_eq!(results[0]["tally"]["totals"], serde_json::json!([6000, 0, 0, 0]));
    assert_eq!(results[0]["tally"]["counted"], 2);
    for n in [&a, &b, &c] {
        assert_eq!(n.status()["config"]["relay.quota"], "120");
    }
    let hash = wait_for(30, "equal state hashes", || {
        let h: Vec<Value> = [&a, &b, &c].iter().map(|n| n.status()["state_hash"].clone()).collect();
        (h[0] == h[1] && h[1] == h[2]).then(|| h[0].clone())
    });

    // A fourth node, started after everything, catches up through sync.
    let d = Node::start(dir.path().join("d"));
    d.json(&["federation", "join", &fed, "--bootstrap", &a.bootstrap_addr()]);
    wait_for(90, "the late joiner to converge", || {
        (d.status()["state_hash"] == hash).then_some(())
    });
    let t = tally(&d, &p);
    assert_eq!(t["status"], "executed");
    assert_eq!(t["tally"], results[0]["tally"]);
    // The audit log of every node verifies.
    for n in [&a, &b, &c, &d] {
        assert_eq!(n.json(&["audit", "verify"])["ok"], true);
    }
}

#[test]
fn a_killed_node_restarts_from_its_store_with_its_acknowledged_vote() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Node::start(dir.path().join("a"));
    let mut b = Node::start(dir.path().join("b"));
    let c = Node::start(dir.path().join("c"));
    federation(&a, &[&b, &c]);
    let p = id_of(
        &a.json(&[
            "propose",
            "--kind",
            "resource_allocation",
            "--title",
            "Buy disks",
            "--description",
            "More storage.",
            "--discussion-secs",
            "2",
            "--voting-secs",
            "10",
        ]),
        "id",
    );
    wait_for(60, "the proposal on B", || (b.ctl(&["show", &p]).code == Some(0)).then_some(()));
    wait_for(60, "voting to open", || {
        (b.try_json(&["show", &p])?["status"] == "voting").then_some(())
    });
    let vote = id_of(&b.json(&["vote", &p, "no"]), "id");
    // SIGKILL right after the acknowledgement: no graceful shutdown.
    b.kill();
    let b = Node::start(dir.path().join("b"));
    // The vote is in B's rebuilt state before any peer could have sent it back.
    let t = tally(&b, &p);
    assert_eq!(t["tally"]["counted"], 1, "{t}");
    assert_eq!(t["tally"]["totals"][1], 3000, "B's no (trusted, 3) is counted: {t}");
    c.json(&["vote", &p, "yes"]);
    // B redials its known peers and everyone converges.
    final_everywhere(&[&a, &b, &c], &p, 2);
    let _ = vote;
}

#[test]
fn a_partition_with_votes_on_both_sides_heals_to_identical_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Node::start(dir.path().join("a"));
    let b = Node::start(dir.path().join("b"));
    let c = Node::start(dir.path().join("c"));
    federation(&a, &[&b, &c]);
    let p = id_of(
        &a.json(&[
            "propose",
            "--kind",
            "resource_allocation",
            "--title",
            "Split",
            "--description",
            "Partition test.",
            "--discussion-secs",
            "2",
            "--voting-secs",
            "12",
        ]),
        "id",
    );
    for n in [&b, &c] {
        wait_for(60, "the proposal", || (n.ctl(&["show", &p]).code == Some(0)).then_some(()));
    }
    // B and C find each other through A (Kademlia) before the partition.
    let (pa, pb, pc) = (a.peer_id(), b.peer_id(), c.peer_id());
    wait_for(60, "B and C to discover each other", || {
        b.status()["peers"].as_array().filter(|p| p.iter().any(|x| x == pc.as_str())).map(|_| ())
    });
    // {A} | {B, C}
    a.json(&["block", &pb]);
    a.json(&["block", &pc]);
    b.json(&["block", &pa]);
    c.json(&["block", &pa]);
    wait_for(30, "A to be alone", || {
        a.status()["peers"].as_array().filter(|p| p.is_empty()).map(|_| ())
    });
    wait_for(60, "voting to open", || {
        (a.try_json(&["show", &p])?["status"] == "voting").then_some(())
    });
    a.json(&["vote", &p, "yes"]);
    b.json(&["vote", &p, "no"]);
    c.json(&["vote", &p, "no"]);
    // While partitioned, the sides disagree.
    wait_for(30, "B to count C's vote", || (tally(&b, &p)["tally"]["counted"] == 2).then_some(()));
    assert_eq!(tally(&a, &p)["tally"]["counted"], 1);
    assert_ne!(a.status()["state_hash"], b.status()["state_hash"]);
    // Heal.
    a.json(&["unblock", &pb]);
    a.json(&["unblock", &pc]);
    b.json(&["unblock", &pa]);
    c.json(&["unblock", &pa]);
    a.json(&["connect", &b.bootstrap_addr()]);
    a.json(&["connect", &c.bootstrap_addr()]);
    let results = final_everywhere(&[&a, &b, &c], &p, 3);
    // yes 5 (A), no 6 (B, C): rejected.
    assert_eq!(results[0]["final"]["outcome"], "rejected");
    wait_for(30, "identical state hashes", || {
        let h: Vec<Value> = [&a, &b, &c].iter().map(|n| n.status()["state_hash"].clone()).collect();
        (h[0] == h[1] && h[1] == h[2]).then_some(())
    });
}

/// A plain HTTP/1.1 GET, so that the test sees exactly what the API answers.
fn raw_get(addr: &str, path: &str, token: Option<&str>) -> String {
    raw_get_host(addr, path, token, "127.0.0.1")
}

fn raw_get_host(addr: &str, path: &str, token: Option<&str>, host: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr.trim()).expect("connect");
    let header = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\n{header}Connection: close\r\n\r\n")
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

#[test]
fn the_control_api_requires_its_token_and_stays_on_loopback() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Node::start(dir.path().join("a"));
    let addr = std::fs::read_to_string(a.dir.join("api.addr")).expect("api.addr");
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(a.dir.join("api.token")).expect("token").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // Without a token, or with a wrong one: 401 and a one-line error from kosctl.
    let raw = |auth: Option<&str>| raw_get(&addr, "/v1/status", auth);
    assert!(raw(None).starts_with("HTTP/1.1 401"));
    assert!(raw(Some("nope")).starts_with("HTTP/1.1 401"));
    let token = std::fs::read_to_string(a.dir.join("api.token")).expect("token");
    assert!(raw(Some(token.trim())).starts_with("HTTP/1.1 200"));
    // A page on another name (DNS rebinding) is refused even with the token.
    let rebound = raw_get_host(&addr, "/v1/status", Some(token.trim()), "evil.example:7700");
    assert!(rebound.starts_with("HTTP/1.1 403"), "{rebound}");
    // Prometheus metrics, behind the same token.
    let metrics = |auth: Option<&str>| raw_get(&addr, "/metrics", auth);
    assert!(metrics(None).starts_with("HTTP/1.1 401"));
    let m = metrics(Some(token.trim()));
    assert!(m.starts_with("HTTP/1.1 200"), "{m}");
    assert!(m.contains("kos_local_messages_total"), "{m}");
    let r = a.ctl(&["status", "--token", "wrong"]);
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("missing or wrong bearer token"), "{r:?}");
    // A non-loopback API address is refused at start.
    let r = kos_tests::run(
        "kosd",
        &[
            "--data-dir",
            dir.path().join("x").to_str().expect("path"),
            "run",
            "--insecure-plain-key",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--api",
            "0.0.0.0:0",
        ],
        &[],
    );
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("only listens on loopback"), "{r:?}");
}

/// Proposes `key = value` on `n`, votes yes from every node once voting opens, and waits until
/// it executed everywhere.
fn configure(nodes: &[&Node], key: &str, value: &str) -> String {
    let p = id_of(
        &nodes[0].json(&[
            "propose",
            "--kind",
            "configuration",
            "--title",
            &format!("{key} = {value}"),
            "--description",
            "d",
            "--key",
            key,
            "--value",
            value,
            "--discussion-secs",
            "2",
            "--voting-secs",
            "4",
        ]),
        "id",
    );
    for n in nodes {
        wait_for(60, "voting open", || {
            (n.try_json(&["show", &p])?["status"] == "voting").then_some(())
        });
    }
    for n in nodes {
        n.json(&["vote", &p, "yes"]);
    }
    for n in nodes {
        wait_for(120, "the execution", || executed(n, &p));
    }
    p
}

#[test]
fn a_certificate_pinned_after_epoch_0_carries_the_exact_registry_bytes_of_its_pin() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Node::start(dir.path().join("a"));
    let b = Node::start(dir.path().join("b"));
    federation(&a, &[&b]);
    configure(&[&a, &b], "limit", "3");
    wait_for(60, "registry epoch 1", || {
        (a.json(&["federation", "show"])["registry_epoch"] == 1).then_some(())
    });
    let p = configure(&[&a, &b], "limit", "4");

    let file = dir.path().join("cert.json");
    b.ctl(&["certificate", &p, "--out", file.to_str().expect("path")]).ok();
    let mut bundle: Value =
        serde_json::from_str(&std::fs::read_to_string(&file).expect("read")).expect("json");
    let proposal = hex::decode(bundle["proposal"].as_str().expect("proposal")).expect("hex");
    let msg = kos_protocol::Message::decode(&proposal).expect("the proposal envelope");
    let kos_protocol::Payload::Proposal(pr) = msg.payload() else { panic!("not a proposal") };
    assert_eq!(pr.registry.epoch, 1, "the proposal pins the version after the first execution");
    // The file carries the pinned version's bytes, exactly: hashed as they are (computed here
    // from governance.md §2, not by the engine), they are the pin; decoded, they re-encode to
    // themselves.
    let bytes = hex::decode(bundle["registry"].as_str().expect("a registry")).expect("hex");
    let digest: [u8; 32] = {
        use sha2::{Digest as _, Sha256};
        Sha256::new().chain_update(b"kos-klp-v1/registry\0").chain_update(&bytes).finalize().into()
    };
    assert_eq!(digest, pr.registry.hash.0, "SHA-256(prefix ‖ bytes in the file) is the pin");
    let reg = kos_engine::Registry::decode(&bytes).expect("deterministic CBOR of a registry");
    assert_eq!(reg.epoch, 1);
    assert_eq!(reg.config.get("limit").map(String::as_str), Some("3"));
    assert_eq!(reg.encode(), bytes);
    let v = b.json(&["verify-certificate", file.to_str().expect("path")]);
    assert_eq!(v["valid"], true, "{v}");
    assert_eq!(v["outcome"], "approved");
    assert!(v["round"].is_u64(), "{v}");

    // The same registry in struct order (with `"policy": null`), as kosd once wrote it, is
    // refused in words.
    bundle["registry"] = Value::String(hex::encode(kos_protocol::to_cbor(&reg)));
    let bad = dir.path().join("struct-order.json");
    std::fs::write(&bad, bundle.to_string()).expect("write");
    let r = b.ctl(&["verify-certificate", bad.to_str().expect("path")]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("not the deterministic CBOR of a registry version"), "{r:?}");
    assert!(r.stderr.contains("null"), "{r:?}");
}

#[test]
fn certificates_and_receipts_verify_offline_and_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Node::start(dir.path().join("a"));
    let mut b = Node::start(dir.path().join("b"));
    let c = Node::start(dir.path().join("c"));
    federation(&a, &[&b, &c]);
    let p = id_of(
        &a.json(&[
            "propose",
            "--kind",
            "resource_allocation",
            "--title",
            "Buy a server",
            "--description",
            "One more relay.",
            "--discussion-secs",
            "2",
            "--voting-secs",
            "4",
        ]),
        "id",
    );
    for n in [&a, &b, &c] {
        wait_for(60, "the proposal everywhere", || {
            (n.try_json(&["show", &p])?["status"] == "voting").then_some(())
        });
    }
    a.json(&["vote", &p, "yes"]);
    b.json(&["vote", &p, "yes"]);
    c.json(&["vote", &p, "no"]);
    let finals = final_everywhere(&[&a, &b, &c], &p, 3);
    let cert = &finals[1]["certificate"];
    assert!(cert["attesters"].as_u64().expect("attesters") >= 2, "{cert}");
    assert_eq!(cert["equivocators"], serde_json::json!([]));

    // Export from B, verify offline (no node involved).
    let file = dir.path().join("cert.json");
    b.ctl(&["certificate", &p, "--out", file.to_str().expect("path")]).ok();
    let v = b.json(&["verify-certificate", file.to_str().expect("path")]);
    assert_eq!(v["valid"], true);
    assert_eq!(v["proposal"], p.as_str());
    assert_eq!(v["outcome"], "approved");
    assert_eq!(v["votes_root"], finals[1]["final"]["votes_root"]);

    // A tampered attestation, or too few attestations, is refused with the reason.
    let text = std::fs::read_to_string(&file).expect("read");
    let mut bundle: Value = serde_json::from_str(&text).expect("json");
    let good = bundle.clone();
    let att = bundle["attestations"][0].as_str().expect("hex").to_owned();
    let flipped =
        format!("{}{}", &att[..att.len() - 1], if att.ends_with('0') { "1" } else { "0" });
    bundle["attestations"][0] = Value::String(flipped);
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, bundle.to_string()).expect("write");
    let r = b.ctl(&["verify-certificate", bad.to_str().expect("path")]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("not a valid certificate"), "{r:?}");
    let mut few = good.clone();
    few["attestations"] = serde_json::json!([good["attestations"][0]]);
    std::fs::write(&bad, few.to_string()).expect("write");
    let r = b.ctl(&["verify-certificate", bad.to_str().expect("path")]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("2/3"), "{r:?}");

    // C's receipt, exported by A: C's ballot is under the certified root.
    let receipt = dir.path().join("receipt.json");
    a.ctl(&["receipt", &p, "--voter", &c.did(), "--out", receipt.to_str().expect("path")]).ok();
    let v = a.json(&["verify-receipt", receipt.to_str().expect("path")]);
    assert_eq!(v["valid"], true);
    assert_eq!(v["voter"], c.did());
    let mut forged: Value =
        serde_json::from_str(&std::fs::read_to_string(&receipt).expect("read")).expect("json");
    forged["proof"] = serde_json::json!([]);
    std::fs::write(&bad, forged.to_string()).expect("write");
    let r = a.ctl(&["verify-receipt", bad.to_str().expect("path")]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("not under the certified votes root"), "{r:?}");

    // A restart rebuilds the same final state from the store.
    let before = tally(&b, &p);
    let hash = b.status()["state_hash"].clone();
    b.kill();
    let b = Node::start(dir.path().join("b"));
    let after = tally(&b, &p);
    assert_eq!(after["final"], before["final"]);
    assert_eq!(after["status"], before["status"]);
    assert_eq!(b.status()["state_hash"], hash, "the restarted node rebuilt another state");
}

#[test]
fn a_node_rebuilt_from_peers_votes_and_its_new_vote_counts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Node::start(dir.path().join("a"));
    let mut b = Node::start(dir.path().join("b"));
    let fed = federation(&a, &[&b]);
    let p = id_of(
        &a.json(&[
            "propose",
            "--kind",
            "resource_allocation",
            "--title",
            "Rebuild",
            "--description",
            "d",
            "--discussion-secs",
            "2",
            "--voting-secs",
            "300",
        ]),
        "id",
    );
    wait_for(60, "voting on B", || {
        (try_json(&b, &["show", &p])?["status"] == "voting").then_some(())
    });
    b.json(&["vote", &p, "yes"]);
    let totals = |n: &Node| {
        try_json(n, &["tally", &p]).map(|t| t["tally"]["totals"].clone()).unwrap_or_default()
    };
    wait_for(60, "A to count B's yes", || (totals(&a)[0] == 3000).then_some(()));

    // B loses its whole store (the identity survives) and is rebuilt from A.
    b.kill();
    let bdir = dir.path().join("b");
    for p in ["store", "journal", "store.manifest"] {
        let path = bdir.join(p);
        if path.is_dir() {
            std::fs::remove_dir_all(&path).expect("rm");
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }
    let r = kos_tests::run(
        "kosd",
        &[
            "--data-dir",
            bdir.to_str().expect("path"),
            "run",
            "--insecure-plain-key",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--api",
            "127.0.0.1:0",
        ],
        &[],
    );
    assert_eq!(r.code, Some(1), "a missing store next to the identity must stop the node: {r:?}");
    let b = Node::start_with(bdir.clone(), &["--fresh-store"]);
    b.json(&["federation", "join", &fed, "--bootstrap", &a.bootstrap_addr()]);
    wait_for(60, "B's old vote back from A", || (totals(&b)[0] == 3000).then_some(()));
    // B changes its vote: the new one counts, on both nodes.
    b.json(&["vote", &p, "no"]);
    for n in [&a, &b] {
        wait_for(60, "B's new vote to count", || {
            let t = totals(n);
            (t[0] == 0 && t[1] == 3000).then_some(())
        });
    }
}

/// `kosctl … --json` on `n`, or `None` if it fails (not there yet).
fn try_json(n: &Node, args: &[&str]) -> Option<Value> {
    let r = n.ctl(args);
    (r.code == Some(0)).then(|| serde_json::from_str(&r.stdout).ok()).flatten()
}
