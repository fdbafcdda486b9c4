//! Key lifecycle: KEY_ROTATION and REVOCATION (`docs/governance.md` §9).
//!
//! A member's *identity* is the key it holds in the registry (its first key). A KEY_ROTATION
//! signed by one of the member's keys at signed time `t` retires that key from `t` on and makes
//! the new key valid from `t` on; a REVOCATION by a key retires it from its signed time on. A
//! message is judged by the key that signed it *at the message's signed time*: before its
//! rotation the old key is valid, from it on only the new one. Every record (ballots, sponsors,
//! attestations, delegations, comments) is kept under the identity, so weight, roles,
//! delegations and pending ballots follow the member to its new key.
//!
//! Competing rotations of one key: the lowest `(signed time, message id)` stands. Everything here
//! is a function of the set of rotation and revocation messages, never of their arrival order;
//! where a rotation arrives after messages it invalidates, the engine asks the shell to rebuild
//! ([`crate::Engine::needs_rebuild`]).

use std::collections::BTreeMap;

use kos_protocol::{
    PublicKey,
    payload::{KeyRotation, MessageId, Revocation},
};
use serde::Serialize;

use crate::{Dependency, Engine, Refusal};

/// How a key's validity ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Retirement {
    /// Rotated to this key.
    Rotated(PublicKey),
    /// Revoked by itself.
    Revoked,
}

/// The end of a key's validity: from `at_ms` on (signed time), by message `by`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct End {
    /// Signed time of the rotation or revocation.
    pub at_ms: u64,
    /// The message.
    pub by: MessageId,
    /// Rotation or revocation.
    pub how: Retirement,
}

/// One key of a member that took part in a rotation or revocation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeyRecord {
    /// The member's identity (its key in the registry).
    pub member: PublicKey,
    /// 0 for the identity key, n for the key after the n-th rotation.
    pub generation: u32,
    /// Valid from this signed time (0 for the identity key).
    pub from_ms: u64,
    /// The rotation that introduced the key.
    pub introduced_by: Option<MessageId>,
    /// Where its validity ends, if it does.
    pub end: Option<End>,
    /// Revocations of this key by a later key of the same member (recorded; the key is
    /// already retired by then).
    pub revoked_later: Option<MessageId>,
}

/// Who signed a message, resolved at its signed time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Signer {
    /// The member's identity.
    pub member: PublicKey,
    /// The signing key's generation (orders a member's messages across keys).
    pub generation: u32,
}

/// Why a key cannot sign at some time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyError {
    /// Not a key this engine knows from rotations.
    Unknown,
    /// Signed before the key's rotation.
    NotYetValid(u64),
    /// Signed at or after the key was rotated away or revoked.
    Retired(u64),
}

/// Every key that took part in a rotation or revocation. Keys absent here are identity keys
/// that never rotated: valid from 0, forever.
#[derive(Clone, Debug, Default)]
pub struct Keys {
    pub(crate) records: BTreeMap<PublicKey, KeyRecord>,
}

impl Keys {
    /// The record of `key`, if it ever rotated, was revoked or was rotated to.
    pub fn get(&self, key: &PublicKey) -> Option<&KeyRecord> {
        self.records.get(key)
    }

    /// The identity `key` belongs to (itself when it never rotated), whatever the time.
    pub fn identity(&self, key: &PublicKey) -> PublicKey {
        self.records.get(key).map_or(*key, |r| r.member)
    }

    /// The member's key valid now (the last of its rotation chain), and whether it is revoked.
    pub fn current(&self, member: &PublicKey) -> (PublicKey, bool) {
        let mut key = *member;
        let mut seen = 0usize;
        while let Some(End { how: Retirement::Rotated(next), .. }) =
            self.records.get(&key).and_then(|r| r.end)
        {
            key = next;
            seen += 1;
            if seen > self.records.len() {
                break;
            }
        }
        let revoked = matches!(
            self.records.get(&key).and_then(|r| r.end),
            Some(End { how: Retirement::Revoked, .. })
        );
        (key, revoked)
    }

    /// Resolves a key that is *not* an identity key: its member, if it is valid at `at_ms`.
    pub fn resolve(&self, key: &PublicKey, at_ms: u64) -> Result<Signer, KeyError> {
        let r = self.records.get(key).ok_or(KeyError::Unknown)?;
        if at_ms < r.from_ms {
            return Err(KeyError::NotYetValid(r.from_ms));
        }
        if let Some(end) = r.end
            && at_ms >= end.at_ms
        {
            return Err(KeyError::Retired(end.at_ms));
        }
        Ok(Signer { member: r.member, generation: r.generation })
    }

    /// Every record, by key.
    pub fn iter(&self) -> impl Iterator<Item = (&PublicKey, &KeyRecord)> {
        self.records.iter()
    }

    /// Whether `key` is known here at all (identity keys that rotated, and keys rotated to).
    pub fn contains(&self, key: &PublicKey) -> bool {
        self.records.contains_key(key)
    }

    /// The member's keys, oldest first.
    pub fn chain(&self, member: &PublicKey) -> Vec<(PublicKey, KeyRecord)> {
        let mut out = Vec::new();
        let mut key = *member;
        while let Some(r) = self.records.get(&key) {
            out.push((key, r.clone()));
            match r.end {
                Some(End { how: Retirement::Rotated(next), .. })
                    if out.len() <= self.records.len() =>
                {
                    key = next
                }
                _ => break,
            }
        }
        out
    }
}

impl Engine {
    /// The member who signed with `key` at `created`, or why the key cannot sign then.
    pub(crate) fn signer(&self, key: &PublicKey, created: u64) -> Result<Signer, Refusal> {
        match self.keys.resolve(key, created) {
            Ok(s) => Ok(s),
            Err(KeyError::Unknown) if self.known_members.contains(key) => {
                Ok(Signer { member: *key, generation: 0 })
            }
            Err(KeyError::Unknown) => Err(Refusal::UnknownAuthor),
            Err(KeyError::NotYetValid(from_ms)) => {
                Err(Refusal::KeyNotYetValid { created_ms: created, from_ms })
            }
            Err(KeyError::Retired(since_ms)) => {
                Err(Refusal::RetiredKey { created_ms: created, since_ms })
            }
        }
    }

    /// The record of `key` as it stands (an identity key without one gets a fresh one).
    fn key_record(&self, key: &PublicKey) -> Option<KeyRecord> {
        match self.keys.records.get(key) {
            Some(r) => Some(r.clone()),
            None if self.known_members.contains(key) => Some(KeyRecord {
                member: *key,
                generation: 0,
                from_ms: 0,
                introduced_by: None,
                end: None,
                revoked_later: None,
            }),
            None => None,
        }
    }

    /// KEY_ROTATION by `author` at `created`: `author` is retired from `created` on, the new
    /// key valid from then. A rotation that precedes (by signed time, then id) the recorded end
    /// of `author` replaces it.
    pub(crate) fn judge_rotation(
        &mut self,
        id: MessageId,
        author: PublicKey,
        created: u64,
        r: &KeyRotation,
    ) -> Result<Vec<Dependency>, Refusal> {
        if self.charter.is_none() {
            return Err(Refusal::Pending(Dependency::Charter));
        }
        if !kos_protocol::rotation_is_valid(&author, r) {
            return Err(Refusal::BadRotationProof);
        }
        if r.new_key == author {
            return Err(Refusal::SelfReference);
        }
        let mut rec = self.key_record(&author).ok_or(Refusal::UnknownAuthor)?;
        if created < rec.from_ms {
            return Err(Refusal::KeyNotYetValid { created_ms: created, from_ms: rec.from_ms });
        }
        let supersedes = match rec.end {
            Some(e) if (created, id) >= (e.at_ms, e.by) => {
                return Err(Refusal::RetiredKey { created_ms: created, since_ms: e.at_ms });
            }
            Some(_) => true,
            None => false,
        };
        // The new key may be the one this rotation's competitor introduced (the same rotation
        // signed again, earlier); any other key in use is refused: a key rotated to before, or
        // a member's key in a registry version in force before `created`. A Membership
        // execution that adds the key at or after `created` fails instead (`chain.rs`): the
        // earlier claim by signed time wins, the rotation at equal times.
        let replaced =
            |k: &KeyRecord| supersedes && k.member == rec.member && k.generation > rec.generation;
        let existing = self.keys.records.get(&r.new_key);
        let in_use = self.member_before(&r.new_key, created)
            || existing.is_some_and(|k| match k.introduced_by {
                Some(_) => !replaced(k),
                // The key rotated itself away (as a member's identity) by then.
                None => k.end.is_some_and(|e| e.at_ms <= created),
            });
        if in_use {
            return Err(Refusal::KeyInUse);
        }
        // A key judged so far as a member's identity (admitted after `created`, rotating on
        // later) is this member's key instead: what it signed must be judged again.
        let misjudged = existing.is_some_and(|k| k.introduced_by.is_none());
        if self.dry_run {
            return Ok(vec![]);
        }
        if supersedes {
            self.drop_after(&author);
            self.rebuild = true;
        }
        if misjudged {
            self.drop_after(&r.new_key);
            self.rebuild = true;
        }
        rec.end = Some(End { at_ms: created, by: id, how: Retirement::Rotated(r.new_key) });
        let (member, generation) = (rec.member, rec.generation);
        self.keys.records.insert(author, rec);
        self.keys.records.insert(
            r.new_key,
            KeyRecord {
                member,
                generation: generation.saturating_add(1),
                from_ms: created,
                introduced_by: Some(id),
                end: None,
                revoked_later: None,
            },
        );
        if self.known_members.contains(&r.new_key) {
            // A Membership execution at or after `created` added the new key: it fails now.
            // Messages the key signed as that member were judged as someone else's.
            if self.last_signed.contains_key(&r.new_key) {
                self.rebuild = true;
            }
            self.rebuild_from(created);
        }
        self.keys_changed(&author, created);
        Ok(vec![])
    }

    /// Whether `key` is a member's key in a registry version that came into force before `t`.
    fn member_before(&self, key: &PublicKey, t: u64) -> bool {
        self.known_members.contains(key)
            && self
                .chain
                .iter()
                .take_while(|v| v.start_ms < t)
                .any(|v| v.registry.members.contains_key(key))
    }

    /// REVOCATION by `author` at `created`: of itself (retired from `created` on), or of an
    /// earlier key of the same member (recorded; that key is retired already).
    pub(crate) fn judge_revocation(
        &mut self,
        id: MessageId,
        author: PublicKey,
        created: u64,
        r: &Revocation,
    ) -> Result<Vec<Dependency>, Refusal> {
        if self.charter.is_none() {
            return Err(Refusal::Pending(Dependency::Charter));
        }
        let signer = self.signer(&author, created)?;
        if r.key != author {
            match self.keys.records.get(&r.key) {
                Some(k) if k.member == signer.member && k.generation < signer.generation => {}
                _ => return Err(Refusal::NotKeyHolder),
            }
            if self.dry_run {
                return Ok(vec![]);
            }
            if let Some(k) = self.keys.records.get_mut(&r.key) {
                k.revoked_later = Some(k.revoked_later.map_or(id, |prev| prev.min(id)));
            }
            self.keys_digest.take();
            return Ok(vec![]);
        }
        let Some(mut rec) = self.key_record(&author) else { return Err(Refusal::UnknownAuthor) };
        if self.dry_run {
            return Ok(vec![]);
        }
        // The signer check passed, so any recorded end is later than this revocation.
        if rec.end.is_some() {
            self.drop_after(&author);
            self.rebuild = true;
        }
        rec.end = Some(End { at_ms: created, by: id, how: Retirement::Revoked });
        self.keys.records.insert(author, rec);
        self.keys_changed(&author, created);
        Ok(vec![])
    }

    /// Forgets the keys `key` was rotated to, and theirs in turn (a competing, earlier
    /// rotation or revocation replaces that branch).
    fn drop_after(&mut self, key: &PublicKey) {
        let mut next = match self.keys.records.get(key).and_then(|r| r.end) {
            Some(End { how: Retirement::Rotated(k), .. }) => Some(k),
            _ => None,
        };
        while let Some(k) = next {
            next = match self.keys.records.remove(&k).and_then(|r| r.end) {
                Some(End { how: Retirement::Rotated(n), .. }) => Some(n),
                _ => None,
            };
        }
    }

    /// After `key` was retired at `at_ms`: messages it signed at or after then that were
    /// already applied call for a rebuild; every derived value that resolves keys is redone
    /// (rotations are rare, so all of them).
    fn keys_changed(&mut self, key: &PublicKey, at_ms: u64) {
        if self.last_signed.get(key).is_some_and(|&t| t >= at_ms) {
            self.rebuild = true;
        }
        self.keys_digest.take();
        self.delegations_digest.take();
        let ids: Vec<_> = self.proposals.keys().copied().collect();
        for pid in ids {
            if let Some(p) = self.proposals.get_mut(&pid) {
                p.cache.clear();
            }
            self.mark(pid);
            self.after_ballot(&pid);
        }
    }
}
