//! Every invalid input is refused with a typed reason and leaves the state hash unchanged.

mod fed;

use fed::*;
use kos_engine::{Dependency, Origin, Refusal, Status, Verdict};
use kos_protocol::{Message, Payload, payload::*};

use TrustLevel::*;

fn setup() -> (Fed, Message) {
    let mut f = Fed::new(&[Core, Trusted, Standard, Sandbox, Quarantine]);
    let p = f.propose(0, config(DecisionRule::SimpleMajority, Weighting::Trust), &[]);
    f.apply(&p).expect("proposal");
    (f, p)
}

/// Applies `m`, expects `want`, and checks the state hash did not move.
fn refused(f: &mut Fed, m: &Message, want: Refusal) {
    let now = VOTE_END + 100 * S;
    let before = f.engine.state_hash(now);
    assert_eq!(f.apply(m), Err(want));
    assert_eq!(f.engine.state_hash(now), before, "{:?} changed the state", m.kind());
}

#[test]
fn votes_outside_the_window() {
    let (mut f, p) = setup();
    let early = f.vote_at(1, &p, Choice::Yes, VOTE_START - 1);
    refused(
        &mut f,
        &early,
        Refusal::OutsideWindow {
            created_ms: VOTE_START - 1,
            start_ms: VOTE_START,
            end_ms: VOTE_END,
        },
    );
    let late = f.vote_at(1, &p, Choice::Yes, VOTE_END);
    refused(
        &mut f,
        &late,
        Refusal::OutsideWindow { created_ms: VOTE_END, start_ms: VOTE_START, end_ms: VOTE_END },
    );
    assert_eq!(
        Refusal::OutsideWindow { created_ms: 0, start_ms: 0, end_ms: 0 }.verdict(),
        Verdict::Reject
    );
    // In words, to the millisecond (the refusal is what an operator reads in the audit log).
    let said = |created_ms, start_ms, end_ms| {
        Refusal::OutsideWindow { created_ms, start_ms, end_ms }.to_string()
    };
    assert_eq!(
        said(1_795_450_583_781, 1_795_450_553_631, 1_795_450_583_631),
        "signed at 2026-11-23 16:16:23.781 UTC, 0.150 s after its window closed at \
         2026-11-23 16:16:23.631 UTC"
    );
    assert_eq!(
        said(1_795_450_553_000, 1_795_450_553_631, 1_795_450_583_631),
        "signed at 2026-11-23 16:15:53.000 UTC, 0.631 s before its window opens at \
         2026-11-23 16:15:53.631 UTC"
    );
}

#[test]
fn non_members() {
    // A stranger — a key that is a member of no registry version — changes nothing and nothing
    // of theirs is kept: not on a known proposal, not on an unknown one, not a delegation.
    let (mut f, p) = setup();
    let stranger = key(99);
    let sign = |seq, at, payload| Message::sign(&stranger, seq, at, None, payload).expect("sign");
    let vote = |proposal| {
        Payload::Vote(Vote {
            choice: Choice::Yes,
            reason: None,
            proposal,
            revision: 0,
            federation: f.id(),
        })
    };
    let on_known = sign(1, VOTE_START + S, vote(p.id()));
    let on_unknown = sign(2, VOTE_START + S, vote(MessageId([7; 32])));
    let prop = sign(
        3,
        T0 + S,
        Payload::Proposal(f.proposal_body(ProposalType::ResourceAllocation, None, &[])),
    );
    let delegation = sign(
        4,
        T0 + S,
        Payload::Delegation(Delegation {
            delegate: Some(key(0).public()),
            scope: DelegationScope::All,
            federation: f.id(),
        }),
    );
    for m in [&on_known, &on_unknown, &prop, &delegation] {
        refused(&mut f, m, Refusal::UnknownAuthor);
        assert!(!f.engine.is_held(&m.id()) && !f.engine.is_applied(&m.id()));
        assert_eq!(Refusal::UnknownAuthor.verdict(), Verdict::Ignore);
    }
    assert_eq!(f.engine.pending_len(), 0);
    assert_eq!(f.engine.held_bytes(&stranger.public()), 0);
}

#[test]
fn a_members_unresolvable_flood_stays_within_its_byte_bound() {
    // A member signs votes on proposals nobody has: they are held, but only up to the per-author
    // byte bound; everyone else's messages are still held and applied.
    let (mut f, _) = setup();
    let mut full = 0;
    for i in 0..20_000u32 {
        let mut id = [0u8; 32];
        id[..4].copy_from_slice(&i.to_be_bytes());
        let m = f.sign(
            1,
            VOTE_START + S,
            Payload::Vote(Vote {
                choice: Choice::Yes,
                reason: Some("x".repeat(200)),
                proposal: MessageId(id),
                revision: 0,
                federation: f.id(),
            }),
        );
        match f.apply(&m) {
            Err(Refusal::Pending(_)) => {}
            Err(Refusal::PendingFull) => full += 1,
            other => panic!("{other:?}"),
        }
        assert!(f.engine.held_bytes(&key(1).public()) <= kos_engine::MAX_HELD_BYTES_PER_AUTHOR);
    }
    assert!(full > 0, "the bound was never reached");
    // Another member's held message is still accepted into the pool.
    let other = f.sign(
        2,
        VOTE_START + S,
        Payload::Vote(Vote {
            choice: Choice::Yes,
            reason: None,
            proposal: MessageId([0xee; 32]),
            revision: 0,
            federation: f.id(),
        }),
    );
    assert!(matches!(f.apply(&other), Err(Refusal::Pending(_))));
    // Held messages expire.
    let dropped = f.engine.tick(VOTE_START + S + kos_engine::HOLD_TTL_MS + 1);
    assert!(dropped > 0);
    assert_eq!(f.engine.pending_len(), 0);
    assert_eq!(f.engine.held_bytes(&key(1).public()), 0);
}

#[test]
fn unknown_revision_is_held_until_it_arrives() {
    let (mut f, p) = setup();
    let vote = f.sign(
        1,
        VOTE_START + S,
        Payload::Vote(Vote {
            choice: Choice::Yes,
            reason: None,
            proposal: p.id(),
            revision: 1,
            federation: f.id(),
        }),
    );
    refused(&mut f, &vote, Refusal::Pending(Dependency::Revision(p.id(), 1)));
    assert_eq!(Refusal::Pending(Dependency::Revision(p.id(), 1)).verdict(), Verdict::Ignore);
    assert_eq!(f.engine.pending_len(), 1);
    // The proposer's revision 1 releases the held vote, which now counts.
    let rev = f.sign(
        0,
        T0 + 2 * S,
        Payload::Revision(Revision {
            title: "Revised".into(),
            action: Action::None,
            options: vec![],
            proposal: p.id(),
            revision: 1,
            federation: f.id(),
            description: "Better.".into(),
        }),
    );
    assert_eq!(f.apply(&rev), Ok(vec![rev.id(), vote.id()]));
    let t = f.engine.tally(&p.id(), VOTE_END).expect("tally");
    assert_eq!((t.revision, t.counted.clone()), (1, vec![vote.id()]));
    assert_eq!(f.engine.pending_len(), 0);
}

#[test]
fn revisions_only_by_the_proposer_during_discussion() {
    let (mut f, p) = setup();
    let rev = |f: &Fed, who, at| {
        f.sign(
            who,
            at,
            Payload::Revision(Revision {
                title: "t".into(),
                action: Action::None,
                options: vec![],
                proposal: p.id(),
                revision: 1,
                federation: f.id(),
                description: "d".into(),
            }),
        )
    };
    let m = rev(&f, 1, T0 + 2 * S);
    refused(&mut f, &m, Refusal::NotProposer);
    let m = rev(&f, 0, VOTE_START);
    refused(
        &mut f,
        &m,
        Refusal::OutsideWindow { created_ms: VOTE_START, start_ms: 0, end_ms: VOTE_START },
    );
}

#[test]
fn double_reveal() {
    let mut f = Fed::new(&[Core, Trusted]);
    let mut cfg = config(DecisionRule::SimpleMajority, Weighting::Trust);
    cfg.secret = true;
    let p = f.propose(0, cfg, &[]);
    f.apply(&p).expect("proposal");
    let salt = [7u8; 32];
    f.apply_all(&[f.commit(1, &p, &Choice::Yes, salt), f.reveal(1, &p, Choice::Yes, salt)]);
    let again = f.reveal(1, &p, Choice::Yes, salt);
    refused(&mut f, &again, Refusal::DoubleReveal);
}

#[test]
fn proposer_below_the_trust_bar() {
    let (mut f, _) = setup();
    // Configuration needs TRUSTED; C is STANDARD.
    let body = f.proposal_body(ProposalType::Configuration, None, &[]);
    let m = f.sign(2, T0 + S, Payload::Proposal(body));
    refused(
        &mut f,
        &m,
        Refusal::InsufficientTrust {
            kind: ProposalType::Configuration,
            required: Trusted,
            actual: Standard,
        },
    );
    // Emergency actions need CORE (or the Security Board): B (TRUSTED) is refused.
    let mut body = f.proposal_body(ProposalType::EmergencyAction, None, &[]);
    body.action = Action::Quarantine(key(3).public());
    let m = f.sign(1, T0 + S, Payload::Proposal(body));
    refused(
        &mut f,
        &m,
        Refusal::InsufficientTrust {
            kind: ProposalType::EmergencyAction,
            required: Core,
            actual: Trusted,
        },
    );
}

#[test]
fn security_board_may_propose_emergencies() {
    let mut f = Fed::with(&[Core, Standard], 8, |c| {
        c.bodies = vec![Body { kind: BodyKind::SecurityBoard, members: vec![key(1).public()] }];
    });
    let mut body = f.proposal_body(ProposalType::EmergencyAction, None, &[]);
    body.action = Action::Quarantine(key(0).public());
    let m = f.sign(1, T0 + S, Payload::Proposal(body));
    assert_eq!(f.apply(&m), Ok(vec![m.id()]));
}

#[test]
fn proposal_shape_errors() {
    let (mut f, _) = setup();
    let mut body = f.proposal_body(ProposalType::ResourceAllocation, None, &[]);
    body.timeline.voting_end_ms = VOTE_START + 3601 * S;
    let m = f.sign(0, T0 + S, Payload::Proposal(body));
    refused(&mut f, &m, Refusal::BadTimeline("voting window outside the charter's bounds"));

    let mut body = f.proposal_body(ProposalType::Configuration, None, &[]);
    body.action = Action::None;
    let m = f.sign(0, T0 + S, Payload::Proposal(body));
    refused(&mut f, &m, Refusal::ActionMismatch(ProposalType::Configuration));

    let body = f.proposal_body(ProposalType::ResourceAllocation, None, &["a", "b"]);
    let m = f.sign(0, T0 + S, Payload::Proposal(body));
    refused(&mut f, &m, Refusal::OptionsMismatch);

    let mut body = f.proposal_body(ProposalType::ResourceAllocation, None, &[]);
    body.registry.hash = Digest([9; 32]);
    let m = f.sign(0, T0 + S, Payload::Proposal(body));
    // An unknown registry version is held, never refused: it may yet become known.
    refused(&mut f, &m, Refusal::Pending(Dependency::Registry(Digest([9; 32]))));

    let mut body = f.proposal_body(ProposalType::ResourceAllocation, None, &[]);
    body.federation = MessageId([1; 32]);
    let m = f.sign(0, T0 + S, Payload::Proposal(body));
    refused(&mut f, &m, Refusal::WrongFederation);
}

#[test]
fn ballot_errors() {
    let (mut f, p) = setup();
    let m = f.vote(1, &p, Choice::Approve(vec![0]));
    refused(&mut f, &m, Refusal::WrongBallot);

    let mut f = Fed::new(&[Core, Trusted]);
    let p = f.propose(0, config(DecisionRule::Plurality, Weighting::Trust), &["a", "b"]);
    f.apply(&p).expect("proposal");
    let m = f.vote(1, &p, Choice::Approve(vec![0, 2]));
    refused(&mut f, &m, Refusal::NoSuchOption(2));
    let m = f.vote(1, &p, Choice::Yes);
    refused(&mut f, &m, Refusal::WrongBallot);

    let mut cfg = config(DecisionRule::SimpleMajority, Weighting::Trust);
    cfg.reasoning = true;
    let p = f.propose(0, cfg, &[]);
    f.apply(&p).expect("proposal");
    let m = f.vote(1, &p, Choice::Yes);
    refused(&mut f, &m, Refusal::MissingReason);
}

#[test]
fn discussion_errors() {
    let (mut f, p) = setup();
    let sponsor =
        f.sign(0, T0 + 2 * S, Payload::Sponsor(Sponsor { proposal: p.id(), federation: f.id() }));
    refused(&mut f, &sponsor, Refusal::SelfReference);
    let withdraw = f.sign(
        1,
        T0 + 2 * S,
        Payload::Withdraw(Withdraw { reason: None, proposal: p.id(), federation: f.id() }),
    );
    refused(&mut f, &withdraw, Refusal::NotProposer);
    let late = f.sign(
        0,
        VOTE_START,
        Payload::Withdraw(Withdraw { reason: None, proposal: p.id(), federation: f.id() }),
    );
    refused(
        &mut f,
        &late,
        Refusal::OutsideWindow { created_ms: VOTE_START, start_ms: 0, end_ms: VOTE_START },
    );
    let summary = f.sign(
        2,
        T0 + 2 * S,
        Payload::Comment(Comment {
            kind: CommentKind::Summary,
            text: "so far".into(),
            parent: None,
            proposal: p.id(),
            revision: 0,
            federation: f.id(),
        }),
    );
    refused(&mut f, &summary, Refusal::NotMediator);
    let self_delegation = f.delegate(1, Some(1), DelegationScope::All);
    refused(&mut f, &self_delegation, Refusal::SelfReference);
}

#[test]
fn live_gossip_outside_the_clock_skew_is_ignored() {
    let (mut f, p) = setup();
    let v = f.vote(1, &p, Choice::Yes);
    let created = v.header().created_ms;
    let now = created + 61 * S;
    let before = f.engine.state_hash(now);
    let err = f.engine.apply(&v, Origin::Gossip, now).expect_err("stale gossip");
    assert_eq!(err, Refusal::ClockSkew { created_ms: created, now_ms: now, skew_ms: 60 * S });
    assert_eq!(err.verdict(), Verdict::Ignore);
    assert_eq!(f.engine.state_hash(now), before);
    // The same message fetched by sync is judged by its signed time alone.
    assert_eq!(f.engine.apply(&v, Origin::Sync, now), Ok(vec![v.id()]));
    assert_eq!(f.engine.apply(&v, Origin::Sync, now), Err(Refusal::Duplicate));
}

#[test]
fn messages_before_their_proposal_wait_for_it() {
    let mut f = Fed::new(&[Core, Trusted]);
    let p = f.propose(0, config(DecisionRule::SimpleMajority, Weighting::Trust), &[]);
    let v = f.vote(1, &p, Choice::Yes);
    assert_eq!(f.apply(&v), Err(Refusal::Pending(Dependency::Proposal(p.id()))));
    assert_eq!(f.apply(&p), Ok(vec![p.id(), v.id()]));
    assert_eq!(f.engine.tally(&p.id(), VOTE_END).expect("tally").counted, vec![v.id()]);
}

#[test]
fn non_governance_messages_are_not_the_engines() {
    let (mut f, _) = setup();
    let m = f.sign(
        0,
        T0,
        Payload::BroadcastAnnounce(BroadcastAnnounce { text: "x".into(), topic: "y".into() }),
    );
    refused(&mut f, &m, Refusal::NotGovernance(kos_protocol::MessageType::BroadcastAnnounce));
}

#[test]
fn a_backdated_revision_or_withdrawal_cannot_void_the_ballots() {
    // The proposer signs a revision and a withdrawal dated "before voting", but shows them only
    // after members voted (as sync or a local API would deliver them). The ballots stand.
    let (mut f, p) = setup();
    let v1 = f.vote(1, &p, Choice::Yes);
    let v2 = f.vote(2, &p, Choice::Yes);
    f.apply_all(&[v1.clone(), v2.clone()]);
    let before = f.engine.tally(&p.id(), VOTE_END).expect("tally");
    let revision = f.sign(
        0,
        VOTE_START - 1,
        Payload::Revision(Revision {
            title: "Backdated".into(),
            action: Action::None,
            options: vec![],
            proposal: p.id(),
            revision: 1,
            federation: f.id(),
            description: "Voids the votes".into(),
        }),
    );
    let withdraw = f.sign(
        0,
        VOTE_START - 1,
        Payload::Withdraw(Withdraw { proposal: p.id(), federation: f.id(), reason: None }),
    );
    // Both are validly signed in their window, so they are recorded...
    f.apply(&revision).expect("revision recorded");
    f.apply(&withdraw).expect("withdrawal recorded");
    // ...but neither takes effect: no ballot named revision 1, and members had voted.
    let after = f.engine.tally(&p.id(), VOTE_END).expect("tally");
    assert_eq!(after.revision, 0);
    assert_eq!(after.counted, before.counted);
    assert_eq!(f.engine.status(&p.id(), VOTE_START + 2 * S), Some(Status::Voting));
    // In any order: the same state.
    let mut g = Fed::new(&[Core, Trusted, Standard, Sandbox, Quarantine]);
    for m in [&withdraw, &revision, &v2, &p, &v1] {
        let _ = g.engine.apply(m, Origin::Sync, VOTE_END);
    }
    assert_eq!(g.engine.state_hash(VOTE_END + S), f.engine.state_hash(VOTE_END + S));
}

/// An edit of a voting configuration.
type Edit<'a> = &'a dyn Fn(&mut VotingConfig);

/// A proposal of `kind` by member `who` with the type's default configuration, edited.
fn proposal_with(f: &Fed, who: usize, kind: ProposalType, edit: Edit, options: &[&str]) -> Message {
    let Payload::Charter(charter) = f.charter.payload() else { unreachable!() };
    let mut c = kos_engine::type_config(charter, kind);
    edit(&mut c);
    f.sign(who, T0 + S, Payload::Proposal(f.proposal_body(kind, Some(c), options)))
}

#[test]
fn a_proposal_cannot_lower_the_bar_its_charter_set() {
    use ProposalType::{Configuration, ResourceAllocation};
    // A charter that configures configuration proposals (2/3, quorum 1/2) and lets them change
    // only their weighting.
    let mut f = Fed::with(&[Core, Trusted, Standard], 8, |c| {
        let mut config = kos_engine::default_config(Configuration);
        config.rule = DecisionRule::Supermajority(Ratio(2, 3));
        config.quorum = Ratio(1, 2);
        c.defaults = vec![TypeDefault {
            kind: Configuration,
            config,
            overrides: vec![VotingField::Weighting],
        }];
    });
    let weaker: [(Edit, VotingField); 5] = [
        (&|c| c.rule = DecisionRule::SimpleMajority, VotingField::Rule),
        (&|c| c.rule = DecisionRule::Supermajority(Ratio(3, 5)), VotingField::Rule),
        (&|c| c.quorum = Ratio(3, 10), VotingField::Quorum),
        (&|c| c.veto = Ratio(1, 2), VotingField::Veto),
        (&|c| c.early_close = true, VotingField::EarlyClose),
    ];
    for (edit, field) in weaker {
        let m = proposal_with(&f, 0, Configuration, edit, &[]);
        refused(&mut f, &m, Refusal::WeakerVoting { kind: Configuration, field });
    }
    // Stricter settings, and the override the charter grants, are accepted.
    let stricter: [Edit; 6] = [
        &|c| c.rule = DecisionRule::Supermajority(Ratio(3, 4)),
        &|c| c.rule = DecisionRule::Consensus,
        &|c| c.quorum = Ratio(2, 3),
        &|c| c.veto = Ratio(1, 10),
        &|c| c.secret = true,
        &|c| c.weighting = Weighting::OnePersonOneVote,
    ];
    for (i, edit) in stricter.into_iter().enumerate() {
        let distinct = |c: &mut VotingConfig| {
            edit(c);
            c.sponsors = i as u16;
        };
        let m = proposal_with(&f, 0, Configuration, &distinct, &[]);
        f.apply(&m).unwrap_or_else(|e| panic!("stricter setting {i} refused: {e}"));
    }
    // A type the charter does not configure: resource allocations may put options to an
    // approval or ranked ballot and choose its weighting; nothing else may be relaxed.
    let mut f = Fed::with(&[Core, Trusted, Standard], 8, |c| c.defaults.clear());
    let options = |c: &mut VotingConfig| {
        c.rule = DecisionRule::Plurality;
        c.weighting = Weighting::Stake;
    };
    let m = proposal_with(&f, 1, ResourceAllocation, &options, &["a", "b"]);
    f.apply(&m).expect("an approval ballot over options");
    let m = proposal_with(&f, 1, ResourceAllocation, &|c| c.quorum = Ratio(1, 10), &[]);
    refused(
        &mut f,
        &m,
        Refusal::WeakerVoting { kind: ResourceAllocation, field: VotingField::Quorum },
    );
}
