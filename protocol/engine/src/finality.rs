//! Finality: attestation rounds with prepare quorums as locks (`docs/governance.md` §6).
//!
//! After a proposal closes (plus grace), each eligible member attests in rounds `0, 1, 2, …`,
//! one round per `grace_ms` by its own clock. In each round an honest member signs at most one
//! PREPARE and at most one COMMIT:
//!
//! - **prepare** in round `r` the result of the highest-round *prepare quorum* it has seen (its
//!   lock: members holding more than 2/3 of the weight prepared one result in one round), or its
//!   own tally if it has seen none — and only if that quorum's round is below `r`;
//! - **commit** in round `q` the result of a prepare quorum of round `q`, if it has not prepared
//!   in any round after `q`.
//!
//! Members holding more than 2/3 of the weight committing one result in one round is a
//! *certificate*: the proposal is final. Two certificates for different results would need more
//! than 1/3 of the weight to break these rules (the argument is in `governance.md` §6); this
//! module records who did (members with two results in one phase of one round) as evidence.
//! Everything here is a function of the set of attestations: order, duplicates and restarts do
//! not matter.

use std::collections::{BTreeMap, BTreeSet};

use kos_protocol::{
    PublicKey,
    payload::{AttestationPhase, Digest, MessageId, Outcome, ProposalId},
};
use serde::{Deserialize, Serialize};

use crate::{Engine, Order};

/// What a final result agrees on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FinalKey {
    /// The revision tallied.
    pub revision: u32,
    /// Merkle root of the counted ballots.
    pub votes_root: Digest,
    /// The outcome.
    pub outcome: Outcome,
    /// The winning option, if any.
    pub winner: Option<u16>,
}

/// A final result: commits from members holding more than 2/3 of the eligible weight agree in
/// one round.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Final {
    /// What they agree on.
    pub key: FinalKey,
    /// The attestation round of the certificate.
    pub round: u32,
    /// The signed time at which the committing weight first exceeded 2/3.
    pub final_at_ms: u64,
    /// Weight of the committing members.
    pub weight: u64,
}

/// A proposal's certificate: the final key and the commits that make it final.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Certificate {
    /// The proposal.
    pub proposal: ProposalId,
    /// The final result.
    pub final_: Final,
    /// Total eligible weight.
    pub eligible: u64,
    /// Each committer of the key in the certificate's round: member, commit message id, signed
    /// time, weight.
    pub attesters: Vec<(PublicKey, MessageId, u64, u64)>,
    /// Members who signed two different results in one phase of one round (evidence: an honest
    /// member never does).
    pub equivocators: Vec<PublicKey>,
}

/// One attestation as a node holds it: a member's latest, for views.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct AttestationView {
    /// The member (its identity key).
    pub member: PublicKey,
    /// Prepare or commit.
    pub phase: AttestationPhase,
    /// The round.
    pub round: u32,
    /// What it names.
    pub key: FinalKey,
    /// Its signed time.
    pub at_ms: u64,
}

/// A deliberately broken finality rule, for showing that the model checker catches it
/// (`tests/engine_model.rs`). Never set outside such a test.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Weakening {
    /// The protocol as specified.
    #[default]
    None,
    /// Prepare the own tally in every round, ignoring the lock.
    IgnoreLock,
    /// The old rule: commit the own tally in every round, without a prepare quorum.
    ReattestFreely,
}

/// (phase, round, key): one thing members can agree on.
type Slot = (AttestationPhase, u32, FinalKey);

/// The informative fields of an attestation (not part of what is agreed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Detail {
    pub(crate) totals: Vec<u64>,
    pub(crate) counted: u32,
    pub(crate) eligible: u64,
    pub(crate) participation: u64,
}

/// Every attestation of one proposal, indexed for finality.
#[derive(Clone, Debug, Default)]
pub(crate) struct Attestations {
    /// Each member's latest attestation ("latest wins"), for views.
    latest: BTreeMap<PublicKey, (Order, AttestationView)>,
    /// For each slot, each member's earliest attestation of it: (signed time, id).
    by_slot: BTreeMap<Slot, BTreeMap<PublicKey, (u64, MessageId)>>,
    /// Weight of each slot's members.
    weight: BTreeMap<Slot, u64>,
    /// What each member signed in each phase and round.
    by_member: BTreeMap<(PublicKey, AttestationPhase, u32), BTreeSet<FinalKey>>,
    /// Prepare quorums: round → results prepared by more than 2/3 of the weight.
    quorums: BTreeMap<u32, BTreeSet<FinalKey>>,
    /// Certified (round, key): completion time and weight.
    certified: BTreeMap<(u32, FinalKey), (u64, u64)>,
    /// The informative fields of the first attestation of each key (lowest id).
    details: BTreeMap<FinalKey, (MessageId, Detail)>,
}

/// Whether `part` is more than 2/3 of `whole`.
pub(crate) fn over_two_thirds(part: u64, whole: u64) -> bool {
    whole > 0 && u128::from(part) * 3 > u128::from(whole) * 2
}

impl Attestations {
    /// Records an attestation. Returns whether the final result changed.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn insert(
        &mut self,
        who: PublicKey,
        order: Order,
        created: u64,
        view: AttestationView,
        detail: Detail,
        weight: u64,
        eligible: u64,
        weight_of: impl Fn(&PublicKey) -> u64,
    ) -> bool {
        let before = self.final_();
        let id = order.2;
        match self.latest.get_mut(&who) {
            Some(latest) if latest.0 >= order => {}
            Some(latest) => *latest = (order, view),
            None => {
                self.latest.insert(who, (order, view));
            }
        }
        match self.details.get_mut(&view.key) {
            Some(d) if d.0 <= id => {}
            Some(d) => *d = (id, detail),
            None => {
                self.details.insert(view.key, (id, detail));
            }
        }
        self.by_member.entry((who, view.phase, view.round)).or_default().insert(view.key);
        let slot = (view.phase, view.round, view.key);
        let members = self.by_slot.entry(slot).or_default();
        match members.get_mut(&who) {
            Some(first) => *first = (*first).min((created, id)),
            None => {
                members.insert(who, (created, id));
                let w = self.weight.entry(slot).or_insert(0);
                *w = w.saturating_add(weight);
            }
        }
        let total = self.weight.get(&slot).copied().unwrap_or(0);
        if over_two_thirds(total, eligible) {
            match view.phase {
                AttestationPhase::Prepare => {
                    self.quorums.entry(view.round).or_default().insert(view.key);
                }
                AttestationPhase::Commit => {
                    // The moment the committers' weight, in signed-time order, first exceeded
                    // 2/3 (more commits can only make it earlier).
                    let mut entries: Vec<(u64, u64)> =
                        members.iter().map(|(k, (t, _))| (*t, weight_of(k))).collect();
                    entries.sort_unstable();
                    let mut acc = 0u64;
                    let at = entries.iter().find_map(|(t, w)| {
                        acc = acc.saturating_add(*w);
                        over_two_thirds(acc, eligible).then_some(*t)
                    });
                    if let Some(at) = at {
                        self.certified.insert((view.round, view.key), (at, total));
                    }
                }
            }
        }
        self.final_() != before
    }

    /// The final result: the certificate completed earliest (then the lowest round and key).
    /// While less than 1/3 of the weight breaks the protocol, every certificate has one key.
    pub(crate) fn final_(&self) -> Option<Final> {
        self.certified
            .iter()
            .min_by_key(|((r, k), (at, _))| (*at, *r, *k))
            .map(|((r, k), (at, w))| Final { key: *k, round: *r, final_at_ms: *at, weight: *w })
    }

    /// The commit (else prepare) with the most weight in any round, and that weight.
    pub(crate) fn leading(&self) -> Option<(FinalKey, u64)> {
        let best = |phase: AttestationPhase| {
            self.weight
                .iter()
                .filter(|((p, _, _), _)| *p == phase)
                .max_by_key(|((_, r, k), w)| (**w, std::cmp::Reverse((*r, *k))))
                .map(|((_, _, k), w)| (*k, *w))
        };
        best(AttestationPhase::Commit).or_else(|| best(AttestationPhase::Prepare))
    }

    /// The highest-round prepare quorum (the lowest key if a round has several: only possible
    /// when more than 1/3 of the weight equivocates).
    pub(crate) fn lock(&self) -> Option<(u32, FinalKey)> {
        let (round, keys) = self.quorums.iter().next_back()?;
        keys.iter().next().map(|k| (*round, *k))
    }

    /// What `who` signed in `phase` of `round`.
    pub(crate) fn signed(
        &self,
        who: &PublicKey,
        phase: AttestationPhase,
        round: u32,
    ) -> Option<&BTreeSet<FinalKey>> {
        self.by_member.get(&(*who, phase, round))
    }

    /// The highest round in which `who` signed in `phase`.
    pub(crate) fn last_round(&self, who: &PublicKey, phase: AttestationPhase) -> Option<u32> {
        // by_member is ordered by (member, phase, round): the last entry in the member's phase.
        self.by_member
            .range((*who, phase, 0)..=(*who, phase, u32::MAX))
            .next_back()
            .map(|((_, _, r), _)| *r)
    }

    pub(crate) fn detail(&self, key: &FinalKey) -> Option<&Detail> {
        self.details.get(key).map(|(_, d)| d)
    }

    /// Each member's latest attestation.
    pub(crate) fn latest(&self) -> impl Iterator<Item = &AttestationView> {
        self.latest.values().map(|(_, v)| v)
    }

    /// The committers of `key` in `round`.
    pub(crate) fn committers(
        &self,
        round: u32,
        key: &FinalKey,
    ) -> Vec<(PublicKey, MessageId, u64)> {
        self.by_slot
            .get(&(AttestationPhase::Commit, round, *key))
            .map(|m| m.iter().map(|(k, (t, id))| (*k, *id, *t)).collect())
            .unwrap_or_default()
    }

    /// Members who signed two different results in one phase of one round.
    pub(crate) fn equivocators(&self) -> Vec<PublicKey> {
        let twice: BTreeSet<PublicKey> = self
            .by_member
            .iter()
            .filter(|(_, keys)| keys.len() > 1)
            .map(|((who, _, _), _)| *who)
            .collect();
        twice.into_iter().collect()
    }
}

impl Engine {
    /// The final result of proposal `id`: the result committed by members holding more than 2/3
    /// of the eligible weight in one attestation round. Once final, always final.
    pub fn finality(&self, id: &ProposalId) -> Option<Final> {
        self.proposals.get(id).filter(|p| p.active)?.attestations.final_()
    }

    /// The certificate of proposal `id`, if it is final.
    pub fn certificate(&self, id: &ProposalId) -> Option<Certificate> {
        let p = self.proposals.get(id).filter(|p| p.active)?;
        let fin = p.attestations.final_()?;
        let attesters = p
            .attestations
            .committers(fin.round, &fin.key)
            .into_iter()
            .map(|(k, mid, t)| (k, mid, t, p.weight(&k)))
            .collect();
        Some(Certificate {
            proposal: *id,
            final_: fin,
            eligible: p.eligible,
            attesters,
            equivocators: p.attestations.equivocators(),
        })
    }

    /// Members who signed two different results in one phase of one round of proposal `id`.
    pub fn equivocators(&self, id: &ProposalId) -> Vec<PublicKey> {
        self.proposals.get(id).map(|p| p.attestations.equivocators()).unwrap_or_default()
    }

    /// Each member's latest attestation of proposal `id`.
    pub fn attestations(&self, id: &ProposalId) -> Vec<AttestationView> {
        self.proposals.get(id).map_or_else(Vec::new, |p| p.attestations.latest().copied().collect())
    }

    /// The highest-round prepare quorum of proposal `id` (the lock an honest member follows).
    pub fn prepare_quorum(&self, id: &ProposalId) -> Option<(u32, FinalKey)> {
        self.proposals.get(id)?.attestations.lock()
    }

    /// Breaks the finality rule this engine follows when it attests, to show that the model
    /// checker catches it. For tests only.
    #[doc(hidden)]
    pub fn weaken_for_model_check(&mut self, weakening: Weakening) {
        self.weakening = weakening;
    }
}
