//! Moving a node: `kosctl export` on one machine, `kosctl import` into a fresh data directory
//! on another, with real `kosd` processes. The imported node has the same identity, local trust
//! and policy, follows the federation, catches up by sync, and its next vote counts. A wrong
//! passphrase or an altered file is a one-line error that writes nothing.

use kos_tests::{Node, found, run, wait_for};

#[test]
fn an_exported_node_imported_elsewhere_keeps_its_identity_trust_policy_and_vote() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Node::start(dir.path().join("a"));
    let b = Node::start(dir.path().join("b"));
    found(&a, "moving", &[(&b, "trusted")]);
    let a_klp = a.status()["klp_id"].as_str().expect("klp id").to_owned();
    b.json(&["trust", &format!("klp://{a_klp}"), "core"]);
    let policy = dir.path().join("p.toml");
    std::fs::write(&policy, "[types]\ndeny = [\"AGENT_MIGRATION\"]\n").expect("write");
    b.json(&["policy", "apply", policy.to_str().expect("path")]);
    let b_did = b.did();

    let file = dir.path().join("kind-export.yaml");
    let f = file.to_str().expect("path");
    b.json(&["export", "--out", f]);
    let fresh = dir.path().join("b2");
    let fresh_s = fresh.to_str().expect("path");

    // A wrong passphrase, an altered file: one line each, nothing written.
    let e = run("kosctl", &["--data-dir", fresh_s, "import", f], &[("KOS_PASSPHRASE", "wrong")])
        .fails(1);
    assert!(e.contains("cannot open the exported identity"), "{e}");
    assert!(!fresh.join("vault.bin").exists());
    let text = std::fs::read_to_string(&file).expect("read");
    let altered = dir.path().join("altered.yaml");
    std::fs::write(&altered, text.replacen("AGENT_MIGRATION", "AGENT_MIGRATIOX", 1))
        .expect("write");
    let e = run(
        "kosctl",
        &["--data-dir", fresh_s, "import", altered.to_str().expect("path"), "--insecure-plain-key"],
        &[],
    )
    .fails(1);
    assert!(e.contains("altered"), "{e}");
    assert!(!fresh.join("vault.bin").exists());

    // The real move: B stops, its export is imported into a fresh directory, the node starts.
    drop(b);
    let out =
        run("kosctl", &["--data-dir", fresh_s, "import", f, "--insecure-plain-key"], &[]).ok();
    assert!(out.contains(&b_did), "{out}");
    let e =
        run("kosctl", &["--data-dir", fresh_s, "import", f, "--insecure-plain-key"], &[]).fails(1);
    assert!(e.contains("already holds an identity"), "{e}");
    let b2 = Node::start(fresh);
    assert_eq!(b2.did(), b_did, "the same identity");
    let shown = b2.json(&["policy", "show"]);
    assert!(shown["local"].as_str().expect("policy").contains("AGENT_MIGRATION"), "{shown}");
    let peers = b2.json(&["peers"]);
    let trusted = peers["trust"]
        .as_array()
        .expect("trust")
        .iter()
        .any(|t| t["target"] == format!("klp://{a_klp}").as_str() && t["level"] == "core");
    assert!(trusted, "{peers}");
    wait_for(60, "the federation's charter at the imported node", || {
        (b2.try_json(&["federation", "show"])?["synced"] == true).then_some(())
    });

    // Its next vote counts with B's weight (trusted, 3).
    let p = a.json(&[
        "propose",
        "--kind",
        "resource_allocation",
        "--title",
        "after the move",
        "--description",
        "d",
        "--voting-secs",
        "6",
    ])["id"]
        .as_str()
        .expect("id")
        .to_owned();
    wait_for(60, "voting open at the imported node", || {
        (b2.try_json(&["show", &p])?["status"] == "voting").then_some(())
    });
    b2.json(&["vote", &p, "yes"]);
    let t = wait_for(90, "the final tally at A", || {
        let t = a.try_json(&["tally", &p])?;
        (!t["final"].is_null()).then_some(t)
    });
    assert_eq!(t["tally"]["participation"], 3000, "B's weight, voted from the new machine: {t}");
    assert_eq!(t["final"]["outcome"], "approved", "{t}");
}
