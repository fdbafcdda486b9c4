//! The state hash: one digest of the derived governance state at some `now`.
//!
//! Each proposal's records (revisions, sponsors, withdrawal, comments, counted ballots and count,
//! final result) are hashed once into a cached digest, dropped when a record changes. A proposal's
//! *term* is `SHA-256(id ‖ digest ‖ CBOR(status))`; the terms are combined by addition modulo
//! 2^256, so the sum is kept up to date incrementally: a proposal touched since the last query is
//! re-summed, and only proposals whose status can still change with time after `now` (they are
//! indexed by the time they settle) are looked at for `now`. A query therefore costs
//! O(proposals touched + proposals not yet settled), not O(history). Held messages never enter it.

use std::collections::{BTreeMap, BTreeSet};

use kos_protocol::{
    PublicKey,
    payload::{DelegationScope, Digest, MessageId, Outcome, ProposalId},
    to_cbor_deterministic as to_cbor,
};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::{Engine, Final, ProposalState, Status, ZERO_ID};

/// A sum of 256-bit values modulo 2^256 (little-endian limbs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Sum([u64; 4]);

impl Sum {
    fn limbs(d: &Digest) -> [u64; 4] {
        let mut out = [0u64; 4];
        for (i, chunk) in d.0.chunks_exact(8).enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            out[i] = u64::from_le_bytes(b);
        }
        out
    }

    fn add(&mut self, d: &Digest) {
        let x = Self::limbs(d);
        let mut carry = false;
        for (a, b) in self.0.iter_mut().zip(x) {
            let (s1, c1) = a.overflowing_add(b);
            let (s2, c2) = s1.overflowing_add(u64::from(carry));
            *a = s2;
            carry = c1 || c2;
        }
    }

    fn sub(&mut self, d: &Digest) {
        let x = Self::limbs(d);
        let mut borrow = false;
        for (a, b) in self.0.iter_mut().zip(x) {
            let (s1, c1) = a.overflowing_sub(b);
            let (s2, c2) = s1.overflowing_sub(u64::from(borrow));
            *a = s2;
            borrow = c1 || c2;
        }
    }

    fn bytes(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, l) in self.0.iter().enumerate() {
            out[8 * i..8 * i + 8].copy_from_slice(&l.to_le_bytes());
        }
        out
    }
}

/// The incrementally maintained sum of proposal terms, at each proposal's settled status.
#[derive(Clone, Debug, Default)]
pub(crate) struct HashState {
    sum: Sum,
    /// Per summed proposal: its digest, settled status and the time it settles.
    terms: BTreeMap<ProposalId, (Digest, Status, u64)>,
    /// Summed proposals by settle time.
    settle: BTreeSet<(u64, ProposalId)>,
    /// Proposals changed since the last query.
    pub(crate) dirty: BTreeSet<ProposalId>,
}

fn term(id: &ProposalId, digest: &Digest, status: Status) -> Digest {
    sha(&[&id.0, &digest.0, &to_cbor(&status)])
}

/// Domain prefix of the state hash.
pub const STATE_DOMAIN: &[u8] = b"kos-klp-v1/state\0";

#[derive(Serialize)]
struct ProposalSummary<'a> {
    id: &'a MessageId,
    revision_ids: Vec<&'a MessageId>,
    sponsors: Vec<&'a MessageId>,
    withdrawn: Option<&'a MessageId>,
    comments: Vec<&'a MessageId>,
    counted: &'a [MessageId],
    totals: &'a [u64],
    outcome: Outcome,
    winner: Option<u16>,
    finality: Option<Final>,
}

fn sha(parts: &[&[u8]]) -> Digest {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    Digest(h.finalize().into())
}

impl Engine {
    fn proposal_digest(&self, p: &ProposalState) -> Digest {
        *p.cache.digest.get_or_init(|| {
            let t = self.tally_of(p);
            let summary = ProposalSummary {
                id: &p.id,
                revision_ids: p.revisions.values().map(|r| &r.id).collect(),
                sponsors: p.sponsors.values().collect(),
                withdrawn: p.withdrawn.as_ref(),
                comments: p.comments.keys().collect(),
                counted: &t.counted,
                totals: &t.count.totals,
                outcome: t.count.outcome,
                winner: t.count.winner,
                finality: p.attestations.final_(),
            };
            sha(&[&to_cbor(&summary)])
        })
    }

    /// The time from which proposal `p`'s status no longer changes with the clock alone.
    fn settle_time(&self, p: &ProposalState) -> u64 {
        if p.is_withdrawn() {
            return 0;
        }
        let exec = self.executions.get(&p.id).map_or(0, |e| e.at_ms);
        p.voting_start().max(self.effective_close(p)).max(exec)
    }

    fn chain_digest(&self) -> Digest {
        *self.chain_digest.get_or_init(|| {
            #[derive(Serialize)]
            struct Chain<'a> {
                versions: Vec<(u64, &'a Digest)>,
                executions: Vec<&'a crate::Execution>,
            }
            let chain = Chain {
                versions: self.chain.iter().map(|v| (v.start_ms, &v.hash)).collect(),
                executions: self
                    .exec_order
                    .iter()
                    .filter_map(|(_, _, pid)| self.executions.get(pid))
                    .collect(),
            };
            sha(&[&to_cbor(&chain)])
        })
    }

    fn delegations_digest(&self) -> Digest {
        *self.delegations_digest.get_or_init(|| {
            let effective: Vec<(&PublicKey, &DelegationScope, &MessageId)> = self
                .delegations
                .iter()
                .filter_map(|((who, scope), h)| {
                    // The latest delegation that is not void (to the delegator's own later key).
                    h.iter()
                        .rev()
                        .find(|(_, (_, d))| !self.void_delegation(who, d))
                        .map(|((_, _, id), _)| (who, scope, id))
                })
                .collect();
            sha(&[&to_cbor(&effective)])
        })
    }

    /// The key lifecycle records (none until a key rotates or is revoked).
    fn keys_digest(&self) -> Option<Digest> {
        if self.keys.records.is_empty() {
            return None;
        }
        Some(*self.keys_digest.get_or_init(|| sha(&[&to_cbor(&self.keys.records)])))
    }

    /// A hash of the derived governance state at `now_ms`: the registry chain and executions,
    /// for each active proposal its records, counted ballots, count, final result and status,
    /// and the effective delegations. Equal for any two engines given the same set of valid
    /// messages, in any order, with or without a restart.
    pub fn state_hash(&self, now_ms: u64) -> Digest {
        let mut st = self.hash_state.borrow_mut();
        let dirty = std::mem::take(&mut st.dirty);
        for pid in dirty {
            if let Some((d, status, settle)) = st.terms.remove(&pid) {
                st.sum.sub(&term(&pid, &d, status));
                st.settle.remove(&(settle, pid));
            }
            if let Some(p) = self.proposals.get(&pid).filter(|p| p.active) {
                let d = self.proposal_digest(p);
                let status = self.status_of(p, u64::MAX);
                let settle = self.settle_time(p);
                st.sum.add(&term(&pid, &d, status));
                st.terms.insert(pid, (d, status, settle));
                st.settle.insert((settle, pid));
            }
        }
        // Proposals not settled at `now`: their status now, instead of their settled one.
        let mut sum = st.sum;
        for (_, pid) in st.settle.range((now_ms.saturating_add(1), ZERO_ID)..) {
            let (Some(p), Some((d, settled))) =
                (self.proposals.get(pid), st.terms.get(pid).map(|(d, s, _)| (d, *s)))
            else {
                continue;
            };
            let status = self.status_of(p, now_ms);
            if status != settled {
                sum.sub(&term(pid, d, settled));
                sum.add(&term(pid, d, status));
            }
        }
        let keys = self.keys_digest();
        sha(&[
            STATE_DOMAIN,
            &self.federation.0,
            &self.chain_digest().0,
            &self.delegations_digest().0,
            &sum.bytes(),
            keys.as_ref().map_or(&[][..], |d| &d.0[..]),
        ])
    }
}
