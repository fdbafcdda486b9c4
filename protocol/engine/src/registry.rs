//! The member registry and vote weights.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use kos_protocol::{
    CborError, PublicKey,
    payload::{BodyKind, Charter, Digest, HybridWeights, Member, Role, TrustLevel, Weighting},
};

/// Deepest nesting a registry version has (registry → members → member → roles → role) with
/// room to spare.
const MAX_DEPTH: usize = 16;

/// Why some bytes are not the deterministic encoding of a registry version, in words:
/// the first difference from [`Registry::encode`] that a person can act on.
pub(crate) fn non_canonical_reason(bytes: &[u8]) -> &'static str {
    fn walk(v: &ciborium::Value) -> Option<&'static str> {
        use ciborium::Value;
        match v {
            Value::Map(entries) => {
                if entries.iter().any(|(_, x)| x.is_null()) {
                    return Some("an absent field is encoded as null (it must be omitted)");
                }
                let keys: Vec<Vec<u8>> =
                    entries.iter().map(|(k, _)| kos_protocol::to_cbor(k)).collect();
                let ordered = |a: &Vec<u8>, b: &Vec<u8>| (a.len(), a) < (b.len(), b);
                if keys.windows(2).any(|w| !ordered(&w[0], &w[1])) {
                    return Some("map keys are not in length-first order, or repeat");
                }
                entries.iter().find_map(|(k, x)| walk(k).or_else(|| walk(x)))
            }
            Value::Array(items) => items.iter().find_map(walk),
            _ => None,
        }
    }
    match ciborium::de::from_reader_with_recursion_limit::<ciborium::Value, _>(bytes, MAX_DEPTH) {
        Ok(v) => walk(&v).unwrap_or(
            "not the shortest heads, definite lengths and ascending body members of \
             docs/protocol.md §1.1",
        ),
        Err(_) => "not CBOR",
    }
}

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
        Self::hash_bytes(&self.encode())
    }

    /// The content hash of a registry version given as its bytes:
    /// `SHA-256(REGISTRY_DOMAIN ‖ bytes)`, the bytes taken as they are.
    pub fn hash_bytes(bytes: &[u8]) -> Digest {
        let mut h = Sha256::new();
        h.update(REGISTRY_DOMAIN);
        h.update(bytes);
        Digest(h.finalize().into())
    }

    /// The registry's deterministic CBOR: a map, keys in the §1.1 order, an absent policy
    /// omitted; members keyed by their key (a byte string), bodies by their kind (each an
    /// ascending array of keys), role weights by role, configuration by key; a member's `roles`
    /// in the order the charter or the Membership proposal that admitted it gives them. These
    /// are the bytes [`Registry::hash`] hashes and a certificate file carries.
    pub fn encode(&self) -> Vec<u8> {
        kos_protocol::to_cbor_deterministic(self)
    }

    /// Decodes a registry version from exactly its deterministic CBOR ([`Registry::encode`]):
    /// any other encoding of the same value (keys out of order, an absent `policy` as `null`,
    /// long heads, indefinite lengths, unsorted body members, trailing bytes) is refused, so
    /// the bytes decoded are the bytes hashed. A member filed under another key than its own is
    /// refused too.
    pub fn decode(bytes: &[u8]) -> Result<Self, CborError> {
        let mut reader = bytes;
        let item: ciborium::Value =
            ciborium::de::from_reader_with_recursion_limit(&mut reader, MAX_DEPTH)
                .map_err(|e| CborError::Malformed(format!("{e:?}")))?;
        if !reader.is_empty() {
            return Err(CborError::TrailingBytes(reader.len()));
        }
        let reg: Registry = item
            .deserialized()
            .map_err(|e| CborError::Malformed(format!("not a registry version: {e}")))?;
        if reg.members.iter().any(|(k, m)| *k != m.key) {
            return Err(CborError::Malformed("a member is filed under another key".into()));
        }
        if reg.encode() != bytes {
            return Err(CborError::NonCanonical);
        }
        Ok(reg)
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

#[cfg(test)]
mod tests {
    use super::*;
    use kos_protocol::{SecretKey, payload::Timing};

    fn registry() -> Registry {
        let member = |n: u8, roles: Vec<Role>| Member {
            key: SecretKey::from_seed(&[n; 32]).public(),
            roles,
            stake: 1,
            trust: TrustLevel::Trusted,
        };
        let charter = Charter {
            name: "t".into(),
            nonce: 0,
            bodies: vec![],
            hybrid: HybridWeights { role: 0, stake: 0, trust: 1000 },
            timing: Timing::standard(),
            members: vec![member(7, vec![Role::Validator, Role::Citizen]), member(9, vec![])],
            defaults: vec![],
            role_weights: vec![],
            max_delegation_depth: 1,
            min_protocol_version: 1,
        };
        let mut r = Registry::from_charter(&charter);
        r.epoch = 3;
        r
    }

    #[test]
    fn decode_takes_exactly_the_deterministic_bytes() {
        let r = registry();
        let bytes = r.encode();
        assert_eq!(Registry::decode(&bytes).expect("decodes"), r);
        assert_eq!(Registry::hash_bytes(&bytes), r.hash());
        // Roles stay in the charter's order.
        let key = SecretKey::from_seed(&[7; 32]).public();
        let back = Registry::decode(&bytes).expect("decodes");
        assert_eq!(back.members[&key].roles, vec![Role::Validator, Role::Citizen]);
    }

    #[test]
    fn struct_order_with_a_null_policy_is_refused_in_words() {
        let bytes = kos_protocol::to_cbor(&registry());
        assert_eq!(Registry::decode(&bytes), Err(CborError::NonCanonical));
        assert!(non_canonical_reason(&bytes).contains("null"));
    }

    #[test]
    fn a_member_under_another_key_is_refused() {
        let mut r = registry();
        let mut members = (*r.members).clone();
        let (k, mut m) = members.pop_first().expect("a member");
        m.key = SecretKey::from_seed(&[8; 32]).public();
        members.insert(k, m);
        r.members = Arc::new(members);
        assert!(matches!(Registry::decode(&r.encode()), Err(CborError::Malformed(_))));
    }
}
