//! A federation founded from the example charter file: members with roles, stake and trust, the
//! Security Board, voting defaults per proposal type — as every node sees them.

use kos_tests::{Node, join, wait_for, wait_status};
use serde_json::json;

#[test]
fn a_federation_from_the_example_charter_file_is_what_the_file_says_on_every_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Node::start(dir.path().join("a"));
    let b = Node::start(dir.path().join("b"));
    let c = Node::start(dir.path().join("c"));
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/charter.example.toml"
    ))
    .expect("example charter");
    let text =
        example.replace("did:key:<member-b>", &b.did()).replace("did:key:<member-c>", &c.did());
    let file = dir.path().join("charter.toml");
    std::fs::write(&file, text).expect("write charter");
    let fed = a.json(&[
        "federation",
        "create",
        "example",
        "--charter",
        file.to_str().expect("path"),
    ])["federation"]
        .as_str()
        .expect("federation")
        .to_owned();
    join(&a, &fed, &[&b, &c]);
    for n in [&a, &b, &c] {
        let f = wait_for(60, "the charter on every node", || {
            let f = n.json(&["federation", "show"]);
            (f["synced"] == true).then_some(f)
        });
        let member = |did: &str| {
            f["members"]
                .as_array()
                .expect("members")
                .iter()
                .find(|m| m["did"] == did)
                .cloned()
                .unwrap_or_else(|| panic!("{did} is not a member: {f}"))
        };
        assert_eq!(f["members"].as_array().map(Vec::len), Some(3), "{f}");
        let founder = member(&a.did());
        assert_eq!(founder["trust"], "core");
        assert_eq!(founder["stake"], 10);
        assert_eq!(founder["roles"], json!(["citizen", "validator", "emergency_responder"]));
        let mb = member(&b.did());
        assert_eq!((mb["trust"].clone(), mb["stake"].clone()), (json!("trusted"), json!(5)));
        assert_eq!(member(&c.did())["roles"], json!(["citizen", "validator"]), "default roles");
        assert_eq!(
            f["bodies"],
            json!([{"kind": "security_board", "members": [a.did(), b.did()]}]),
            "{f}"
        );
        let defaults = f["defaults"].as_array().expect("defaults");
        let config = defaults.iter().find(|d| d["kind"] == "configuration").expect("configuration");
        assert_eq!(config["config"]["rule"], json!({"supermajority": [2, 3]}));
        assert_eq!(config["config"]["quorum"], json!([1, 2]));
        assert_eq!(config["config"]["weighting"], "hybrid");
        assert_eq!(config["config"]["early_close"], true);
        assert_eq!(config["overrides"], json!(["weighting"]));
        let alloc = defaults.iter().find(|d| d["kind"] == "resource_allocation").expect("alloc");
        assert_eq!(alloc["config"]["rule"], "plurality");
        assert_eq!(alloc["config"]["sponsors"], 1);
        assert_eq!(alloc["config"]["quorum"], json!([3, 10]), "unnamed fields keep the default");
        assert_eq!(f["timing"]["grace_ms"], 2000);
        assert_eq!(f["role_weights"], json!([{"role": "validator", "weight": 2000}]));
        assert_eq!(f["registry_epoch"], 0);
        // Every type's rules in force, from the charter or built in.
        let voting = f["voting"].as_array().expect("voting");
        assert_eq!(voting.len(), 10, "{f}");
        let rules = |kind: &str| voting.iter().find(|v| v["kind"] == kind).cloned().expect(kind);
        assert_eq!(rules("configuration")["rule"], "supermajority:2/3");
        assert_eq!(rules("configuration")["source"], "charter");
        assert_eq!(rules("membership")["source"], "built_in");
        assert_eq!(rules("constitutional_change")["rule"], "supermajority:2/3");
    }
    // The same charter, for people: the file's members, bodies, rules and weights.
    let text = b.human(&["federation", "show"]);
    for line in [
        "Hybrid        weighting = trust 100 %, stake 0 %, role 0 %",
        "Role weights  validator 2 votes",
        "Delegation    chains of up to 4 step(s)",
        "reveal window 5 s",
    ] {
        assert!(text.contains(line), "missing {line:?}:\n{text}");
    }
    let row = |start: &str| {
        text.lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no line starting {start:?}:\n{text}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        row("configuration "),
        [
            "configuration",
            "charter",
            "supermajority:2/3",
            "50",
            "%",
            "33.4",
            "%",
            "hybrid",
            "0",
            "no",
            "yes",
            "trusted",
            "weighting"
        ]
    );
    assert_eq!(row("resource_allocation ")[1..4], ["charter", "plurality", "30"]);
    assert_eq!(row("membership ")[1], "built-in");
    let board = row("  security_board");
    assert!(board.contains(&format!("{},", a.did()).as_str()), "{text}");
    assert!(board.contains(&b.did().as_str()), "{text}");
    assert!(text.contains(&format!("{}  core", a.did())), "{text}");

    // A proposal may not lower the bar the charter set for its type (quorum 1/2 here), and the
    // refusal names the setting; what the charter lets it override (weighting) it may change.
    let propose = |extra: &[&str]| {
        let mut args = vec![
            "propose",
            "--kind",
            "configuration",
            "--title",
            "t",
            "--description",
            "d",
            "--key",
            "k",
            "--value",
            "v",
        ];
        args.extend_from_slice(extra);
        a.ctl(&args)
    };
    let err = propose(&["--quorum", "1/10"]).fails(1);
    assert!(err.contains("may not relax its quorum"), "{err}");
    let err = propose(&["--rule", "simple_majority"]).fails(1);
    assert!(err.contains("may not relax its rule"), "{err}");
    propose(&["--weighting", "stake", "--quorum", "2/3"]).ok();

    // A charter file with a mistake is refused in one line, and the node follows nothing.
    let d = Node::start(dir.path().join("d"));
    for (bad, says) in [
        ("[[members]]\ndid = \"self\"\ncolour = \"blue\"\n", "unknown field `colour`, expected"),
        ("[timing]\ngrace_secs = \n", "line 2, column 14: "),
        ("[[members]]\ndid = \"did:key:nonsense\"\n", "did:key:nonsense"),
        ("[[defaults]]\nkind = \"configuration\"\nquorum = [3, 2]\n", "charter"),
    ] {
        let f = dir.path().join("bad.toml");
        std::fs::write(&f, bad).expect("write");
        let err = d
            .ctl(&["federation", "create", "bad", "--charter", f.to_str().expect("path")])
            .fails(1);
        assert!(err.contains(says), "{err}");
        assert_eq!(d.status()["federation"], serde_json::Value::Null);
    }
}

#[test]
fn a_security_board_member_quarantines_a_member_in_an_emergency() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Node::start(dir.path().join("a"));
    let b = Node::start(dir.path().join("b"));
    let c = Node::start(dir.path().join("c"));
    // b is trusted — below the core trust emergencies need — but sits on the Security Board.
    let charter = format!(
        "[timing]\ngrace_secs = 2\nreveal_secs = 5\nclock_skew_secs = 60\nmax_voting_secs = 3600\n\
         min_voting_secs = 1\ndefault_voting_secs = 10\nmin_discussion_secs = 0\n\n\
         [[members]]\ndid = \"{}\"\ntrust = \"trusted\"\n\n[[members]]\ndid = \"{}\"\n\n\
         [[bodies]]\nkind = \"security_board\"\nmembers = [\"{}\"]\n",
        b.did(),
        c.did(),
        b.did()
    );
    let file = dir.path().join("board.toml");
    std::fs::write(&file, charter).expect("write");
    let fed = a.json(&["federation", "create", "board", "--charter", file.to_str().expect("path")])
        ["federation"]
        .as_str()
        .expect("federation")
        .to_owned();
    join(&a, &fed, &[&b, &c]);
    let emergency = |n: &Node| {
        n.ctl(&[
            "propose",
            "--kind",
            "emergency_action",
            "--member",
            &c.did(),
            "--title",
            "quarantine c",
            "--description",
            "Compromised key.",
            "--voting-secs",
            "5",
        ])
    };
    // c is neither core nor on the board: refused, naming the trust it lacks.
    let err = emergency(&c).fails(1);
    assert!(err.contains("trust"), "{err}");
    let out = emergency(&b).ok();
    let p = serde_json::from_str::<serde_json::Value>(&out).expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    wait_status(&[&a, &b], &p, "voting");
    for n in [&a, &b] {
        n.json(&["vote", &p, "yes"]);
    }
    for n in [&a, &b, &c] {
        wait_for(120, "c quarantined on every node", || {
            let f = n.json(&["federation", "show"]);
            let m = f["members"].as_array()?.iter().find(|m| m["did"] == c.did().as_str())?.clone();
            (m["trust"] == "quarantine").then_some(())
        });
    }
}
