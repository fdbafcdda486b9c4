//! One real `kosd`: discussion, revision, withdrawal, store errors, and `kosd devnet`.

use std::io::BufRead;

use kos_tests::{Devnet, Node, bin, wait_for};

#[test]
fn discussion_revision_and_the_revised_action_executes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Node::start(dir.path().join("a"));
    a.json(&["federation", "create", "solo", "--dev-timing"]);
    let p = a.json(&[
        "propose",
        "--kind",
        "configuration",
        "--title",
        "Quota",
        "--description",
        "Set the quota.",
        "--key",
        "relay.quota",
        "--value",
        "120",
        "--discussion-secs",
        "4",
        "--voting-secs",
        "3",
    ])["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let c1 = a.json(&["comment", &p, "Too low?", "--kind", "objection"])["id"]
        .as_str()
        .expect("id")
        .to_owned();
    a.json(&["comment", &p, "Raised in revision 1.", "--parent", &c1]);
    a.json(&[
        "revise",
        &p,
        "--title",
        "Quota (revised)",
        "--description",
        "Set it higher.",
        "--key",
        "relay.quota",
        "--value",
        "150",
    ]);
    let shown = a.json(&["show", &p]);
    assert_eq!(shown["revision"], 1);
    // A reply to an unknown comment waits; a malformed id is refused on one line.
    let r = a.ctl(&["comment", &p, "x", "--parent", "zz"]);
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("not a message id"), "{r:?}");
    wait_for(30, "voting", || (a.json(&["show", &p])["status"] == "voting").then_some(()));
    a.json(&["vote", &p, "yes"]);
    // Revising during voting is refused by the engine, with its reason.
    let r = a.ctl(&[
        "revise",
        &p,
        "--title",
        "Late",
        "--description",
        "d",
        "--key",
        "relay.quota",
        "--value",
        "1",
    ]);
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("refused"), "{r:?}");
    let t = wait_for(60, "execution", || {
        let t = a.json(&["tally", &p]);
        (t["status"] == "executed").then_some(t)
    });
    assert_eq!(t["tally"]["revision"], 1);
    assert_eq!(a.status()["config"]["relay.quota"], "150", "the revised action executed");

    // Withdrawal before voting.
    let q = a.json(&[
        "propose",
        "--kind",
        "resource_allocation",
        "--title",
        "Nope",
        "--description",
        "d",
        "--discussion-secs",
        "60",
    ])["id"]
        .as_str()
        .expect("id")
        .to_owned();
    a.json(&["withdraw", &q, "--reason", "changed my mind"]);
    assert_eq!(a.json(&["show", &q])["status"], "withdrawn");
    let list = a.json(&["proposals", "--status", "withdrawn"]);
    assert_eq!(list["proposals"].as_array().expect("list").len(), 1);
}

#[test]
fn an_unreadable_store_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("a");
    let mut a = Node::start(data.clone());
    a.kill();
    kos_storage::Store::open(&data.join("store"))
        .expect("store")
        .set_schema_for_test(99)
        .expect("schema");
    let r = kos_tests::run(
        "kosd",
        &[
            "--data-dir",
            data.to_str().expect("path"),
            "run",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--api",
            "127.0.0.1:0",
        ],
        &[],
    );
    assert_eq!(r.code, Some(1), "{r:?}");
    let last = r.stderr.lines().last().unwrap_or_default().to_owned();
    assert!(last.contains("store schema version 99 is not supported"), "{r:?}");
}

/// Stops devnet with SIGTERM (so it stops its nodes) even if the test fails.

#[test]
fn devnet_starts_a_federation_of_n_nodes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = std::process::Command::new(bin("kosd"))
        .arg("--data-dir")
        .arg(dir.path())
        .args(["devnet", "2"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("devnet");
    let stdout = child.stdout.take().expect("stdout");
    let mut child = Devnet(child);
    // Keep reading devnet's standard output: a closed pipe would end it.
    let mut lines = std::io::BufReader::new(stdout).lines();
    let first = lines.next().expect("a line").expect("utf8");
    assert!(first.starts_with("devnet: 2 nodes, federation "), "{first}");
    let fed = first.rsplit(' ').next().expect("id").to_owned();
    let ctl = |i: usize, args: &[&str]| -> serde_json::Value {
        let out = std::process::Command::new(bin("kosctl"))
            .arg("--data-dir")
            .arg(dir.path().join(format!("devnet/node-{i}")))
            .args(args)
            .arg("--json")
            .output()
            .expect("kosctl");
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    };
    for i in 0..2 {
        wait_for(60, "each node to hold the charter", || {
            let f = ctl(i, &["federation", "show"]);
            (f["federation"] == fed.as_str()
                && f["synced"] == true
                && f["members"].as_array().map(Vec::len) == Some(2))
            .then_some(())
        });
    }
    // SIGTERM: devnet stops its nodes and exits.
    let status =
        std::process::Command::new("kill").arg(child.0.id().to_string()).status().expect("kill");
    assert!(status.success());
    let exit = child.0.wait().expect("wait");
    assert!(exit.success(), "{exit:?}");
    drop(lines);
    for i in 0..2 {
        let r = kos_tests::run(
            "kosctl",
            &[
                "--data-dir",
                dir.path().join(format!("devnet/node-{i}")).to_str().expect("path"),
                "status",
            ],
            &[],
        );
        assert_eq!(r.code, Some(1), "node {i} still answers after devnet stopped: {r:?}");
    }
}

#[test]
fn kosctl_covers_files_trust_delegation_sponsors_and_peer_addresses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Node::start(dir.path().join("a"));
    let b = Node::start(dir.path().join("b"));
    let b_did = b.did();
    a.json(&[
        "federation",
        "create",
        "cli",
        "--dev-timing",
        "--member",
        &format!("{b_did}=trusted"),
    ]);
    // A proposal from a TOML file; flags win over the file.
    let file = dir.path().join("proposal.toml");
    std::fs::write(
        &file,
        "kind = \"configuration\"\ntitle = \"From a file\"\ndescription = \"TOML.\"\nkey = \"k\"\nvalue = \"1\"\ndiscussion_secs = 60\n",
    )
    .expect("write");
    let p = a.json(&["propose", "--file", file.to_str().expect("path"), "--value", "2"])["id"]
        .as_str()
        .expect("id")
        .to_owned();
    assert_eq!(a.json(&["show", &p])["title"], "From a file");
    // A misspelt key is named, with where it is, in one line (not ignored).
    std::fs::write(&file, "kind = \"configuration\"\ntitel = \"x\"\n").expect("write");
    let err = a.ctl(&["propose", "--file", file.to_str().expect("path")]).fails(1);
    assert!(err.contains("line 2, column 1: unknown field `titel`, expected one of"), "{err}");
    let r = a.ctl(&["propose", "--title", "no kind", "--description", "d"]);
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("--kind is required"), "{r:?}");
    // Delegation and local trust.
    let d = a.json(&["delegate", "--to", &b_did, "--scope", "kind:configuration"]);
    assert!(d["id"].is_string());
    let r = a.ctl(&["delegate", "--to", "did:key:zNope"]);
    assert_eq!(r.code, Some(1));
    let t = a.json(&["trust", &format!("peer://{}", b.peer_id()), "trusted"]);
    assert_eq!(t["level"], "trusted");
    let r = a.ctl(&["trust", "peer://x", "godlike"]);
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("unknown TrustLevel"), "{r:?}");
    // B joins; A learns B's address and can dial it back by peer id.
    let fed = a.json(&["status"])["federation"].as_str().expect("fed").to_owned();
    b.json(&["federation", "join", &fed, "--bootstrap", &a.bootstrap_addr()]);
    wait_for(60, "B to see the proposal", || (b.ctl(&["show", &p]).code == Some(0)).then_some(()));
    let s = b.json(&["sponsor", &p]);
    assert!(s["id"].is_string());
    let known = b.json(&["peers"]);
    assert!(
        known["known"]
            .as_array()
            .expect("known")
            .iter()
            .any(|k| k["peer_id"] == a.peer_id().as_str())
    );
    let c = b.json(&["connect", &format!("peer://{}", a.peer_id())]);
    assert!(c["dialing"].as_str().expect("addr").starts_with("/ip4/127.0.0.1/tcp/"));
    // A self-sponsorship is refused with the engine's reason.
    let r = a.ctl(&["sponsor", &p]);
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("cannot sponsor own proposal"), "{r:?}");
}

#[test]
fn nodes_sync_over_quic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let quic = "/ip4/127.0.0.1/udp/0/quic-v1";
    let a = Node::start_on(dir.path().join("a"), quic);
    let b = Node::start_on(dir.path().join("b"), quic);
    let boot = a.bootstrap_addr();
    assert!(boot.contains("/quic-v1/"), "{boot}");
    let fed = a.json(&["federation", "create", "quic", "--dev-timing"])["federation"]
        .as_str()
        .expect("federation")
        .to_owned();
    b.json(&["federation", "join", &fed, "--bootstrap", &boot]);
    wait_for(60, "the charter over QUIC", || {
        (b.json(&["federation", "show"])["synced"] == true).then_some(())
    });
    assert_eq!(b.status()["peers"][0], a.peer_id().as_str());
}

#[test]
fn local_trust_quarantine_gets_a_peer_blocked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Node::start(dir.path().join("a"));
    let b = Node::start(dir.path().join("b"));
    let fed = a.json(&["federation", "create", "trust", "--dev-timing"])["federation"]
        .as_str()
        .expect("federation")
        .to_owned();
    b.json(&["federation", "join", &fed, "--bootstrap", &a.bootstrap_addr()]);
    let pb = b.peer_id();
    wait_for(60, "B connected to A", || {
        a.status()["peers"].as_array().filter(|p| p.iter().any(|x| x == pb.as_str())).map(|_| ())
    });
    a.json(&["trust", &format!("peer://{pb}"), "quarantine"]);
    wait_for(60, "A to block B", || {
        let p = a.json(&["peers"]);
        p["blocked"].as_array().filter(|b| b.iter().any(|x| x == pb.as_str())).map(|_| ())
    });
}
