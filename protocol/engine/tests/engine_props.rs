//! Property tests of the engine: order independence, and agreement with a deliberately simple
//! reference tally written here.

mod fed;

use std::collections::{BTreeMap, BTreeSet};

use fed::*;
use kos_engine::Origin;
use kos_protocol::{Message, Payload, payload::*};
use proptest::prelude::*;

/// One generated federation and the messages exchanged in it.
#[derive(Debug, Clone)]
struct Scenario {
    levels: Vec<TrustLevel>,
    weighting: Weighting,
    rule: DecisionRule,
    depth: u8,
    /// (voter, choice index, created offset within the window)
    votes: Vec<(usize, u8, u64)>,
    /// (delegator, delegate or revoke, created offset, scope is All)
    delegations: Vec<(usize, Option<usize>)>,
    revise: bool,
    sponsors: Vec<usize>,
    early_close: bool,
}

fn level() -> impl Strategy<Value = TrustLevel> {
    proptest::sample::select(TrustLevel::ALL)
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        proptest::collection::vec(level(), 2..9),
        proptest::sample::select(Weighting::ALL),
        prop_oneof![
            Just(DecisionRule::SimpleMajority),
            (1u32..10, 10u32..11).prop_map(|(n, d)| DecisionRule::Supermajority(Ratio(n, d))),
            Just(DecisionRule::Consensus),
            Just(DecisionRule::Plurality),
            Just(DecisionRule::InstantRunoff),
        ],
        0u8..4,
    )
        .prop_flat_map(|(mut levels, weighting, rule, depth)| {
            // The proposer (member 0) must be trusted enough for resource allocation.
            levels[0] = TrustLevel::Core;
            let n = levels.len();
            (
                Just(levels),
                Just(weighting),
                Just(rule),
                Just(depth),
                proptest::collection::vec((0..n, 0u8..4, 0u64..29_000), 0..14),
                proptest::collection::vec((0..n, proptest::option::of(0..n)), 0..8),
                any::<bool>(),
                proptest::collection::vec(1..n, 0..3),
                any::<bool>(),
            )
        })
        .prop_map(
            |(
                levels,
                weighting,
                rule,
                depth,
                votes,
                delegations,
                revise,
                sponsors,
                early_close,
            )| {
                Scenario {
                    levels,
                    weighting,
                    rule,
                    depth,
                    votes,
                    delegations: delegations.into_iter().filter(|(a, b)| Some(*a) != *b).collect(),
                    revise,
                    sponsors,
                    early_close,
                }
            },
        )
}

fn choice(rule: DecisionRule, k: u8) -> Choice {
    match rule {
        DecisionRule::Plurality => Choice::Approve(match k {
            0 => vec![0],
            1 => vec![1, 2],
            2 => vec![],
            _ => vec![0, 2],
        }),
        DecisionRule::InstantRunoff => Choice::Rank(match k {
            0 => vec![0, 1, 2],
            1 => vec![1, 2, 0],
            2 => vec![2, 1],
            _ => vec![1],
        }),
        _ => [Choice::Yes, Choice::No, Choice::Abstain, Choice::Veto][usize::from(k)].clone(),
    }
}

/// Builds the federation and all messages (valid ones; members at QUARANTINE cannot vote, so
/// their votes are left out).
fn build(s: &Scenario) -> (Fed, Message, Vec<Message>) {
    let f = Fed::with(&s.levels, s.depth, |c| {
        c.role_weights = vec![RoleWeight { role: Role::Citizen, weight: 2000 }];
    });
    let options: &[&str] = if s.rule.is_binary() { &[] } else { &["a", "b", "c"] };
    let mut cfg = config(s.rule, s.weighting);
    cfg.sponsors = 1;
    cfg.early_close = s.early_close;
    let p = f.propose(0, cfg, options);
    let mut msgs = vec![];
    let revision = u32::from(s.revise);
    if s.revise {
        msgs.push(f.sign(
            0,
            T0 + 3 * S,
            Payload::Revision(Revision {
                title: "Revised".into(),
                action: Action::None,
                options: options.iter().map(|o| o.to_string()).collect(),
                proposal: p.id(),
                revision: 1,
                federation: f.id(),
                description: "Revised text.".into(),
            }),
        ));
    }
    for &who in &s.sponsors {
        msgs.push(f.sign(
            who,
            T0 + 4 * S,
            Payload::Sponsor(Sponsor { proposal: p.id(), federation: f.id() }),
        ));
    }
    for &(who, to) in &s.delegations {
        msgs.push(f.delegate(who, to, DelegationScope::All));
    }
    for &(who, k, at) in &s.votes {
        if weight(s, who) == 0 {
            continue; // refused by the engine (quarantined or weightless); tested elsewhere
        }
        msgs.push(f.sign(
            who,
            VOTE_START + at,
            Payload::Vote(Vote {
                choice: choice(s.rule, k),
                reason: None,
                proposal: p.id(),
                revision,
                federation: f.id(),
            }),
        ));
    }
    // A comment thread.
    let c1 = f.sign(
        1,
        T0 + 2 * S,
        Payload::Comment(Comment {
            kind: CommentKind::Support,
            text: "yes".into(),
            parent: None,
            proposal: p.id(),
            revision: 0,
            federation: f.id(),
        }),
    );
    let c2 = f.sign(
        0,
        T0 + 3 * S,
        Payload::Comment(Comment {
            kind: CommentKind::Comment,
            text: "thanks".into(),
            parent: Some(c1.id()),
            proposal: p.id(),
            revision: 0,
            federation: f.id(),
        }),
    );
    msgs.push(c1);
    msgs.push(c2);
    (f, p, msgs)
}

/// The reference: every member's weight, computed from the table in SPEC 4.3.
fn weight(s: &Scenario, i: usize) -> u64 {
    let l = s.levels[i];
    if l == TrustLevel::Quarantine {
        return 0;
    }
    match s.weighting {
        Weighting::OnePersonOneVote => 1000,
        Weighting::Trust => l.milli_weight(),
        Weighting::Stake => (i as u64 + 1) * 1000,
        Weighting::Role => 2000,
        Weighting::Hybrid => l.milli_weight(),
    }
}

/// A deliberately simple tally: latest vote per voter; each member without a vote follows
/// delegations hop by hop (at most `depth` hops, stopping at a repeat).
fn reference(s: &Scenario, msgs: &[Message]) -> (Vec<u64>, u64, u64) {
    let n = s.levels.len();
    let mut latest: BTreeMap<usize, (u64, kos_protocol::MessageId, Choice)> = BTreeMap::new();
    let mut delegate: BTreeMap<usize, (u64, kos_protocol::MessageId, Option<usize>)> =
        BTreeMap::new();
    let index =
        |pk: &kos_protocol::PublicKey| (0..n).find(|&i| key(i).public() == *pk).expect("member");
    for m in msgs {
        let who = index(&m.author());
        let key = (m.header().seq, m.id());
        match m.payload() {
            Payload::Vote(v) if latest.get(&who).is_none_or(|(s, id, _)| (*s, *id) < key) => {
                latest.insert(who, (key.0, key.1, v.choice.clone()));
            }
            Payload::Delegation(d)
                if delegate.get(&who).is_none_or(|(s, id, _)| (*s, *id) < key) =>
            {
                let to = d.delegate.map(|pk| index(&pk));
                delegate.insert(who, (key.0, key.1, to));
            }
            _ => {}
        }
    }
    let options = if s.rule.is_binary() { 4 } else { 3 };
    let mut totals = vec![0u64; options];
    let mut participation = 0;
    let mut eligible = 0;
    for m in 0..n {
        let w = weight(s, m);
        eligible += w;
        if w == 0 {
            continue;
        }
        let mut at = m;
        let mut visited = vec![m];
        let mut hops = 0;
        let vote = loop {
            if let Some((_, _, c)) = latest.get(&at) {
                break Some(c.clone());
            }
            if hops == s.depth {
                break None;
            }
            match delegate.get(&at).and_then(|(_, _, to)| *to) {
                Some(next) if !visited.contains(&next) => {
                    visited.push(next);
                    at = next;
                    hops += 1;
                }
                _ => break None,
            }
        };
        let Some(c) = vote else { continue };
        participation += w;
        match c {
            Choice::Yes => totals[0] += w,
            Choice::No => totals[1] += w,
            Choice::Abstain => totals[2] += w,
            Choice::Veto => totals[3] += w,
            Choice::Approve(set) => set.iter().for_each(|&i| totals[usize::from(i)] += w),
            Choice::Rank(order) => totals[usize::from(order[0])] += w,
        }
    }
    (totals, participation, eligible)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any permutation, with duplicates, of the same messages gives the same state hash and the
    /// same tallies, at every point in time.
    #[test]
    fn order_and_duplicates_do_not_matter(
        s in scenario(),
        seed in any::<u64>(),
        dups in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let (f, p, msgs) = build(&s);
        let mut all = vec![p.clone()];
        all.extend(msgs.iter().cloned());
        let mut shuffled = all.clone();
        for d in &dups {
            shuffled.push(all[d.index(all.len())].clone());
        }
        // A seeded Fisher–Yates shuffle.
        let mut x = seed | 1;
        for i in (1..shuffled.len()).rev() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            shuffled.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let mut a = f.engine.clone();
        let mut b = f.engine.clone();
        for m in &all {
            a.apply(m, Origin::Sync, T0).expect("valid in order");
        }
        for m in &shuffled {
            let _ = b.apply(m, Origin::Sync, T0);
        }
        prop_assert_eq!(b.pending_len(), 0);
        for now in [T0, T0 + 5 * S, VOTE_START, VOTE_START + 15 * S, VOTE_END, VOTE_END + 60 * S] {
            prop_assert_eq!(a.state_hash(now), b.state_hash(now));
            prop_assert_eq!(a.status(&p.id(), now), b.status(&p.id(), now));
            prop_assert_eq!(a.tally(&p.id(), now), b.tally(&p.id(), now));
        }
    }

    /// The engine's totals, participation and eligible weight equal the reference tally's.
    #[test]
    fn engine_agrees_with_the_reference_tally(mut s in scenario()) {
        // The reference counts every vote; early close is covered by the worked examples.
        s.early_close = false;
        let (mut f, p, msgs) = build(&s);
        f.apply(&p).expect("proposal");
        for m in &msgs {
            f.engine.apply(m, Origin::Sync, T0).expect("valid");
        }
        let t = f.engine.tally(&p.id(), VOTE_END).expect("tally");
        let (totals, participation, eligible) = reference(&s, &msgs);
        prop_assert_eq!(t.count.eligible, eligible);
        prop_assert_eq!(t.count.participation, participation);
        prop_assert_eq!(&t.count.totals, &totals);
        // Binary outcome by the reference formulas.
        if s.rule.is_binary() {
            use kos_protocol::payload::Outcome::*;
            let [yes, no, _, veto] = [totals[0], totals[1], totals[2], totals[3]];
            let quorum = eligible > 0 && participation * 10 >= 3 * eligible;
            let want = if !quorum {
                FailedQuorum
            } else if veto * 1000 > 334 * participation {
                Vetoed
            } else {
                let ok = match s.rule {
                    DecisionRule::SimpleMajority => 2 * yes > yes + no + veto,
                    DecisionRule::Supermajority(r) => yes + no + veto > 0
                        && yes * u64::from(r.den()) >= u64::from(r.num()) * (yes + no + veto),
                    _ => yes > 0 && no == 0 && veto == 0,
                };
                if ok { Approved } else { Rejected }
            };
            prop_assert_eq!(t.count.outcome, want);
        }
        let direct: BTreeSet<_> = t.counted.iter().collect();
        prop_assert!(direct.len() <= s.levels.len());
    }
}
