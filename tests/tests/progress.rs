//! Long work shows its progress: a late joiner's sync catch-up and a restart's verification and
//! replay appear in `status` (and `kosctl status`) with their counts; `kosctl submit` reports on
//! standard error.

use kos_tests::{Node, found, run, wait_for};

/// Comments `a` writes on one proposal (each a signed message).
const COMMENTS: usize = 300;

fn task<'a>(status: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    status["progress"].as_array()?.iter().find(|t| t["task"] == name)
}

#[test]
fn catch_up_and_restart_report_progress() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut a = Node::start(tmp.path().join("a"));
    let fed = found(&a, "history", &[]);
    let p = a.propose_open("A long discussion");
    for i in 0..COMMENTS {
        a.json(&["comment", &p, &format!("point {i}")]);
    }
    let total = a.status()["messages"].as_u64().expect("count");
    assert!(total > COMMENTS as u64, "{total}");

    // A late joiner fetches the whole history by sync: one catch-up, counted.
    let c = Node::start(tmp.path().join("c"));
    c.json(&["federation", "join", &fed, "--bootstrap", &a.bootstrap_addr()]);
    let status = wait_for(90, "the catch-up to finish", || {
        let s = c.status();
        let t = task(&s, "sync catch-up")?;
        (s["messages"].as_u64()? >= total && !t["finished_ms"].is_null()).then_some(s)
    });
    let t = task(&status, "sync catch-up").expect("task");
    // The charter comes with the join; everything else by the catch-up.
    assert!(t["done"].as_u64().expect("done") >= total - 1, "{t}");
    assert_eq!(t["done"], t["total"], "{t}");
    assert_eq!(t["percent"], 100.0);
    assert_eq!(t["unit"], "messages");
    let human = run("kosctl", &["--data-dir", c.dir.to_str().expect("utf-8"), "status"], &[]).ok();
    let line = human.lines().find(|l| l.contains("sync catch-up")).expect("a progress line");
    assert!(line.contains("done:") && line.contains("messages in"), "{line}");

    // A restart verifies and replays every stored message, and says so.
    a.kill();
    let a = Node::start(tmp.path().join("a"));
    let s = a.status();
    for name in ["start-up verification", "start-up replay"] {
        let t = task(&s, name).unwrap_or_else(|| panic!("no {name} in {s}"));
        assert_eq!(t["done"].as_u64(), Some(total), "{name}: {t}");
        assert!(!t["finished_ms"].is_null(), "{t}");
    }
}
