//! The core: the one owner of the engine and the store, on a thread of its own.
//!
//! Every message, whatever its origin — gossip, sync, a local API call, a signed envelope
//! submitted through the API, the federation's creation — enters through [`Core::ingest`]:
//!
//! ```text
//! decode + verify (worker pool, or the API) → quota (live gossip only) → Engine::check
//!   → store (durably for local messages, by group commit for the network's) → Engine::handle
//!   → effects
//! ```
//!
//! Effects are performed in one order: (1) store the held messages a message released,
//! (2) report the gossip verdict, (3) penalise the relaying peer, (4) publish what this node
//! signed, (5) sign and publish the attestations the engine asks for (once per batch),
//! (6) move the wake-up time. Start-up replay applies the stored messages with
//! `Engine::replay`, which judges them by the same rules.
//!
//! Nothing here touches the swarm: what the network must do goes out as [`ToNet`] on a bounded
//! channel; requests come in as [`ToCore`] on another. The API and the network task share no
//! lock with the core.

use std::{sync::Arc, time::Duration};

use anyhow::{Context, bail};
use kos_engine::{Effect, Engine, Origin, Refusal, Step, Verdict};
use kos_protocol::{Message, MessageId, Payload, PublicKey, SecretKey, payload::FederationId};
use kos_storage::{Store, StoreError};
use libp2p::{PeerId, gossipsub};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::{limits::Buckets, metrics::Metrics, node::now_ms, peers::PeerAction};

/// Bound of the queue into the core (each entry is one batch or one call).
pub const CORE_QUEUE: usize = 1024;
/// Bound of the queue from the core to the network task.
pub const NET_QUEUE: usize = 8192;
/// Group commit period of the journal for messages from the network.
const COMMIT_INTERVAL: Duration = Duration::from_millis(100);
/// Longest sleep of the core when nothing is scheduled (gauges and checkpoints then).
const HOUSEKEEPING_MS: u64 = 10_000;

/// Where a verified message came from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Live gossip, waiting for its validation verdict.
    Gossip {
        /// Gossipsub's id of the message.
        id: gossipsub::MessageId,
        /// The peer that relayed it.
        source: PeerId,
    },
    /// A sync response from `peer`.
    Sync {
        /// The peer that served it.
        peer: PeerId,
    },
}

impl Source {
    fn origin(&self) -> Origin {
        match self {
            Source::Gossip { .. } => Origin::Gossip,
            Source::Sync { .. } => Origin::Sync,
        }
    }

    fn peer(&self) -> PeerId {
        match self {
            Source::Gossip { source, .. } => *source,
            Source::Sync { peer } => *peer,
        }
    }
}

/// A verified message from the network.
#[derive(Debug)]
pub struct Inbound {
    /// The message (decoded and signature-checked).
    pub msg: Message,
    /// Its origin.
    pub from: Source,
}

/// A closure run on the core thread (API calls).
pub type Call = Box<dyn FnOnce(&mut Core) + Send>;

/// Requests to the core.
pub enum ToCore {
    /// Verified messages from the network, handled as one batch (one attestation pass).
    Ingest(Vec<Inbound>),
    /// Signed envelopes submitted through the API, verified; the answer says what became of
    /// each. One group commit for the batch.
    Submit(Vec<Message>, oneshot::Sender<Vec<Result<Submitted, IngestError>>>),
    /// Run this with the core (API reads and local messages).
    Call(Call),
    /// Commit, checkpoint and stop.
    Shutdown(oneshot::Sender<()>),
}

impl std::fmt::Debug for ToCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ToCore::Ingest(b) => write!(f, "Ingest({})", b.len()),
            ToCore::Submit(m, _) => write!(f, "Submit({})", m.len()),
            ToCore::Call(_) => f.write_str("Call"),
            ToCore::Shutdown(_) => f.write_str("Shutdown"),
        }
    }
}

/// What the network task must do.
#[derive(Debug)]
pub enum ToNet {
    /// Report gossipsub's validation verdict of a message.
    Verdict {
        /// Gossipsub's id.
        id: gossipsub::MessageId,
        /// The relaying peer.
        source: PeerId,
        /// The verdict.
        acceptance: gossipsub::MessageAcceptance,
    },
    /// Publish these envelope bytes on the federation's topic.
    Publish(Vec<u8>),
    /// A graded action against a peer.
    Penalise {
        /// The peer.
        peer: PeerId,
        /// How bad.
        action: PeerAction,
        /// Why, one line.
        why: String,
    },
    /// Follow this federation: subscribe to its topic and sync with every peer.
    Follow(FederationId),
    /// This node's directory record (a signed envelope): publish it in the DHT.
    Record(Vec<u8>),
    /// A BROADCAST_ANNOUNCE signed here: publish it on the federation's announcement topic.
    Announce(Vec<u8>),
    /// The node key rotated: sign directory records and open direct messages with this key
    /// (the previous ones still open what was sealed to them).
    Rekey(SecretKey),
}

/// What became of a submitted envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    /// Applied and stored durably.
    Accepted,
    /// Held until a dependency arrives (not stored yet).
    Held,
    /// Already known.
    Duplicate,
}

/// Why the core did not take a message.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The node follows no federation yet.
    #[error("this node follows no federation")]
    NoFederation,
    /// The engine refused it.
    #[error("refused: {0}")]
    Refused(Refusal),
    /// The store could not take it; nothing changed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// Applied, but the commit that makes it durable failed: not acknowledged.
    #[error("not stored durably: {0}")]
    NotDurable(String),
}

/// Policy refusals written to the audit log per minute at most.
pub const POLICY_AUDITS_PER_MINUTE: u32 = 60;

/// The engine, the store and the node identity, owned by the core thread.
pub struct Core {
    /// The node's identity.
    pub key: SecretKey,
    /// The store (sled handles are shared: the sync server reads a clone).
    pub store: Store,
    /// The engine of the federation this node follows.
    pub engine: Option<Engine>,
    /// Next author sequence number.
    seq: u64,
    /// Metrics (shared with the API and the network task).
    pub metrics: Arc<Metrics>,
    net: mpsc::Sender<ToNet>,
    /// Per-author quota of live gossip.
    authors: Buckets<PublicKey>,
    /// Long tasks' progress (shared with the API): a rebuild reports here.
    pub progress: crate::progress::Progress,
    /// When the engine next changes by the clock alone.
    wake: Option<u64>,
    /// The `.klp-policy` in force (shared with the network task and the API), if any.
    pub policy: Option<Arc<std::sync::Mutex<crate::policy::Policy>>>,
    /// Policy refusals written to the audit log (a flood is counted, not written).
    policy_audits: Buckets<()>,
    /// The registry chain's last version when the policy's trust was last refreshed.
    /// (and the number of key records, which grows with each rotation or revocation).
    policy_head: Option<(Option<kos_protocol::payload::Digest>, usize)>,
    /// Where the node's identity is sealed (rewritten by a key rotation).
    pub vault: Option<VaultFile>,
}

/// The vault file and how to seal it again.
#[derive(Clone)]
pub struct VaultFile {
    /// `vault.bin`.
    pub path: std::path::PathBuf,
    /// The passphrase it is sealed under (empty: a development vault).
    pub passphrase: zeroize::Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for VaultFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultFile").field("path", &self.path).finish_non_exhaustive()
    }
}

/// Vault entry of a key rotation in progress: the new key, written before the rotation is
/// signed, promoted to the node key once the rotation is stored.
pub const NEXT_KEY: &str = "node-next";
/// Vault entries of the keys the node rotated away from (`node-previous-<n>`): direct messages
/// still sealed to an old address can be opened.
pub const PREVIOUS_KEY_PREFIX: &str = "node-previous-";

impl VaultFile {
    fn params(&self) -> kos_protocol::vault::KdfParams {
        if self.passphrase.is_empty() {
            kos_protocol::vault::KdfParams::INSECURE_FAST
        } else {
            kos_protocol::vault::KdfParams::STANDARD
        }
    }

    /// Makes `new` the node key, keeps `old` as the newest previous key, forgets [`NEXT_KEY`].
    pub fn promote(&self, old: &SecretKey, new: &SecretKey) -> anyhow::Result<()> {
        self.edit(|v| {
            let n = (0..usize::MAX)
                .find(|i| v.get(&format!("{PREVIOUS_KEY_PREFIX}{i}")).is_none())
                .unwrap_or(0);
            v.insert(format!("{PREVIOUS_KEY_PREFIX}{n}"), old.clone());
            v.insert(crate::NODE_KEY, new.clone());
            v.remove(NEXT_KEY);
        })?;
        Ok(())
    }

    /// The keys the node rotated away from, newest first.
    pub fn previous_keys(vault: &kos_protocol::vault::Vault) -> Vec<SecretKey> {
        let mut keys: Vec<(usize, SecretKey)> = vault
            .names()
            .filter_map(|n| n.strip_prefix(PREVIOUS_KEY_PREFIX)?.parse::<usize>().ok())
            .filter_map(|i| Some((i, vault.get(&format!("{PREVIOUS_KEY_PREFIX}{i}"))?.clone())))
            .collect();
        keys.sort_by_key(|(i, _)| std::cmp::Reverse(*i));
        keys.into_iter().map(|(_, k)| k).collect()
    }

    /// Loads, edits and seals the vault again (atomically).
    pub fn edit(
        &self,
        f: impl FnOnce(&mut kos_protocol::vault::Vault),
    ) -> anyhow::Result<kos_protocol::vault::Vault> {
        let mut v = kos_protocol::vault::Vault::load(&self.path, &self.passphrase)
            .with_context(|| format!("cannot open {}", self.path.display()))?;
        f(&mut v);
        v.save(&self.path, &self.passphrase, self.params())
            .with_context(|| format!("cannot write {}", self.path.display()))?;
        Ok(v)
    }
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core").field("did", &self.key.public().to_did()).finish_non_exhaustive()
    }
}

/// The progress task of a rebuild (verification and replay of the store, counted together).
pub const REBUILD_TASK: &str = "rebuild";

/// Per-author quota settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Burst.
    pub burst: u32,
    /// Sustained rate per minute.
    pub per_minute: u32,
}

impl Default for Quota {
    fn default() -> Self {
        Quota { burst: crate::limits::AUTHOR_BURST, per_minute: crate::limits::AUTHOR_PER_MINUTE }
    }
}

impl Core {
    /// Changes the per-author quota of live gossip (a configuration reload); authors keep the
    /// tokens they have, up to the new burst.
    pub fn set_quota(&mut self, quota: Quota) {
        self.authors.set_limits(quota.burst, quota.per_minute);
    }

    /// A core over opened state.
    pub fn new(
        opened: crate::node::Opened,
        metrics: Arc<Metrics>,
        net: mpsc::Sender<ToNet>,
        quota: Quota,
    ) -> Self {
        Core {
            key: opened.key,
            store: opened.store,
            engine: opened.engine,
            seq: opened.seq,
            metrics,
            net,
            authors: Buckets::new(quota.burst, quota.per_minute),
            progress: crate::progress::Progress::default(),
            wake: None,
            policy: None,
            policy_audits: Buckets::new(POLICY_AUDITS_PER_MINUTE, POLICY_AUDITS_PER_MINUTE),
            policy_head: None,
            vault: None,
        }
    }

    pub(crate) fn to_net(&self, m: ToNet) {
        // The network task always drains this queue; a closed queue means it is stopping.
        let _ = self.net.blocking_send(m);
    }

    /// Starts following `federation` (recorded durably), with an empty engine. Refused if the
    /// node follows another one.
    pub fn follow(&mut self, federation: FederationId) -> anyhow::Result<bool> {
        match &self.engine {
            Some(e) if e.federation() == federation => return Ok(false),
            Some(_) => bail!("this node already follows another federation"),
            None => {}
        }
        self.store.set_meta("federation", &federation.0)?;
        self.store.audit(now_ms(), &format!("following federation {federation}"))?;
        self.store.flush()?;
        self.engine = Some(Engine::new(federation));
        self.to_net(ToNet::Follow(federation));
        Ok(true)
    }

    /// Creates a federation from a signed charter: the engine is created and the charter
    /// ingested like any local message.
    pub fn found(&mut self, charter: Message) -> anyhow::Result<FederationId> {
        if self.engine.is_some() {
            bail!("this node already follows a federation");
        }
        let fed = charter.id();
        self.engine = Some(Engine::new(fed));
        if let Err(e) = self.ingest_local(&charter) {
            self.engine = None;
            return Err(e);
        }
        self.store.set_meta("federation", &fed.0)?;
        self.store.audit(now_ms(), &format!("created federation {fed}"))?;
        self.store.flush()?;
        self.to_net(ToNet::Follow(fed));
        self.to_net(ToNet::Publish(charter.bytes().to_vec()));
        Ok(fed)
    }

    /// Signs `payload` with the node key, ingests it (stored durably before the engine
    /// changes), publishes it, then signs the attestations that fell due. Refused messages
    /// change nothing.
    pub fn create(
        &mut self,
        payload: Payload,
        target: Option<kos_protocol::Address>,
    ) -> anyhow::Result<Message> {
        let msg = self.create_quiet(payload, target)?;
        self.attest();
        Ok(msg)
    }

    /// Signs a message that is not governance state — a sealed direct message, a directory
    /// record — with the next sequence number (persisted first); nothing is ingested or
    /// published. `build` gets the key, the sequence number and the time.
    pub fn sign_detached(
        &mut self,
        build: impl FnOnce(&kos_protocol::SecretKey, u64, u64) -> anyhow::Result<Message>,
    ) -> anyhow::Result<Message> {
        let now = now_ms();
        let seq = (self.seq + 1).max(now);
        self.store.set_meta("seq", &seq.to_be_bytes())?;
        self.seq = seq;
        build(&self.key, seq, now)
    }

    fn create_quiet(
        &mut self,
        payload: Payload,
        target: Option<kos_protocol::Address>,
    ) -> anyhow::Result<Message> {
        let now = now_ms();
        // Above every message this node ever signed: the counter, and the clock (so a node
        // rebuilt from peers, or from a lost store, never reuses a lower sequence number).
        let seq = (self.seq + 1).max(now);
        let msg = Message::sign(&self.key, seq, now, target, payload)?;
        self.ingest_local(&msg)?;
        self.seq = seq;
        self.store.set_meta("seq", &self.seq.to_be_bytes())?;
        self.metrics.local_messages.inc();
        self.to_net(ToNet::Publish(msg.bytes().to_vec()));
        Ok(msg)
    }

    /// A message signed here: judged, stored durably, applied. Held messages are accepted (they
    /// are applied when their dependency arrives).
    fn ingest_local(&mut self, msg: &Message) -> anyhow::Result<()> {
        let now = now_ms();
        let engine = self.engine.as_mut().context("this node follows no federation")?;
        match engine.check(msg, Origin::Local, now) {
            Ok(()) => {
                self.store.insert_durable(msg)?;
            }
            Err(Refusal::Pending(_)) => {}
            Err(r) => bail!("refused: {r}"),
        }
        let step = self.apply(msg, Origin::Local, now);
        self.store.audit(now, &format!("created {} {}", msg.kind(), msg.id()))?;
        self.store.commit()?;
        drop(step);
        Ok(())
    }

    /// Engine step and the effects that do not depend on the origin: released messages are
    /// stored, the wake-up time moves.
    fn apply(&mut self, msg: &Message, origin: Origin, now: u64) -> Step {
        let me = self.key.public();
        let Some(engine) = self.engine.as_mut() else {
            return Step { verdict: Verdict::Ignore, refusal: None, effects: Vec::new() };
        };
        let step = engine.handle(msg, origin, now, Some(&me));
        for e in &step.effects {
            match e {
                // (1) Held messages released by this one: stored now (held ones never are, so
                // sync never serves them).
                Effect::Persist(m) if m.id() != msg.id() => {
                    if let Err(e) = self.store.insert(m) {
                        warn!("store: {e}; released message {} is applied but not stored", m.id());
                    }
                }
                Effect::WakeAt(t) => self.wake = Some(*t),
                _ => {}
            }
        }
        if step.effects.contains(&Effect::Rebuild) {
            self.rebuild(now);
        }
        // A message of our own coming back (after a rebuild from peers): never sign below it.
        if msg.author() == me {
            self.seq = self.seq.max(msg.header().seq);
        }
        step
    }

    /// Rebuilds the engine from the stored messages: a key rotation or revocation arrived after
    /// messages it invalidates, and replay judges every message by the keys valid at its signed
    /// time. Held messages are dropped (peers offer them again). O(history), and rare: a
    /// rotation delivered after a message its old key signed later than it.
    fn rebuild(&mut self, now: u64) {
        let Some(federation) = self.engine.as_ref().map(Engine::federation) else { return };
        let threads = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        let progress = self.progress.clone();
        progress.start(REBUILD_TASK, self.store.len() as u64, "messages", now);
        let msgs = match self.store.messages_parallel_with(threads, &|done, total| {
            progress.update(REBUILD_TASK, done as u64, total as u64 * 2, now_ms());
        }) {
            Ok(m) => m,
            Err(e) => {
                warn!("rebuild after a key change: cannot read the store: {e}");
                progress.finish(REBUILD_TASK, now_ms());
                return;
            }
        };
        let n = msgs.len();
        let mut engine = Engine::new(federation);
        // Verification is the first half of the work, the replay the second.
        let report = engine.replay_with(msgs, now, &mut |done, total| {
            progress.update(REBUILD_TASK, (total + done) as u64, total as u64 * 2, now_ms());
        });
        progress.finish(REBUILD_TASK, now_ms());
        info!(
            messages = n,
            applied = report.applied,
            "rebuilt the state after a key rotation or revocation invalidated messages"
        );
        for (reason, count) in &report.refused {
            warn!(reason, count, "stored messages refused by the rebuild");
        }
        self.wake = engine.next_wakeup(now);
        self.engine = Some(engine);
        self.metrics.rebuilds.inc();
        let _ = self
            .store
            .audit(now, "rebuilt state: a key rotation or revocation invalidated messages");
    }

    /// `kosctl id rotate`: a new node key. The new key is sealed in the vault first (as
    /// [`NEXT_KEY`]), then the KEY_ROTATION (signed by the old key, proved by the new) is stored
    /// durably and published, then the vault makes the new key the node key. From then on every
    /// message is signed by the new key; the network task opens direct messages sealed to either.
    pub fn rotate_key(&mut self) -> anyhow::Result<(Message, PublicKey)> {
        let vault = self.vault.clone().context("this node's vault is not writable here")?;
        let engine = self.engine.as_ref().context("this node follows no federation")?;
        let old = self.key.public();
        if let Err(r) = engine.check_signer(&old, now_ms()) {
            bail!("refused: {r}");
        }
        let new = SecretKey::generate();
        vault.edit(|v| v.insert(NEXT_KEY, new.clone()))?;
        let proof = new.sign(&kos_protocol::rotation_statement(&old, &new.public()));
        let rotation = kos_protocol::payload::KeyRotation { proof, new_key: new.public() };
        let msg = match self.create_quiet(Payload::KeyRotation(rotation), None) {
            Ok(m) => m,
            Err(e) => {
                let _ = vault.edit(|v| {
                    v.remove(NEXT_KEY);
                });
                return Err(e);
            }
        };
        self.promote(new.clone())?;
        let now = now_ms();
        self.store.audit(
            now,
            &format!("rotated the node key {} -> {}", old.to_did(), new.public().to_did()),
        )?;
        self.to_net(ToNet::Rekey(new.clone()));
        Ok((msg, new.public()))
    }

    /// Makes `new` the node key in the vault (the old one kept as a previous key) and here.
    fn promote(&mut self, new: SecretKey) -> anyhow::Result<()> {
        let vault = self.vault.as_ref().context("this node's vault is not writable here")?;
        vault.promote(&self.key, &new)?;
        self.key = new;
        Ok(())
    }

    /// Ingests one verified message from the network and reports its verdict. Returns whether
    /// the engine asked for attestations.
    fn ingest(&mut self, item: Inbound, now: u64) -> bool {
        let Inbound { msg, from } = item;
        let verdict = self.judge_and_apply(&msg, &from, now);
        let (acceptance, label, penalty, attest) = match verdict {
            Ok(step) => {
                let attest = step.effects.iter().any(|e| matches!(e, Effect::Attest(_)));
                let penalty = step.effects.iter().find_map(|e| match e {
                    Effect::Penalise(r) => Some(r.clone()),
                    _ => None,
                });
                let (acc, label) = match step.verdict {
                    Verdict::Accept => (gossipsub::MessageAcceptance::Accept, "accept"),
                    Verdict::Reject => (gossipsub::MessageAcceptance::Reject, "reject"),
                    Verdict::Ignore => (gossipsub::MessageAcceptance::Ignore, "ignore"),
                };
                (acc, label, penalty, attest)
            }
            Err(label) => (gossipsub::MessageAcceptance::Ignore, label, None, false),
        };
        if label == "accept" {
            tracing::debug!(id = %msg.id(), "accepted");
        }
        match &from {
            Source::Gossip { .. } => self.metrics.gossip(label),
            Source::Sync { .. } => {
                if label == "accept" {
                    self.metrics.sync_messages.inc();
                }
            }
        }
        // (2) The verdict, (3) the penalty.
        if let Source::Gossip { id, source } = &from {
            self.to_net(ToNet::Verdict { id: id.clone(), source: *source, acceptance });
        }
        if let Some(r) = penalty {
            let _ =
                self.store.audit(now, &format!("rejected {} from {}: {r}", msg.id(), from.peer()));
            self.to_net(ToNet::Penalise {
                peer: from.peer(),
                action: PeerAction::MidTolerance,
                why: format!("relayed a message the engine rejects: {r}"),
            });
        }
        attest
    }

    /// The `.klp-policy` on gossip and sync: the relaying peer, the author and type, the type's
    /// quota. A refusal is counted and audited (up to [`POLICY_AUDITS_PER_MINUTE`]); it costs
    /// the relaying peer nothing.
    fn policy_allows(&mut self, msg: &Message, from: &Source, now: u64) -> bool {
        let Some(policy) = &self.policy else { return true };
        let decision = {
            let mut p = policy.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let checks = [p.check_peer(&from.peer()), p.check_sender(&msg.author(), msg.kind())];
            match checks.into_iter().find(|d| *d != crate::policy::Decision::Allow) {
                Some(d) => d,
                // Live gossip counts against the relaying peer's quota (sync is pulled by this
                // node at its own pace); then the type's quota.
                None => match (from, p.take_type_quota(msg.kind(), now)) {
                    (_, d @ crate::policy::Decision::Deny(_)) => d,
                    (Source::Gossip { source, .. }, _) => p.take_peer_quota(*source, now),
                    (Source::Sync { .. }, d) => d,
                },
            }
        };
        let crate::policy::Decision::Deny(why) = decision else { return true };
        let path = match from {
            Source::Gossip { .. } => "gossip",
            Source::Sync { .. } => "sync",
        };
        self.metrics.policy_refusal(path);
        if self.policy_audits.allow((), now) {
            let line = format!(
                "policy refused {} {} from {} ({path}): {why}",
                msg.kind(),
                msg.id(),
                from.peer()
            );
            let _ = self.store.audit(now, &line);
        }
        tracing::debug!(id = %msg.id(), "policy refused: {why}");
        false
    }

    /// Feeds the policy what it judges senders by: each member's trust in the registry in force,
    /// overridden by this node's local trust (`klp://`, `agent://` and `peer://` targets), and
    /// the federation's policy document.
    pub fn refresh_policy(&mut self) {
        let Some(policy) = self.policy.clone() else { return };
        let now = now_ms();
        let mut trust = std::collections::HashMap::new();
        let registry = self.engine.as_ref().and_then(|e| e.registry(now));
        let mut retired = std::collections::HashMap::new();
        if let Some(reg) = &registry {
            for m in reg.members.values() {
                trust.insert(m.key.klp_id().to_string(), m.trust);
            }
        }
        // A member's rotated-to keys carry its trust; retired keys send nothing after their end.
        if let Some(engine) = &self.engine {
            for (key, rec) in engine.keys().iter() {
                if let Some(m) = registry.as_ref().and_then(|r| r.member(&rec.member)) {
                    trust.entry(key.klp_id().to_string()).or_insert(m.trust);
                }
                if let Some(end) = rec.end {
                    retired.insert(key.klp_id().to_string(), end.at_ms);
                }
            }
        }
        for (target, level) in self.store.trust().unwrap_or_default() {
            let Ok(level) = level.parse::<kos_protocol::payload::TrustLevel>() else { continue };
            let id = match target.parse::<kos_protocol::Address>() {
                Ok(kos_protocol::Address::Klp { host: kos_protocol::Host::Id(id), .. })
                | Ok(kos_protocol::Address::Agent(kos_protocol::Host::Id(id))) => id,
                Ok(kos_protocol::Address::Peer(p)) => match PublicKey::from_peer_id(&p) {
                    Ok(k) => k.klp_id(),
                    Err(_) => continue,
                },
                _ => continue,
            };
            trust.insert(id.to_string(), level);
        }
        let mut p = policy.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        p.set_trust(trust);
        p.set_retired(retired);
        let federation = registry.as_ref().and_then(|r| r.policy.as_deref());
        if let Err(e) = p.set_federation(federation) {
            warn!("the federation's policy is not a valid .klp-policy, ignored: {e}");
        }
    }

    fn judge_and_apply(
        &mut self,
        msg: &Message,
        from: &Source,
        now: u64,
    ) -> Result<Step, &'static str> {
        if !self.policy_allows(msg, from, now) {
            return Err("policy");
        }
        let me = self.key.public();
        let engine = self.engine.as_mut().ok_or("no_federation")?;
        // Live gossip only: sync is pulled by this node at its own pace.
        if matches!(from, Source::Gossip { .. })
            && msg.author() != me
            && !self.authors.allow(msg.author(), now)
        {
            return Err("over_quota");
        }
        if engine.check(msg, from.origin(), now).is_ok()
            && let Err(e) = self.store.insert(msg)
        {
            warn!("store: {e}; message {} not applied", msg.id());
            return Err("store_error");
        }
        Ok(self.apply(msg, from.origin(), now))
    }

    /// Signed envelopes submitted through the API (verified by the caller): each judged,
    /// stored and applied; the batch made durable with one commit before anything is published
    /// or answered.
    pub fn submit(&mut self, msgs: &[Message]) -> Vec<Result<Submitted, IngestError>> {
        let now = now_ms();
        let mut out = Vec::with_capacity(msgs.len());
        let mut attest = false;
        for msg in msgs {
            let r = self.submit_one(msg, now);
            if let Ok((_, a)) = &r {
                attest |= *a;
            }
            out.push(r.map(|(s, _)| s));
        }
        if let Err(e) = self.store.commit() {
            // Applied but not durable: the caller is told, and must not count on them.
            warn!("commit of submitted messages: {e}");
            let msg = e.to_string();
            return out
                .into_iter()
                .map(|r| match r {
                    Ok(Submitted::Duplicate) => Ok(Submitted::Duplicate),
                    Ok(_) => Err(IngestError::NotDurable(msg.clone())),
                    e => e,
                })
                .collect();
        }
        for (msg, r) in msgs.iter().zip(&out) {
            if matches!(r, Ok(Submitted::Accepted | Submitted::Held)) {
                self.to_net(ToNet::Publish(msg.bytes().to_vec()));
            }
        }
        if attest {
            self.attest();
        }
        out
    }

    fn submit_one(&mut self, msg: &Message, now: u64) -> Result<(Submitted, bool), IngestError> {
        let engine = self.engine.as_mut().ok_or(IngestError::NoFederation)?;
        let held = match engine.check(msg, Origin::Local, now) {
            Ok(()) => {
                self.store.insert(msg)?;
                false
            }
            Err(Refusal::Duplicate) => return Ok((Submitted::Duplicate, false)),
            Err(Refusal::Pending(_)) => true,
            Err(r) => return Err(IngestError::Refused(r)),
        };
        let step = self.apply(msg, Origin::Local, now);
        let attest = step.effects.iter().any(|e| matches!(e, Effect::Attest(_)));
        Ok((if held { Submitted::Held } else { Submitted::Accepted }, attest))
    }

    /// Votes on a proposal with a secret ballot: the choice and a fresh salt are stored durably
    /// first (so that a node killed before the reveal window still reveals), then the commitment
    /// is signed and published. The node reveals by itself in the reveal window.
    pub fn commit_vote(
        &mut self,
        proposal: MessageId,
        revision: u32,
        choice: kos_protocol::payload::Choice,
        reason: Option<String>,
    ) -> anyhow::Result<Message> {
        let federation =
            self.engine.as_ref().context("this node follows no federation")?.federation();
        let salt = SecretKey::generate().seed();
        let salt: [u8; 32] = *salt;
        let me = self.key.public();
        let commitment =
            kos_protocol::vote_commitment(&federation, &proposal, &me, revision, &salt, &choice);
        let record =
            SecretBallot { revision, salt: hex::encode(salt), choice: choice.clone(), reason };
        let bytes = serde_json::to_vec(&record)?;
        // Durable before the commitment exists, outside the store (a store rebuilt from the
        // journal would not have it); a store without a data directory keeps it itself.
        match self.secret_ballots_dir() {
            Some(dir) => {
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
                let path = dir.join(format!("{proposal}.json"));
                kos_storage::write_durable(&path, &bytes)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            None => {
                self.store.set_meta(&secret_key(&proposal), &bytes)?;
                self.store.flush()?;
            }
        }
        let commit =
            kos_protocol::payload::VoteCommit { proposal, revision, commitment, federation };
        self.create(Payload::VoteCommit(commit), None)
    }

    /// Reveals the stored secret ballots whose reveal window is open (only `only`, if given);
    /// forgets those whose window has passed. Returns the reveals signed.
    pub fn reveal(&mut self, only: Option<MessageId>) -> anyhow::Result<Vec<Message>> {
        let now = now_ms();
        let mut out = Vec::new();
        for (proposal, value) in self.stored_secret_ballots()? {
            if only.is_some_and(|o| o != proposal) {
                continue;
            }
            let Ok(record) = serde_json::from_slice::<SecretBallot>(&value) else {
                warn!(%proposal, "an unreadable secret ballot record is kept, not revealed");
                continue;
            };
            let Some(engine) = self.engine.as_ref() else { break };
            let federation = engine.federation();
            let Some((_, body, _, _)) = engine.proposal(&proposal) else { continue };
            let (end, reveal_end) =
                (body.timeline.voting_end_ms, body.timeline.reveal_end_ms.unwrap_or(0));
            if now >= reveal_end {
                warn!(%proposal, "the reveal window of a secret ballot passed before it was revealed");
                self.forget_secret_ballot(&proposal)?;
                continue;
            }
            if now < end {
                if only.is_some() {
                    bail!("the reveal window of {proposal} opens when voting ends");
                }
                continue;
            }
            let mut salt = [0u8; 32];
            hex::decode_to_slice(&record.salt, &mut salt).context("stored salt")?;
            let reveal = kos_protocol::payload::VoteReveal {
                salt,
                choice: record.choice,
                reason: record.reason,
                proposal,
                revision: record.revision,
                federation,
            };
            let m = self.create(Payload::VoteReveal(reveal), None)?;
            self.forget_secret_ballot(&proposal)?;
            out.push(m);
        }
        if let Some(p) = only
            && out.is_empty()
        {
            bail!("no secret ballot of this node waits to be revealed for {p}");
        }
        Ok(out)
    }

    /// `<data-dir>/secret-ballots`: a committed secret ballot waits there, a file each, until
    /// its reveal.
    fn secret_ballots_dir(&self) -> Option<std::path::PathBuf> {
        self.store.data_dir().map(|d| d.join("secret-ballots"))
    }

    /// This node's committed secret ballots, by proposal: the files in the secret-ballot
    /// directory, and records in the store's metadata (stores without a data directory, and
    /// ballots committed by a build that kept them there).
    fn stored_secret_ballots(
        &self,
    ) -> anyhow::Result<std::collections::BTreeMap<MessageId, Vec<u8>>> {
        let mut out = std::collections::BTreeMap::new();
        for (key, value) in self.store.meta_with_prefix(SECRET_PREFIX)? {
            if let Some(p) = key.strip_prefix(SECRET_PREFIX).and_then(|h| h.parse().ok()) {
                out.insert(p, value);
            }
        }
        let Some(dir) = self.secret_ballots_dir() else { return Ok(out) };
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(p) = name.to_str().and_then(|n| n.strip_suffix(".json")) else { continue };
            let Ok(p) = p.parse::<MessageId>() else { continue };
            let bytes = std::fs::read(entry.path())
                .with_context(|| format!("cannot read {}", entry.path().display()))?;
            out.insert(p, bytes);
        }
        Ok(out)
    }

    /// Forgets a secret ballot once revealed (or too late to reveal): its file and its record.
    fn forget_secret_ballot(&mut self, proposal: &MessageId) -> anyhow::Result<()> {
        if let Some(dir) = self.secret_ballots_dir() {
            let path = dir.join(format!("{proposal}.json"));
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("cannot remove {}", path.display()));
                }
                _ => {}
            }
        }
        self.store.remove_meta(&secret_key(proposal))?;
        Ok(())
    }

    /// (5) Signs and publishes the attestations that are due.
    fn attest(&mut self) {
        let now = now_ms();
        let me = self.key.public();
        let due = match &self.engine {
            Some(e) => e.attestations_due(&me, now),
            None => return,
        };
        for a in due {
            if let Err(e) = self.create_quiet(Payload::TallyAttestation(a), None) {
                warn!("attestation: {e:#}");
            }
        }
    }

    /// Ingests a batch of verified messages from the network (see the module documentation),
    /// then signs the attestations the engine asked for, once.
    pub fn ingest_batch(&mut self, batch: Vec<Inbound>) {
        let now = now_ms();
        let mut attest = false;
        for item in batch {
            attest |= self.ingest(item, now);
        }
        // The registry moved (the charter arrived, an execution): the policy judges senders by
        // its trust levels at once, not at the next housekeeping.
        let head = self.engine.as_ref().map(|e| (e.registry_head(), e.keys().iter().count()));
        if head != self.policy_head {
            self.policy_head = head;
            self.refresh_policy();
        }
        if attest {
            self.attest();
        }
    }

    /// Time-driven transitions: held messages expire, attestations fall due, secret ballots
    /// are revealed.
    fn tick(&mut self, now: u64) {
        if let Some(e) = self.engine.as_mut() {
            e.tick(now);
            self.wake = e.next_wakeup(now);
        }
        self.attest();
        if let Err(e) = self.reveal(None) {
            warn!("reveal: {e:#}");
        }
    }

    fn housekeeping(&mut self) {
        self.refresh_policy();
        let m = &self.metrics;
        m.pending_messages.set(self.engine.as_ref().map_or(0, Engine::pending_len) as i64);
        if let Err(e) = self.store.checkpoint() {
            warn!("checkpoint: {e}");
        }
        if let Some(free) = self.store.free_space() {
            m.free_bytes.set(i64::try_from(free).unwrap_or(i64::MAX));
            if free < kos_storage::WARN_FREE_BYTES {
                warn!(
                    free_bytes = free,
                    "low disk space: writes stop below {} bytes",
                    kos_storage::MIN_FREE_BYTES
                );
            }
        }
    }

    /// The core's loop, on its own thread, until `Shutdown` or every sender is gone.
    pub fn run(mut self, rx: crossbeam_channel::Receiver<ToCore>) {
        let mut last_housekeeping = now_ms();
        let mut last_commit = now_ms();
        self.wake = self.engine.as_ref().and_then(|e| e.next_wakeup(now_ms()));
        self.refresh_policy();
        self.tick(now_ms());
        loop {
            let now = now_ms();
            let mut deadline = last_housekeeping + HOUSEKEEPING_MS;
            if let Some(w) = self.wake {
                deadline = deadline.min(w);
            }
            if self.store.has_uncommitted() {
                deadline = deadline.min(last_commit + COMMIT_INTERVAL.as_millis() as u64);
            }
            let wait = Duration::from_millis(deadline.saturating_sub(now).max(1));
            match rx.recv_timeout(wait) {
                Ok(ToCore::Ingest(batch)) => self.ingest_batch(batch),
                Ok(ToCore::Submit(msgs, reply)) => {
                    let _ = reply.send(self.submit(&msgs));
                }
                Ok(ToCore::Call(f)) => f(&mut self),
                Ok(ToCore::Shutdown(reply)) => {
                    self.stop();
                    let _ = reply.send(());
                    return;
                }
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    self.stop();
                    return;
                }
            }
            let now = now_ms();
            if self.store.has_uncommitted()
                && now >= last_commit + COMMIT_INTERVAL.as_millis() as u64
            {
                if let Err(e) = self.store.commit() {
                    warn!("commit: {e}");
                }
                last_commit = now;
            }
            if self.wake.is_some_and(|w| w <= now) {
                self.tick(now);
            }
            if now >= last_housekeeping + HOUSEKEEPING_MS {
                self.housekeeping();
                if let Err(e) = self.reveal(None) {
                    warn!("reveal: {e:#}");
                }
                last_housekeeping = now;
            }
        }
    }

    fn stop(&mut self) {
        let _ = self.store.audit(now_ms(), "node stopped");
        if let Err(e) = self.store.checkpoint() {
            warn!("checkpoint at stop: {e}");
        }
        info!("core stopped");
    }
}

/// A handle on the core for the API and the network task.
#[derive(Clone, Debug)]
pub struct CoreHandle {
    tx: crossbeam_channel::Sender<ToCore>,
}

impl CoreHandle {
    /// Wraps the sending side of the core's queue.
    pub fn new(tx: crossbeam_channel::Sender<ToCore>) -> Self {
        CoreHandle { tx }
    }

    /// Runs `f` on the core thread and returns its result. Fails at once (never blocks the
    /// caller's thread) when the core's queue is full.
    pub async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Core) -> R + Send + 'static,
    ) -> Result<R, CallError> {
        let (tx, rx) = oneshot::channel();
        let call: Call = Box::new(move |core| {
            let _ = tx.send(f(core));
        });
        self.try_send(ToCore::Call(call))?;
        rx.await.map_err(|_| CallError::Gone)
    }

    /// Queues a request without blocking.
    pub fn try_send(&self, m: ToCore) -> Result<(), CallError> {
        self.tx.try_send(m).map_err(|e| match e {
            crossbeam_channel::TrySendError::Full(_) => CallError::Busy,
            crossbeam_channel::TrySendError::Disconnected(_) => CallError::Gone,
        })
    }

    /// Queues a request, waiting for room (worker threads only: this blocks).
    pub fn send_blocking(&self, m: ToCore) -> Result<(), CallError> {
        self.tx.send(m).map_err(|_| CallError::Gone)
    }

    /// Asks the core to commit, checkpoint and stop, and waits for it.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(ToCore::Shutdown(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

/// Why a call to the core failed.
#[derive(Debug, Clone, Copy, thiserror::Error)]
pub enum CallError {
    /// The core's queue is full.
    #[error("the node is busy; try again")]
    Busy,
    /// The core has stopped.
    #[error("the node is shutting down")]
    Gone,
}

/// Where a secret ballot waits for its reveal, in the store's metadata.
const SECRET_PREFIX: &str = "secret-ballot/";

fn secret_key(proposal: &MessageId) -> String {
    format!("{SECRET_PREFIX}{proposal}")
}

/// A committed ballot kept until its reveal (the node's own store only).
#[derive(serde::Serialize, serde::Deserialize)]
struct SecretBallot {
    revision: u32,
    salt: String,
    choice: kos_protocol::payload::Choice,
    reason: Option<String>,
}

/// Builds and starts the core thread.
pub fn spawn(core: Core) -> anyhow::Result<(CoreHandle, std::thread::JoinHandle<()>)> {
    // The gauge reads right from the start, not from the first housekeeping round.
    core.metrics.pending_messages.set(core.engine.as_ref().map_or(0, Engine::pending_len) as i64);
    let (tx, rx) = crossbeam_channel::bounded(CORE_QUEUE);
    let join = std::thread::Builder::new()
        .name("kos-core".into())
        .spawn(move || core.run(rx))
        .context("cannot start the core thread")?;
    Ok((CoreHandle::new(tx), join))
}
