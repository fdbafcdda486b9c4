//! Many nodes on one address: `kosd devnet 20`, and every node publishes. Peers that share an IP
//! must not penalise each other (gossipsub's IP-colocation penalty is off): nobody is blocked,
//! every message reaches every node.

use std::io::BufRead;

use kos_tests::{Devnet, bin, wait_for};
use serde_json::Value;

const NODES: usize = 20;

#[test]
fn twenty_nodes_on_one_host_publish_and_nobody_is_blocked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = std::process::Command::new(bin("kosd"))
        .arg("--data-dir")
        .arg(dir.path())
        .args(["devnet", &NODES.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("devnet");
    let stdout = child.stdout.take().expect("stdout");
    let _devnet = Devnet(child);
    let mut lines = std::io::BufReader::new(stdout).lines();
    let first = lines.next().expect("a line").expect("utf8");
    assert!(first.starts_with(&format!("devnet: {NODES} nodes, federation ")), "{first}");
    let ctl = |i: usize, args: &[&str]| -> Value {
        let out = std::process::Command::new(bin("kosctl"))
            .arg("--data-dir")
            .arg(dir.path().join(format!("devnet/node-{i}")))
            .args(args)
            .arg("--json")
            .output()
            .expect("kosctl");
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    };
    for i in 0..NODES {
        wait_for(120, "each node to hold the charter", || {
            let f = ctl(i, &["federation", "show"]);
            (f["synced"] == true && f["members"].as_array().map(Vec::len) == Some(NODES))
                .then_some(())
        });
    }
    let p = ctl(
        0,
        &[
            "propose",
            "--kind",
            "resource_allocation",
            "--title",
            "crowd",
            "--description",
            "Everyone comments.",
            "--discussion-secs",
            "3600",
        ],
    )["id"]
        .as_str()
        .expect("proposal id")
        .to_owned();
    for i in 0..NODES {
        wait_for(60, "the proposal on every node", || {
            (ctl(i, &["show", &p])["id"] == p.as_str()).then_some(())
        });
    }
    let before = ctl(0, &["status"])["messages"].as_u64().expect("count");
    // Twenty publishers: every node comments, all at about the same time.
    for i in 0..NODES {
        let r = ctl(i, &["comment", &p, &format!("node {i} was here")]);
        assert!(r["id"].is_string(), "node {i} could not comment: {r}");
    }
    let expected = before + NODES as u64;
    for i in 0..NODES {
        wait_for(180, &format!("node {i} to hold every comment"), || {
            (ctl(i, &["status"])["messages"].as_u64() >= Some(expected)).then_some(())
        });
    }
    let hash = ctl(0, &["status"])["state_hash"].clone();
    for i in 0..NODES {
        let s = ctl(i, &["status"]);
        assert_eq!(s["state_hash"], hash, "node {i} differs");
        let peers = ctl(i, &["peers"]);
        assert_eq!(peers["blocked"], serde_json::json!([]), "node {i} blocked someone: {peers}");
        let gossip = ctl(i, &["peers"])["scores"].clone();
        for s in gossip.as_array().into_iter().flatten() {
            assert!(s["score"].as_f64().is_some_and(|x| x >= 0.0), "node {i}: {s}");
        }
    }
    drop(lines);
}
