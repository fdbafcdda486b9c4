//! Issue #20, on real processes: a minority below 1/3 tries to replace a final, executed result.
//!
//! Weights (trust): A core 5000, B trusted 3000, C trusted 3000 — eligible 11000, a certificate
//! needs more than 2/3 (> 7333), so A and B together (8000) can finish alone and C holds 27 %.
//! A and B are real `kosd` processes. C is the attacker: it runs no node; its messages are
//! signed here with its key and injected with `kosctl submit`.
//!
//! The ballots: A yes, B no, and C's NO — signed inside the voting window and withheld. Without
//! it the result R1 is APPROVED (5000 : 3000); with it R2 is REJECTED (5000 : 6000).
//!
//! The script follows the attack (there B "attests ten seconds later"): B is down when
//! attestations start, and comes back partitioned from A, seeing only what the attacker relays.
//!
//! 1. B is stopped (and A and B block each other) before `start = close + grace`.
//! 2. At `start` A prepares R1 in round 0. C prepares R1 in round 0 too (signed at `start`):
//!    with A that is a prepare quorum (8000), so A commits R1 in round 0 — A is locked, but
//!    holds no certificate (its commit alone is 5000).
//! 3. C shows its withheld NO to A only. A's running tally becomes R2.
//! 4. B restarts, still in round 0 and cut off from A. The attacker relays to B A's prepare and
//!    commit of R1 (read from A's journal: what any peer of A saw on the wire) and C's R1
//!    prepare — not the NO. B, holding the round-0 prepare quorum, commits R1 in round 0: with
//!    A's commit that is a certificate (8000), B is FINAL approved and executes (epoch 1).
//! 5. C's attestations for R2 — prepare and commit of rounds 0 and 1, each signed at the
//!    earliest time its round allows (`start`, `start + grace`) — go to both nodes, then the
//!    partition heals and A and B exchange everything, the NO included.
//!
//! Then, polled on both nodes for several rounds: each is FINAL with R1 (round 0), the final
//! result (outcome, votes root, round) never changes once seen, the execution (status executed,
//! registry epoch 1, the configured value) is never undone, C is listed as an equivocator (it
//! prepared both results in round 0) and the honest members are not, and the nodes converge to
//! one state hash.
//!
//! **Why this fails under the former single-phase rule (ab371e8: every attestation kept, a
//! certificate = attesters of one key holding ≥ 2/3, an honest node re-attests whenever its
//! tally differs from its latest attestation while it has no certificate, the earliest
//! completion time wins).** The former decoder refused the unknown `phase`/`round` fields, so
//! C's prepare does nothing and A's round-0 commit — encoded without `phase` or `round` — is
//! exactly a former attestation. Step 2: A attests R1 at `start`; no certificate (5000). Step 3:
//! A, still without a certificate, re-attests R2 at `t_A2` (now). Step 4: B, restarted after
//! `t_A2` and without the NO, attests R1 at `t_B > t_A2`; with the relayed A attestation R1
//! has 8000 ≥ 2/3: B is FINAL approved at `t_B` and executes. Step 5: C's round-0 commit of R2
//! (a former attestation, signed at `start`) and, after the heal, A's R2 re-attestation give R2
//! 8000 ≥ 2/3 completed at `t_A2 < t_B`: the earliest-certificate rule makes B flip to FINAL
//! rejected, the execution is undone (epoch 0) and honest A is named the equivocator. The
//! assertion that B's final never changes (and that A ends with R1) fails — the issue's
//! minority-replaces-final attack. In the two-phase protocol A, locked on R1 by the round-0
//! prepare quorum, prepares R1 in every later round and never signs R2, so R2 never gets more
//! than C's 3000 in any round.

use std::path::{Path, PathBuf};

use kos_protocol::{
    Message, Payload, SecretKey,
    payload::{AttestationPhase, Choice, Digest, Outcome, TallyAttestation, Vote},
};
use kos_tests::{Node, join, now_ms, wait_for};
use serde_json::Value;

/// Round length = grace, in seconds. Round 0 must hold steps 2–4 (B's restart included) with a
/// wide margin on a loaded machine; later rounds are polled for stability.
const GRACE_SECS: u64 = 6;
const KEY: &str = "relay.quota";
const VALUE: &str = "120";

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}")).to_owned()
}

fn tally(n: &Node, p: &str) -> Value {
    n.try_json(&["tally", p]).unwrap_or(Value::Null)
}

/// What a final result agrees on, as the finality API shows it: (outcome, votes root, round).
fn final_of(t: &Value) -> Option<(String, String, u64)> {
    let f = t.get("final").filter(|f| f.is_object())?;
    Some((s(&f["outcome"]), s(&f["votes_root"]), f["round"].as_u64().expect("final round")))
}

/// The attestations a node signed itself, from its journal: (phase, round, votes root).
fn own_attestations(n: &Node, did: &str) -> Vec<(String, u32, String)> {
    journal(&n.dir)
        .into_iter()
        .filter(|m| m.author().to_did() == did)
        .filter_map(|m| match m.payload() {
            Payload::TallyAttestation(t) => Some((
                match t.phase {
                    AttestationPhase::Prepare => "prepare".to_owned(),
                    AttestationPhase::Commit => "commit".to_owned(),
                },
                t.round,
                t.votes_root.to_string(),
            )),
            _ => None,
        })
        .collect()
}

fn signed(n: &Node, did: &str, phase: &str, round: u32, root: &str) -> bool {
    own_attestations(n, did).iter().any(|(p, r, v)| p == phase && *r == round && v == root)
}

/// Submits `m` through `n` with `kosctl submit`; it must be accepted.
fn submit(n: &Node, m: &Message, what: &str) {
    let file = n.dir.with_extension(format!("{}.hex", m.id()));
    std::fs::write(&file, hex::encode(m.bytes())).expect("write");
    let run = n.ctl(&["submit", file.to_str().expect("utf-8")]);
    let v: Value =
        serde_json::from_str(&run.stdout).unwrap_or_else(|_| panic!("kosctl submit: {run:?}"));
    assert_eq!(v["accepted"], 1, "{what} through {}: {v} {run:?}", n.dir.display());
}

/// Every envelope in a node's journal (`journal/NNNNNNNN.seg`: `"KOSJ" ‖ u32be len ‖ 8-byte
/// checksum ‖ bytes`). Readable while the node runs: it is what the node accepted and signed.
fn journal(dir: &Path) -> Vec<Message> {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(dir.join("journal"))
        .expect("journal dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segs.sort();
    let mut out = Vec::new();
    for seg in segs {
        let data = std::fs::read(&seg).expect("segment");
        let mut at = 0;
        while at + 16 <= data.len() && data[at..at + 4] == *b"KOSJ" {
            let len =
                u32::from_be_bytes(data[at + 4..at + 8].try_into().expect("4 bytes")) as usize;
            let Some(bytes) = data.get(at + 16..at + 16 + len) else { break };
            if let Ok(m) = Message::decode(bytes) {
                out.push(m);
            }
            at += 16 + len;
        }
    }
    out
}

/// The attacker: C's key and what it signs.
struct Attacker {
    key: SecretKey,
    fed: String,
    p: String,
    seq: u64,
}

impl Attacker {
    fn sign(&mut self, at: u64, payload: Payload) -> Message {
        self.seq += 1;
        Message::sign(&self.key, self.seq, at, None, payload).expect("sign")
    }

    fn vote(&mut self, choice: Choice, at: u64) -> Message {
        let body = Vote {
            choice,
            reason: None,
            proposal: self.p.parse().expect("proposal id"),
            revision: 0,
            federation: self.fed.parse().expect("federation id"),
        };
        self.sign(at, Payload::Vote(body))
    }

    /// An attestation of the result a node's running tally `t` shows.
    fn attest(&mut self, t: &Value, phase: AttestationPhase, round: u32, at: u64) -> Message {
        let t = &t["tally"];
        let n = |v: &Value| v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"));
        let body = TallyAttestation {
            phase,
            round,
            totals: t["totals"].as_array().expect("totals").iter().map(n).collect(),
            winner: None,
            counted: u32::try_from(n(&t["counted"])).expect("counted"),
            outcome: s(&t["outcome"]).parse::<Outcome>().expect("outcome"),
            eligible: n(&t["eligible"]),
            proposal: self.p.parse().expect("proposal id"),
            revision: u32::try_from(n(&t["revision"])).expect("revision"),
            federation: self.fed.parse().expect("federation id"),
            votes_root: s(&t["votes_root"]).parse::<Digest>().expect("votes root"),
            participation: n(&t["participation"]),
        };
        self.sign(at, Payload::TallyAttestation(body))
    }
}

#[test]
fn a_withheld_vote_and_backdated_attestations_of_a_27_percent_minority_never_replace_a_final_executed_result()
 {
    let t0 = now_ms();
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Node::start(dir.path().join("a"));
    let mut b = Node::start(dir.path().join("b"));
    let c_key = SecretKey::generate();
    let c_did = c_key.public().to_did();
    let (a_did, b_did) = (a.did(), b.did());

    // The federation: A core, B and C trusted; round length (grace) GRACE_SECS.
    let charter = format!(
        "[timing]\ngrace_secs = {GRACE_SECS}\nreveal_secs = 5\nclock_skew_secs = 60\n\
         max_voting_secs = 3600\nmin_voting_secs = 1\ndefault_voting_secs = 10\n\
         min_discussion_secs = 0\n\n\
         [[members]]\ndid = \"self\"\ntrust = \"core\"\n\n\
         [[members]]\ndid = \"{b_did}\"\ntrust = \"trusted\"\n\n\
         [[members]]\ndid = \"{c_did}\"\ntrust = \"trusted\"\n"
    );
    let file = dir.path().join("charter.toml");
    std::fs::write(&file, charter).expect("charter");
    let fed =
        s(&a.json(&["federation", "create", "attack", "--charter", file.to_str().expect("utf-8")])
            ["federation"]);
    join(&a, &fed, &[&b]);

    let p = s(&a.json(&[
        "propose",
        "--kind",
        "configuration",
        "--title",
        "Raise the relay quota",
        "--description",
        "The attacker wants it rejected.",
        "--key",
        KEY,
        "--value",
        VALUE,
        "--discussion-secs",
        "2",
        "--voting-secs",
        "4",
    ])["id"]);
    let show = wait_for(60, "the proposal on B", || b.try_json(&["show", &p]));
    let discussion_end = show["discussion_end_ms"].as_u64().expect("discussion_end_ms");
    let voting_end = show["voting_end_ms"].as_u64().expect("voting_end_ms");
    let grace = GRACE_SECS * 1000;
    let start = voting_end + grace; // no early close: close = voting end
    assert!(discussion_end < voting_end);

    // C signs its NO inside the voting window (half a second before it closes) and withholds it.
    let mut c = Attacker { key: c_key, fed: fed.clone(), p: p.clone(), seq: 0 };
    let withheld = c.vote(Choice::No, voting_end - 500);

    for n in [&a, &b] {
        wait_for(60, "voting to open", || {
            (n.try_json(&["show", &p])?["status"] == "voting").then_some(())
        });
    }
    a.json(&["vote", &p, "yes"]);
    b.json(&["vote", &p, "no"]);
    for n in [&a, &b] {
        wait_for(60, "both ballots on both nodes", || {
            (tally(n, &p)["tally"]["counted"] == 2).then_some(())
        });
    }

    // Step 1: B goes down before attestations start, and A and B block each other (B's block
    // list is kept in its data directory, so it holds when B restarts).
    let (pa, pb) = (a.peer_id(), b.peer_id());
    a.json(&["block", &pb]);
    b.json(&["block", &pa]);
    b.kill();
    assert!(now_ms() < start, "B must be down before attestations start");

    // Step 2: A prepares its tally R1 (approved) in round 0; C prepares R1 in round 0 as well.
    let r1 = wait_for(60, "A's round-0 prepare", || {
        let t = tally(&a, &p);
        let root = t["tally"]["votes_root"].as_str()?.to_owned();
        signed(&a, &a_did, "prepare", 0, &root).then_some(t)
    });
    assert_eq!(r1["tally"]["outcome"], "approved", "{r1}");
    assert_eq!(r1["tally"]["totals"], serde_json::json!([5000, 3000, 0, 0]), "{r1}");
    assert!(r1["final"].is_null(), "A alone cannot be final: {r1}");
    let root1 = s(&r1["tally"]["votes_root"]);
    let c_prepare_r1 = c.attest(&r1, AttestationPhase::Prepare, 0, start);
    submit(&a, &c_prepare_r1, "C's round-0 prepare of R1");
    let locked = wait_for(30, "A's round-0 commit", || {
        signed(&a, &a_did, "commit", 0, &root1).then(|| tally(&a, &p))
    });
    eprintln!("A after its round-0 commit (locked, no certificate):\n{locked:#}");
    assert_eq!(locked["prepare_quorum"]["round"], 0, "{locked}");
    assert_eq!(locked["prepare_quorum"]["votes_root"], root1.as_str(), "{locked}");
    assert!(locked["final"].is_null(), "A's commit alone is no certificate: {locked}");

    // Step 3: C shows its withheld NO to A only. A's running tally becomes R2 (rejected).
    submit(&a, &withheld, "C's withheld NO");
    let r2 = wait_for(30, "A to count the withheld NO", || {
        let t = tally(&a, &p);
        (t["tally"]["counted"] == 3).then_some(t)
    });
    assert_eq!(r2["tally"]["outcome"], "rejected", "{r2}");
    assert_eq!(r2["tally"]["totals"], serde_json::json!([5000, 6000, 0, 0]), "{r2}");
    let root2 = s(&r2["tally"]["votes_root"]);
    assert_ne!(root1, root2);

    // Step 4: B comes back, still in round 0, cut off from A. The attacker relays A's round-0
    // prepare and commit of R1 (from A's journal) and its own R1 prepare — not the NO.
    let b_dir = b.dir.clone();
    drop(b);
    let b = Node::start(b_dir);
    let from_a: Vec<Message> = journal(&a.dir)
        .into_iter()
        .filter(|m| m.author().to_did() == a_did)
        .filter(|m| match m.payload() {
            Payload::TallyAttestation(t) => t.round == 0 && t.votes_root.to_string() == root1,
            _ => false,
        })
        .collect();
    assert_eq!(from_a.len(), 2, "A's round-0 prepare and commit of R1 in its journal");
    submit(&b, &c_prepare_r1, "C's round-0 prepare of R1 (relayed)");
    for m in &from_a {
        submit(&b, m, "A's round-0 attestation of R1 (relayed)");
    }
    // The scenario needs B back within round 0 (else it prepares in round 1 first and may no
    // longer commit round 0's quorum): a precondition of this script, not a performance claim.
    assert!(
        now_ms() < start + grace,
        "B came back after round 0 ended ({} ms late); raise GRACE_SECS on this machine",
        now_ms() - (start + grace)
    );
    let b_final = wait_for(30, "B to be FINAL with R1", || {
        let t = tally(&b, &p);
        final_of(&t).map(|f| (f, t))
    });
    let first = b_final.0.clone();
    eprintln!("B final before the attack:\n{:#}", b_final.1);
    // B commits R1 in round 0: it prepares R1 when it comes back and commits once the relayed
    // prepares complete the quorum, or — holding the quorum before its prepare is due — commits
    // at once (§6.2 rule 1; rule 2 then has nothing left to do in round 0).
    assert!(
        signed(&b, &b_did, "commit", 0, &root1),
        "B committed R1 in round 0: {:?}",
        own_attestations(&b, &b_did)
    );
    assert_eq!(first, ("approved".to_owned(), root1.clone(), 0), "{}", b_final.1);
    assert_eq!(b_final.1["tally"]["counted"], 2, "B has not seen the NO: {}", b_final.1);
    let executed = wait_for(30, "B to execute", || {
        let t = tally(&b, &p);
        (t["status"] == "executed").then_some(t)
    });
    assert_eq!(executed["execution"]["result"], "ok", "{executed}");
    assert_eq!(executed["execution"]["epoch"], 1, "{executed}");
    assert_eq!(b.status()["config"][KEY], VALUE);

    // Step 5: C's attestations for R2, prepare and commit of rounds 0 and 1, each signed at the
    // earliest time its round allows, through both nodes; then the partition heals.
    wait_for(60, "round 1 (so that its earliest time is not in the future)", || {
        (now_ms() >= start + grace).then_some(())
    });
    let mut for_r2 = Vec::new();
    for round in [0u32, 1] {
        let at = start + u64::from(round) * grace;
        for phase in [AttestationPhase::Prepare, AttestationPhase::Commit] {
            for_r2.push(c.attest(&r2, phase, round, at));
        }
    }
    for n in [&b, &a] {
        for m in &for_r2 {
            submit(n, m, "C's backdated attestation of R2");
        }
    }
    let healed_at = now_ms();
    a.json(&["unblock", &pb]);
    b.json(&["unblock", &pa]);
    a.json(&["connect", &b.bootstrap_addr()]);

    // Both nodes: FINAL with R1 in round 0, never anything else once final, the execution kept;
    // polled until three more rounds have passed and the nodes agree.
    let mut seen: [Option<(String, String, u64)>; 2] = [Some(first), None];
    let mut last = [Value::Null, Value::Null];
    let until = healed_at + 3 * grace;
    wait_for(3 * GRACE_SECS + 60, "three rounds of polls and one state on both nodes", || {
        for (i, n) in [&b, &a].into_iter().enumerate() {
            let t = tally(n, &p);
            if t.is_null() {
                continue;
            }
            if let Some(f) = final_of(&t) {
                match &seen[i] {
                    Some(prev) => assert_eq!(&f, prev, "a final result changed: {t:#}"),
                    None => seen[i] = Some(f),
                }
            } else {
                assert!(seen[i].is_none(), "a final result disappeared: {t:#}");
            }
            if i == 0 {
                // B executed before the attack: never undone.
                assert_eq!(t["status"], "executed", "B's execution was undone: {t:#}");
                assert_eq!(t["execution"]["epoch"], 1, "{t:#}");
                assert_eq!(n.status()["config"][KEY], VALUE, "B's configuration changed back");
                let reg = n.json(&["federation", "show"])["registry_epoch"].clone();
                assert_eq!(reg, 1, "B's registry went back");
            }
            last[i] = t;
        }
        let done = now_ms() >= until
            && last.iter().all(|t| t["tally"]["counted"] == 3 && t["status"] == "executed")
            && seen[1].is_some()
            && a.status()["state_hash"] == b.status()["state_hash"];
        done.then_some(())
    });

    // Where it ended: both final with R1 (round 0), both executed, C named as the equivocator.
    for (t, name) in last.iter().zip(["B", "A"]) {
        eprintln!("{name} at the end:\n{t:#}");
        assert_eq!(final_of(t), Some(("approved".to_owned(), root1.clone(), 0)), "{name}: {t}");
        assert_eq!(t["tally"]["outcome"], "rejected", "{name}'s running tally has the NO: {t}");
        assert_eq!(t["tally"]["votes_root"], root2.as_str(), "{name}: {t}");
        assert_eq!(t["execution"]["epoch"], 1, "{name}: {t}");
        let eq = &t["certificate"]["equivocators"];
        assert_eq!(eq, &serde_json::json!([c_did]), "{name}: only C equivocated: {t}");
    }
    // No honest member ever signed R2, in any phase or round (their journals hold every
    // message they signed): A, locked on R1, prepared R1 again in the rounds before the heal.
    for (n, did, name) in [(&a, &a_did, "A"), (&b, &b_did, "B")] {
        let own = own_attestations(n, did);
        eprintln!("{name} signed (phase, round, votes root): {own:?}");
        assert!(own.iter().all(|(_, _, root)| *root == root1), "{name} signed R2: {own:?}");
    }
    for n in [&a, &b] {
        assert_eq!(n.json(&["federation", "show"])["registry_epoch"], 1);
        assert_eq!(n.status()["config"][KEY], VALUE);
    }
    eprintln!("finality_attack: {} s", (now_ms() - t0) / 1000);
}
