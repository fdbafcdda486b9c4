//! An honest burst: 5,000 votes from 500 members submitted at one node of a five-node
//! federation. Every node counts every vote, and no node blocks another for relaying them.

use kos_protocol::{
    Message, Payload, SecretKey,
    payload::{Choice, MessageId, Vote},
};
use kos_tests::{Node, wait_for};

const NODES: usize = 5;
const MEMBERS: usize = 500;
const PROPOSALS: usize = 10;

#[test]
fn a_burst_of_5000_votes_from_500_members_reaches_every_node_and_blocks_nobody() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nodes: Vec<Node> =
        (0..NODES).map(|i| Node::start(dir.path().join(format!("n{i}")))).collect();
    let members: Vec<SecretKey> = (0..MEMBERS).map(|_| SecretKey::generate()).collect();
    let mut args: Vec<String> =
        vec!["federation".into(), "create".into(), "burst".into(), "--dev-timing".into()];
    for n in &nodes[1..] {
        args.push("--member".into());
        args.push(format!("{}=trusted", n.did()));
    }
    for m in &members {
        args.push("--member".into());
        args.push(m.public().to_did());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let fed = nodes[0].json(&args)["federation"].as_str().expect("federation").to_owned();
    let boot = nodes[0].bootstrap_addr();
    for n in &nodes[1..] {
        n.json(&["federation", "join", &fed, "--bootstrap", &boot]);
    }
    let proposals: Vec<String> = (0..PROPOSALS)
        .map(|i| {
            nodes[0].json(&[
                "propose",
                "--kind",
                "resource_allocation",
                "--title",
                &format!("burst {i}"),
                "--description",
                "Many members vote at once.",
                "--voting-secs",
                "1800",
            ])["id"]
                .as_str()
                .expect("id")
                .to_owned()
        })
        .collect();
    for n in &nodes {
        wait_for(120, "every proposal on every node, voting open", || {
            let list = n.json(&["proposals"]);
            let open =
                list["proposals"].as_array()?.iter().filter(|p| p["status"] == "voting").count();
            (open == PROPOSALS).then_some(())
        });
    }
    // 5,000 ballots signed by the members themselves, submitted at node 0 in one go.
    let now = kos_tests::now_ms();
    let fed_id: MessageId = fed.parse().expect("federation id");
    let mut lines = String::new();
    for (i, p) in proposals.iter().enumerate() {
        let proposal: MessageId = p.parse().expect("proposal id");
        for (j, m) in members.iter().enumerate() {
            let choice = if (i + j) % 3 == 0 { Choice::No } else { Choice::Yes };
            let vote = Vote { choice, reason: None, proposal, revision: 0, federation: fed_id };
            let msg = Message::sign(m, i as u64 + 1, now, None, Payload::Vote(vote)).expect("sign");
            lines.push_str(&hex::encode(msg.bytes()));
            lines.push('\n');
        }
    }
    let file = dir.path().join("votes.hex");
    std::fs::write(&file, lines).expect("write votes");
    #[allow(clippy::disallowed_methods)]
    let started = std::time::Instant::now();
    let r = nodes[0].json(&["submit", file.to_str().expect("utf-8 path")]);
    assert_eq!(r["accepted"], (MEMBERS * PROPOSALS) as u64, "{r}");
    let acknowledged = started.elapsed();
    for (k, n) in nodes.iter().enumerate() {
        wait_for(300, &format!("node {k} to count every vote"), || {
            proposals
                .iter()
                .all(|p| n.json(&["tally", p])["tally"]["counted"] == MEMBERS as u64)
                .then_some(())
        });
    }
    let converged = started.elapsed();
    println!(
        "burst: {} votes acknowledged by node 0 in {:.2} s; counted by all {NODES} nodes after {:.2} s",
        MEMBERS * PROPOSALS,
        acknowledged.as_secs_f64(),
        converged.as_secs_f64()
    );
    // Same tallies everywhere, and nobody was blocked for relaying an honest burst.
    for p in &proposals {
        let first = nodes[0].json(&["tally", p])["tally"].clone();
        for n in &nodes[1..] {
            assert_eq!(n.json(&["tally", p])["tally"], first);
        }
    }
    for (k, n) in nodes.iter().enumerate() {
        let peers = n.json(&["peers"]);
        assert_eq!(peers["blocked"], serde_json::json!([]), "node {k} blocked a peer: {peers}");
    }
}
