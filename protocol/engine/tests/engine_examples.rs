//! Worked examples with hand-computed results. Weights are in thousandths: CORE 5000,
//! TRUSTED 3000, STANDARD 1000, SANDBOX 500, QUARANTINE 0.

mod fed;

use fed::*;
use kos_engine::{Refusal, Status, Verdict};
use kos_protocol::payload::{
    Choice, DecisionRule, DelegationScope, Outcome, Ratio, TrustLevel, Weighting,
};

use TrustLevel::*;

/// The seed's (Forge) electorate: A core 5, B trusted 3, C standard 1, D sandbox 0.5,
/// E quarantine 0. Eligible weight 9.5. Quorum 30 % (2.85), approval > 50 %.
fn forge() -> Fed {
    Fed::new(&[Core, Trusted, Standard, Sandbox, Quarantine])
}

fn simple() -> kos_protocol::payload::VotingConfig {
    config(DecisionRule::SimpleMajority, Weighting::Trust)
}

#[test]
fn forge_trust_weighted_example() {
    let mut f = forge();
    let p = f.propose(0, simple(), &[]);
    // A yes (5), B no (3), C abstain (1), D yes (0.5).
    let votes = [
        f.vote(0, &p, Choice::Yes),
        f.vote(1, &p, Choice::No),
        f.vote(2, &p, Choice::Abstain),
        f.vote(3, &p, Choice::Yes),
    ];
    f.apply(&p).expect("proposal");
    f.apply_all(&votes);
    let t = f.engine.tally(&p.id(), VOTE_END).expect("tally");
    // yes 5.5, no 3, abstain 1, veto 0.
    assert_eq!(t.count.totals, vec![5500, 3000, 1000, 0]);
    // Participation 9.5 / 9.5 = 100 % >= 30 %; approval 5.5 / 8.5 = 64.7 % > 50 %.
    assert_eq!(t.count.participation, 9500);
    assert_eq!(t.count.eligible, 9500);
    assert_eq!(t.count.outcome, Outcome::Approved);
    assert_eq!(t.counted.len(), 4);
    assert_eq!(f.engine.status(&p.id(), VOTE_END), Some(Status::Closed));
}

#[test]
fn abstain_counts_toward_quorum_only() {
    // B yes (3) alone: participation 3 / 9.5 = 31.6 % >= 30 %, approval 3/3: approved.
    let mut f = forge();
    let p = f.propose(0, simple(), &[]);
    f.apply(&p).expect("proposal");
    f.apply_all(&[f.vote(1, &p, Choice::Yes)]);
    assert_eq!(f.engine.tally(&p.id(), VOTE_END).expect("tally").count.outcome, Outcome::Approved);

    // C abstain (1) + D yes (0.5): participation 1.5 / 9.5 = 15.8 % < 30 %: failed quorum,
    // although approval would be 100 %.
    let mut f = forge();
    let p = f.propose(0, simple(), &[]);
    f.apply(&p).expect("proposal");
    f.apply_all(&[f.vote(2, &p, Choice::Abstain), f.vote(3, &p, Choice::Yes)]);
    let t = f.engine.tally(&p.id(), VOTE_END).expect("tally");
    assert_eq!(t.count.participation, 1500);
    assert_eq!(t.count.outcome, Outcome::FailedQuorum);

    // C abstain (1) + B no (3) + A yes (5): approval 5 / 8 = 62.5 %; abstain is not in the
    // denominator (with it, 5 / 9 = 55.6 %, also a pass, so check the totals directly).
    let mut f = forge();
    let p = f.propose(0, simple(), &[]);
    f.apply(&p).expect("proposal");
    f.apply_all(&[
        f.vote(2, &p, Choice::Abstain),
        f.vote(1, &p, Choice::No),
        f.vote(0, &p, Choice::Yes),
    ]);
    let t = f.engine.tally(&p.id(), VOTE_END).expect("tally");
    assert_eq!(t.count.totals, vec![5000, 3000, 1000, 0]);
    assert_eq!(t.count.outcome, Outcome::Approved);
}

#[test]
fn approval_is_strictly_above_half() {
    // One person one vote, four standard members: 2 yes, 2 no -> 50 % is not > 50 %: rejected.
    let mut f = Fed::new(&[Standard; 4]);
    let p = f.propose(0, config(DecisionRule::SimpleMajority, Weighting::OnePersonOneVote), &[]);
    f.apply(&p).expect("proposal");
    f.apply_all(&[
        f.vote(0, &p, Choice::Yes),
        f.vote(1, &p, Choice::Yes),
        f.vote(2, &p, Choice::No),
        f.vote(3, &p, Choice::No),
    ]);
    assert_eq!(f.engine.tally(&p.id(), VOTE_END).expect("tally").count.outcome, Outcome::Rejected);
}

#[test]
fn veto_case() {
    // A veto (5), B yes (3), C yes (1): participation 9; veto share 5 / 9 = 55.6 % > 33.4 %:
    // vetoed, although yes (4) < no + veto would also reject: the veto is reported.
    let mut f = forge();
    let p = f.propose(1, simple(), &[]);
    f.apply(&p).expect("proposal");
    f.apply_all(&[
        f.vote(0, &p, Choice::Veto),
        f.vote(1, &p, Choice::Yes),
        f.vote(2, &p, Choice::Yes),
    ]);
    assert_eq!(f.engine.tally(&p.id(), VOTE_END).expect("tally").count.outcome, Outcome::Vetoed);

    // D veto (0.5), A yes (5), B yes (3): veto share 0.5 / 8.5 = 5.9 % <= 33.4 %; approval
    // 8 / 8.5 = 94 %: approved.
    let mut f = forge();
    let p = f.propose(1, simple(), &[]);
    f.apply(&p).expect("proposal");
    f.apply_all(&[
        f.vote(3, &p, Choice::Veto),
        f.vote(0, &p, Choice::Yes),
        f.vote(1, &p, Choice::Yes),
    ]);
    let t = f.engine.tally(&p.id(), VOTE_END).expect("tally");
    assert_eq!(t.count.totals, vec![8000, 0, 0, 500]);
    assert_eq!(t.count.outcome, Outcome::Approved);
}

#[test]
fn supermajority_case() {
    let two_thirds = config(DecisionRule::Supermajority(Ratio(2, 3)), Weighting::Trust);
    // A yes (5), B no (3): 5 / 8 = 62.5 % < 66.7 %: rejected.
    let mut f = forge();
    let p = f.propose(0, two_thirds.clone(), &[]);
    f.apply(&p).expect("proposal");
    f.apply_all(&[f.vote(0, &p, Choice::Yes), f.vote(1, &p, Choice::No)]);
    assert_eq!(f.engine.tally(&p.id(), VOTE_END).expect("tally").count.outcome, Outcome::Rejected);
    // C joins yes (1): 6 / 9 = exactly 2/3 -> approved (the threshold is inclusive, and exact:
    // 6·3 = 18 >= 2·9 = 18).
    f.apply_all(&[f.vote(2, &p, Choice::Yes)]);
    let t = f.engine.tally(&p.id(), VOTE_END).expect("tally");
    assert_eq!((t.count.totals[0], t.count.totals[1]), (6000, 3000));
    assert_eq!(t.count.outcome, Outcome::Approved);
}

#[test]
fn consensus_case() {
    let consensus = config(DecisionRule::Consensus, Weighting::Trust);
    let mut f = forge();
    let p = f.propose(0, consensus, &[]);
    f.apply(&p).expect("proposal");
    f.apply_all(&[
        f.vote(0, &p, Choice::Yes),
        f.vote(1, &p, Choice::Yes),
        f.vote(2, &p, Choice::Abstain),
    ]);
    assert_eq!(f.engine.tally(&p.id(), VOTE_END).expect("tally").count.outcome, Outcome::Approved);
    // A single small "no" (D, 0.5) breaks consensus.
    f.apply_all(&[f.vote(3, &p, Choice::No)]);
    assert_eq!(f.engine.tally(&p.id(), VOTE_END).expect("tally").count.outcome, Outcome::Rejected);
}

#[test]
fn instant_runoff_known_example() {
    // Nine members, one vote each, options A (0), B (1), C (2):
    //   4 ballots A > B > C, 3 ballots B > C > A, 2 ballots C > B > A.
    // Round 1: A 4, B 3, C 2; nobody has more than 4.5. C is eliminated; its 2 ballots go to B.
    // Round 2: A 4, B 5 -> B wins (plurality would have chosen A).
    let mut f = Fed::new(&[Standard; 9]);
    let p = f.propose(
        0,
        config(DecisionRule::InstantRunoff, Weighting::OnePersonOneVote),
        &["A", "B", "C"],
    );
    f.apply(&p).expect("proposal");
    let mut votes = vec![];
    for i in 0..4 {
        votes.push(f.vote(i, &p, Choice::Rank(vec![0, 1, 2])));
    }
    for i in 4..7 {
        votes.push(f.vote(i, &p, Choice::Rank(vec![1, 2, 0])));
    }
    for i in 7..9 {
        votes.push(f.vote(i, &p, Choice::Rank(vec![2, 1, 0])));
    }
    f.apply_all(&votes);
    let t = f.engine.tally(&p.id(), VOTE_END).expect("tally");
    assert_eq!(t.count.rounds, vec![vec![4000, 3000, 2000], vec![4000, 5000, 0]]);
    assert_eq!(t.count.winner, Some(1));
    assert_eq!(t.count.outcome, Outcome::Approved);
}

#[test]
fn approval_voting_plurality() {
    // Trust weights: A (5) approves {0}, B (3) approves {1, 2}, C (1) approves {1}.
    // Option 0: 5, option 1: 4, option 2: 3 -> option 0 wins.
    let mut f = forge();
    let p = f.propose(0, config(DecisionRule::Plurality, Weighting::Trust), &["x", "y", "z"]);
    f.apply(&p).expect("proposal");
    f.apply_all(&[
        f.vote(0, &p, Choice::Approve(vec![0])),
        f.vote(1, &p, Choice::Approve(vec![1, 2])),
        f.vote(2, &p, Choice::Approve(vec![1])),
    ]);
    let t = f.engine.tally(&p.id(), VOTE_END).expect("tally");
    assert_eq!(t.count.totals, vec![5000, 4000, 3000]);
    assert_eq!(t.count.winner, Some(0));
    // A tie breaks toward the lowest index: D (0.5) and ... add 1 to option 1 via D? D adds 0.5
    // to option 1: 5 vs 4.5, still option 0.
}

#[test]
fn delegation_cycle_chain_and_override() {
    // Five standard members (one vote each). 0 -> 1 and 1 -> 0 form a cycle, neither votes:
    // both are ignored. 2 votes yes; 3 delegates to 4, 4 delegates to 2 (a chain of two):
    // 3 and 4 add to 2's yes. Then 4 votes no directly: that overrides 4's delegation, and 3's
    // chain now stops at 4.
    let mut f = Fed::new(&[Standard; 5]);
    let p = f.propose(0, config(DecisionRule::SimpleMajority, Weighting::OnePersonOneVote), &[]);
    f.apply(&p).expect("proposal");
    f.apply_all(&[
        f.delegate(0, Some(1), DelegationScope::All),
        f.delegate(1, Some(0), DelegationScope::All),
        f.delegate(3, Some(4), DelegationScope::All),
        f.delegate(4, Some(2), DelegationScope::All),
        f.vote(2, &p, Choice::Yes),
    ]);
    let t = f.engine.tally(&p.id(), VOTE_END).expect("tally");
    // yes = 2 + 3 + 4 = 3 votes; participation 3 / 5 = 60 %.
    assert_eq!(t.count.totals, vec![3000, 0, 0, 0]);
    assert_eq!(t.count.participation, 3000);
    assert_eq!(t.counted.len(), 1);

    f.apply_all(&[f.vote(4, &p, Choice::No)]);
    let t = f.engine.tally(&p.id(), VOTE_END).expect("tally");
    // yes = 2; no = 4 + 3 (via 4).
    assert_eq!(t.count.totals, vec![1000, 2000, 0, 0]);
    assert_eq!(t.count.outcome, Outcome::Rejected);
}

#[test]
fn delegation_depth_limit() {
    // Depth 1: 0 -> 1 -> 2 (votes yes). 1 reaches 2 in one hop; 0 would need two: ignored.
    let mut f = Fed::with(&[Standard; 3], 1, |_| {});
    let p = f.propose(0, config(DecisionRule::SimpleMajority, Weighting::OnePersonOneVote), &[]);
    f.apply(&p).expect("proposal");
    f.apply_all(&[
        f.delegate(0, Some(1), DelegationScope::All),
        f.delegate(1, Some(2), DelegationScope::All),
        f.vote(2, &p, Choice::Yes),
    ]);
    assert_eq!(f.engine.tally(&p.id(), VOTE_END).expect("tally").count.totals, vec![2000, 0, 0, 0]);
}

#[test]
fn quarantined_voter_is_refused_and_weighs_nothing() {
    let mut f = forge();
    let p = f.propose(0, simple(), &[]);
    f.apply(&p).expect("proposal");
    let before = f.engine.state_hash(VOTE_END);
    let e = f.vote(4, &p, Choice::No);
    assert_eq!(f.apply(&e), Err(Refusal::Quarantined));
    assert_eq!(Refusal::Quarantined.verdict(), Verdict::Reject);
    assert_eq!(f.engine.state_hash(VOTE_END), before);
    // E's weight is 0, so the eligible weight is 9.5.
    f.apply_all(&[f.vote(0, &p, Choice::Yes)]);
    assert_eq!(f.engine.tally(&p.id(), VOTE_END).expect("tally").count.eligible, 9500);
}

#[test]
fn latest_vote_wins() {
    let mut f = forge();
    let p = f.propose(0, simple(), &[]);
    let first = f.vote(1, &p, Choice::Yes);
    let second = f.vote(1, &p, Choice::No); // higher sequence number
    f.apply(&p).expect("proposal");
    // Applied newest first: the older vote is kept but does not count.
    f.apply_all(&[second.clone(), first.clone()]);
    let t = f.engine.tally(&p.id(), VOTE_END).expect("tally");
    assert_eq!(t.counted, vec![second.id()]);
    assert_eq!(t.count.totals, vec![0, 3000, 0, 0]);
}

#[test]
fn secret_ballot_commit_reveal() {
    let mut f = forge();
    let mut cfg = simple();
    cfg.secret = true;
    let p = f.propose(0, cfg, &[]);
    f.apply(&p).expect("proposal");
    let (sa, sb) = ([1u8; 32], [2u8; 32]);
    f.apply_all(&[f.commit(0, &p, &Choice::Yes, sa), f.commit(1, &p, &Choice::No, sb)]);
    // Before reveals nothing counts.
    assert_eq!(f.engine.tally(&p.id(), VOTE_END).expect("tally").count.participation, 0);
    assert_eq!(f.engine.status(&p.id(), VOTE_END), Some(Status::Reveal));
    f.apply_all(&[f.reveal(0, &p, Choice::Yes, sa)]);
    // B never reveals: only A counts. 5 / 9.5 = 52.6 % >= 30 %, approval 100 %.
    let t = f.engine.tally(&p.id(), REVEAL_END).expect("tally");
    assert_eq!(t.count.totals, vec![5000, 0, 0, 0]);
    assert_eq!(t.count.outcome, Outcome::Approved);
    // A reveal that opens none of the voter's commitments is held (it may open one still on its
    // way) and changes nothing; a second reveal is ignored.
    let before = f.engine.state_hash(REVEAL_END);
    assert_eq!(
        f.apply(&f.reveal(1, &p, Choice::Yes, sb)),
        Err(Refusal::Pending(kos_engine::Dependency::Commit(
            p.id(),
            f.keys[1].public().to_bytes()
        )))
    );
    assert_eq!(f.apply(&f.reveal(0, &p, Choice::Yes, sa)), Err(Refusal::DoubleReveal));
    assert_eq!(f.engine.state_hash(REVEAL_END), before);
    // A plain VOTE on a secret ballot is refused.
    assert_eq!(f.apply(&f.vote(2, &p, Choice::Yes)), Err(Refusal::SecretBallot));
}

#[test]
fn early_close_when_the_rest_cannot_change_the_outcome() {
    // Forge electorate (eligible 9.5), early close on.
    // After A yes (5) at +1 s: free weight 4.5. All of it on veto gives 4.5 / 9.5 = 47 % > 33.4 %
    // -> vetoed, so the outcome is still open.
    // After B yes (3) at +2 s: free 1.5. Veto share at most 1.5 / 9.5 = 15.8 %; approval at
    // least 8 / 9.5 = 84 %; quorum already met (8 / 9.5) -> approved whatever happens: voting
    // closes at +2 s. C's "no" at +3 s is kept but not counted.
    let mut f = forge();
    let mut cfg = simple();
    cfg.early_close = true;
    let p = f.propose(0, cfg, &[]);
    f.apply(&p).expect("proposal");
    let a = f.vote_at(0, &p, Choice::Yes, VOTE_START + S);
    let b = f.vote_at(1, &p, Choice::Yes, VOTE_START + 2 * S);
    let c = f.vote_at(2, &p, Choice::No, VOTE_START + 3 * S);
    f.apply_all(std::slice::from_ref(&a));
    assert_eq!(f.engine.status(&p.id(), VOTE_START + 10 * S), Some(Status::Voting));
    f.apply_all(&[b.clone(), c]);
    assert_eq!(f.engine.status(&p.id(), VOTE_START + 2 * S), Some(Status::Voting));
    assert_eq!(f.engine.status(&p.id(), VOTE_START + 2 * S + 1), Some(Status::Closed));
    let t = f.engine.tally(&p.id(), VOTE_START + 10 * S).expect("tally");
    let mut want = vec![a.id(), b.id()];
    want.sort();
    assert_eq!(t.counted, want);
    assert_eq!(t.count.totals, vec![8000, 0, 0, 0]);
    assert_eq!(t.count.outcome, Outcome::Approved);
    // Attestations are due from the early close plus grace, well before voting would end.
    assert!(!f.engine.attestations_due(&fed::key(0).public(), VOTE_START + 8 * S).is_empty());
}

#[test]
fn no_early_close_without_the_flag_or_for_secret_ballots() {
    let mut f = forge();
    let p = f.propose(0, simple(), &[]);
    f.apply(&p).expect("proposal");
    f.apply_all(&[f.vote(0, &p, Choice::Yes), f.vote(1, &p, Choice::Yes)]);
    assert_eq!(f.engine.status(&p.id(), VOTE_END - 1), Some(Status::Voting));
}
