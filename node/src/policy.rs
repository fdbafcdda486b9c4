//! `.klp-policy`: what this node accepts, from whom, and how much.
//!
//! A policy file (TOML, `<data-dir>/klp-policy.toml`; the annotated example is
//! `docs/klp-policy.example.toml`) lists allowed and denied message types, peer and sender
//! (KLP-ID or did:key) allow and deny lists, the minimum trust a sender needs per message type
//! (and to have its messages relayed), and quotas per peer and per type. The federation's policy
//! (a `policy_update` proposal, once executed) applies too: a message must pass both, and a deny
//! in either wins. A refusal names the rule that refused.

use std::collections::{BTreeMap, HashMap};

use kos_protocol::{MessageType, PublicKey, payload::TrustLevel};
use libp2p::PeerId;
use serde::Deserialize;

use crate::limits::Buckets;

/// The node's policy file, in its data directory.
pub const POLICY_FILE: &str = "klp-policy.toml";

/// A policy decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead.
    Allow,
    /// Refused, with the rule that refused.
    Deny(String),
}

/// Type allow and deny lists.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Lists {
    /// If not empty: only these.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Never these.
    #[serde(default)]
    pub deny: Vec<String>,
}

/// Quotas.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Quotas {
    /// Direct messages a peer may deliver per minute.
    #[serde(default)]
    pub per_peer_per_minute: Option<u32>,
    /// Messages of a type accepted per minute (from everyone).
    #[serde(default)]
    pub per_type_per_minute: BTreeMap<String, u32>,
}

/// A `.klp-policy` document, as written.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// Message types (upper-case names: `TASK_REQUEST`, `VOTE`, …).
    #[serde(default)]
    pub types: Lists,
    /// Peers (peer ids).
    #[serde(default)]
    pub peers: Lists,
    /// Senders (KLP-IDs or did:keys).
    #[serde(default)]
    pub senders: Lists,
    /// Minimum sender trust per message type (`core` … `sandbox`).
    #[serde(default)]
    pub min_trust: BTreeMap<String, String>,
    /// Minimum sender trust for this node to relay the sender's sealed messages.
    #[serde(default)]
    pub relay_min_trust: Option<String>,
    /// Quotas.
    #[serde(default)]
    pub quotas: Quotas,
}

/// Why a policy document is refused.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Not TOML, or unknown fields.
    #[error("invalid policy: {0}")]
    Syntax(String),
    /// A name that is not a message type, trust level, peer id or sender.
    #[error("invalid policy: {0}")]
    Value(String),
}

fn parse_type(s: &str) -> Result<MessageType, PolicyError> {
    MessageType::from_name(s)
        .ok_or_else(|| PolicyError::Value(format!("`{s}` is not a message type")))
}

fn parse_level(s: &str) -> Result<TrustLevel, PolicyError> {
    s.parse().map_err(|_| PolicyError::Value(format!("`{s}` is not a trust level")))
}

fn trust_rank(t: Option<TrustLevel>) -> u8 {
    match t {
        None => 0,
        Some(TrustLevel::Quarantine) => 0,
        Some(TrustLevel::Sandbox) => 1,
        Some(TrustLevel::Standard) => 2,
        Some(TrustLevel::Trusted) => 3,
        Some(TrustLevel::Core) => 4,
    }
}

/// One checked policy document.
#[derive(Debug, Clone, Default)]
struct Rules {
    types_allow: Vec<MessageType>,
    types_deny: Vec<MessageType>,
    peers_allow: Vec<PeerId>,
    peers_deny: Vec<PeerId>,
    senders_allow: Vec<String>,
    senders_deny: Vec<String>,
    min_trust: HashMap<MessageType, TrustLevel>,
    relay_min_trust: Option<TrustLevel>,
    per_peer_per_minute: Option<u32>,
    per_type_per_minute: HashMap<MessageType, u32>,
}

impl Rules {
    fn json(&self) -> serde_json::Value {
        let types = |v: &[MessageType]| v.iter().map(|t| t.name()).collect::<Vec<_>>();
        let peers = |v: &[PeerId]| v.iter().map(PeerId::to_string).collect::<Vec<_>>();
        serde_json::json!({
            "types": { "allow": types(&self.types_allow), "deny": types(&self.types_deny) },
            "peers": { "allow": peers(&self.peers_allow), "deny": peers(&self.peers_deny) },
            "senders": { "allow": self.senders_allow, "deny": self.senders_deny },
            "min_trust": self.min_trust.iter()
                .map(|(t, l)| (t.name(), l.as_str())).collect::<BTreeMap<_, _>>(),
            "relay_min_trust": self.relay_min_trust.map(|l| l.as_str()),
            "per_peer_per_minute": self.per_peer_per_minute,
            "per_type_per_minute": self.per_type_per_minute.iter()
                .map(|(t, n)| (t.name(), *n)).collect::<BTreeMap<_, _>>(),
        })
    }

    fn parse(text: &str) -> Result<(PolicyFile, Rules), PolicyError> {
        let file: PolicyFile = toml::from_str(text)
            .map_err(|e| PolicyError::Syntax(kos_clidoc::toml_error(text, &e)))?;
        let types = |v: &[String]| v.iter().map(|s| parse_type(s)).collect::<Result<Vec<_>, _>>();
        let peers = |v: &[String]| {
            v.iter()
                .map(|s| {
                    s.parse::<PeerId>()
                        .map_err(|_| PolicyError::Value(format!("`{s}` is not a peer id")))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let senders = |v: &[String]| {
            v.iter()
                .map(|s| {
                    sender_id(s).ok_or_else(|| {
                        PolicyError::Value(format!("`{s}` is not a KLP-ID or did:key"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let rules = Rules {
            types_allow: types(&file.types.allow)?,
            types_deny: types(&file.types.deny)?,
            peers_allow: peers(&file.peers.allow)?,
            peers_deny: peers(&file.peers.deny)?,
            senders_allow: senders(&file.senders.allow)?,
            senders_deny: senders(&file.senders.deny)?,
            min_trust: file
                .min_trust
                .iter()
                .map(|(t, l)| Ok((parse_type(t)?, parse_level(l)?)))
                .collect::<Result<_, PolicyError>>()?,
            relay_min_trust: file.relay_min_trust.as_deref().map(parse_level).transpose()?,
            per_peer_per_minute: file.quotas.per_peer_per_minute,
            per_type_per_minute: file
                .quotas
                .per_type_per_minute
                .iter()
                .map(|(t, n)| Ok((parse_type(t)?, *n)))
                .collect::<Result<_, PolicyError>>()?,
        };
        Ok((file, rules))
    }
}

/// A sender as policies name it: its KLP-ID text (from a KLP-ID or a did:key).
fn sender_id(s: &str) -> Option<String> {
    if let Ok(k) = PublicKey::from_did(s) {
        return Some(k.klp_id().to_string());
    }
    s.parse::<kos_protocol::KlpId>().ok().map(|k| k.to_string())
}

/// The policy in force: the node's file and the federation's document, the trust it judges
/// senders by, and the quota counters.
#[derive(Debug, Default)]
pub struct Policy {
    local: Rules,
    local_text: String,
    federation: Rules,
    federation_text: Option<String>,
    /// Sender trust: local trust (`klp://…`, `agent://…` targets) over registry trust, by KLP-ID.
    trust: HashMap<String, TrustLevel>,
    /// Keys rotated away or revoked, by KLP-ID: the signed time from which they are retired.
    retired: HashMap<String, u64>,
    peer_quota: Option<Buckets<PeerId>>,
    type_quota: HashMap<MessageType, Buckets<()>>,
}

impl Policy {
    /// A policy from the node's document (empty: allow everything) and the federation's.
    pub fn new(local: &str, federation: Option<&str>) -> Result<Self, PolicyError> {
        let mut p = Policy::default();
        p.set_local(local)?;
        p.set_federation(federation)?;
        Ok(p)
    }

    /// Replaces the node's document (checked first: a bad one changes nothing).
    pub fn set_local(&mut self, text: &str) -> Result<(), PolicyError> {
        let (_, rules) = Rules::parse(text)?;
        self.local = rules;
        self.local_text = text.to_owned();
        self.reset_quotas();
        Ok(())
    }

    /// Replaces the federation's document. One that does not parse is ignored (with the error):
    /// a federation cannot lock a node out by a typo.
    pub fn set_federation(&mut self, text: Option<&str>) -> Result<(), PolicyError> {
        if self.federation_text.as_deref() == text {
            return Ok(());
        }
        self.federation_text = text.map(str::to_owned);
        self.federation = match text {
            Some(t) => Rules::parse(t)?.1,
            None => Rules::default(),
        };
        self.reset_quotas();
        Ok(())
    }

    /// Sets the trust senders are judged by (KLP-ID text → level).
    pub fn set_trust(&mut self, trust: HashMap<String, TrustLevel>) {
        self.trust = trust;
    }

    /// Replaces the retired keys (KLP-ID → signed time of the rotation or revocation).
    pub fn set_retired(&mut self, retired: HashMap<String, u64>) {
        self.retired = retired;
    }

    /// Whether the key with this KLP-ID was rotated away or revoked.
    pub fn is_retired(&self, klp_id: &kos_protocol::KlpId) -> bool {
        self.retired.contains_key(&klp_id.to_string())
    }

    /// The signed time from which `sender`'s key is retired, if it is.
    pub fn retired_since(&self, sender: &PublicKey) -> Option<u64> {
        self.retired.get(&sender.klp_id().to_string()).copied()
    }

    fn reset_quotas(&mut self) {
        let per_peer = [self.local.per_peer_per_minute, self.federation.per_peer_per_minute]
            .into_iter()
            .flatten()
            .min();
        self.peer_quota = per_peer.map(|n| Buckets::new(n, n));
        self.type_quota.clear();
        for rules in [&self.local, &self.federation] {
            for (t, n) in &rules.per_type_per_minute {
                let n = (*n).min(self.type_quota.get(t).map_or(u32::MAX, Buckets::per_minute));
                self.type_quota.insert(*t, Buckets::new(n, n));
            }
        }
    }

    /// The node's document as written, and the federation's.
    pub fn texts(&self) -> (&str, Option<&str>) {
        (&self.local_text, self.federation_text.as_deref())
    }

    /// The rules in force, as checked (names as the file takes them): this node's, and the
    /// federation's (`None` when it has none).
    pub fn rules_json(&self) -> (serde_json::Value, Option<serde_json::Value>) {
        (self.local.json(), self.federation_text.as_ref().map(|_| self.federation.json()))
    }

    fn both(&self) -> [(&'static str, &Rules); 2] {
        [("local policy", &self.local), ("federation policy", &self.federation)]
    }

    /// May this peer deliver to us at all (and within its quota)?
    pub fn check_peer(&self, peer: &PeerId) -> Decision {
        for (which, r) in self.both() {
            if r.peers_deny.contains(peer) {
                return Decision::Deny(format!("{which}: peer {peer} is on the deny list"));
            }
            if !r.peers_allow.is_empty() && !r.peers_allow.contains(peer) {
                return Decision::Deny(format!("{which}: peer {peer} is not on the allow list"));
            }
        }
        Decision::Allow
    }

    /// Counts one message from `peer` against its quota.
    pub fn take_peer_quota(&mut self, peer: PeerId, now_ms: u64) -> Decision {
        let over = self.peer_quota.as_mut().is_some_and(|b| !b.allow(peer, now_ms));
        if over {
            Decision::Deny(format!("quota: peer {peer} is over its messages per minute"))
        } else {
            Decision::Allow
        }
    }

    /// Counts one message of `kind` against its quota.
    pub fn take_type_quota(&mut self, kind: MessageType, now_ms: u64) -> Decision {
        let over = self.type_quota.get_mut(&kind).is_some_and(|b| !b.allow((), now_ms));
        if over {
            Decision::Deny(format!("quota: {kind} is over its messages per minute"))
        } else {
            Decision::Allow
        }
    }

    /// The trust a sender has here.
    pub fn trust_of(&self, sender: &PublicKey) -> Option<TrustLevel> {
        self.trust.get(&sender.klp_id().to_string()).copied()
    }

    /// May `sender` send a message of `kind`?
    pub fn check_sender(&self, sender: &PublicKey, kind: MessageType) -> Decision {
        let id = sender.klp_id().to_string();
        let trust = self.trust_of(sender);
        for (which, r) in self.both() {
            if r.types_deny.contains(&kind) {
                return Decision::Deny(format!("{which}: message type {kind} is denied"));
            }
            if !r.types_allow.is_empty()
                && !r.types_allow.contains(&kind)
                && kind != MessageType::Sealed
            {
                return Decision::Deny(format!("{which}: message type {kind} is not allowed"));
            }
            if r.senders_deny.contains(&id) {
                return Decision::Deny(format!("{which}: sender {id} is on the deny list"));
            }
            if !r.senders_allow.is_empty() && !r.senders_allow.contains(&id) {
                return Decision::Deny(format!("{which}: sender {id} is not on the allow list"));
            }
            if let Some(min) = r.min_trust.get(&kind)
                && trust_rank(trust) < trust_rank(Some(*min))
            {
                return Decision::Deny(format!(
                    "{which}: {kind} needs sender trust {min} or higher (sender has {})",
                    trust.map_or("none", |t| t.as_str())
                ));
            }
        }
        Decision::Allow
    }

    /// May this node relay `sender`'s sealed messages?
    pub fn check_relay(&self, sender: &PublicKey) -> Decision {
        let trust = self.trust_of(sender);
        for (which, r) in self.both() {
            if let Some(min) = r.relay_min_trust
                && trust_rank(trust) < trust_rank(Some(min))
            {
                return Decision::Deny(format!(
                    "{which}: relaying needs sender trust {min} or higher (sender has {})",
                    trust.map_or("none", |t| t.as_str())
                ));
            }
        }
        Decision::Allow
    }
}

/// Checks a policy document without applying it.
pub fn check(text: &str) -> Result<(), PolicyError> {
    Rules::parse(text).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_policy_parses_and_applies() {
        let text = include_str!("../../docs/klp-policy.example.toml");
        let p = Policy::new(text, None).expect("the example is valid");
        let someone = kos_protocol::SecretKey::from_seed(&[9; 32]).public();
        assert_eq!(
            p.check_sender(&someone, MessageType::AgentMigration),
            Decision::Deny("local policy: message type AGENT_MIGRATION is denied".into())
        );
        assert!(matches!(p.check_sender(&someone, MessageType::TaskRequest), Decision::Deny(_)));
    }

    #[test]
    fn quotas_per_peer_and_per_type_refuse_beyond_their_rate() {
        let text =
            "[quotas]\nper_peer_per_minute = 2\n[quotas.per_type_per_minute]\nTASK_REQUEST = 1\n";
        let mut p = Policy::new(text, None).expect("valid");
        let (one, two) = (PeerId::random(), PeerId::random());
        assert_eq!(p.take_peer_quota(one, 0), Decision::Allow);
        assert_eq!(p.take_peer_quota(one, 0), Decision::Allow);
        assert!(
            matches!(p.take_peer_quota(one, 0), Decision::Deny(w) if w.contains("over its messages per minute"))
        );
        assert_eq!(p.take_peer_quota(two, 0), Decision::Allow, "each peer has its own");
        assert_eq!(p.take_peer_quota(one, 30_000), Decision::Allow, "refilled at 2 a minute");
        assert_eq!(p.take_type_quota(MessageType::TaskRequest, 0), Decision::Allow);
        assert!(matches!(p.take_type_quota(MessageType::TaskRequest, 0), Decision::Deny(_)));
        assert_eq!(p.take_type_quota(MessageType::TaskResult, 0), Decision::Allow, "no quota");
    }

    #[test]
    fn a_deny_in_the_federation_policy_wins_and_a_bad_document_changes_nothing() {
        let mut p = Policy::new("", Some("[types]\ndeny = [\"TASK_REQUEST\"]\n")).expect("valid");
        let someone = kos_protocol::SecretKey::from_seed(&[9; 32]).public();
        assert_eq!(
            p.check_sender(&someone, MessageType::TaskRequest),
            Decision::Deny("federation policy: message type TASK_REQUEST is denied".into())
        );
        assert!(p.set_local("[types]\ndeny = [\"NOPE\"]").is_err());
        assert_eq!(p.texts().0, "");
        assert!(p.set_local("colour = 1").is_err());
    }
}
