//! Read-only views for operators: a proposal's records (revisions, sponsors, discussion thread,
//! finality progress) and the delegation graph. Pure functions of the engine's state; nothing here
//! changes it.

use std::collections::{BTreeMap, BTreeSet};

use kos_protocol::{PublicKey, payload::*};

use crate::{Engine, finality::FinalKey};

/// One revision of a proposal (revision 0 is the proposal itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevisionView<'a> {
    /// Revision number.
    pub revision: u32,
    /// The message that published it.
    pub id: MessageId,
    /// Title.
    pub title: &'a str,
    /// Description.
    pub description: &'a str,
    /// Action.
    pub action: &'a Action,
    /// Options.
    pub options: &'a [String],
}

/// One comment of a proposal's discussion (its text is in the stored message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommentView {
    /// The comment's message id.
    pub id: MessageId,
    /// Its author.
    pub author: PublicKey,
    /// Its kind.
    pub kind: CommentKind,
    /// The comment it replies to.
    pub parent: Option<MessageId>,
    /// The revision it comments on.
    pub revision: u32,
}

/// Everything a node holds about one proposal.
#[derive(Clone, Debug)]
pub struct ProposalRecord<'a> {
    /// The proposal's id.
    pub id: ProposalId,
    /// Its author.
    pub author: PublicKey,
    /// Its signed time.
    pub created_ms: u64,
    /// The proposal as first published.
    pub body: &'a Proposal,
    /// Every known revision, revision 0 (the proposal) first, in order.
    pub revisions: Vec<RevisionView<'a>>,
    /// The revision in force.
    pub current_revision: u32,
    /// The effective voting configuration.
    pub config: &'a VotingConfig,
    /// Sponsors and their sponsorship messages.
    pub sponsors: Vec<(PublicKey, MessageId)>,
    /// The withdrawal, if one was published and takes effect.
    pub withdrawn: Option<MessageId>,
    /// The discussion, by message id (order them by their signed time).
    pub comments: Vec<CommentView>,
    /// Total eligible weight of the electorate.
    pub eligible: u64,
    /// The attested result with the most weight so far, and that weight (finality needs 2/3 of
    /// `eligible`).
    pub leading_attestation: Option<(FinalKey, u64)>,
    /// Secret ballots: members who have committed a ballot, and those of them whose commitment
    /// has been revealed (0 and 0 on a public ballot).
    pub committed: usize,
    /// See `committed`.
    pub revealed: usize,
}

/// Where a member's vote goes for one delegation scope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DelegationEdge {
    /// Who delegates.
    pub delegator: PublicKey,
    /// To whom.
    pub delegate: PublicKey,
    /// The scope of the delegation message.
    pub scope: DelegationScope,
    /// The delegation message.
    pub id: MessageId,
    /// Its signed time.
    pub created_ms: u64,
}

/// A member whose vote reaches another through a chain of delegations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delegator {
    /// The member delegating.
    pub member: PublicKey,
    /// Steps from `member` to the delegate (1: directly).
    pub depth: u8,
    /// The next member on the chain (the delegate itself when `depth` is 1).
    pub via: PublicKey,
}

impl Engine {
    /// Everything known about proposal `id`, or `None` if it is unknown or inactive.
    pub fn record(&self, id: &ProposalId) -> Option<ProposalRecord<'_>> {
        let p = self.proposals.get(id).filter(|p| p.active)?;
        let mut revisions = vec![RevisionView {
            revision: 0,
            id: p.id,
            title: &p.body.title,
            description: &p.body.description,
            action: &p.body.action,
            options: &p.body.options,
        }];
        revisions.extend(p.revisions.iter().map(|(n, r)| RevisionView {
            revision: *n,
            id: r.id,
            title: &r.body.title,
            description: &r.body.description,
            action: &r.body.action,
            options: &r.body.options,
        }));
        Some(ProposalRecord {
            id: p.id,
            author: p.author,
            created_ms: p.created_ms,
            body: &p.body,
            revisions,
            current_revision: p.current_revision(),
            config: &p.config,
            sponsors: p.sponsors.iter().map(|(k, m)| (*k, *m)).collect(),
            withdrawn: p.withdrawn.filter(|_| p.is_withdrawn()),
            comments: p
                .comments
                .iter()
                .map(|(cid, c)| CommentView {
                    id: *cid,
                    author: c.author,
                    kind: c.kind,
                    parent: c.parent,
                    revision: c.revision,
                })
                .collect(),
            eligible: p.eligible,
            leading_attestation: p.attestations.leading(),
            committed: p.commits.values().filter(|h| !h.0.is_empty()).count(),
            revealed: p.reveals.keys().map(|(who, _)| who).collect::<BTreeSet<_>>().len(),
        })
    }

    /// The delegations in effect now (each delegator's latest message per scope, revocations
    /// dropped, void ones — to the delegator's own later key — skipped), by delegator then
    /// scope.
    pub fn delegations(&self) -> Vec<DelegationEdge> {
        self.delegations
            .iter()
            .filter_map(|((who, scope), h)| {
                let ((_, _, id), (created_ms, delegate)) =
                    h.iter().rev().find(|(_, (_, d))| !self.void_delegation(who, d))?;
                Some(DelegationEdge {
                    delegator: *who,
                    delegate: (*delegate)?,
                    scope: *scope,
                    id: *id,
                    created_ms: *created_ms,
                })
            })
            .collect()
    }

    /// Every member whose vote reaches `member` through delegations for proposals of `scope`,
    /// directly or through a chain no longer than the charter's maximum depth, nearest first.
    /// A member's delegate for `scope` is its delegation for exactly `scope` if it has one, else
    /// its delegation for all proposals (the tally also prefers a type's delegation to a scope's:
    /// `scope` names one of them). Cycles end a chain.
    pub fn delegators_of(&self, member: &PublicKey, scope: DelegationScope) -> Vec<Delegator> {
        let max_depth = self.charter.as_ref().map_or(0, |c| c.max_delegation_depth);
        // delegate → delegators, under `scope` with fallback to `all`.
        let mut effective: BTreeMap<PublicKey, Option<PublicKey>> = BTreeMap::new();
        for e in self.delegations() {
            if e.scope == DelegationScope::All {
                effective.entry(e.delegator).or_insert(Some(e.delegate));
            }
        }
        for ((who, s), h) in &self.delegations {
            if *s == scope
                && scope != DelegationScope::All
                // Revoked for this scope (`None`): the delegation for all applies.
                && let Some((_, (_, Some(d)))) =
                    h.iter().rev().find(|(_, (_, d))| !self.void_delegation(who, d))
            {
                effective.insert(*who, Some(*d));
            }
        }
        let mut inbound: BTreeMap<PublicKey, Vec<PublicKey>> = BTreeMap::new();
        for (from, to) in effective.iter().filter_map(|(f, t)| Some((*f, (*t)?))) {
            inbound.entry(to).or_default().push(from);
        }
        let mut out = Vec::new();
        let mut seen = BTreeSet::from([*member]);
        let mut frontier = vec![*member];
        for depth in 1..=max_depth {
            let mut next = Vec::new();
            for to in &frontier {
                for from in inbound.get(to).into_iter().flatten() {
                    if seen.insert(*from) {
                        out.push(Delegator { member: *from, depth, via: *to });
                        next.push(*from);
                    }
                }
            }
            if next.is_empty() {
                break;
            }
            frontier = next;
        }
        out
    }
}
