//! Agent bundles carried by AGENT_MIGRATION: a configuration snapshot and the agent's audit
//! trail, whose hash chain must end at the message's `audit_root` (`docs/protocol.md` §4.17).
//! A receiver accepts a migration only if the chain it recomputes from the trail matches.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::{
    cbor,
    payload::{AgentMigration, Digest},
};

/// Domain prefix of each link of an agent's audit chain.
pub const AGENT_AUDIT_DOMAIN: &[u8] = b"kos-klp-v1/agent-audit\0";

/// One entry of an agent's audit trail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    /// When (ms since the epoch).
    pub at_ms: u64,
    /// What happened.
    pub event: String,
}

/// The snapshot an AGENT_MIGRATION carries: `{"audit": [* record], "config": tstr}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSnapshot {
    /// The audit trail, oldest first.
    pub audit: Vec<AuditRecord>,
    /// The agent's configuration (opaque text, e.g. TOML).
    pub config: String,
}

/// Why a migration is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    /// The snapshot is not the deterministic CBOR of an [`AgentSnapshot`].
    #[error("the agent snapshot is not a valid bundle")]
    BadSnapshot,
    /// The audit trail does not hash to the message's root: it was altered.
    #[error("the agent's audit trail does not match its root (altered or incomplete)")]
    AuditMismatch,
}

/// The head of the audit chain: `h₀ = 32 zero bytes`,
/// `hᵢ = SHA-256(AGENT_AUDIT_DOMAIN ‖ hᵢ₋₁ ‖ u64be(at_ms) ‖ event)`.
pub fn audit_root(trail: &[AuditRecord]) -> Digest {
    let mut h = [0u8; 32];
    for r in trail {
        let mut s = Sha256::new();
        s.update(AGENT_AUDIT_DOMAIN);
        s.update(h);
        s.update(r.at_ms.to_be_bytes());
        s.update(r.event.as_bytes());
        h = s.finalize().into();
    }
    Digest(h)
}

/// The snapshot's bytes (deterministic CBOR).
pub fn encode_snapshot(s: &AgentSnapshot) -> Vec<u8> {
    cbor::to_vec(s)
}

/// Checks a migration: its snapshot decodes and its trail hashes to `audit_root`.
pub fn verify_migration(m: &AgentMigration) -> Result<AgentSnapshot, AgentError> {
    let s: AgentSnapshot =
        cbor::from_slice_canonical(&m.snapshot).map_err(|_| AgentError::BadSnapshot)?;
    if audit_root(&s.audit) != m.audit_root {
        return Err(AgentError::AuditMismatch);
    }
    Ok(s)
}
