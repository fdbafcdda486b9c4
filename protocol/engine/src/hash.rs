//! The state hash: one digest of the derived governance state at some `now`.
//!
//! Each proposal's records (revisions, sponsors, withdrawal, comments, counted ballots and count,
//! final result) are hashed once into a cached digest, dropped when a record changes; the state
//! hash combines those digests with each proposal's status at `now`, the registry chain and the
//! effective delegations. Held messages never enter it.

use kos_protocol::{
    PublicKey,
    payload::{DelegationScope, Digest, MessageId, Outcome},
    to_cbor,
};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::{Engine, Final, ProposalState, Status};

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
                    .filter_map(|(_, pid)| self.executions.get(pid))
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
                    h.keys().next_back().map(|(_, id)| (who, scope, id))
                })
                .collect();
            sha(&[&to_cbor(&effective)])
        })
    }

    /// A hash of the derived governance state at `now_ms`: the registry chain and executions,
    /// for each active proposal its records, counted ballots, count, final result and status,
    /// and the effective delegations. Equal for any two engines given the same set of valid
    /// messages, in any order, with or without a restart.
    pub fn state_hash(&self, now_ms: u64) -> Digest {
        let mut h = Sha256::new();
        h.update(STATE_DOMAIN);
        h.update(self.federation.0);
        h.update(self.chain_digest().0);
        h.update(self.delegations_digest().0);
        for p in self.proposals.values().filter(|p| p.active) {
            let status: Status = self.status_of(p, now_ms);
            h.update(self.proposal_digest(p).0);
            h.update(to_cbor(&status));
        }
        Digest(h.finalize().into())
    }
}
