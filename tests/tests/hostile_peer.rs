//! A raw libp2p peer publishes forged, malformed and replayed messages on a federation's topic.
//! The node changes nothing it should not, and blocks the peer.

use std::time::Duration;

use futures::StreamExt;
use kos_protocol::{
    Message, Payload, SecretKey,
    payload::{Choice, Comment, CommentKind, MessageId, Vote},
    vault::Vault,
};
use kos_tests::{Node, wait_for};
use libp2p::{
    Multiaddr, gossipsub, noise,
    swarm::{NetworkBehaviour, SwarmEvent},
    tcp, yamux,
};
use sha2::{Digest as _, Sha256};

#[derive(NetworkBehaviour)]
struct Raw {
    gossipsub: gossipsub::Behaviour,
}

fn raw_swarm() -> libp2p::Swarm<Raw> {
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
        .expect("tcp")
        .with_behaviour(|key| {
            let config = gossipsub::ConfigBuilder::default()
                .heartbeat_interval(Duration::from_millis(500))
                .validation_mode(gossipsub::ValidationMode::Strict)
                .message_id_fn(|m: &gossipsub::Message| {
                    gossipsub::MessageId::from(Sha256::digest(&m.data).to_vec())
                })
                .build()
                .expect("config");
            Raw {
                gossipsub: gossipsub::Behaviour::new(
                    gossipsub::MessageAuthenticity::Signed(key.clone()),
                    config,
                )
                .expect("gossipsub"),
            }
        })
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
}

/// Drives the swarm for a while (the node's answers, heartbeats).
async fn pump(swarm: &mut libp2p::Swarm<Raw>, ms: u64) {
    let _ = tokio::time::timeout(Duration::from_millis(ms), async {
        loop {
            swarm.select_next_some().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_malformed_and_replayed_gossip_changes_nothing_and_gets_the_peer_blocked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Node::start(dir.path().join("a"));
    let fed = a.json(&["federation", "create", "hostile", "--dev-timing"])["federation"]
        .as_str()
        .expect("federation")
        .to_owned();
    // A proposal whose discussion outlasts the test, so statuses (and the state hash) hold still.
    let p = a.json(&[
        "propose",
        "--kind",
        "resource_allocation",
        "--title",
        "Stable",
        "--description",
        "Held open.",
        "--discussion-secs",
        "900",
    ])["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let proposal: MessageId = p.parse().expect("id");
    let federation: MessageId = fed.parse().expect("id");

    let topic = gossipsub::IdentTopic::new(format!("kos/{fed}/gov"));
    let mut swarm = connect_raw(&a, &topic).await;
    let raw_peer = swarm.local_peer_id().to_string();
    pump(&mut swarm, 500).await;

    let before = a.status();
    let hash = before["state_hash"].clone();

    // A member's message, valid: the node accepts it once (it is A's own key, from its
    // development vault), and a replay of the same bytes changes nothing.
    let a_key: SecretKey = Vault::load(&a.dir.join("vault.bin"), b"")
        .expect("development vault")
        .get("node")
        .cloned()
        .expect("node key");
    let now = kos_tests_now();
    let comment = Message::sign(
        &a_key,
        1_000_000,
        now,
        None,
        Payload::Comment(Comment {
            kind: CommentKind::Support,
            text: "relayed by a stranger".into(),
            parent: None,
            proposal,
            revision: 0,
            federation,
        }),
    )
    .expect("sign");

    let stranger = SecretKey::generate();
    let vote = |seq| {
        Message::sign(
            &stranger,
            seq,
            now,
            None,
            Payload::Vote(Vote {
                choice: Choice::Yes,
                reason: None,
                proposal,
                revision: 0,
                federation,
            }),
        )
        .expect("sign")
    };
    let mut hostile: Vec<Vec<u8>> = vec![
        b"\xff\x00 not an envelope".to_vec(),
        vec![0x82, 0x40, 0x40],
        vec![0u8; 70_000].into_iter().take(40_000).collect(),
    ];
    // Forged: a valid vote with its signature flipped.
    for seq in 1..=4 {
        let mut b = vote(seq).bytes().to_vec();
        let n = b.len();
        b[n - 1] ^= 0x55;
        hostile.push(b);
    }
    // Well signed, but by a non-member.
    for seq in 10..=14 {
        hostile.push(vote(seq).bytes().to_vec());
    }
    // A non-member's votes on proposals nobody has: refused by the membership gate, never held
    // or stored (they would otherwise wait for their proposal and be served by sync).
    for seq in 20..=22u8 {
        let m = Message::sign(
            &stranger,
            u64::from(seq),
            now,
            None,
            Payload::Vote(Vote {
                choice: Choice::Yes,
                reason: None,
                proposal: MessageId([seq; 32]),
                revision: 0,
                federation,
            }),
        )
        .expect("sign");
        // First, before anything gets the peer blocked.
        hostile.insert(0, m.bytes().to_vec());
    }
    let mut sent = 0;
    for bytes in &hostile {
        // Once the node has blocked us, publishing finds no peer: that is the point.
        if swarm.behaviour_mut().gossipsub.publish(topic.clone(), bytes.clone()).is_ok() {
            sent += 1;
        }
        pump(&mut swarm, 100).await;
    }
    assert!(sent >= 1, "no hostile message went out");
    pump(&mut swarm, 1500).await;
    let after = a.status();
    assert_eq!(after["state_hash"], hash, "hostile messages changed the state");
    assert_eq!(after["messages"], before["messages"], "hostile messages were stored");
    assert_eq!(after["pending"], 0, "a non-member's messages were held");

    // Gossipsub scored the peer down (each invalid message weighs -100) and the immune system
    // blocked it; the node reports it and the audit log records it.
    let peers = wait_for(30, "the hostile peer to be blocked", || {
        let p = a.json(&["peers"]);
        p["blocked"]
            .as_array()
            .filter(|b| b.iter().any(|x| x == raw_peer.as_str()))
            .map(|_| p.clone())
    });
    assert!(!peers["connected"].as_array().expect("list").iter().any(|x| x == raw_peer.as_str()));
    let audit = a.json(&["audit", "verify"]);
    assert_eq!(audit["ok"], true);

    // The valid comment relayed by a second raw peer is accepted once; its replay is a no-op.
    let mut swarm2 = raw_swarm();
    swarm2.behaviour_mut().gossipsub.subscribe(&topic).expect("subscribe");
    swarm2.dial(a.bootstrap_addr().parse::<Multiaddr>().expect("addr")).expect("dial");
    pump(&mut swarm2, 3000).await;
    let _ = swarm2.behaviour_mut().gossipsub.publish(topic.clone(), comment.bytes().to_vec());
    pump(&mut swarm2, 1500).await;
    let accepted = wait_for(30, "the valid comment", || {
        let s = a.status();
        (s["messages"] != before["messages"]).then_some(s)
    });
    assert_ne!(accepted["state_hash"], hash, "a valid member comment is part of the state");
    // Replay: identical bytes again, directly and after the gossip duplicate cache.
    let _ = swarm2.behaviour_mut().gossipsub.publish(topic.clone(), comment.bytes().to_vec());
    pump(&mut swarm2, 1500).await;
    let replayed = a.status();
    assert_eq!(replayed["state_hash"], accepted["state_hash"]);
    assert_eq!(replayed["messages"], accepted["messages"]);

    // A member's vote on a proposal the node does not have is held in memory — not stored (so
    // sync never serves it) and not part of the state.
    let held = Message::sign(
        &a_key,
        1_000_001,
        kos_tests_now(),
        None,
        Payload::Vote(Vote {
            choice: Choice::Yes,
            reason: None,
            proposal: MessageId([0x42; 32]),
            revision: 0,
            federation,
        }),
    )
    .expect("sign");
    let _ = swarm2.behaviour_mut().gossipsub.publish(topic.clone(), held.bytes().to_vec());
    pump(&mut swarm2, 1500).await;
    let holding = wait_for(30, "the member's vote to be held", || {
        let s = a.status();
        (s["pending"] == 1).then_some(s)
    });
    assert_eq!(holding["messages"], accepted["messages"], "a held message was stored");
    assert_eq!(holding["state_hash"], accepted["state_hash"]);
}

#[allow(clippy::disallowed_methods)] // the test plays a peer with a real clock
fn kos_tests_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// An envelope with `version` and type `code` (canonical CBOR by hand: the node must not be
/// able to read it, which is the point), signed with garbage.
fn unreadable_envelope(version: u8, code: u16, author: [u8; 32]) -> Vec<u8> {
    let mut header = vec![0x87, version];
    header.extend_from_slice(&[0x19, (code >> 8) as u8, code as u8]);
    header.extend_from_slice(&[0x58, 0x20]);
    header.extend_from_slice(&author);
    header.push(0x01); // seq
    header.push(0x1b);
    header.extend_from_slice(&kos_tests_now().to_be_bytes());
    header.push(0xf6); // no target
    header.push(0x40); // empty body
    let mut env = vec![0x82, 0x58, header.len() as u8];
    env.extend_from_slice(&header);
    env.extend_from_slice(&[0x58, 0x40]);
    env.extend_from_slice(&[0x11; 64]);
    env
}

async fn connect_raw(a: &Node, topic: &gossipsub::IdentTopic) -> libp2p::Swarm<Raw> {
    let mut swarm = raw_swarm();
    swarm.behaviour_mut().gossipsub.subscribe(topic).expect("subscribe");
    swarm.dial(a.bootstrap_addr().parse::<Multiaddr>().expect("addr")).expect("dial");
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let SwarmEvent::Behaviour(RawEvent::Gossipsub(gossipsub::Event::Subscribed {
                ..
            })) = swarm.select_next_some().await
            {
                break;
            }
        }
    })
    .await
    .expect("the node subscribes to its federation topic");
    pump(&mut swarm, 1000).await;
    swarm
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_messages_are_ignored_but_forgeries_block_even_a_peer_that_left_and_blocks_persist() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut a = Node::start(dir.path().join("a"));
    let fed = a.json(&["federation", "create", "graded", "--dev-timing"])["federation"]
        .as_str()
        .expect("federation")
        .to_owned();
    let p = a.propose_open("Stable");
    let proposal: MessageId = p.parse().expect("id");
    let federation: MessageId = fed.parse().expect("id");
    let topic = gossipsub::IdentTopic::new(format!("kos/{fed}/gov"));

    // A peer running a newer kOS: unknown message types and a newer protocol version, twenty of
    // them — far more than any tolerance. Ignored, never punished: a rolling upgrade must not
    // split the network.
    let mut newer = connect_raw(&a, &topic).await;
    let newer_id = newer.local_peer_id().to_string();
    let author = SecretKey::generate().public().to_bytes();
    for i in 0..20u16 {
        let env = if i % 2 == 0 {
            unreadable_envelope(1, 900 + i, author)
        } else {
            unreadable_envelope(2, 1, author)
        };
        let _ = newer.behaviour_mut().gossipsub.publish(topic.clone(), env);
    }
    pump(&mut newer, 2000).await;
    // The node read them (and ignored them).
    let unreadable = wait_for(30, "the newer peer's messages to be judged", || {
        let m = Node::metrics(&a);
        let n = m
            .lines()
            .find(|l| l.starts_with("kos_gossip_messages_total{verdict=\"unreadable\"}"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<u64>().ok())?;
        (n >= 10).then_some(n)
    });
    assert!(unreadable >= 10, "{unreadable}");

    // A forger: ten votes with broken signatures, then it leaves at once.
    let forger_id = {
        let mut forger = connect_raw(&a, &topic).await;
        let id = forger.local_peer_id().to_string();
        let stranger = SecretKey::generate();
        for seq in 1..=10u64 {
            let m = Message::sign(
                &stranger,
                seq,
                kos_tests_now(),
                None,
                Payload::Vote(Vote {
                    choice: Choice::Yes,
                    reason: None,
                    proposal,
                    revision: 0,
                    federation,
                }),
            )
            .expect("sign");
            let mut b = m.bytes().to_vec();
            let n = b.len();
            b[n - 2] ^= 0x55;
            let _ = forger.behaviour_mut().gossipsub.publish(topic.clone(), b);
        }
        pump(&mut forger, 300).await;
        id
        // Dropped here: the connection closes.
    };
    wait_for(30, "the forger to be blocked although it left", || {
        let p = a.json(&["peers"]);
        p["blocked"].as_array().filter(|b| b.iter().any(|x| x == forger_id.as_str())).map(|_| ())
    });
    let peers = a.json(&["peers"]);
    assert!(
        !peers["blocked"].as_array().expect("list").iter().any(|x| x == newer_id.as_str()),
        "a peer sending newer message types was blocked: {peers}"
    );
    let reason = peers["blocks"]
        .as_array()
        .expect("blocks")
        .iter()
        .find(|b| b["peer_id"] == forger_id.as_str())
        .and_then(|b| b["reason"].as_str())
        .expect("reason")
        .to_owned();
    assert!(reason.contains("signature") && reason.contains("fatal"), "{reason}");
    pump(&mut newer, 500).await;
    let connected = a.json(&["peers"])["connected"].clone();
    assert!(
        connected.as_array().expect("list").iter().any(|x| x == newer_id.as_str()),
        "the newer peer should still be connected: {connected}"
    );

    // The block survives a crash and restart.
    a.kill();
    drop(newer);
    let a = Node::start(dir.path().join("a"));
    let peers = a.json(&["peers"]);
    assert!(
        peers["blocked"].as_array().expect("list").iter().any(|x| x == forger_id.as_str()),
        "the block was lost in a restart: {peers}"
    );
}
