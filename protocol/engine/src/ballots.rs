//! Counting one proposal: direct ballots, delegation, early close, the tally; statuses and the
//! attestations a member owes. Everything here costs O(electorate + ballots of the proposal) at
//! most, and is cached until a record it depends on changes.

use std::collections::{BTreeMap, BTreeSet};

use kos_protocol::{PublicKey, payload::*};

use crate::{
    Engine, Order, ProposalState, Receipt, ReceiptError, Status, Tally,
    tally::{self, merkle_proof, merkle_root},
};

impl Engine {
    /// Whether a delegation by `member` to `delegate` is void: the key records make the delegate
    /// one of the member's own keys (a key it rotated to after signing the delegation). A void
    /// delegation is kept but read as if it did not exist, as it would have been refused had the
    /// rotation been known.
    pub(crate) fn void_delegation(&self, member: &PublicKey, delegate: &Option<PublicKey>) -> bool {
        delegate.is_some_and(|d| self.keys.identity(&d) == *member)
    }

    /// The effective delegate of `member` for proposal `p`: its latest delegation signed before
    /// voting ends, the most specific scope first (type, then scope, then all); void delegations
    /// (to the member's own later key) are skipped.
    fn delegate_of(&self, p: &ProposalState, member: &PublicKey) -> Option<PublicKey> {
        let end = p.voting_end();
        let scopes = [
            DelegationScope::Kind(p.body.kind),
            DelegationScope::Scope(p.body.scope),
            DelegationScope::All,
        ];
        for scope in scopes {
            if let Some(history) = self.delegations.get(&(*member, scope))
                && let Some((_, (_, delegate))) = history
                    .iter()
                    .rev()
                    .find(|(_, (created, d))| *created < end && !self.void_delegation(member, d))
            {
                match delegate {
                    // A delegate named by any of its keys is the member.
                    Some(d) => return Some(self.keys.identity(d)),
                    // Revoked for this scope: fall back to a broader one.
                    None => continue,
                }
            }
        }
        None
    }

    /// The direct ballots of proposal `p`: voter → (counted message id, choice).
    fn direct_ballots(
        &self,
        p: &ProposalState,
        revision: u32,
    ) -> BTreeMap<PublicKey, (MessageId, Choice)> {
        let cutoff = self.early_close_at(p).unwrap_or(u64::MAX);
        let mut out = BTreeMap::new();
        if p.config.secret {
            for (voter, commits) in &p.commits {
                // The latest commitment on the counted revision counts, if revealed (and if the
                // revealed choice names only options that revision has).
                if let Some(c) = commits.values().rev().find(|c| c.revision == revision)
                    && let Some(choice) = p.reveals.get(&(*voter, c.commitment))
                    && p.fits(revision, choice)
                {
                    out.insert(*voter, (c.id, choice.clone()));
                }
            }
        } else {
            for (voter, votes) in &p.votes {
                // The latest vote on the counted revision counts if it names only options that
                // revision has; if not, the voter has no counted ballot (older votes stay
                // replaced).
                if let Some(v) =
                    votes.values().rev().find(|v| v.revision == revision && v.created_ms <= cutoff)
                    && p.fits(revision, &v.choice)
                {
                    out.insert(*voter, (v.id, v.choice.clone()));
                }
            }
        }
        out
    }

    /// When voting closes for good: the early-close time if the outcome was decided early
    /// (just after the deciding vote's signed time), else the end of voting (or of the reveal).
    pub(crate) fn effective_close(&self, p: &ProposalState) -> u64 {
        self.early_close_at(p).map_or(p.closes_at(), |t| t.saturating_add(1))
    }

    /// Early close (SPEC 4.3): the signed time of the first vote after which no use of the
    /// weight not yet cast could change the outcome. Weight "cast" is the direct voters' own
    /// weight only, since a delegator can still vote directly. Never for secret ballots or
    /// instant runoff. Votes signed after that time are kept but not counted.
    pub(crate) fn early_close_at(&self, p: &ProposalState) -> Option<u64> {
        if !p.config.early_close || p.config.secret || p.config.rule == DecisionRule::InstantRunoff
        {
            return None;
        }
        *p.cache.early_close.get_or_init(|| compute_early_close(p))
    }

    /// Counts proposal `id` as this node sees it: every counted ballot so far (a running tally
    /// while voting is open). `None` before voting opens or for an unknown proposal.
    pub fn tally(&self, id: &ProposalId, now_ms: u64) -> Option<Tally> {
        let p = self.proposals.get(id).filter(|p| p.active)?;
        if now_ms < p.voting_start() {
            return None;
        }
        Some(self.tally_of(p).clone())
    }

    pub(crate) fn tally_of<'a>(&self, p: &'a ProposalState) -> &'a Tally {
        p.cache.tally.get_or_init(|| self.count_proposal(p))
    }

    fn count_proposal(&self, p: &ProposalState) -> Tally {
        let reg = &p.registry;
        let weighting = p.config.weighting;
        let revision = p.current_revision();
        let direct = self.direct_ballots(p, revision);
        let max_depth = self.charter.as_ref().map_or(0, |c| c.max_delegation_depth);
        let mut weight_of: BTreeMap<PublicKey, u64> = BTreeMap::new();
        let has_delegations = !self.delegations.is_empty();
        for (key, m) in reg.members.iter() {
            let w = reg.weight(m, weighting);
            if w == 0 {
                continue;
            }
            // Direct votes override delegation; otherwise follow the chain to a direct voter.
            let mut at = *key;
            let mut target = direct.contains_key(&at).then_some(at);
            if target.is_none() && has_delegations {
                let mut seen = BTreeSet::from([at]);
                let mut depth = 0u8;
                while target.is_none() && depth < max_depth {
                    let Some(next) = self.delegate_of(p, &at) else { break };
                    if !seen.insert(next) || !reg.members.contains_key(&next) {
                        break; // a cycle, or a delegate who is not a member: ignored
                    }
                    depth += 1;
                    at = next;
                    if direct.contains_key(&at) {
                        target = Some(at);
                    }
                }
            }
            if let Some(t) = target {
                let slot = weight_of.entry(t).or_insert(0);
                *slot = slot.saturating_add(w);
            }
        }
        let ballots: Vec<(&Choice, u64)> = direct
            .iter()
            .filter_map(|(voter, (_, choice))| weight_of.get(voter).map(|w| (choice, *w)))
            .collect();
        let options = p.options(revision).map_or(0, <[String]>::len);
        let count = tally::count(
            p.config.rule,
            p.config.quorum,
            p.config.veto,
            p.eligible,
            options,
            &ballots,
        );
        let mut counted: Vec<MessageId> = direct.values().map(|(id, _)| *id).collect();
        counted.sort();
        Tally { proposal: p.id, revision, votes_root: merkle_root(&counted), counted, count }
    }

    /// The status of proposal `id` at `now_ms`. O(log n).
    pub fn status(&self, id: &ProposalId, now_ms: u64) -> Option<Status> {
        let p = self.proposals.get(id).filter(|p| p.active)?;
        Some(self.status_of(p, now_ms))
    }

    pub(crate) fn status_of(&self, p: &ProposalState, now_ms: u64) -> Status {
        if p.is_withdrawn() {
            return Status::Withdrawn;
        }
        let sponsored = p.sponsored();
        if now_ms < p.voting_start() {
            return if sponsored { Status::Discussion } else { Status::SeekingSponsors };
        }
        if !sponsored {
            return Status::Expired;
        }
        let close = self.effective_close(p);
        if now_ms < p.voting_end().min(close) {
            return Status::Voting;
        } else if now_ms < close {
            return Status::Reveal;
        }
        let Some(fin) = p.attestations.final_() else { return Status::Closed };
        match fin.key.outcome {
            Outcome::Rejected => Status::Rejected,
            Outcome::FailedQuorum => Status::FailedQuorum,
            Outcome::Vetoed => Status::Vetoed,
            Outcome::Approved => match self.executions.get(&p.id) {
                Some(e) if e.at_ms <= now_ms && e.result.is_ok() => Status::Executed,
                Some(e) if e.at_ms <= now_ms => Status::ExecutionFailed,
                _ => Status::Approved,
            },
        }
    }

    /// The attestations this node's identity `me` should sign now (`docs/governance.md` §6):
    /// for each closed proposal past its grace period, without a certificate, on which `me` is
    /// an eligible member — at most one prepare and one commit per round:
    ///
    /// - a **commit** in round `q` of the highest prepare quorum (round `q`, result `K`) if `me`
    ///   has not committed in round `q` nor prepared in a round after `q`;
    /// - a **prepare** in the current round `r` (one per `grace_ms` since the proposal closed
    ///   plus grace) if `me` has not prepared in round `r` or later and the quorum's round is
    ///   below `r`: of `K` (the lock) if there is a quorum, else of its own tally.
    ///
    /// Only proposals without a certificate are looked at.
    pub fn attestations_due(&self, me: &PublicKey, now_ms: u64) -> Vec<TallyAttestation> {
        // `me` signs at `now_ms`: a retired key attests nothing; a rotated-to one for its member.
        let Ok(signer) = self.signer(me, now_ms) else { return Vec::new() };
        let me = &signer.member;
        let mut out = Vec::new();
        for p in self.unsettled.iter().filter_map(|id| self.proposals.get(id)) {
            let Some(round) = self.attestation_round(p, now_ms) else { continue };
            if !matches!(self.status_of(p, now_ms), Status::Closed)
                || !p.registry.member(me).is_some_and(|m| {
                    m.trust != TrustLevel::Quarantine
                        && p.registry.weight(m, p.config.weighting) > 0
                })
            {
                continue;
            }
            out.extend(self.due_for(p, me, round));
        }
        out
    }

    /// The attestation round at `now_ms` of an active proposal past its close and grace.
    pub(crate) fn attestation_round(&self, p: &ProposalState, now_ms: u64) -> Option<u32> {
        if !p.active || now_ms < p.voting_start() {
            return None;
        }
        let start = self.effective_close(p).saturating_add(self.grace());
        let since = now_ms.checked_sub(start)?;
        Some(u32::try_from(since / self.round_ms()).unwrap_or(u32::MAX))
    }

    /// When the next attestation round of some unsettled proposal begins, after `now_ms`.
    pub(crate) fn next_round_at(&self, now_ms: u64) -> Option<u64> {
        let round_ms = self.round_ms();
        self.unsettled
            .iter()
            .filter_map(|id| self.proposals.get(id))
            .filter(|p| p.active)
            .filter_map(|p| {
                let start = self.effective_close(p).saturating_add(self.grace());
                let r = self.attestation_round(p, now_ms)?;
                Some(start.saturating_add((u64::from(r) + 1).saturating_mul(round_ms)))
            })
            .min()
    }

    /// The length of an attestation round: the grace period (at least 1 ms).
    pub(crate) fn round_ms(&self) -> u64 {
        self.grace().max(1)
    }

    /// What `me` owes on proposal `p` in attestation round `round`.
    fn due_for(&self, p: &ProposalState, me: &PublicKey, round: u32) -> Vec<TallyAttestation> {
        use AttestationPhase::{Commit, Prepare};
        let att = &p.attestations;
        let own = || {
            let t = self.tally_of(p);
            let key = crate::FinalKey {
                revision: t.revision,
                votes_root: t.votes_root,
                outcome: t.count.outcome,
                winner: t.count.winner,
            };
            let detail = crate::finality::Detail {
                totals: t.count.totals.clone(),
                counted: u32::try_from(t.counted.len()).unwrap_or(u32::MAX),
                eligible: t.count.eligible,
                participation: t.count.participation,
            };
            (key, detail)
        };
        let make = |phase, r, key: crate::FinalKey| {
            let (own_key, own_detail) = own();
            let detail = if own_key == key {
                own_detail
            } else {
                att.detail(&key).cloned().unwrap_or(own_detail)
            };
            TallyAttestation {
                phase,
                round: r,
                totals: detail.totals,
                winner: key.winner,
                counted: detail.counted,
                outcome: key.outcome,
                eligible: detail.eligible,
                proposal: p.id,
                revision: key.revision,
                federation: self.federation,
                votes_root: key.votes_root,
                participation: detail.participation,
            }
        };
        let last_prepare = att.last_round(me, Prepare);
        let lock = att.lock();
        let mut out = Vec::new();
        match self.weakening {
            crate::Weakening::ReattestFreely => {
                // The old rule: a commit of the own tally whenever it changed.
                let (key, _) = own();
                let latest = att.last_round(me, Commit);
                let same = latest
                    .and_then(|r| att.signed(me, Commit, r))
                    .is_some_and(|k| k.contains(&key));
                if !same && latest.is_none_or(|r| r < round) {
                    out.push(make(Commit, round, key));
                }
                return out;
            }
            crate::Weakening::IgnoreLock | crate::Weakening::None => {}
        }
        // Commit the highest prepare quorum, unless `me` prepared after its round.
        // (A quorum of a round this node's clock has not reached waits for it: an attestation
        // of round q is valid only from that round's start.)
        if let Some((q, key)) = lock
            && q <= round
            && last_prepare.is_none_or(|r| r <= q)
            && att.signed(me, Commit, q).is_none()
        {
            out.push(make(Commit, q, key));
        }
        // Prepare in this round: the lock if any (its round must be below this one), else the
        // own tally.
        let free = last_prepare.is_none_or(|r| r < round);
        let below = lock.is_none_or(|(q, _)| q < round);
        if free && below {
            let key = match lock {
                Some((_, key)) if self.weakening != crate::Weakening::IgnoreLock => key,
                _ => own().0,
            };
            out.push(make(Prepare, round, key));
        }
        out
    }

    /// A known proposal: its author, its body, the revision in force and its voting
    /// configuration.
    pub fn proposal(&self, id: &ProposalId) -> Option<(PublicKey, &Proposal, u32, &VotingConfig)> {
        let p = self.proposals.get(id).filter(|p| p.active)?;
        Some((p.author, &p.body, p.current_revision(), &p.config))
    }

    /// The options of revision `revision` of a known proposal.
    pub fn options(&self, id: &ProposalId, revision: u32) -> Option<&[String]> {
        self.proposals.get(id).filter(|p| p.active)?.options(revision)
    }

    /// Ids of known (active) proposals.
    pub fn proposals(&self) -> impl Iterator<Item = &ProposalId> {
        self.proposals.values().filter(|p| p.active).map(|p| &p.id)
    }

    /// The registry version proposal `id` is weighed against, and its total eligible weight.
    pub fn electorate(&self, id: &ProposalId) -> Option<(&crate::Registry, u64)> {
        let p = self.proposals.get(id).filter(|p| p.active)?;
        Some((&p.registry, p.eligible))
    }

    /// The inclusion receipt of `voter`'s counted ballot under proposal `id`'s certified root.
    pub fn receipt(&self, id: &ProposalId, voter: &PublicKey) -> Result<Receipt, ReceiptError> {
        let p = self.proposals.get(id).filter(|p| p.active).ok_or(ReceiptError::UnknownProposal)?;
        let fin = p.attestations.final_().ok_or(ReceiptError::NotFinal)?;
        let counted = match &p.certified_counted {
            Some(c) => c.clone(),
            None => {
                let t = self.tally_of(p);
                if t.votes_root != fin.key.votes_root {
                    return Err(ReceiptError::RootUnknown);
                }
                t.counted.clone()
            }
        };
        let mine: BTreeSet<MessageId> = if p.config.secret {
            p.commits.get(voter).map(|h| h.values().map(|c| c.id).collect()).unwrap_or_default()
        } else {
            p.votes.get(voter).map(|h| h.values().map(|v| v.id).collect()).unwrap_or_default()
        };
        let ballot =
            counted.iter().find(|id| mine.contains(id)).copied().ok_or(ReceiptError::NotCounted)?;
        let proof = merkle_proof(&counted, &ballot).ok_or(ReceiptError::NotCounted)?;
        Ok(Receipt { proposal: *id, voter: *voter, ballot, votes_root: fin.key.votes_root, proof })
    }
}

fn compute_early_close(p: &ProposalState) -> Option<u64> {
    let reg = &p.registry;
    let weighting = p.config.weighting;
    let revision = p.current_revision();
    let options = p.options(revision).map_or(0, <[String]>::len);
    let eligible = p.eligible;
    let mut events: Vec<(u64, Order, &PublicKey, &Choice)> = p
        .votes
        .iter()
        .flat_map(|(voter, votes)| {
            votes
                .iter()
                .filter(|(_, v)| v.revision == revision && v.created_ms < p.voting_end())
                .map(move |(order, v)| (v.created_ms, *order, voter, &v.choice))
        })
        .collect();
    events.sort_by_key(|e| (e.0, e.1));
    let mut best: BTreeMap<&PublicKey, (Order, &Choice)> = BTreeMap::new();
    let mut i = 0;
    while i < events.len() {
        let t = events[i].0;
        while i < events.len() && events[i].0 == t {
            let (_, order, voter, choice) = events[i];
            if best.get(voter).is_none_or(|(o, _)| *o < order) {
                best.insert(voter, (order, choice));
            }
            i += 1;
        }
        let ballots: Vec<(&Choice, u64)> = best
            .iter()
            .filter(|(_, (_, c))| p.fits(revision, c))
            .filter_map(|(voter, (_, c))| reg.member(voter).map(|m| (*c, reg.weight(m, weighting))))
            .collect();
        let cast = ballots.iter().fold(0u64, |a, (_, w)| a.saturating_add(*w));
        let free = eligible.saturating_sub(cast);
        // The free weight's extreme uses: not voting, or all of it on one choice.
        let extremes: Vec<Choice> = if p.config.rule.is_binary() {
            vec![Choice::Yes, Choice::No, Choice::Abstain, Choice::Veto]
        } else {
            (0..options)
                .filter_map(|o| u16::try_from(o).ok())
                .map(|o| Choice::Approve(vec![o]))
                .collect()
        };
        let outcome_with = |extra: Option<&Choice>| {
            let mut all = ballots.clone();
            if let Some(c) = extra {
                all.push((c, free));
            }
            let c = tally::count(
                p.config.rule,
                p.config.quorum,
                p.config.veto,
                eligible,
                options,
                &all,
            );
            (c.outcome, c.winner)
        };
        let now = outcome_with(None);
        if extremes.iter().all(|c| outcome_with(Some(c)) == now) {
            return Some(t);
        }
    }
    None
}
