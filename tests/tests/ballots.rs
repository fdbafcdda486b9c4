//! Ballots over options from `kosctl`: an approval ballot and a ranked ballot, voted by three
//! nodes and decided as the rules say; options without a rule for them are refused by name.

use kos_tests::{Node, found, wait_for, wait_status};

/// Proposes a resource allocation with `options` under `rule`; returns its id.
fn propose(n: &Node, title: &str, rule: &str, options: &[&str]) -> String {
    let mut args = vec![
        "propose",
        "--kind",
        "resource_allocation",
        "--title",
        title,
        "--description",
        "Pick.",
    ];
    args.extend(["--rule", rule, "--voting-secs", "6"]);
    for o in options {
        args.extend(["--option", o]);
    }
    n.json(&args)["id"].as_str().expect("id").to_owned()
}

#[test]
fn approval_and_ranked_ballots_are_decided_as_the_rules_say() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Node::start(dir.path().join("a"));
    let b = Node::start(dir.path().join("b"));
    let c = Node::start(dir.path().join("c"));
    // Trust weighting: a is core (5), b trusted (3), c standard (1).
    found(&a, "ballots", &[(&b, "trusted"), (&c, "standard")]);
    // Options under the default (binary) rule: refused, naming the rule.
    let err = a
        .ctl(&[
            "propose",
            "--kind",
            "resource_allocation",
            "--title",
            "t",
            "--description",
            "d",
            "--option",
            "x",
            "--option",
            "y",
        ])
        .fails(1);
    assert!(err.contains("--rule plurality") && err.contains("simple_majority"), "{err}");

    let approval = propose(&a, "colour", "plurality", &["red", "green", "blue"]);
    let ranked = propose(&a, "venue", "instant_runoff", &["north", "south", "east"]);
    for n in [&a, &b, &c] {
        for p in [&approval, &ranked] {
            wait_for(60, "the ballots open everywhere", || {
                (n.try_json(&["show", p])?["status"] == "voting").then_some(())
            });
        }
    }
    // A ballot of the wrong form, or naming an option that does not exist, is refused before
    // anything is signed, naming the form that fits and the options.
    let err = c.ctl(&["vote", &approval, "yes"]).fails(1);
    assert!(err.contains("decided by plurality: vote approve:I,J"), "{err}");
    assert!(err.contains("0: red, 1: green, 2: blue"), "{err}");
    let err = c.ctl(&["vote", &ranked, "approve:1"]).fails(1);
    assert!(err.contains("decided by instant_runoff: vote rank:I,J"), "{err}");
    let err = c.ctl(&["vote", &ranked, "rank:1,7"]).fails(1);
    assert!(err.contains("there is no option 7: the options are 0: north"), "{err}");
    // Approval: red 5 (a), green 3 + 1 (b, c), blue 3 (b) → red.
    a.json(&["vote", &approval, "approve:0"]);
    b.json(&["vote", &approval, "approve:1,2"]);
    c.json(&["vote", &approval, "approve:1"]);
    // Ranked: first preferences south 5 + 3 of 9 → a majority for south at once.
    a.json(&["vote", &ranked, "rank:1,0"]);
    b.json(&["vote", &ranked, "rank:1,2"]);
    c.json(&["vote", &ranked, "rank:2,1"]);
    for n in [&a, &b, &c] {
        for (p, winner, totals) in [(&approval, 0, vec![5000, 4000, 3000]), (&ranked, 1, vec![])] {
            let t = wait_for(90, "a final result", || {
                let t = n.try_json(&["tally", p])?;
                (!t["final"].is_null()).then_some(t)
            });
            assert_eq!(t["final"]["winner"], winner, "{t}");
            assert_eq!(t["final"]["outcome"], "approved", "{t}");
            if !totals.is_empty() {
                assert_eq!(t["tally"]["totals"], serde_json::json!(totals), "{t}");
            }
        }
    }
    // For people: totals beside the option names, the runoff's rounds, the quorum met.
    let text = c.human(&["tally", &ranked]);
    for line in [
        "1: south       8 votes  ← winner",
        "participation  9 votes of 9 eligible — quorum 2.7 votes met",
        "rounds         1: north 0, south 8, east 1 — south wins",
        "outcome        approved (final)",
    ] {
        assert!(text.contains(line), "missing {line:?}:\n{text}");
    }
    // Voting is over: a late ballot is refused before it is signed, saying when voting closed.
    let err = c.ctl(&["vote", &approval, "approve:2"]).fails(1);
    assert!(err.contains("voting closed 20") && err.contains(" ago) (status"), "{err}");
}

#[test]
fn a_secret_ballot_stays_unreadable_until_reveal_and_a_killed_node_still_reveals() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Node::start(dir.path().join("a"));
    let mut b = Node::start(dir.path().join("b"));
    found(&a, "secret", &[(&b, "trusted")]);
    let p = a.json(&[
        "propose",
        "--kind",
        "resource_allocation",
        "--title",
        "secret",
        "--description",
        "Nobody sees the ballots before the reveal.",
        "--secret",
        "--voting-secs",
        "12",
    ])["id"]
        .as_str()
        .expect("id")
        .to_owned();
    wait_status(&[&a, &b], &p, "voting");
    assert_eq!(a.json(&["vote", &p, "yes"])["committed"], true);
    let commit = b.json(&["vote", &p, "no"]);
    assert_eq!(commit["committed"], true);
    // On the wire: a's copy of b's commitment, exactly the bytes that travelled, holds a hash of
    // the choice and a salt, never the choice.
    let commit_id = commit["id"].as_str().expect("id");
    let seen = wait_for(30, "b's commitment on a", || a.try_json(&["message", commit_id]));
    assert_eq!(seen["type"], "VOTE_COMMIT", "{seen}");
    let body = seen["body"].as_str().expect("body");
    assert!(body.contains("commitment") && !body.contains("choice"), "{body}");
    // Before the reveal: commitments only — nothing is counted on either node.
    for n in [&a, &b] {
        let t = wait_for(30, "both commitments", || {
            let t = n.try_json(&["tally", &p])?;
            (t["status"] == "voting").then_some(t)
        });
        assert_eq!(t["tally"]["participation"], 0, "a secret ballot was readable: {t}");
    }
    // What people see meanwhile: who has committed, and that nothing counts yet.
    wait_for(30, "both commitments counted as committed on a", || {
        (a.json(&["show", &p])["secret_ballot"]["committed"] == 2).then_some(())
    });
    let text = a.human(&["tally", &p]);
    assert!(
        text.contains("Secret        2 member(s) committed, sealed: nothing is counted"),
        "{text}"
    );
    // b is killed after committing, loses its sled store (rebuilt from the journal at the next
    // start) and is restarted before the reveal window: it still reveals, from the ballot's own
    // file.
    b.kill();
    assert!(dir.path().join("b/secret-ballots").read_dir().expect("ballots").count() == 1);
    std::fs::remove_dir_all(dir.path().join("b/store")).expect("remove b's store");
    let b = Node::start(dir.path().join("b"));
    // The peer book went with the store: b is pointed at a again, as an operator would.
    b.json(&["connect", &a.bootstrap_addr()]);
    for n in [&a, &b] {
        let t = wait_for(120, "the revealed, final tally", || {
            let t = n.try_json(&["tally", &p])?;
            (!t["final"].is_null()).then_some(t)
        });
        assert_eq!(t["tally"]["counted"], 2, "both ballots revealed and counted: {t}");
        assert_eq!(t["final"]["outcome"], "approved", "yes (core, 5) against no (trusted, 3): {t}");
        assert_eq!(n.json(&["show", &p])["secret_ballot"]["revealed"], 2);
        assert_eq!(dir.path().join("b/secret-ballots").read_dir().expect("dir").count(), 0);
        assert!(
            n.human(&["show", &p]).contains("Secret        2 of 2 committed member(s) revealed")
        );
    }
}

#[test]
fn a_proposal_without_its_sponsors_expires_and_a_sponsored_one_goes_to_a_vote() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Node::start(dir.path().join("a"));
    let b = Node::start(dir.path().join("b"));
    found(&a, "sponsors", &[(&b, "trusted")]);
    let propose = |title: &str| {
        a.json(&[
            "propose",
            "--kind",
            "resource_allocation",
            "--title",
            title,
            "--description",
            "d",
            "--sponsors",
            "1",
            "--discussion-secs",
            "8",
            "--voting-secs",
            "5",
        ])["id"]
            .as_str()
            .expect("id")
            .to_owned()
    };
    let lonely = propose("nobody sponsors this");
    let backed = propose("b sponsors this");
    for p in [&lonely, &backed] {
        wait_for(60, "seeking sponsors on b", || {
            (b.try_json(&["show", p])?["status"] == "seeking_sponsors").then_some(())
        });
    }
    b.json(&["sponsor", &backed]);
    wait_for(60, "the sponsored one in discussion", || {
        (a.try_json(&["show", &backed])?["status"] == "discussion").then_some(())
    });
    assert_eq!(a.json(&["show", &lonely])["status"], "seeking_sponsors");
    // When discussion ends: the sponsored proposal is voted on, the other expires.
    for n in [&a, &b] {
        wait_for(60, "the lonely proposal to expire", || {
            (n.try_json(&["show", &lonely])?["status"] == "expired").then_some(())
        });
        let listed = n.json(&["proposals", "--status", "expired", "--author", &a.did()]);
        let ids: Vec<&str> = listed["proposals"]
            .as_array()
            .expect("list")
            .iter()
            .filter_map(|p| p["id"].as_str())
            .collect();
        assert_eq!(ids, vec![lonely.as_str()], "{listed}");
    }
    let s = a.json(&["show", &backed])["status"].clone();
    assert!(s == "voting" || s == "closed" || s == "approved" || s == "failed_quorum", "{s}");
}

#[test]
fn a_delegation_chain_carries_its_weight_into_the_tally() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Node::start(dir.path().join("a"));
    let b = Node::start(dir.path().join("b"));
    let c = Node::start(dir.path().join("c"));
    // Trust weighting: a core (5), b trusted (3), c standard (1).
    found(&a, "chain", &[(&b, "trusted"), (&c, "standard")]);
    // c delegates to b, b to a: a's ballot carries all three weights.
    c.json(&["delegate", "--to", &b.did()]);
    b.json(&["delegate", "--to", &a.did()]);
    // `kosctl delegations`: who delegates to a, transitively, and whom c delegates to.
    let graph = wait_for(60, "both delegations on a", || {
        let g = a.json(&["delegations"]);
        (g["delegated_to_me"][0]["delegators"].as_array().map(Vec::len) == Some(2)).then_some(g)
    });
    assert_eq!(graph["delegated_to_me"][0]["scope"], "all", "{graph}");
    let chain = &graph["delegated_to_me"][0]["delegators"];
    assert_eq!(chain[0]["member"], b.did(), "{graph}");
    assert_eq!(chain[0]["depth"], 1, "{graph}");
    assert_eq!(chain[1]["member"], c.did(), "{graph}");
    assert_eq!(chain[1]["depth"], 2, "{graph}");
    assert_eq!(chain[1]["via"], b.did(), "{graph}");
    let of_c = a.json(&["delegations", "--member", &c.did()]);
    assert_eq!(of_c["delegates_to"][0]["delegate"], b.did(), "{of_c}");
    let text = a.human(&["delegations"]);
    assert!(text.contains(&format!("{}  2 steps, via {}", c.did(), b.did())), "{text}");
    let p = a.json(&[
        "propose",
        "--kind",
        "resource_allocation",
        "--title",
        "chain",
        "--description",
        "d",
        "--voting-secs",
        "6",
    ])["id"]
        .as_str()
        .expect("id")
        .to_owned();
    wait_status(&[&a, &b, &c], &p, "voting");
    a.json(&["vote", &p, "no"]);
    for n in [&a, &b, &c] {
        let t = wait_for(90, "a final result", || {
            let t = n.try_json(&["tally", &p])?;
            (!t["final"].is_null()).then_some(t)
        });
        assert_eq!(t["tally"]["participation"], 9000, "5 + 3 + 1 through the chain: {t}");
        assert_eq!(t["final"]["outcome"], "rejected", "{t}");
    }
    // For people: totals by name, weights in votes, participation against the quorum.
    let text = a.human(&["tally", &p]);
    assert!(text.contains("  no             9 votes"), "{text}");
    assert!(text.contains("9 votes of 9 eligible — quorum"), "{text}");
    assert!(text.contains("rejected (final)"), "{text}");
    assert!(text.contains("0 % of yes + no + veto — needs more than 50 %"), "{text}");
}
