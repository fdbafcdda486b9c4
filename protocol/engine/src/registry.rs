//! The member registry and vote weights.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use kos_protocol::{
    PublicKey,
    payload::{BodyKind, Charter, Digest, HybridWeights, Member, Role, TrustLevel, Weighting},
};

/// Domain prefix of registry hashes.
pub const REGISTRY_DOMAIN: &[u8] = b"kos-klp-v1/registry\0";

/// One version of the federation's registry: members, bodies and governed settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registry {
    /// Version number: 0 is the charter's; each execution that changes the registry adds one.
    /// Part of the content, so two versions never share a hash; versions are looked up by hash.
    pub epoch: u64,
    /// Members by key. Shared between versions that do not change them (copy on write:
    /// `Arc::make_mut`); encoded exactly like the map itself.
    pub members: Arc<BTreeMap<PublicKey, Member>>,
    /// Governing bodies.
    pub bodies: BTreeMap<BodyKind, BTreeSet<PublicKey>>,
    /// Role weights (thousandths).
    pub role_weights: BTreeMap<Role, u64>,
    /// Hybrid weighting coefficients.
    pub hybrid: HybridWeights,
    /// Governed configuration values.
    pub config: BTreeMap<String, String>,
    /// The federation policy document, if one was adopted.
    pub policy: Option<String>,
    /// Minimum protocol version.
    pub min_protocol_version: u16,
}

impl Registry {
    /// Epoch 0, from the charter.
    pub fn from_charter(charter: &Charter) -> Self {
        Registry {
            epoch: 0,
            members: Arc::new(charter.members.iter().map(|m| (m.key, m.clone())).collect()),
            bodies: charter
                .bodies
                .iter()
                .map(|b| (b.kind, b.members.iter().copied().collect()))
                .collect(),
            role_weights: charter.role_weights.iter().map(|r| (r.role, r.weight)).collect(),
            hybrid: charter.hybrid.clone(),
            config: BTreeMap::new(),
            policy: None,
            min_protocol_version: charter.min_protocol_version,
        }
    }

    /// SHA-256 over the registry's deterministic CBOR encoding (`docs/governance.md` §2),
    /// with a domain prefix.
    pub fn hash(&self) -> Digest {
        let mut h = Sha256::new();
        h.update(REGISTRY_DOMAIN);
        h.update(self.encode());
        Digest(h.finalize().into())
    }

    /// The registry's deterministic CBOR: a map, keys in the §1.1 order, an absent policy
    /// omitted; members keyed by their key, bodies by their kind (each an ascending array of
    /// keys), role weights by role, configuration by key.
    pub fn encode(&self) -> Vec<u8> {
        kos_protocol::to_cbor_deterministic(self)
    }

    /// The member with key `key`.
    pub fn member(&self, key: &PublicKey) -> Option<&Member> {
        self.members.get(key)
    }

    /// Whether `key` sits on body `kind`.
    pub fn on_body(&self, kind: BodyKind, key: &PublicKey) -> bool {
        self.bodies.get(&kind).is_some_and(|m| m.contains(key))
    }

    /// The vote weight (thousandths) of `member` under `weighting`. Quarantined members weigh 0.
    pub fn weight(&self, member: &Member, weighting: Weighting) -> u64 {
        if member.trust == TrustLevel::Quarantine {
            return 0;
        }
        let role = || {
            member.roles.iter().filter_map(|r| self.role_weights.get(r)).copied().max().unwrap_or(0)
        };
        let stake = member.stake.saturating_mul(1000);
        match weighting {
            Weighting::OnePersonOneVote => 1000,
            Weighting::Trust => member.trust.milli_weight(),
            Weighting::Stake => stake,
            Weighting::Role => role(),
            Weighting::Hybrid => {
                let h = &self.hybrid;
                let sum = u128::from(h.role) * u128::from(role())
                    + u128::from(h.stake) * u128::from(stake)
                    + u128::from(h.trust) * u128::from(member.trust.milli_weight());
                u64::try_from(sum / 1000).unwrap_or(u64::MAX)
            }
        }
    }
}
