//! The registry chain: content-addressed registry versions and the executions that create them.
//!
//! The chain is a function of the message set alone (not of `now`, not of arrival order): every
//! final, approved, sponsored and not withdrawn proposal whose pinned version is valid executes at
//! `max(final_at, close + grace) + execution delay` (signed times only), in `(time, end of
//! voting, proposal id)` order, each against the version before it. A version is in force from its execution's time until the next
//! one's. Versions are looked up by content hash; a proposal's pin is valid if it names a version
//! in force at some moment of `[signed time − grace, signed time]`.
//!
//! A change to the set of executions (a certificate arrives, a withdrawal or revision arrives
//! late) rebuilds the chain from the first time it affects, and re-judges the pins of proposals
//! signed from then on. Appending at the end — the normal case — touches nothing else.

use std::sync::Arc;

use kos_protocol::{
    PublicKey,
    payload::{Action, Digest, Member, Outcome, ProposalId, TrustLevel},
};
use serde::Serialize;

use crate::{Dependency, Engine, ProposalState, ZERO_ID, registry::Registry};

/// One registry version in the chain.
#[derive(Clone, Debug)]
pub(crate) struct Version {
    /// When it comes into force (0 for the charter's).
    pub(crate) start_ms: u64,
    /// Its content hash.
    pub(crate) hash: Digest,
    /// Its content.
    pub(crate) registry: Arc<Registry>,
}

/// How to undo an execution (the rollback plan).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Inverse {
    /// Restore a configuration key (`None`: remove it).
    Config {
        /// The key.
        key: String,
        /// Its previous value.
        value: Option<String>,
    },
    /// Restore a member record (`None`: remove the member).
    Member {
        /// The member's key.
        key: PublicKey,
        /// Its previous record.
        record: Option<Box<Member>>,
    },
    /// Restore the policy document.
    Policy(Option<String>),
    /// Restore the minimum protocol version.
    MinProtocolVersion(u16),
}

/// The recorded execution of a final, approved proposal.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Execution {
    /// The proposal executed.
    pub proposal: ProposalId,
    /// When it executes: `max(final_at, close + grace)` plus the proposal's execution delay.
    pub at_ms: u64,
    /// The registry epoch it produced, if it changed the registry.
    pub epoch: Option<u64>,
    /// The content hash of the registry version it produced, if any.
    pub registry: Option<Digest>,
    /// `Err` with the reason if the action could not be applied (nothing changed).
    pub result: Result<(), String>,
    /// How to undo it.
    pub inverse: Option<Inverse>,
}

impl Engine {
    pub(crate) fn init_chain(&mut self, base: Registry) {
        let hash = base.hash();
        self.known_members.extend(base.members.keys().copied());
        self.chain = vec![Version { start_ms: 0, hash, registry: Arc::new(base) }];
        self.versions = [(hash, 0)].into_iter().collect();
        self.chain_digest.take();
        self.released.push(Dependency::Registry(hash));
    }

    /// The registry version with content hash `hash`, if it is in force at some moment of
    /// `[created − grace, created]`.
    pub(crate) fn version_for(&self, hash: &Digest, created: u64) -> Option<Arc<Registry>> {
        let &i = self.versions.get(hash)?;
        let v = self.chain.get(i)?;
        let from = created.saturating_sub(self.grace());
        let ends_after = self.chain.get(i + 1).is_none_or(|next| next.start_ms > from);
        (v.start_ms <= created && ends_after).then(|| Arc::clone(&v.registry))
    }

    /// The registry in force at `now_ms`. O(log versions).
    pub fn registry(&self, now_ms: u64) -> Option<Registry> {
        self.registry_at(now_ms).map(|r| Registry::clone(r))
    }

    fn registry_at(&self, t: u64) -> Option<&Arc<Registry>> {
        let i = self.chain.partition_point(|v| v.start_ms <= t);
        self.chain.get(i.checked_sub(1)?).map(|v| &v.registry)
    }

    /// The registry version with content hash `hash`, whenever it is in force.
    pub fn registry_version(&self, hash: &Digest) -> Option<&Registry> {
        self.versions.get(hash).and_then(|&i| self.chain.get(i)).map(|v| &*v.registry)
    }

    /// The content hash of the chain's last version (in force now or later). O(1).
    pub fn registry_head(&self) -> Option<Digest> {
        self.chain.last().map(|v| v.hash)
    }

    /// Every registry version of the chain: (start time, content hash).
    pub fn registry_chain(&self) -> Vec<(u64, Digest)> {
        self.chain.iter().map(|v| (v.start_ms, v.hash)).collect()
    }

    /// Executions due by `now_ms`, in chain order (time, end of voting, proposal id).
    pub fn executions(&self, now_ms: u64) -> Vec<Execution> {
        self.exec_order
            .range(..(now_ms.saturating_add(1), 0, ZERO_ID))
            .filter_map(|(_, _, pid)| self.executions.get(pid))
            .cloned()
            .collect()
    }

    /// The execution of proposal `id` in the chain (due or not yet due).
    pub fn execution(&self, id: &ProposalId) -> Option<&Execution> {
        self.executions.get(id)
    }

    /// When proposal `p` executes if it is approved: `max(final_at, close + grace)` plus its
    /// execution delay — never before its certificate completed (by signed time), so a proposer
    /// who learns of the certificate within the grace period pins the version it creates.
    pub(crate) fn exec_time(&self, p: &ProposalState) -> u64 {
        let final_at = p.attestations.final_().map_or(0, |f| f.final_at_ms);
        self.effective_close(p)
            .saturating_add(self.grace())
            .max(final_at)
            .saturating_add(p.body.timeline.execution_delay_ms)
    }

    /// Re-derives whether `pid` executes and when; rebuilds the chain from the earliest time
    /// affected if that changed (or, with `force`, if it executes at all: its action changed).
    pub(crate) fn touch(&mut self, pid: &ProposalId, force: bool) {
        let Some(p) = self.proposals.get(pid) else { return };
        let approved = p.attestations.final_().is_some_and(|f| f.key.outcome == Outcome::Approved);
        let new = (approved && !p.is_withdrawn() && p.sponsored()).then(|| self.exec_time(p));
        let old = self.exec_at.get(pid).copied();
        if new == old && !(force && old.is_some()) {
            return;
        }
        let end = p.voting_end();
        self.mark(*pid);
        if let Some(t) = old {
            self.exec_order.remove(&(t, end, *pid));
            self.exec_at.remove(pid);
        }
        if let Some(t) = new {
            self.exec_order.insert((t, end, *pid));
            self.exec_at.insert(*pid, t);
            self.wake.insert(t);
        }
        let from = match (old, new) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => return,
        };
        self.rebuild_from(from);
    }

    /// Recomputes the chain from time `t0`: versions starting at or after `t0` are dropped, then
    /// executions and pin checks from then on are replayed in time order (executions first at
    /// equal times, since a version is in force from its start).
    pub(crate) fn rebuild_from(&mut self, t0: u64) {
        if self.chain.is_empty() {
            return;
        }
        let grace = self.grace();
        let keep = self.chain.partition_point(|v| v.start_ms < t0).max(1);
        for v in self.chain.drain(keep..) {
            self.versions.remove(&v.hash);
        }
        self.executions.retain(|_, e| e.at_ms < t0);
        self.chain_digest.take();
        // The window of the last kept version may have changed.
        if let Some(v) = self.chain.last() {
            self.released.push(Dependency::Registry(v.hash));
        }
        // (time, kind: 0 execution / 1 pin check, tie-break: end of voting, proposal)
        let mut events: Vec<(u64, u8, u64, ProposalId)> = self
            .exec_order
            .range((t0, 0, ZERO_ID)..)
            .map(|&(t, end, pid)| (t, 0, end, pid))
            .collect();
        events.extend(
            self.by_created
                .range((t0.saturating_sub(grace), ZERO_ID)..)
                .map(|&(t, pid)| (t, 1, 0, pid)),
        );
        events.sort();
        for (t, kind, _, pid) in events {
            self.mark(pid);
            if kind == 1 {
                let Some(p) = self.proposals.get(&pid) else { continue };
                let valid = self.version_for(&p.body.registry.hash, p.created_ms).is_some();
                if let Some(p) = self.proposals.get_mut(&pid)
                    && p.active != valid
                {
                    p.active = valid;
                    p.cache.digest.take();
                    if valid {
                        self.released.push(Dependency::Proposal(pid));
                    }
                }
                continue;
            }
            let Some(p) = self.proposals.get(&pid) else { continue };
            if !p.active {
                continue;
            }
            let Some(last) = self.chain.last() else { return };
            let mut next = (*last.registry).clone();
            let mut outcome = execute(&mut next, p.action(), &self.executions);
            // A key that becomes a member here must not be a key some member rotated to at or
            // before this time: the earlier claim by signed time wins. A rotation to it signed
            // later, already applied, is no longer valid: the state must be rebuilt. (A key
            // that rotated away *from* itself before its admission is admitted; its new key
            // acts for it.)
            let mut late_rotation = false;
            if matches!(outcome, Ok(Some(_))) {
                for k in next.members.keys().filter(|k| !last.registry.members.contains_key(*k)) {
                    let Some(r) = self.keys.get(k).filter(|r| r.introduced_by.is_some()) else {
                        continue;
                    };
                    if r.from_ms <= t {
                        outcome = Err("the key is a key another member rotated to");
                    } else {
                        late_rotation = true;
                    }
                }
            }
            if late_rotation && outcome.is_ok() {
                self.rebuild = true;
            }
            let (result, inverse, epoch, registry) = match outcome {
                Ok(Some(inverse)) => {
                    next.epoch = self.chain.len() as u64;
                    let epoch = next.epoch;
                    let hash = next.hash();
                    self.known_members.extend(next.members.keys().copied());
                    self.versions.insert(hash, self.chain.len());
                    self.chain.push(Version { start_ms: t, hash, registry: Arc::new(next) });
                    self.released.push(Dependency::Registry(hash));
                    (Ok(()), Some(inverse), Some(epoch), Some(hash))
                }
                Ok(None) => (Ok(()), None, None, None),
                Err(e) => (Err(e.to_owned()), None, None, None),
            };
            self.executions.insert(
                pid,
                Execution { proposal: pid, at_ms: t, epoch, registry, result, inverse },
            );
        }
    }
}

/// Applies `action` to `reg`. `Ok(Some(inverse))` if the registry changed, `Ok(None)` if the
/// action changes nothing, `Err` (registry untouched) if it cannot be applied.
pub(crate) fn execute(
    reg: &mut Registry,
    action: &Action,
    earlier: &std::collections::BTreeMap<ProposalId, Execution>,
) -> Result<Option<Inverse>, &'static str> {
    Ok(Some(match action {
        Action::None => return Ok(None),
        Action::Configuration { key, new, old } => {
            let current = reg.config.get(key).cloned();
            if old.is_some() && current != *old {
                return Err("configuration value is not the expected old value");
            }
            reg.config.insert(key.clone(), new.clone());
            Inverse::Config { key: key.clone(), value: current }
        }
        Action::TrustAdjustment { level, member } => {
            let m = Arc::make_mut(&mut reg.members).get_mut(member).ok_or("not a member")?;
            let before = m.clone();
            m.trust = *level;
            Inverse::Member { key: *member, record: Some(Box::new(before)) }
        }
        Action::Quarantine(member) => {
            let m = Arc::make_mut(&mut reg.members).get_mut(member).ok_or("not a member")?;
            let before = m.clone();
            m.trust = TrustLevel::Quarantine;
            Inverse::Member { key: *member, record: Some(Box::new(before)) }
        }
        Action::AddMember(m) => {
            if reg.members.contains_key(&m.key) {
                return Err("already a member");
            }
            Arc::make_mut(&mut reg.members).insert(m.key, m.clone());
            Inverse::Member { key: m.key, record: None }
        }
        Action::RemoveMember(key) => {
            let before = Arc::make_mut(&mut reg.members).remove(key).ok_or("not a member")?;
            for body in reg.bodies.values_mut() {
                body.remove(key);
            }
            Inverse::Member { key: *key, record: Some(Box::new(before)) }
        }
        Action::PolicyUpdate(policy) => {
            let before = reg.policy.replace(policy.clone());
            Inverse::Policy(before)
        }
        Action::ProtocolUpgrade(v) => {
            if *v <= reg.min_protocol_version {
                return Err("protocol version is not higher than the current minimum");
            }
            let before = reg.min_protocol_version;
            reg.min_protocol_version = *v;
            Inverse::MinProtocolVersion(before)
        }
        Action::Rollback(target) => {
            let inverse = earlier
                .get(target)
                .and_then(|e| e.inverse.clone())
                .ok_or("nothing to roll back: the target did not execute a change")?;
            match inverse {
                Inverse::Config { key, value } => {
                    let current = match value {
                        Some(v) => reg.config.insert(key.clone(), v),
                        None => reg.config.remove(&key),
                    };
                    Inverse::Config { key, value: current }
                }
                Inverse::Member { key, record } => {
                    let current = match record {
                        Some(m) => Arc::make_mut(&mut reg.members).insert(key, *m),
                        None => Arc::make_mut(&mut reg.members).remove(&key),
                    };
                    Inverse::Member { key, record: current.map(Box::new) }
                }
                Inverse::Policy(p) => {
                    let current = std::mem::replace(&mut reg.policy, p);
                    Inverse::Policy(current)
                }
                Inverse::MinProtocolVersion(v) => {
                    let current = std::mem::replace(&mut reg.min_protocol_version, v);
                    Inverse::MinProtocolVersion(current)
                }
            }
        }
    }))
}
