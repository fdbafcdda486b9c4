//! Monotone finality: certificates of attestations.
//!
//! Every attestation a member signs is kept, not only its latest. A *certificate* for a key
//! (revision, votes root, outcome, winner) exists once the members who attested that key — each
//! counted once, by its earliest attestation of it — hold at least 2/3 of the eligible weight.
//! Adding messages only adds attesters, so a certified key stays certified: re-attestations never
//! undo finality. Two certified keys for one proposal need at least 1/3 of the weight to have
//! attested both; they resolve deterministically (earliest completion time, then the lower key)
//! and the members in both are recorded as equivocation evidence.

use std::collections::{BTreeMap, BTreeSet};

use kos_protocol::{
    PublicKey,
    payload::{Digest, MessageId, Outcome, ProposalId},
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

/// A final result: attestations from members holding at least 2/3 of the eligible weight agree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Final {
    /// What they agree on.
    pub key: FinalKey,
    /// The signed time at which the agreeing weight first reached 2/3.
    pub final_at_ms: u64,
    /// Weight of the agreeing attesters.
    pub weight: u64,
}

/// A proposal's certificate: the final key and the attestations that make it final.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Certificate {
    /// The proposal.
    pub proposal: ProposalId,
    /// The final result.
    pub final_: Final,
    /// Total eligible weight.
    pub eligible: u64,
    /// Each attester of the key: member, attestation message id, signed time, weight.
    pub attesters: Vec<(PublicKey, MessageId, u64, u64)>,
    /// Members who attested two certified keys (only possible if ≥ 1/3 of the weight did).
    pub equivocators: Vec<PublicKey>,
}

/// Every attestation of one proposal, indexed for finality.
#[derive(Clone, Debug, Default)]
pub(crate) struct Attestations {
    /// Each member's latest attestation ("latest wins"): order, signed time, key.
    by_member: BTreeMap<PublicKey, (Order, u64, FinalKey)>,
    /// For each key, each attester's earliest attestation of it: (signed time, id).
    by_key: BTreeMap<FinalKey, BTreeMap<PublicKey, (u64, MessageId)>>,
    /// Weight of each key's attesters.
    weight: BTreeMap<FinalKey, u64>,
    /// Certified keys: completion time and weight.
    certified: BTreeMap<FinalKey, (u64, u64)>,
}

/// Whether `part` is at least 2/3 of `whole` (and `whole` is not zero).
pub(crate) fn two_thirds(part: u64, whole: u64) -> bool {
    whole > 0 && u128::from(part) * 3 >= u128::from(whole) * 2
}

impl Attestations {
    /// Records an attestation. Returns whether the final result changed.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn insert(
        &mut self,
        who: PublicKey,
        order: Order,
        created: u64,
        key: FinalKey,
        weight: u64,
        eligible: u64,
        weight_of: impl Fn(&PublicKey) -> u64,
    ) -> bool {
        let before = self.final_();
        match self.by_member.get_mut(&who) {
            Some(latest) if latest.0 >= order => {}
            Some(latest) => *latest = (order, created, key),
            None => {
                self.by_member.insert(who, (order, created, key));
            }
        }
        let attesters = self.by_key.entry(key).or_default();
        let id = order.2;
        match attesters.get_mut(&who) {
            Some(slot) => *slot = (*slot).min((created, id)),
            None => {
                attesters.insert(who, (created, id));
                let w = self.weight.entry(key).or_insert(0);
                *w = w.saturating_add(weight);
            }
        }
        let total = self.weight.get(&key).copied().unwrap_or(0);
        if two_thirds(total, eligible) {
            // The moment the attesters' weight, taken in signed-time order, first reached 2/3.
            let mut entries: Vec<(u64, u64)> =
                attesters.iter().map(|(k, (t, _))| (*t, weight_of(k))).collect();
            entries.sort();
            let mut acc = 0u64;
            let at = entries.iter().find_map(|(t, w)| {
                acc = acc.saturating_add(*w);
                two_thirds(acc, eligible).then_some(*t)
            });
            if let Some(at) = at {
                self.certified.insert(key, (at, total));
            }
        }
        self.final_() != before
    }

    /// The final result: the certified key completed earliest (then the lowest key).
    /// The attested key with the most weight, and that weight.
    pub(crate) fn leading(&self) -> Option<(FinalKey, u64)> {
        self.weight.iter().max_by_key(|(k, w)| (**w, std::cmp::Reverse(**k))).map(|(k, w)| (*k, *w))
    }

    pub(crate) fn final_(&self) -> Option<Final> {
        self.certified.iter().min_by_key(|(k, (at, _))| (*at, **k)).map(|(k, (at, w))| Final {
            key: *k,
            final_at_ms: *at,
            weight: *w,
        })
    }

    /// Each member's latest attestation: key and signed time.
    pub(crate) fn latest(&self) -> impl Iterator<Item = (&PublicKey, &FinalKey, u64)> {
        self.by_member.iter().map(|(who, (_, t, k))| (who, k, *t))
    }

    pub(crate) fn latest_of(&self, who: &PublicKey) -> Option<&FinalKey> {
        self.by_member.get(who).map(|(_, _, k)| k)
    }

    pub(crate) fn attesters(&self, key: &FinalKey) -> Vec<(PublicKey, MessageId, u64)> {
        self.by_key
            .get(key)
            .map(|m| m.iter().map(|(k, (t, id))| (*k, *id, *t)).collect())
            .unwrap_or_default()
    }

    /// Members who attested more than one certified key.
    pub(crate) fn equivocators(&self) -> Vec<PublicKey> {
        if self.certified.len() < 2 {
            return Vec::new();
        }
        let mut seen = BTreeSet::new();
        let mut twice = BTreeSet::new();
        for key in self.certified.keys() {
            for who in self.by_key.get(key).into_iter().flat_map(BTreeMap::keys) {
                if !seen.insert(*who) {
                    twice.insert(*who);
                }
            }
        }
        twice.into_iter().collect()
    }
}

impl Engine {
    /// The final result of proposal `id`: the key certified by attestations from members holding
    /// at least 2/3 of the eligible weight. Once final, always final.
    pub fn finality(&self, id: &ProposalId) -> Option<Final> {
        self.proposals.get(id).filter(|p| p.active)?.attestations.final_()
    }

    /// The certificate of proposal `id`, if it is final.
    pub fn certificate(&self, id: &ProposalId) -> Option<Certificate> {
        let p = self.proposals.get(id).filter(|p| p.active)?;
        let fin = p.attestations.final_()?;
        let attesters = p
            .attestations
            .attesters(&fin.key)
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

    /// Members who attested two conflicting certified results of proposal `id`.
    pub fn equivocators(&self, id: &ProposalId) -> Vec<PublicKey> {
        self.proposals.get(id).map(|p| p.attestations.equivocators()).unwrap_or_default()
    }

    /// Each member's latest attestation of proposal `id`: who, what it names, and when.
    pub fn attestations(&self, id: &ProposalId) -> Vec<(PublicKey, FinalKey, u64)> {
        self.proposals.get(id).map_or_else(Vec::new, |p| {
            p.attestations.latest().map(|(who, k, t)| (*who, *k, t)).collect()
        })
    }
}
