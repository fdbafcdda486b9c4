//! Judging one message: the membership gate, each message type's rules, and recording it.

use std::{collections::BTreeMap, sync::Arc};

use kos_protocol::{Message, Payload, PublicKey, payload::*, vote_commitment};

use crate::{
    Caches, CommentRec, CommitRec, Dependency, Engine, ProposalState, Refusal, RevisionRec,
    VoteRec, ZERO_ID, finality::Attestations, registry::Registry, required_trust, trust_rank,
};

/// Whether `action` fits a proposal of type `kind`.
pub(crate) fn action_fits(kind: ProposalType, action: &Action) -> bool {
    use ProposalType as K;
    match action {
        Action::None => !matches!(
            kind,
            K::Configuration
                | K::TrustAdjustment
                | K::Membership
                | K::EmergencyAction
                | K::ProtocolUpgrade
        ),
        Action::Configuration { .. } => kind == K::Configuration,
        Action::TrustAdjustment { .. } => kind == K::TrustAdjustment,
        Action::AddMember(_) | Action::RemoveMember(_) => kind == K::Membership,
        Action::PolicyUpdate(_) => matches!(
            kind,
            K::ServicePolicy | K::AgentBehavior | K::SecurityPolicy | K::ConstitutionalChange
        ),
        Action::ProtocolUpgrade(_) => kind == K::ProtocolUpgrade,
        Action::Quarantine(_) => kind == K::EmergencyAction,
        Action::Rollback(_) => kind != K::EmergencyAction,
    }
}

/// The federation a governance payload names, or `None` for other message types.
fn federation_of(payload: &Payload) -> Option<FederationId> {
    Some(match payload {
        Payload::Proposal(p) => p.federation,
        Payload::Revision(r) => r.federation,
        Payload::Sponsor(s) => s.federation,
        Payload::Withdraw(w) => w.federation,
        Payload::Comment(c) => c.federation,
        Payload::Vote(v) => v.federation,
        Payload::VoteCommit(v) => v.federation,
        Payload::VoteReveal(v) => v.federation,
        Payload::TallyAttestation(a) => a.federation,
        Payload::Delegation(d) => d.federation,
        _ => return None,
    })
}

fn in_window(created: u64, start: u64, end: u64) -> Result<(), Refusal> {
    if created < start || created >= end {
        return Err(Refusal::OutsideWindow { created_ms: created, start_ms: start, end_ms: end });
    }
    Ok(())
}

/// A ballot's validity: its form always; its option indices only on revision 0, whose options
/// one message (the proposal) fixes. Revision `n ≥ 1` may have competing REVISION messages with
/// different options (the lowest id stands), so there the indices are checked when counting,
/// against the standing revision ([`crate::ProposalState::fits`]): a ballot that names an
/// option it lacks is kept and counts for nothing, whichever revision arrived first.
fn check_ballot(p: &ProposalState, revision: u32, choice: &Choice) -> Result<(), Refusal> {
    let options =
        p.options(revision).ok_or(Refusal::Pending(Dependency::Revision(p.id, revision)))?;
    if revision == 0 {
        ballot_form(p.config.rule, options, choice)
    } else {
        match ballot_form(p.config.rule, options, choice) {
            Err(Refusal::NoSuchOption(_)) => Ok(()),
            other => other,
        }
    }
}

/// Whether a ballot's form fits the decision rule and names only options that exist:
/// yes/no/abstain/veto under a binary rule, `approve` under plurality, `rank` under instant
/// runoff ([`Refusal::WrongBallot`], [`Refusal::NoSuchOption`] otherwise).
pub fn ballot_form(rule: DecisionRule, options: &[String], choice: &Choice) -> Result<(), Refusal> {
    let indices = match (rule, choice) {
        (r, Choice::Yes | Choice::No | Choice::Abstain | Choice::Veto) if r.is_binary() => {
            return Ok(());
        }
        (DecisionRule::Plurality, Choice::Approve(v)) => v,
        (DecisionRule::InstantRunoff, Choice::Rank(v)) => v,
        _ => return Err(Refusal::WrongBallot),
    };
    match indices.iter().find(|&&i| usize::from(i) >= options.len()) {
        Some(&i) => Err(Refusal::NoSuchOption(i)),
        None => Ok(()),
    }
}

fn eligible_voter(p: &ProposalState, key: &PublicKey) -> Result<(), Refusal> {
    let m = p.registry.member(key).ok_or(Refusal::NotMember)?;
    if m.trust == TrustLevel::Quarantine {
        return Err(Refusal::Quarantined);
    }
    if p.registry.weight(m, p.config.weighting) == 0 {
        return Err(Refusal::ZeroWeight);
    }
    Ok(())
}

impl Engine {
    /// The active proposal `id`, or a dependency on it.
    fn known_proposal(&self, id: &ProposalId) -> Result<&ProposalState, Refusal> {
        self.proposals
            .get(id)
            .filter(|p| p.active)
            .ok_or(Refusal::Pending(Dependency::Proposal(*id)))
    }

    fn proposal_mut(&mut self, id: &ProposalId) -> Result<&mut ProposalState, Refusal> {
        self.proposals.get_mut(id).ok_or(Refusal::Pending(Dependency::Proposal(*id)))
    }

    /// Decides whether `msg` is valid given what is known, and records it if so. On success
    /// returns the dependencies the message satisfies.
    pub(crate) fn judge(&mut self, msg: &Message) -> Result<Vec<Dependency>, Refusal> {
        let author = msg.author();
        let created = msg.header().created_ms;
        let id = msg.id();
        if let Payload::Charter(c) = msg.payload() {
            if id != self.federation {
                return Err(Refusal::WrongFederation);
            }
            if !c.members.iter().any(|m| m.key == author) {
                return Err(Refusal::CharterAuthor);
            }
            if self.dry_run {
                return Ok(vec![]);
            }
            self.charter = Some(c.clone());
            self.init_chain(Registry::from_charter(c));
            return Ok(vec![Dependency::Charter]);
        }
        match msg.payload() {
            Payload::KeyRotation(r) => return self.judge_rotation(id, author, created, r),
            Payload::Revocation(r) => return self.judge_revocation(id, author, created, r),
            _ => {}
        }
        // The membership gate: nothing from a key that is a member of no known registry version
        // is kept, held or judged further.
        let Some(federation) = federation_of(msg.payload()) else {
            return Err(Refusal::NotGovernance(msg.payload().message_type()));
        };
        if federation != self.federation {
            return Err(Refusal::WrongFederation);
        }
        if self.charter.is_none() {
            return Err(Refusal::Pending(Dependency::Charter));
        }
        // From here on `author` is the member's identity: the signing key resolved at the
        // message's signed time (a rotated key's messages are kept under the member).
        let signer = self.signer(&author, created)?;
        let author = signer.member;
        let order = |seq: u64| (signer.generation, seq, id);
        match msg.payload() {
            Payload::Proposal(p) => self.judge_proposal(id, author, created, p),
            Payload::Revision(r) => {
                let p = self.known_proposal(&r.proposal)?;
                if author != p.author {
                    return Err(Refusal::NotProposer);
                }
                in_window(created, 0, p.voting_start())?;
                if !action_fits(p.body.kind, &r.action) {
                    return Err(Refusal::ActionMismatch(p.body.kind));
                }
                if p.config.rule.is_binary() != r.options.is_empty() {
                    return Err(Refusal::OptionsMismatch);
                }
                if r.revision > 1 && !p.revisions.contains_key(&(r.revision - 1)) {
                    return Err(Refusal::Pending(Dependency::Revision(r.proposal, r.revision - 1)));
                }
                let (pid, n) = (r.proposal, r.revision);
                // Competing revisions with one number: the lowest message id stands.
                if p.revisions.get(&n).is_some_and(|existing| existing.id < id) {
                    return Err(Refusal::ConflictingRevision(n));
                }
                if self.dry_run {
                    return Ok(vec![]);
                }
                let p = self.proposal_mut(&pid)?;
                p.revisions.insert(n, RevisionRec { id, body: r.clone() });
                p.cache.clear();
                // The action may have changed: an execution already in the chain is redone.
                self.touch(&pid, true);
                Ok(vec![Dependency::Revision(pid, n)])
            }
            Payload::Sponsor(s) => {
                let p = self.known_proposal(&s.proposal)?;
                if author == p.author {
                    return Err(Refusal::SelfReference);
                }
                p.registry.member(&author).ok_or(Refusal::NotMember)?;
                in_window(created, 0, p.voting_start())?;
                if self.dry_run {
                    return Ok(vec![]);
                }
                let p = self.proposal_mut(&s.proposal)?;
                let slot = p.sponsors.entry(author).or_insert(id);
                *slot = (*slot).min(id);
                p.cache.digest.take();
                self.touch(&s.proposal, false);
                Ok(vec![])
            }
            Payload::Withdraw(w) => {
                let p = self.known_proposal(&w.proposal)?;
                if author != p.author {
                    return Err(Refusal::NotProposer);
                }
                in_window(created, 0, p.voting_start())?;
                if self.dry_run {
                    return Ok(vec![]);
                }
                let p = self.proposal_mut(&w.proposal)?;
                p.withdrawn = Some(p.withdrawn.map_or(id, |prev| prev.min(id)));
                p.cache.digest.take();
                self.touch(&w.proposal, false);
                Ok(vec![])
            }
            Payload::Comment(c) => {
                let p = self.known_proposal(&c.proposal)?;
                let member = p.registry.member(&author).ok_or(Refusal::NotMember)?;
                if c.kind == CommentKind::Summary
                    && author != p.author
                    && !member.roles.contains(&Role::Mediator)
                {
                    return Err(Refusal::NotMediator);
                }
                in_window(created, 0, p.voting_end())?;
                if c.revision > 0 && !p.revisions.contains_key(&c.revision) {
                    return Err(Refusal::Pending(Dependency::Revision(c.proposal, c.revision)));
                }
                if let Some(parent) = c.parent
                    && !p.comments.contains_key(&parent)
                {
                    // A known comment on another proposal is an error; otherwise wait.
                    if self.comment_owner.contains_key(&parent) {
                        return Err(Refusal::ParentMismatch);
                    }
                    return Err(Refusal::Pending(Dependency::Comment(parent)));
                }
                let rec =
                    CommentRec { author, kind: c.kind, parent: c.parent, revision: c.revision };
                if self.dry_run {
                    return Ok(vec![]);
                }
                let p = self.proposal_mut(&c.proposal)?;
                p.comments.insert(id, rec);
                p.cache.digest.take();
                self.comment_owner.insert(id, c.proposal);
                Ok(vec![Dependency::Comment(id)])
            }
            Payload::Vote(v) => {
                let p = self.known_proposal(&v.proposal)?;
                if p.config.secret {
                    return Err(Refusal::SecretBallot);
                }
                eligible_voter(p, &author)?;
                in_window(created, p.voting_start(), p.voting_end())?;
                if p.config.reasoning && v.reason.is_none() {
                    return Err(Refusal::MissingReason);
                }
                check_ballot(p, v.revision, &v.choice)?;
                let rec = VoteRec {
                    id,
                    created_ms: created,
                    revision: v.revision,
                    choice: v.choice.clone(),
                };
                if self.dry_run {
                    return Ok(vec![]);
                }
                let p = self.proposal_mut(&v.proposal)?;
                p.votes.entry(author).or_default().insert(order(msg.header().seq), rec);
                self.ballot_recorded(&v.proposal, &author, v.revision);
                Ok(vec![])
            }
            Payload::VoteCommit(v) => {
                let p = self.known_proposal(&v.proposal)?;
                if !p.config.secret {
                    return Err(Refusal::NotSecret);
                }
                eligible_voter(p, &author)?;
                in_window(created, p.voting_start(), p.voting_end())?;
                if p.options(v.revision).is_none() {
                    return Err(Refusal::Pending(Dependency::Revision(v.proposal, v.revision)));
                }
                let rec = CommitRec {
                    id,
                    key: msg.author(),
                    revision: v.revision,
                    commitment: v.commitment,
                };
                if self.dry_run {
                    return Ok(vec![]);
                }
                let p = self.proposal_mut(&v.proposal)?;
                p.commits.entry(author).or_default().insert(order(msg.header().seq), rec);
                self.ballot_recorded(&v.proposal, &author, v.revision);
                Ok(vec![Dependency::Commit(v.proposal, author.to_bytes())])
            }
            Payload::VoteReveal(v) => {
                let p = self.known_proposal(&v.proposal)?;
                if !p.config.secret {
                    return Err(Refusal::NotSecret);
                }
                eligible_voter(p, &author)?;
                in_window(created, p.voting_end(), p.closes_at())?;
                if p.config.reasoning && v.reason.is_none() {
                    return Err(Refusal::MissingReason);
                }
                check_ballot(p, v.revision, &v.choice)?;
                // A reveal that opens none of the voter's commitments known here is held until
                // another commitment of the voter arrives: it cannot be told apart from the
                // reveal of a commitment still on its way (a later one, say).
                let wait = Refusal::Pending(Dependency::Commit(v.proposal, author.to_bytes()));
                let Some(commits) = p.commits.get(&author) else { return Err(wait) };
                // The commitment binds the key that signed the commit: after a rotation the
                // member reveals under its new key what it committed under the old one.
                let opens = |c: &CommitRec| {
                    c.revision == v.revision
                        && c.commitment
                            == vote_commitment(
                                &v.federation,
                                &v.proposal,
                                &c.key,
                                v.revision,
                                &v.salt,
                                &v.choice,
                            )
                };
                let Some(commitment) = commits.values().find(|c| opens(c)).map(|c| c.commitment)
                else {
                    return Err(wait);
                };
                if p.reveals.contains_key(&(author, commitment)) {
                    return Err(Refusal::DoubleReveal);
                }
                if self.dry_run {
                    return Ok(vec![]);
                }
                let p = self.proposal_mut(&v.proposal)?;
                p.reveals.insert((author, commitment), v.choice.clone());
                p.cache.clear();
                self.after_ballot(&v.proposal);
                Ok(vec![])
            }
            Payload::TallyAttestation(a) => {
                let grace = self.grace();
                let round_ms = self.round_ms();
                let p = self.known_proposal(&a.proposal)?;
                eligible_voter(p, &author)?;
                // A static bound (independent of which votes have arrived): the earliest moment
                // voting can close, plus grace, plus one grace period per round.
                let earliest_close =
                    if p.config.early_close { p.voting_start() } else { p.closes_at() };
                let opens = earliest_close
                    .saturating_add(grace)
                    .saturating_add(u64::from(a.round).saturating_mul(round_ms));
                in_window(created, opens, u64::MAX)?;
                if p.options(a.revision).is_none() {
                    return Err(Refusal::Pending(Dependency::Revision(a.proposal, a.revision)));
                }
                let key = crate::FinalKey {
                    revision: a.revision,
                    votes_root: a.votes_root,
                    outcome: a.outcome,
                    winner: a.winner,
                };
                if self.dry_run {
                    return Ok(vec![]);
                }
                let pid = a.proposal;
                let p = self.proposal_mut(&pid)?;
                let weight = p.weight(&author);
                let (eligible, registry, weighting) =
                    (p.eligible, Arc::clone(&p.registry), p.config.weighting);
                let view = crate::AttestationView {
                    member: author,
                    phase: a.phase,
                    round: a.round,
                    key,
                    at_ms: created,
                };
                let detail = crate::finality::Detail {
                    totals: a.totals.clone(),
                    counted: a.counted,
                    eligible: a.eligible,
                    participation: a.participation,
                };
                let changed = p.attestations.insert(
                    author,
                    order(msg.header().seq),
                    created,
                    view,
                    detail,
                    weight,
                    eligible,
                    |k| registry.member(k).map_or(0, |m| registry.weight(m, weighting)),
                );
                if changed {
                    p.cache.digest.take();
                    self.unsettled.remove(&pid);
                    self.touch(&pid, false);
                }
                self.snapshot_certified(&pid);
                Ok(vec![])
            }
            Payload::Delegation(d) => {
                // To the member's own key as of the signed time (its identity, the signing key or
                // one before it, all known whenever the signer is): refused. A key the member
                // rotates to only later may be unknown here: such a delegation is kept and, once
                // the key records say whose key it is, ignored (`Engine::delegate_of`) — never
                // refused, so arrival order does not matter.
                let own_key = |k: &PublicKey| {
                    *k == author
                        || self
                            .keys
                            .get(k)
                            .is_some_and(|r| r.member == author && r.from_ms <= created)
                };
                if d.delegate.as_ref().is_some_and(own_key) {
                    return Err(Refusal::SelfReference);
                }
                if self.dry_run {
                    return Ok(vec![]);
                }
                self.delegations
                    .entry((author, d.scope))
                    .or_default()
                    .insert(order(msg.header().seq), (created, d.delegate));
                self.delegations_digest.take();
                // Counts for proposals whose voting ends after it was signed.
                let affected: Vec<ProposalId> = self
                    .by_voting_end
                    .range((created.saturating_add(1), ZERO_ID)..)
                    .map(|(_, pid)| *pid)
                    .collect();
                for pid in affected {
                    if let Some(p) = self.proposals.get_mut(&pid) {
                        p.cache.clear();
                    }
                    self.mark(pid);
                    self.after_ballot(&pid);
                }
                Ok(vec![])
            }
            other => Err(Refusal::NotGovernance(other.message_type())),
        }
    }

    fn judge_proposal(
        &mut self,
        id: ProposalId,
        author: PublicKey,
        created: u64,
        p: &Proposal,
    ) -> Result<Vec<Dependency>, Refusal> {
        let charter = self.charter.as_ref().ok_or(Refusal::Pending(Dependency::Charter))?;
        let timing = charter.timing.clone();
        let config = crate::voting_config(charter, p);
        // Rules that depend on the message alone come first: they are final.
        let t = &p.timeline;
        if created > t.discussion_end_ms {
            return Err(Refusal::BadTimeline("created after discussion ends"));
        }
        if t.discussion_end_ms - created < timing.min_discussion_ms {
            return Err(Refusal::BadTimeline("discussion shorter than the charter's minimum"));
        }
        let voting = t.voting_ms();
        if voting < timing.min_voting_ms || voting > timing.max_voting_ms {
            return Err(Refusal::BadTimeline("voting window outside the charter's bounds"));
        }
        if config.secret != t.reveal_end_ms.is_some() {
            return Err(Refusal::BadTimeline(
                "a reveal window is required exactly for secret ballots",
            ));
        }
        if !action_fits(p.kind, &p.action) {
            return Err(Refusal::ActionMismatch(p.kind));
        }
        if config.rule.is_binary() != p.options.is_empty() {
            return Err(Refusal::OptionsMismatch);
        }
        crate::check_voting(charter, p)?;
        // The registry version it pins, by content hash: unknown (or not in force when the
        // proposal was signed) means held, never refused.
        let reg = self
            .version_for(&p.registry.hash, created)
            .ok_or(Refusal::Pending(Dependency::Registry(p.registry.hash)))?;
        let member = reg.member(&author).ok_or(Refusal::NotMember)?;
        let required = required_trust(p.kind);
        let security_board = p.kind == ProposalType::EmergencyAction
            && reg.on_body(BodyKind::SecurityBoard, &author);
        if trust_rank(member.trust) < trust_rank(required) && !security_board {
            return Err(Refusal::InsufficientTrust {
                kind: p.kind,
                required,
                actual: member.trust,
            });
        }
        let weighting = config.weighting;
        let eligible =
            reg.members.values().fold(0u64, |acc, m| acc.saturating_add(reg.weight(m, weighting)));
        if self.dry_run {
            return Ok(vec![]);
        }
        let state = ProposalState {
            id,
            author,
            created_ms: created,
            body: p.clone(),
            registry: reg,
            eligible,
            active: true,
            attestations: Attestations::default(),
            config,
            revisions: BTreeMap::new(),
            sponsors: BTreeMap::new(),
            withdrawn: None,
            named_by_ballots: None,
            votes: BTreeMap::new(),
            commits: BTreeMap::new(),
            reveals: BTreeMap::new(),
            comments: BTreeMap::new(),
            certified_counted: None,
            applied: std::collections::BTreeSet::new(),
            cache: Caches::default(),
        };
        let grace = timing.grace_ms;
        let close = state.closes_at();
        self.wake.extend([
            state.voting_start(),
            state.voting_end(),
            close,
            close.saturating_add(grace),
            close.saturating_add(grace).saturating_add(t.execution_delay_ms),
        ]);
        self.by_created.insert((created, id));
        self.by_voting_end.insert((state.voting_end(), id));
        self.unsettled.insert(id);
        self.proposals.insert(id, state);
        Ok(vec![Dependency::Proposal(id), Dependency::Revision(id, 0)])
    }

    /// After a VOTE or VOTE_COMMIT by `voter` on `revision`: the revision in force and a
    /// withdrawal's effect may change (and with them the action an execution applies).
    fn ballot_recorded(&mut self, pid: &ProposalId, voter: &PublicKey, revision: u32) {
        let Some(p) = self.proposals.get_mut(pid) else { return };
        let before = (p.current_revision(), p.is_withdrawn());
        p.note_ballot(voter, revision);
        p.cache.clear();
        let changed = (p.current_revision(), p.is_withdrawn()) != before;
        if changed {
            self.touch(pid, true);
        }
        self.after_ballot(pid);
    }

    /// After a ballot or delegation change on `pid`: the tally and the early close may move.
    pub(crate) fn after_ballot(&mut self, pid: &ProposalId) {
        let Some(p) = self.proposals.get(pid) else { return };
        if p.config.early_close {
            if let Some(t) = self.early_close_at(p) {
                let grace = self.grace();
                let close = t.saturating_add(1);
                self.wake.extend([
                    close,
                    close.saturating_add(grace),
                    close.saturating_add(grace).saturating_add(p.body.timeline.execution_delay_ms),
                ]);
            }
            self.touch(pid, false);
        }
        self.snapshot_certified(pid);
    }

    /// Keeps the counted ballots under the certified root once this node's own count matches it
    /// (for inclusion receipts after later, uncounted ballots arrive).
    fn snapshot_certified(&mut self, pid: &ProposalId) {
        let Some(p) = self.proposals.get(pid) else { return };
        if p.certified_counted.is_some() {
            return;
        }
        let Some(fin) = p.attestations.final_() else { return };
        let t = self.tally_of(p);
        if t.votes_root == fin.key.votes_root {
            let counted = t.counted.clone();
            if let Some(p) = self.proposals.get_mut(pid) {
                p.certified_counted = Some(counted);
            }
        }
    }
}
