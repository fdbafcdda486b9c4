//! The rest of a proposal's lifecycle from `kosctl`: a rollback that restores the value an
//! execution replaced, and `kosctl show` reading a proposal back — revision history with what
//! changed, the threaded discussion, sponsors and the timeline with what comes next.

use kos_tests::{Node, found, wait_for};
use serde_json::Value;

fn id(v: Value) -> String {
    v["id"].as_str().expect("id").to_owned()
}

/// Proposes setting configuration `key` to `value`, voting for `voting` seconds.
fn set(n: &Node, key: &str, value: &str, voting: &str) -> String {
    id(n.json(&[
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
        "--voting-secs",
        voting,
    ]))
}

fn status(n: &Node, p: &str) -> Value {
    n.try_json(&["show", p]).map_or(Value::Null, |v| v["status"].clone())
}

/// Waits until `p` is open for voting on every node, votes yes from each, and waits until it
/// executed everywhere.
fn pass(nodes: &[&Node], ps: &[&str]) {
    for n in nodes {
        for p in ps {
            wait_for(60, "voting open", || (status(n, p) == "voting").then_some(()));
        }
    }
    for n in nodes {
        for p in ps {
            n.json(&["vote", p, "yes"]);
        }
    }
    for n in nodes {
        for p in ps {
            wait_for(120, "the execution", || (status(n, p) == "executed").then_some(()));
        }
    }
}

#[test]
fn a_rollback_restores_the_value_an_execution_replaced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Node::start(dir.path().join("a"));
    let b = Node::start(dir.path().join("b"));
    found(&a, "rollback", &[(&b, "trusted")]);
    // Two executions, in this order: limit = 3, then limit = 5 (its vote ends later).
    let three = set(&a, "limit", "3", "4");
    let five = set(&a, "limit", "5", "8");
    // A rollback of a proposal that has not executed is refused, and nothing is published.
    let before = a.json(&["proposals"])["proposals"].as_array().map(Vec::len);
    let err = a
        .ctl(&[
            "propose",
            "--kind",
            "configuration",
            "--title",
            "undo",
            "--description",
            "d",
            "--rollback",
            &five,
        ])
        .fails(1);
    assert!(err.contains("has not executed"), "{err}");
    assert_eq!(a.json(&["proposals"])["proposals"].as_array().map(Vec::len), before);
    pass(&[&a, &b], &[&three, &five]);
    for n in [&a, &b] {
        assert_eq!(n.json(&["federation", "show"])["config"]["limit"], "5");
    }
    // Roll back the second execution: the value it replaced comes back, on every node.
    let undo = id(a.json(&[
        "propose",
        "--kind",
        "configuration",
        "--title",
        "Undo limit = 5",
        "--description",
        "Five was too many.",
        "--rollback",
        &five,
        "--voting-secs",
        "4",
    ]));
    let shown = a.json(&["show", &undo]);
    assert_eq!(shown["action"], serde_json::json!({"type": "rollback", "proposal": five}));
    pass(&[&a, &b], &[&undo]);
    for n in [&a, &b] {
        let fed = n.json(&["federation", "show"]);
        assert_eq!(fed["config"]["limit"], "3", "{fed}");
        assert_eq!(fed["registry_epoch"], 3, "three executions changed the registry: {fed}");
    }
}

#[test]
fn show_reads_back_revisions_discussion_sponsors_and_timeline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Node::start(dir.path().join("a"));
    let b = Node::start(dir.path().join("b"));
    found(&a, "reading", &[(&b, "trusted")]);
    let p = id(a.json(&[
        "propose",
        "--kind",
        "configuration",
        "--title",
        "Raise the limit",
        "--description",
        "Why:\nmore agents",
        "--key",
        "limit",
        "--value",
        "4",
        "--sponsors",
        "1",
        "--discussion-secs",
        "600",
    ]));
    wait_for(60, "the proposal on b", || (status(&b, &p) == "seeking_sponsors").then_some(()));
    a.json(&[
        "revise",
        &p,
        "--title",
        "Raise the limit a little",
        "--description",
        "Why:\nsome more agents",
        "--key",
        "limit",
        "--value",
        "3",
    ]);
    b.json(&["sponsor", &p]);
    let objection = id(b.json(&["comment", &p, "Three is still a lot.", "--kind", "objection"]));
    wait_for(60, "the objection on a", || {
        (a.try_json(&["show", &p])?["comments_total"] == 1).then_some(())
    });
    a.json(&["comment", &p, "It is the least that works.", "--parent", &objection]);
    a.json(&["comment", &p, "Summary: raise to three.", "--kind", "summary"]);

    let v = wait_for(60, "everything on b", || {
        let v = b.try_json(&["show", &p])?;
        (v["revision"] == 1 && v["comments_total"] == 3 && v["status"] == "discussion").then_some(v)
    });
    // The revision in force, and the history with what each revision changed.
    assert_eq!(v["title"], "Raise the limit a little", "{v}");
    assert_eq!(v["action"]["new"], "3", "{v}");
    let revs = v["revisions"].as_array().expect("revisions");
    assert_eq!(revs.len(), 2, "{v}");
    let fields: Vec<&str> = revs[1]["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .filter_map(|c| c["field"].as_str())
        .collect();
    assert_eq!(fields, ["title", "description", "action"], "{v}");
    assert_eq!(revs[1]["changes"][2]["from"], "configuration limit = 4", "{v}");
    // Sponsors and the timeline: sponsored, so voting opens when discussion ends.
    assert_eq!(v["sponsors"][0]["member"], b.did(), "{v}");
    assert_eq!(v["timeline"]["next"]["event"], "voting opens", "{v}");
    assert_eq!(v["timeline"]["next"]["at_ms"], v["timeline"]["discussion_end_ms"], "{v}");
    // The discussion as threads: the reply under the objection it answers.
    let d: Vec<(&str, u64, &str)> = v["discussion"]
        .as_array()
        .expect("discussion")
        .iter()
        .map(|c| {
            (
                c["kind"].as_str().unwrap_or(""),
                c["depth"].as_u64().unwrap_or(9),
                c["text"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        d,
        [
            ("objection", 0, "Three is still a lot."),
            ("comment", 1, "It is the least that works."),
            ("summary", 0, "Summary: raise to three."),
        ],
        "{v}"
    );
    assert_eq!(v["discussion"][1]["author"], a.did());
    // For people: the description's line diff, the threaded reply, relative times.
    let text = b.human(&["show", &p]);
    for want in [
        "- more agents",
        "+ some more agents",
        "title: \"Raise the limit\" → \"Raise the limit a little\"",
        "↳ [comment]",
        "next: voting opens",
        "(in 9 min",
        "Sponsors      1 of 1 needed",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}
