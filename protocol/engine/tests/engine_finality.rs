//! Finality by tally attestations, and execution of final approved proposals.

mod fed;

use fed::*;
use kos_engine::{Dependency, Inverse, Origin, Refusal, Registry, Status};
use kos_protocol::payload::*;

use TrustLevel::*;

/// Grace is 5 s: attestations are due from VOTE_END + 5 s.
const ATTEST: u64 = VOTE_END + 5 * S;

fn config_action(new: &str, old: Option<&str>) -> Action {
    Action::Configuration { key: "relay.quota".into(), new: new.into(), old: old.map(Into::into) }
}

#[test]
fn approved_proposal_becomes_final_and_executes() {
    // Weights: 5, 3, 1 (eligible 9). A and B vote yes.
    let mut f = Fed::new(&[Core, Trusted, Standard]);
    let p = f.propose_action(
        0,
        ProposalType::Configuration,
        config_action("120", None),
        f.registry0(),
        0,
    );
    f.apply(&p).expect("proposal");
    f.apply_all(&[f.vote(0, &p, Choice::Yes), f.vote(1, &p, Choice::Yes)]);
    assert_eq!(f.engine.status(&p.id(), ATTEST), Some(Status::Closed));
    assert!(f.engine.attestations_due(&key(0).public(), VOTE_END).is_empty(), "not before grace");

    let atts = f.attest_rounds(ATTEST);
    assert_eq!(atts.len(), 6, "every member prepares once, then commits once");
    // Prepares make nothing final. A's commit alone (5 of 9 = 55 %) is not final; A + B (8 of 9,
    // more than 2/3) is.
    f.apply_all(&atts[..3]);
    assert_eq!(f.engine.finality(&p.id()), None);
    assert_eq!(f.engine.prepare_quorum(&p.id()).map(|(r, _)| r), Some(0));
    f.apply(&atts[3]).expect("attestation");
    assert_eq!(f.engine.finality(&p.id()), None);
    assert_eq!(f.engine.status(&p.id(), ATTEST), Some(Status::Closed));
    f.apply(&atts[4]).expect("attestation");
    let fin = f.engine.finality(&p.id()).expect("final");
    assert_eq!(fin.key.outcome, Outcome::Approved);
    assert_eq!(fin.weight, 8000);
    assert_eq!(fin.final_at_ms, ATTEST);
    // Executed at once (no execution delay): the configuration changed, in a new epoch.
    assert_eq!(f.engine.status(&p.id(), ATTEST), Some(Status::Executed));
    let reg = f.engine.registry(ATTEST).expect("registry");
    assert_eq!(reg.epoch, 1);
    assert_eq!(reg.config.get("relay.quota").map(String::as_str), Some("120"));
    let ex = f.engine.executions(ATTEST);
    assert_eq!(ex.len(), 1);
    assert_eq!(ex[0].inverse, Some(Inverse::Config { key: "relay.quota".into(), value: None }));
    // Once final, nothing is due any more.
    assert!(f.engine.attestations_due(&key(2).public(), ATTEST).is_empty());

    // A vote signed inside the window that arrives late is kept and changes the local tally,
    // but never the final result.
    let late = f.vote(2, &p, Choice::No);
    f.apply(&late).expect("late vote is valid");
    let t = f.engine.tally(&p.id(), ATTEST).expect("tally");
    assert_ne!(t.votes_root, fin.key.votes_root);
    assert_eq!(f.engine.finality(&p.id()), Some(fin));
    assert_eq!(f.engine.status(&p.id(), ATTEST), Some(Status::Executed));
}

#[test]
fn attestations_before_the_grace_period_are_refused() {
    let mut f = Fed::new(&[Core, Trusted]);
    let p = f.propose(0, config(DecisionRule::SimpleMajority, Weighting::Trust), &[]);
    f.apply(&p).expect("proposal");
    let mut due = f.engine.attestations_due(&key(0).public(), ATTEST);
    let early = f.sign(0, VOTE_END, kos_protocol::Payload::TallyAttestation(due.remove(0)));
    assert_eq!(
        f.apply(&early),
        Err(Refusal::OutsideWindow { created_ms: VOTE_END, start_ms: ATTEST, end_ms: u64::MAX })
    );
}

#[test]
fn membership_creates_a_registry_epoch_that_later_proposals_name() {
    // Admit a new member (key 9) by a membership proposal.
    let mut f = Fed::new(&[Core, Trusted]);
    let newcomer =
        Member { key: key(9).public(), roles: vec![Role::Citizen], stake: 1, trust: Trusted };
    let p = f.propose_action(
        0,
        ProposalType::Membership,
        Action::AddMember(newcomer.clone()),
        f.registry0(),
        0,
    );
    f.apply(&p).expect("proposal");
    f.apply_all(&[f.vote(0, &p, Choice::Yes)]);
    let atts = f.attest_rounds(ATTEST);

    // The registry after execution, computed independently.
    let mut expected = f.engine.registry(T0).expect("epoch 0");
    expected.epoch = 1;
    std::sync::Arc::make_mut(&mut expected.members).insert(newcomer.key, newcomer);
    let epoch1 = RegistryVersion { hash: expected.hash(), epoch: 1 };

    // A proposal naming epoch 1 arrives before the attestations: held.
    let later = f.propose_action(0, ProposalType::ResourceAllocation, Action::None, epoch1, 60 * S);
    assert_eq!(f.apply(&later), Err(Refusal::Pending(Dependency::Registry(epoch1.hash))));
    // The attestations make the membership final and executed; the held proposal is released.
    let mut applied = vec![];
    for a in &atts {
        applied.extend(f.engine.apply(a, Origin::Sync, ATTEST).expect("attestation"));
    }
    assert!(applied.contains(&later.id()), "{applied:?}");
    assert_eq!(f.engine.registry(ATTEST).expect("registry"), expected);
    // The newcomer can vote on it.
    let v = f.engine.apply(
        &kos_protocol::Message::sign(
            &key(9),
            1,
            VOTE_START + 61 * S,
            None,
            kos_protocol::Payload::Vote(Vote {
                choice: Choice::Yes,
                reason: None,
                proposal: later.id(),
                revision: 0,
                federation: f.id(),
            }),
        )
        .expect("sign"),
        Origin::Sync,
        VOTE_START + 61 * S,
    );
    assert!(v.is_ok(), "{v:?}");
}

#[test]
fn failed_execution_is_recorded_and_changes_nothing() {
    let mut f = Fed::new(&[Core]);
    // Expects the old value "60", but the key is unset.
    let p = f.propose_action(
        0,
        ProposalType::Configuration,
        config_action("120", Some("60")),
        f.registry0(),
        0,
    );
    f.apply(&p).expect("proposal");
    f.apply_all(&[f.vote(0, &p, Choice::Yes)]);
    let atts = f.attest_rounds(ATTEST);
    f.apply_all(&atts);
    assert_eq!(f.engine.status(&p.id(), ATTEST), Some(Status::ExecutionFailed));
    let ex = f.engine.executions(ATTEST);
    assert_eq!(ex[0].result, Err("configuration value is not the expected old value".to_owned()));
    assert_eq!(f.engine.registry(ATTEST).expect("registry").epoch, 0);
}

#[test]
fn executions_run_in_voting_end_order_and_roll_back() {
    let mut f = Fed::new(&[Core]);
    let r0 = f.registry0();
    // Two configuration proposals on one key: the later voting end executes second.
    let a = f.propose_action(0, ProposalType::Configuration, config_action("100", None), r0, 0);
    let b =
        f.propose_action(0, ProposalType::Configuration, config_action("200", Some("100")), r0, S);
    f.apply_all(&[b.clone(), a.clone()]);
    f.apply_all(&[
        f.vote_at(0, &a, Choice::Yes, VOTE_START + S),
        f.vote_at(0, &b, Choice::Yes, VOTE_START + 2 * S),
    ]);
    let now = ATTEST + 2 * S;
    let atts = f.attest_rounds(now);
    assert_eq!(atts.len(), 4, "a prepare and a commit for each proposal");
    f.apply_all(&atts);
    let reg = f.engine.registry(now).expect("registry");
    assert_eq!(reg.config.get("relay.quota").map(String::as_str), Some("200"));
    let ex = f.engine.executions(now);
    assert_eq!(ex.iter().map(|e| e.proposal).collect::<Vec<_>>(), vec![a.id(), b.id()]);
    assert_eq!(reg.epoch, 2);

    // Roll back b: the value returns to "100".
    let r2 = RegistryVersion { hash: reg.hash(), epoch: 2 };
    let c = f.propose_action(0, ProposalType::Configuration, Action::Rollback(b.id()), r2, 60 * S);
    f.engine.apply(&c, Origin::Sync, now).expect("rollback proposal");
    let vote = f.vote_at(0, &c, Choice::Yes, VOTE_START + 61 * S);
    f.engine.apply(&vote, Origin::Sync, now).expect("vote");
    let later = ATTEST + 61 * S;
    let atts = f.attest_rounds(later);
    f.apply_all(&atts);
    let reg = f.engine.registry(later).expect("registry");
    assert_eq!(reg.config.get("relay.quota").map(String::as_str), Some("100"));
    assert_eq!(f.engine.status(&c.id(), later), Some(Status::Executed));
}

#[test]
fn quarantine_and_trust_adjustment_change_member_records() {
    let mut f = Fed::with(&[Core, Trusted, Standard], 8, |c| {
        c.bodies = vec![Body { kind: BodyKind::SecurityBoard, members: vec![key(0).public()] }];
    });
    let r0 = f.registry0();
    let q = f.propose_action(
        0,
        ProposalType::EmergencyAction,
        Action::Quarantine(key(2).public()),
        r0,
        0,
    );
    let t = f.propose_action(
        0,
        ProposalType::TrustAdjustment,
        Action::TrustAdjustment { level: Core, member: key(1).public() },
        r0,
        S,
    );
    f.apply_all(&[q.clone(), t.clone()]);
    f.apply_all(&[
        f.vote_at(0, &q, Choice::Yes, VOTE_START + S),
        f.vote_at(0, &t, Choice::Yes, VOTE_START + 2 * S),
        f.vote_at(1, &t, Choice::Yes, VOTE_START + 2 * S),
    ]);
    let now = ATTEST + 2 * S;
    let atts = f.attest_rounds(now);
    f.apply_all(&atts);
    let reg: Registry = f.engine.registry(now).expect("registry");
    assert_eq!(reg.member(&key(2).public()).map(|m| m.trust), Some(Quarantine));
    assert_eq!(reg.member(&key(1).public()).map(|m| m.trust), Some(Core));
    assert_eq!(reg.epoch, 2);
}

#[test]
fn handle_reports_verdicts_and_effects_for_the_shell() {
    use kos_engine::{Effect, Verdict};
    let mut f = Fed::new(&[Core, Trusted]);
    let p = f.propose(0, config(DecisionRule::SimpleMajority, Weighting::Trust), &[]);
    let v = f.vote(1, &p, Choice::Yes);
    let me = key(0).public();
    // A vote before its proposal: held, not penalised.
    let step = f.engine.handle(&v, Origin::Gossip, VOTE_START + S, Some(&me));
    assert_eq!(step.verdict, Verdict::Ignore);
    assert!(matches!(step.effects[0], Effect::Hold(id, _) if id == v.id()));
    // The proposal: accepted, and it releases the vote; both to persist. Next wake-up: voting end.
    let step = f.engine.handle(&p, Origin::Gossip, VOTE_START + S, Some(&me));
    assert_eq!(step.verdict, Verdict::Accept);
    assert_eq!(
        step.effects[..2],
        [Effect::Persist(Box::new(p.clone())), Effect::Persist(Box::new(v.clone()))]
    );
    assert_eq!(step.effects.last(), Some(&Effect::WakeAt(VOTE_END)));
    // A forged-window vote is rejected and the sender penalised.
    let bad = f.vote_at(0, &p, Choice::No, VOTE_END + S);
    let step = f.engine.handle(&bad, Origin::Sync, VOTE_END + S, Some(&me));
    assert_eq!(step.verdict, Verdict::Reject);
    assert!(matches!(step.effects[0], Effect::Penalise(Refusal::OutsideWindow { .. })));
    // After the grace period, the node is asked to attest.
    let dup = f.engine.handle(&v, Origin::Sync, ATTEST, Some(&me));
    assert_eq!(dup.refusal, Some(Refusal::Duplicate));
    assert!(dup.effects.iter().any(|e| matches!(e, Effect::Attest(a) if a.proposal == p.id())));
}

#[test]
fn four_messages_in_any_order_give_one_state() {
    // Three equal members commit the approved configuration change (final, it executes and
    // creates registry version 1); a later proposal pins that version; then one of them commits
    // a different root in the same round (it equivocates). Whatever the order of these five
    // messages, every node ends in one state: the result stays final, the version stays, and the
    // later proposal is accepted.
    let mut f = Fed::new(&[Core, Core, Core]);
    let p = f.propose_action(
        0,
        ProposalType::Configuration,
        Action::Configuration { key: "relay.quota".into(), new: "7".into(), old: None },
        f.registry0(),
        0,
    );
    f.apply(&p).expect("proposal");
    f.apply_all(&[f.vote(0, &p, Choice::Yes), f.vote(1, &p, Choice::Yes)]);
    let due = f.engine.attestations_due(&key(0).public(), ATTEST);
    let mut a = due.into_iter().find(|a| a.proposal == p.id()).expect("due");
    a.phase = AttestationPhase::Commit;
    let att0 = f.sign(0, ATTEST, kos_protocol::Payload::TallyAttestation(a.clone()));
    let att1 = f.sign(1, ATTEST, kos_protocol::Payload::TallyAttestation(a.clone()));
    let att2 = f.sign(2, ATTEST, kos_protocol::Payload::TallyAttestation(a.clone()));
    let mut moved = a.clone();
    moved.votes_root = Digest([1; 32]);
    let att1_again = f.sign(1, ATTEST + S, kos_protocol::Payload::TallyAttestation(moved));
    let mut base = f.engine.clone();
    for m in [&att0, &att1, &att2] {
        base.apply(m, Origin::Sync, ATTEST + 2 * S).expect("attestation");
    }
    let v1 = base.registry(ATTEST + 60 * S).expect("registry");
    assert_eq!(v1.epoch, 1, "the change executed");
    let later = f.propose_action(
        0,
        ProposalType::ResourceAllocation,
        Action::None,
        RegistryVersion { hash: v1.hash(), epoch: 1 },
        60 * S,
    );
    let msgs = [att0, att1, att2, att1_again, later.clone()];
    let now = ATTEST + 200 * S;
    let mut states = std::collections::BTreeSet::new();
    // All 120 orders.
    let mut orders: Vec<Vec<usize>> = vec![vec![]];
    for _ in 0..5 {
        let mut next = vec![];
        for o in &orders {
            for i in (0..5).filter(|i| !o.contains(i)) {
                let mut o = o.clone();
                o.push(i);
                next.push(o);
            }
        }
        orders = next;
    }
    for order in &orders {
        let mut e = f.engine.clone();
        for &i in order {
            let _ = e.apply(&msgs[i], Origin::Sync, now);
        }
        assert!(e.finality(&p.id()).is_some(), "order {order:?}: finality lost");
        assert!(e.proposal(&later.id()).is_some(), "order {order:?}: later proposal missing");
        states.insert(e.state_hash(now));
    }
    assert_eq!(states.len(), 1, "{} different states over 120 orders", states.len());
}
