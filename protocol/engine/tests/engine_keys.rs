//! Key lifecycle: KEY_ROTATION and REVOCATION (`docs/governance.md` §9). A member's weight,
//! ballots and delegations follow it to its new key; a retired key's later messages are
//! refused; every delivery order gives one state.

mod fed;

use fed::*;
use kos_engine::{Engine, Origin, Refusal, Retirement};
use kos_protocol::{Message, Payload, SecretKey, payload::*, rotation_statement};

use TrustLevel::*;

/// A new key for member `i`, generation `g`.
fn new_key(i: usize, g: usize) -> SecretKey {
    key(1000 + 10 * i + g)
}

/// A KEY_ROTATION from `old` to `new`, signed at `at`.
fn rotation(old: &SecretKey, new: &SecretKey, at: u64, seq: u64) -> Message {
    let proof = new.sign(&rotation_statement(&old.public(), &new.public()));
    let body = KeyRotation { proof, new_key: new.public() };
    Message::sign(old, seq, at, None, Payload::KeyRotation(body)).expect("sign")
}

fn revocation(by: &SecretKey, key: &SecretKey, at: u64, seq: u64) -> Message {
    let body = Revocation { key: key.public(), reason: "lost laptop".into() };
    Message::sign(by, seq, at, None, Payload::Revocation(body)).expect("sign")
}

fn vote_by(f: &Fed, k: &SecretKey, p: &Message, choice: Choice, at: u64, seq: u64) -> Message {
    let body = Vote { choice, reason: None, proposal: p.id(), revision: 0, federation: f.id() };
    Message::sign(k, seq, at, None, Payload::Vote(body)).expect("sign")
}

fn setup() -> (Fed, Message) {
    let mut f = Fed::new(&[Core, Trusted, Standard, Standard]);
    let p = f.propose(0, config(DecisionRule::SimpleMajority, Weighting::Trust), &[]);
    f.apply(&p).expect("proposal");
    (f, p)
}

/// The engine rebuilt from `msgs` (what a restart, or the shell after `Effect::Rebuild`, does).
fn rebuilt(f: &Fed, msgs: &[Message]) -> Engine {
    let mut e = Engine::new(f.id());
    let mut all = vec![f.charter.clone()];
    all.extend_from_slice(msgs);
    e.replay(all, REVEAL_END);
    e
}

#[test]
fn a_rotated_members_vote_counts_with_the_same_weight_and_the_old_key_is_refused() {
    let (mut f, p) = setup();
    let old = f.keys[1].clone();
    let new = new_key(1, 1);
    let rot_at = VOTE_START + 2 * S;
    f.apply(&rotation(&old, &new, rot_at, 500)).expect("rotation");

    // The old key, after its rotation: refused, and nothing changes.
    let late_old = vote_by(&f, &old, &p, Choice::Yes, rot_at + S, 501);
    let before = f.engine.state_hash(REVEAL_END);
    assert_eq!(
        f.apply(&late_old),
        Err(Refusal::RetiredKey { created_ms: rot_at + S, since_ms: rot_at })
    );
    assert_eq!(f.engine.state_hash(REVEAL_END), before);
    // The new key, before the rotation's signed time: refused.
    let early_new = vote_by(&f, &new, &p, Choice::Yes, rot_at - 1, 1);
    assert_eq!(
        f.apply(&early_new),
        Err(Refusal::KeyNotYetValid { created_ms: rot_at - 1, from_ms: rot_at })
    );
    // The new key counts as the member, with the member's weight (trusted: 750).
    let v = vote_by(&f, &new, &p, Choice::Yes, rot_at + S, 1);
    f.apply(&v).expect("vote under the new key");
    let t = f.engine.tally(&p.id(), VOTE_END).expect("tally");
    assert_eq!(t.counted, vec![v.id()]);
    assert_eq!(t.count.participation, TrustLevel::Trusted.milli_weight());
    assert_eq!(f.engine.identity(&new.public()), old.public());
    assert_eq!(f.engine.keys().current(&old.public()), (new.public(), false));
}

#[test]
fn a_ballot_under_the_new_key_replaces_the_old_keys_whatever_the_sequence_numbers() {
    let (mut f, p) = setup();
    let old = f.keys[1].clone();
    let new = new_key(1, 1);
    let first = vote_by(&f, &old, &p, Choice::No, VOTE_START + S, 9_000);
    let rot = rotation(&old, &new, VOTE_START + 2 * S, 9_001);
    // The new key starts its sequence numbers again: it still comes after the old key.
    let second = vote_by(&f, &new, &p, Choice::Yes, VOTE_START + 3 * S, 1);
    f.apply_all(&[first, rot, second.clone()]);
    let t = f.engine.tally(&p.id(), VOTE_END).expect("tally");
    assert_eq!(t.counted, vec![second.id()]);
    assert_eq!(t.count.outcome, Outcome::Approved);
}

#[test]
fn a_revoked_key_cannot_vote_attest_or_rotate() {
    let (mut f, p) = setup();
    let k = f.keys[2].clone();
    let at = VOTE_START + 2 * S;
    f.apply(&revocation(&k, &k, at, 700)).expect("revocation");
    let v = vote_by(&f, &k, &p, Choice::Yes, at + S, 701);
    assert_eq!(f.apply(&v), Err(Refusal::RetiredKey { created_ms: at + S, since_ms: at }));
    assert_eq!(
        f.apply(&rotation(&k, &new_key(2, 1), at + S, 702)),
        Err(Refusal::RetiredKey { created_ms: at + S, since_ms: at })
    );
    assert!(f.engine.attestations_due(&k.public(), VOTE_END + 10 * S).is_empty());
    let rec = f.engine.keys().get(&k.public()).expect("record");
    assert_eq!(rec.end.map(|e| e.how), Some(Retirement::Revoked));
    // A vote signed before the revocation still counts, whenever it arrives.
    let before = vote_by(&f, &k, &p, Choice::Yes, at - 1, 699);
    f.apply(&before).expect("vote signed before the revocation");
}

#[test]
fn malformed_rotations_and_revocations_are_refused_and_change_nothing() {
    let (mut f, _p) = setup();
    let old = f.keys[1].clone();
    let at = VOTE_START;
    let before = f.engine.state_hash(REVEAL_END);
    // Proof by another key than the one named.
    let mut bad = KeyRotation {
        proof: new_key(1, 2).sign(&rotation_statement(&old.public(), &new_key(1, 1).public())),
        new_key: new_key(1, 1).public(),
    };
    let m = Message::sign(&old, 800, at, None, Payload::KeyRotation(bad.clone())).expect("sign");
    assert_eq!(f.apply(&m), Err(Refusal::BadRotationProof));
    // To another member's key.
    bad.new_key = f.keys[3].public();
    bad.proof = f.keys[3].sign(&rotation_statement(&old.public(), &bad.new_key));
    let m = Message::sign(&old, 801, at, None, Payload::KeyRotation(bad)).expect("sign");
    assert_eq!(f.apply(&m), Err(Refusal::KeyInUse));
    // Revoking someone else's key.
    assert_eq!(f.apply(&revocation(&old, &f.keys[3], at, 802)), Err(Refusal::NotKeyHolder));
    // A non-member's rotation.
    assert_eq!(f.apply(&rotation(&key(77), &key(78), at, 1)), Err(Refusal::UnknownAuthor));
    assert_eq!(f.engine.state_hash(REVEAL_END), before);
}

#[test]
fn a_secret_ballot_committed_under_the_old_key_is_revealed_under_the_new_one() {
    let mut f = Fed::new(&[Core, Trusted, Standard, Standard]);
    let mut cfg = config(DecisionRule::SimpleMajority, Weighting::Trust);
    cfg.secret = true;
    let p = f.propose(0, cfg, &[]);
    f.apply(&p).expect("proposal");
    let salt = [7u8; 32];
    let commit = f.commit(1, &p, &Choice::Yes, salt);
    let old = f.keys[1].clone();
    let new = new_key(1, 1);
    let rot = rotation(&old, &new, VOTE_START + 5 * S, 900);
    let body = VoteReveal {
        salt,
        choice: Choice::Yes,
        reason: None,
        proposal: p.id(),
        revision: 0,
        federation: f.id(),
    };
    let reveal =
        Message::sign(&new, 1, VOTE_END + S, None, Payload::VoteReveal(body)).expect("sign");
    f.apply_all(&[commit.clone(), rot, reveal]);
    let t = f.engine.tally(&p.id(), REVEAL_END).expect("tally");
    assert_eq!(t.counted, vec![commit.id()]);
    assert_eq!(t.count.outcome, Outcome::Approved);
}

#[test]
fn delegations_follow_the_delegate_to_its_new_key() {
    let (mut f, p) = setup();
    // Members 2 and 3 (standard) delegate to member 1, named by its old key.
    let d2 = f.delegate(2, Some(1), DelegationScope::All);
    let d3 = f.delegate(3, Some(1), DelegationScope::All);
    let new = new_key(1, 1);
    let rot = rotation(&f.keys[1], &new, VOTE_START + S, 950);
    let v = vote_by(&f, &new, &p, Choice::Yes, VOTE_START + 2 * S, 1);
    f.apply_all(&[d2, d3, rot, v]);
    let t = f.engine.tally(&p.id(), VOTE_END).expect("tally");
    let std = TrustLevel::Standard.milli_weight();
    assert_eq!(t.count.participation, TrustLevel::Trusted.milli_weight() + 2 * std);
}

/// The race: one vote by the old key signed just before the rotation, one (by a thief) just
/// after it. Whatever the delivery order, every node ends with the earlier vote counted and
/// the later one refused; where the rotation arrives after the late vote, the engine asks for a
/// rebuild, and the rebuilt state is the one every other order gives.
#[test]
fn the_rotation_race_resolves_by_signed_time_in_every_delivery_order() {
    let (f, p) = setup();
    let old = f.keys[1].clone();
    let new = new_key(1, 1);
    let rot_at = VOTE_START + 5 * S;
    let msgs = vec![
        vote_by(&f, &old, &p, Choice::Yes, rot_at - 1, 10),
        rotation(&old, &new, rot_at, 11),
        vote_by(&f, &old, &p, Choice::No, rot_at, 12),
        vote_by(&f, &f.keys[2], &p, Choice::Yes, VOTE_START + S, 13),
        vote_by(&f, &f.keys[3], &p, Choice::No, VOTE_START + S, 14),
    ];
    let expected = rebuilt(&f, &[&[p.clone()][..], &msgs].concat());
    let want_counted = {
        let mut c = vec![msgs[0].id(), msgs[3].id(), msgs[4].id()];
        c.sort();
        c
    };
    assert_eq!(expected.tally(&p.id(), VOTE_END).expect("tally").counted, want_counted);
    let want = expected.state_hash(REVEAL_END);
    let mut orders = 0;
    let mut rebuilds = 0;
    permutations(msgs.len(), &mut |order| {
        let mut e = Engine::new(f.id());
        e.apply(&f.charter, Origin::Sync, T0).expect("charter");
        e.apply(&p, Origin::Sync, T0 + S).expect("proposal");
        let mut applied = vec![p.clone()];
        for &i in order {
            if e.apply(&msgs[i], Origin::Sync, REVEAL_END).is_ok() {
                applied.push(msgs[i].clone());
            }
        }
        if e.needs_rebuild() {
            rebuilds += 1;
            e = rebuilt(&f, &applied);
        }
        assert_eq!(e.state_hash(REVEAL_END), want, "delivery order {order:?}");
        orders += 1;
    });
    assert_eq!(orders, 120);
    assert!(rebuilds > 0, "some orders deliver the late vote before the rotation");
}

/// Two rotations of one key: the earlier (signed time, then id) stands, whichever arrives
/// first; messages under the losing new key do not count.
#[test]
fn competing_rotations_resolve_to_the_earliest() {
    let (f, p) = setup();
    let old = f.keys[1].clone();
    let (a, b) = (new_key(1, 1), new_key(1, 2));
    let msgs = vec![
        rotation(&old, &a, VOTE_START + 3 * S, 20),
        rotation(&old, &b, VOTE_START + 2 * S, 21),
        vote_by(&f, &a, &p, Choice::No, VOTE_START + 4 * S, 1),
        vote_by(&f, &b, &p, Choice::Yes, VOTE_START + 4 * S, 1),
    ];
    let expected = rebuilt(&f, &[&[p.clone()][..], &msgs].concat());
    let t = expected.tally(&p.id(), VOTE_END).expect("tally");
    assert_eq!(t.counted, vec![msgs[3].id()]);
    assert_eq!(expected.keys().current(&old.public()), (b.public(), false));
    let want = expected.state_hash(REVEAL_END);
    permutations(msgs.len(), &mut |order| {
        let mut e = Engine::new(f.id());
        e.apply(&f.charter, Origin::Sync, T0).expect("charter");
        e.apply(&p, Origin::Sync, T0 + S).expect("proposal");
        let mut applied = vec![p.clone()];
        for &i in order {
            if e.apply(&msgs[i], Origin::Sync, REVEAL_END).is_ok() {
                applied.push(msgs[i].clone());
            }
        }
        // Messages refused for a key not known yet are offered again by sync.
        for m in &msgs {
            if e.apply(m, Origin::Sync, REVEAL_END).is_ok() {
                applied.push(m.clone());
            }
        }
        if e.needs_rebuild() {
            e = rebuilt(&f, &applied);
        }
        assert_eq!(e.state_hash(REVEAL_END), want, "delivery order {order:?}");
    });
}

/// Calls `f` with every permutation of `0..n` (Heap's algorithm).
fn permutations(n: usize, f: &mut dyn FnMut(&[usize])) {
    fn go(k: usize, a: &mut Vec<usize>, f: &mut dyn FnMut(&[usize])) {
        if k <= 1 {
            f(a);
            return;
        }
        for i in 0..k {
            go(k - 1, a, f);
            let j = if k.is_multiple_of(2) { i } else { 0 };
            a.swap(j, k - 1);
        }
    }
    let mut a: Vec<usize> = (0..n).collect();
    go(n, &mut a, f);
}
