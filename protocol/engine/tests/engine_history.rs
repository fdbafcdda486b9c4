//! Property tests over generated federation histories: many overlapping proposals whose
//! executions change the registry (configuration, new members, rollbacks), later proposals that
//! pin the registry versions those create, votes (some changed, some arriving after the tally was
//! first attested, some signed outside their window), attestations and re-attestations, and
//! equivocating attesters — delivered with duplicates, in any order, and across restarts.
//!
//! Properties:
//! - any permutation with duplicates gives the same state hash, statuses, finality and registry;
//! - adding any message never removes finality (and never changes it without equivocation);
//! - a restart that replays the store in any order gives the live state.

mod fed;

use std::collections::BTreeMap;

use fed::*;
use kos_engine::{Engine, Final, Origin, Status};
use kos_protocol::{Message, Payload, PublicKey, SecretKey, payload::*};
use proptest::prelude::*;

/// Time between two proposals' creation: proposals overlap, and a proposal is often signed
/// between another's close and its execution.
const STEP: u64 = 25 * S;
/// Long after everything.
const END: u64 = T0 + 1000 * S;

#[derive(Debug, Clone)]
struct PPlan {
    /// 0: no action, 1: configuration, 2: add a member, 3: roll back an earlier proposal.
    kind: u8,
    jitter: u64,
    delay: u64,
    /// (voter index into the pinned electorate, choice 0..4 (mostly yes), offset in the window)
    votes: Vec<(usize, u8, u64)>,
    /// Votes signed in the window that some attesters see only after attesting.
    late: Vec<(usize, u8)>,
    /// Votes signed after voting ended (refused everywhere).
    backdated: Vec<usize>,
    /// Per member: attest the tally without the late votes first (then re-attest).
    reattest: Vec<bool>,
    /// Per member: attestation delay after grace, in ms.
    offsets: Vec<u64>,
    /// All members but this one also attest a conflicting result.
    equivocate: Option<usize>,
    /// The re-attesting members were cut off: they re-attest without having seen the
    /// certificate the others completed.
    partitioned: bool,
}

#[derive(Debug, Clone)]
struct Plan {
    levels: Vec<TrustLevel>,
    proposals: Vec<PPlan>,
}

fn pplan(n: usize) -> impl Strategy<Value = PPlan> {
    (
        (0u8..4, 0u64..4_000, prop_oneof![Just(0u64), 0u64..8_000]),
        proptest::collection::vec((0usize..16, 0u8..6, 0u64..29_000), 0..8),
        proptest::collection::vec((0usize..16, 0u8..6), 0..3),
        proptest::collection::vec(0usize..16, 0..2),
        proptest::collection::vec(any::<bool>(), n + 4),
        proptest::collection::vec(0u64..4_000, n + 4),
        proptest::option::weighted(0.05, 0usize..16),
        proptest::bool::weighted(0.3),
    )
        .prop_map(
            |(
                (kind, jitter, delay),
                votes,
                late,
                backdated,
                reattest,
                offsets,
                equivocate,
                cut,
            )| {
                PPlan {
                    kind,
                    jitter,
                    delay,
                    votes,
                    late,
                    backdated,
                    reattest,
                    offsets,
                    equivocate,
                    partitioned: cut,
                }
            },
        )
}

fn plan() -> impl Strategy<Value = Plan> {
    (4usize..7)
        .prop_flat_map(|n| {
            (
                proptest::collection::vec(
                    proptest::sample::select(vec![
                        TrustLevel::Core,
                        TrustLevel::Trusted,
                        TrustLevel::Standard,
                    ]),
                    n,
                ),
                proptest::collection::vec(pplan(n), 2..7),
            )
        })
        .prop_map(|(mut levels, proposals)| {
            levels[0] = TrustLevel::Core;
            Plan { levels, proposals }
        })
}

fn choice(k: u8) -> Choice {
    match k {
        0..=2 => Choice::Yes,
        3 => Choice::No,
        4 => Choice::Abstain,
        _ => Choice::Veto,
    }
}

/// Keys: founding members are `key(0..n)`; member added by proposal `i` is `key(20 + i)`.
fn signer(f: &Fed, k: &PublicKey) -> SecretKey {
    for i in (0..f.keys.len()).chain(20..40) {
        let s = key(i);
        if s.public() == *k {
            return s;
        }
    }
    panic!("unknown key")
}

#[derive(Debug)]
enum Ev {
    Propose(usize),
    Vote(usize, usize, u8),
    /// Attest what the builder counts now (late votes not yet seen) for members who re-attest.
    AttestPartial(usize),
    /// Apply the late votes.
    Late(usize),
    AttestFull(usize),
    Equivocate(usize, usize),
}

/// Generates the whole history in signed-time order. A builder engine that has every message
/// signed so far supplies registry pins and tallies, as an up-to-date member would.
fn history(plan: &Plan) -> (Vec<Message>, Vec<ProposalId>) {
    let mut f = Fed::new(&plan.levels);
    let mut seq: BTreeMap<PublicKey, u64> = BTreeMap::new();
    let mut msgs: Vec<Message> = vec![f.charter.clone()];
    let mut ids: Vec<ProposalId> = vec![];
    let fid = f.id();
    let seq = &mut seq;
    let sign = |f: &mut Fed,
                seq: &mut BTreeMap<PublicKey, u64>,
                msgs: &mut Vec<Message>,
                k: &PublicKey,
                at: u64,
                p: Payload| {
        let s = seq.entry(*k).or_insert(1000);
        *s += 1;
        let m = Message::sign(&signer(f, k), *s, at, None, p).expect("sign");
        let _ = f.engine.apply(&m, Origin::Sync, at);
        msgs.push(m.clone());
        m
    };
    let mut events: BTreeMap<(u64, u64), Ev> = BTreeMap::new();
    let mut n = 0u64;
    let mut push = |events: &mut BTreeMap<(u64, u64), Ev>, t: u64, e: Ev| {
        n += 1;
        events.insert((t, n), e);
    };
    for (i, p) in plan.proposals.iter().enumerate() {
        push(&mut events, T0 + S + STEP * i as u64 + p.jitter, Ev::Propose(i));
    }
    let mut late_pending: BTreeMap<usize, Vec<Message>> = BTreeMap::new();
    while let Some(((t, _), ev)) = events.pop_first() {
        match ev {
            Ev::Propose(i) => {
                let pp = &plan.proposals[i];
                let reg = f.engine.registry(t).expect("registry");
                let pin = RegistryVersion { hash: reg.hash(), epoch: reg.epoch };
                let (kind, action) = match pp.kind {
                    1 => (
                        ProposalType::Configuration,
                        Action::Configuration {
                            key: format!("k{}", i % 2),
                            new: format!("v{i}"),
                            old: None,
                        },
                    ),
                    2 => (
                        ProposalType::Membership,
                        Action::AddMember(Member {
                            key: key(20 + i).public(),
                            roles: vec![Role::Citizen],
                            stake: 1,
                            trust: TrustLevel::Trusted,
                        }),
                    ),
                    3 if i > 0 => {
                        (ProposalType::ResourceAllocation, Action::Rollback(ids[i % ids.len()]))
                    }
                    _ => (ProposalType::ResourceAllocation, Action::None),
                };
                let mut body = f.proposal_body(
                    kind,
                    Some(config(DecisionRule::SimpleMajority, Weighting::Trust)),
                    &[],
                );
                body.action = action;
                body.registry = pin;
                body.timeline.discussion_end_ms = t + 9 * S;
                body.timeline.voting_end_ms = t + 39 * S;
                body.timeline.execution_delay_ms = pp.delay;
                let author = f.keys[0].public();
                let m = sign(&mut f, seq, &mut msgs, &author, t, Payload::Proposal(body));
                ids.push(m.id());
                let start = t + 9 * S;
                for (k, &(voter, c, at)) in pp.votes.iter().enumerate() {
                    let _ = k;
                    push(&mut events, start + at, Ev::Vote(i, voter, c));
                }
                let close = t + 39 * S;
                let attest = close + test_timing().grace_ms;
                push(&mut events, attest, Ev::AttestPartial(i));
                push(&mut events, attest + 4_500, Ev::Late(i));
                push(&mut events, attest + 5_000, Ev::AttestFull(i));
                if let Some(e) = pp.equivocate {
                    push(&mut events, attest + 9_000, Ev::Equivocate(i, e));
                }
                // Backdated votes: signed after voting ended, refused by everyone.
                for &voter in &pp.backdated {
                    let electorate = electorate(&f, &m.id());
                    let who = electorate[voter % electorate.len()];
                    sign(&mut f, seq, &mut msgs, &who, close + S, vote(fid, m.id(), Choice::No));
                }
                // Late votes: signed in the window, applied by the builder only after the
                // partial attestations.
                for &(voter, c) in &pp.late {
                    let electorate = electorate(&f, &m.id());
                    let who = electorate[voter % electorate.len()];
                    let s = seq.entry(who).or_insert(1000);
                    *s += 1;
                    let lm = Message::sign(
                        &signer(&f, &who),
                        *s,
                        close - S,
                        None,
                        vote(fid, m.id(), choice(c)),
                    )
                    .expect("sign");
                    late_pending.entry(i).or_default().push(lm);
                }
            }
            Ev::Vote(i, voter, c) => {
                let electorate = electorate(&f, &ids[i]);
                let who = electorate[voter % electorate.len()];
                sign(&mut f, seq, &mut msgs, &who, t, vote(fid, ids[i], choice(c)));
            }
            Ev::Late(i) => {
                for m in late_pending.remove(&i).unwrap_or_default() {
                    let _ = f.engine.apply(&m, Origin::Sync, t);
                    msgs.push(m);
                }
            }
            Ev::AttestPartial(i) | Ev::AttestFull(i) => {
                let partial = matches!(ev, Ev::AttestPartial(_));
                // Honest members stop attesting once they hold a certificate: re-attestation
                // happens only while the result is not final — or, behind a partition, by
                // members who never saw the certificate.
                let cut_off = plan.proposals[i].partitioned;
                if (partial || !cut_off) && f.engine.finality(&ids[i]).is_some() {
                    continue;
                }
                let electorate = electorate(&f, &ids[i]);
                for (j, who) in electorate.iter().enumerate() {
                    let pp = &plan.proposals[i];
                    let re = pp.reattest.get(j).copied().unwrap_or(false);
                    if partial && !re {
                        continue;
                    }
                    // Behind the partition only the re-attesters attest again.
                    if !partial && cut_off && f.engine.finality(&ids[i]).is_some() && !re {
                        continue;
                    }
                    let Some(a) = attestation(&f, &ids[i], t) else { continue };
                    let at = t + pp.offsets.get(j).copied().unwrap_or(0);
                    sign(&mut f, seq, &mut msgs, who, at, Payload::TallyAttestation(a));
                }
            }
            Ev::Equivocate(i, e) => {
                // A coalition — every member but one — also attests the opposite outcome: when it
                // holds 2/3 of the weight, two results are certified (equivocation).
                let electorate = electorate(&f, &ids[i]);
                let honest = electorate[e % electorate.len()];
                if let Some(mut a) = attestation(&f, &ids[i], t) {
                    a.outcome = match a.outcome {
                        Outcome::Approved => Outcome::Rejected,
                        _ => Outcome::Approved,
                    };
                    for who in electorate.iter().filter(|k| **k != honest) {
                        sign(&mut f, seq, &mut msgs, who, t, Payload::TallyAttestation(a.clone()));
                    }
                }
            }
        }
    }
    (msgs, ids)
}

fn vote(federation: FederationId, proposal: ProposalId, choice: Choice) -> Payload {
    Payload::Vote(Vote { choice, reason: None, proposal, revision: 0, federation })
}

/// The members who can vote on `proposal` (in the registry it pinned).
fn electorate(f: &Fed, proposal: &ProposalId) -> Vec<PublicKey> {
    match f.engine.electorate(proposal) {
        Some((reg, _)) => reg.members.keys().copied().collect(),
        None => f.keys.iter().map(SecretKey::public).collect(),
    }
}

/// The attestation of `proposal`'s tally as the builder counts it at `t`.
fn attestation(f: &Fed, proposal: &ProposalId, t: u64) -> Option<TallyAttestation> {
    let tally = f.engine.tally(proposal, t)?;
    Some(TallyAttestation {
        phase: AttestationPhase::Commit,
        round: 0,
        totals: tally.count.totals.clone(),
        winner: tally.count.winner,
        counted: u32::try_from(tally.counted.len()).unwrap_or(u32::MAX),
        outcome: tally.count.outcome,
        eligible: tally.count.eligible,
        proposal: *proposal,
        revision: tally.revision,
        federation: f.id(),
        votes_root: tally.votes_root,
        participation: tally.count.participation,
    })
}

/// Everything a user can observe, at several times.
#[derive(Debug, PartialEq)]
struct View {
    hashes: Vec<Digest>,
    statuses: Vec<Option<Status>>,
    finality: Vec<Option<Final>>,
    registry: Vec<(u64, Digest)>,
}

fn view(e: &Engine, ids: &[ProposalId]) -> View {
    let times = [T0 + 30 * S, T0 + 100 * S, T0 + 200 * S, END];
    View {
        hashes: times.iter().map(|&t| e.state_hash(t)).collect(),
        statuses: ids
            .iter()
            .flat_map(|id| times.iter().map(move |&t| (id, t)))
            .map(|(id, t)| e.status(id, t))
            .collect(),
        finality: ids.iter().map(|id| e.finality(id)).collect(),
        registry: e.registry_chain(),
    }
}

fn engine(msgs: &[Message], fed: MessageId) -> Engine {
    let mut e = Engine::new(fed);
    for m in msgs {
        let _ = e.apply(m, Origin::Sync, END);
    }
    sync_round(&mut e, msgs);
    e
}

/// Anti-entropy: what a node refused only for lack of knowledge (an author it did not yet know
/// as a member) is not stored, so sync offers it again; rounds continue while anything applies.
fn sync_round(e: &mut Engine, msgs: &[Message]) {
    loop {
        let progress = msgs.iter().filter(|m| e.apply(m, Origin::Sync, END).is_ok()).count();
        if progress == 0 {
            break;
        }
    }
}

/// A restart: a fresh engine rebuilt from a store that returns messages in `order`.
fn restart(fed: MessageId, stored: Vec<Message>) -> Engine {
    let mut e = Engine::new(fed);
    e.replay(stored, END);
    e
}

fn shuffled(msgs: &[Message], seed: u64, dups: bool) -> Vec<Message> {
    // A deterministic shuffle (xorshift), with some duplicates.
    let mut v: Vec<Message> = msgs.to_vec();
    if dups {
        v.extend(msgs.iter().step_by(3).cloned());
    }
    let mut x = seed | 1;
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn any_order_with_duplicates_gives_one_state(plan in plan(), seed in any::<u64>()) {
        let (msgs, ids) = history(&plan);
        let reference = view(&engine(&msgs, msgs[0].id()), &ids);
        let other = view(&engine(&shuffled(&msgs, seed, true), msgs[0].id()), &ids);
        prop_assert_eq!(reference, other);
    }

    #[test]
    fn adding_a_message_never_removes_finality(plan in plan(), seed in any::<u64>()) {
        let (msgs, ids) = history(&plan);
        let order = shuffled(&msgs, seed, true);
        // With enough equivocation (at least 1/3 of the weight attesting two results) the
        // guarantee is void by design; equivocation by fewer must not break it.
        let complete = engine(&msgs, msgs[0].id());
        let equivocation = ids.iter().any(|id| !complete.equivocators(id).is_empty());
        let mut e = Engine::new(msgs[0].id());
        let mut seen: BTreeMap<ProposalId, Final> = BTreeMap::new();
        let mut history: Vec<(ProposalId, Final)> = vec![];
        for m in &order {
            // `check` predicts `apply` exactly, without changing anything.
            let before = e.state_hash(END);
            let predicted = e.check(m, Origin::Sync, END);
            prop_assert_eq!(e.state_hash(END), before);
            let applied = e.apply(m, Origin::Sync, END);
            prop_assert_eq!(predicted, applied.map(|_| ()));
            for id in &ids {
                match (seen.get(id), e.finality(id)) {
                    (Some(before), None) => {
                        prop_assert!(equivocation, "finality of {id:?} lost: was {before:?}");
                    }
                    (before, Some(now)) => {
                        // More attesters may raise the weight and move the completion time
                        // earlier; what is final is the key.
                        if before.map(|b| b.key) != Some(now.key) {
                            history.push((*id, now));
                        }
                        seen.insert(*id, now);
                    }
                    (None, None) => {}
                }
                if let Some(f) = seen.get(id).filter(|_| !equivocation && e.finality(id).is_some()) {
                    let status = e.status(id, END);
                    prop_assert!(!matches!(status, Some(Status::Closed)),
                        "{id:?} final ({f:?}) but shown Closed");
                }
            }
        }
        // Without equivocation, a final result never changes once reached.
        for id in &ids {
            if e.equivocators(id).is_empty() {
                let changes = history.iter().filter(|(p, _)| p == id).count();
                prop_assert!(changes <= 1, "{id:?}: final result changed {changes} times");
            }
        }
    }

    #[test]
    fn replay_in_any_order_after_a_restart_equals_the_live_state(
        plan in plan(),
        seed in any::<u64>(),
        cut in 0.0f64..1.0,
    ) {
        let (msgs, ids) = history(&plan);
        let live_order = shuffled(&msgs, seed, false);
        let k = ((live_order.len() as f64) * cut) as usize;
        let fed = msgs[0].id();
        // The live node: everything, in arrival order.
        let mut live = Engine::new(fed);
        let by_id: BTreeMap<MessageId, &Message> = msgs.iter().map(|m| (m.id(), m)).collect();
        let mut stored = vec![];
        for (i, m) in live_order.iter().enumerate() {
            if let Ok(applied) = live.apply(m, Origin::Sync, END) {
                // The message and every held one it released are stored.
                stored.extend(applied.iter().map(|id| by_id[id].clone()));
            }
            if i + 1 == k {
                // Restart here: the store returns what was accepted, in another order.
                let restarted = restart(fed, shuffled(&stored, seed ^ 0x5eed, false));
                prop_assert_eq!(view(&restarted, &ids), view(&live, &ids));
            }
        }
        // A restart at the end, from a store in yet another order (held messages are re-fetched
        // from peers, which is what appending the rest models).
        sync_round(&mut live, &live_order);
        let mut restarted = restart(fed, shuffled(&stored, seed.rotate_left(7), false));
        for m in &live_order {
            let _ = restarted.apply(m, Origin::Sync, END);
        }
        sync_round(&mut restarted, &live_order);
        prop_assert_eq!(view(&restarted, &ids), view(&live, &ids));
    }
}

/// The generated histories really contain what the properties are about.
#[test]
fn histories_cover_executions_versions_reattestations_and_equivocation() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]),
    );
    let (mut versions, mut pinned_later, mut finals, mut changed_key, mut equivocation) =
        (0, 0, 0, 0, 0);
    for _ in 0..64 {
        let plan = plan().new_tree(&mut runner).expect("plan").current();
        let (msgs, ids) = history(&plan);
        let e = engine(&msgs, msgs[0].id());
        let chain = e.registry_chain();
        versions += usize::from(chain.len() > 1);
        for id in &ids {
            if let Some((reg, _)) = e.electorate(id) {
                pinned_later += usize::from(reg.epoch > 0);
            }
            finals += usize::from(e.finality(id).is_some());
            equivocation += usize::from(!e.equivocators(id).is_empty());
            let latest = e.attestations(id);
            let fin = e.finality(id).map(|f| f.key);
            changed_key += usize::from(latest.iter().any(|a| Some(a.key) != fin));
        }
    }
    eprintln!(
        "histories with new registry versions {versions}/64; proposals pinning a later version \
         {pinned_later}; final {finals}; with attestations differing from the final key \
         {changed_key}; with equivocators {equivocation}"
    );
    assert!(versions >= 10, "{versions}");
    assert!(pinned_later >= 10, "{pinned_later}");
    assert!(finals >= 100, "{finals}");
    assert!(changed_key >= 10, "{changed_key}");
    assert!(equivocation >= 1, "{equivocation}");
}
