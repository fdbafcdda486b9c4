//! The node: shared state (identity, store, engine) and the event loop around the swarm.
//!
//! The governance logic is `kos_engine`; this module only moves messages between the
//! network, the store and the engine, and performs the engine's effects.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail};
use futures::StreamExt;
use kos_engine::{Effect, Engine, Origin, Step, Verdict, merkle_root};
use kos_protocol::{Message, MessageId, Payload, SecretKey, payload::FederationId};
use kos_storage::Store;
use libp2p::{
    Multiaddr, PeerId, Swarm, gossipsub, identify, kad, request_response, swarm::SwarmEvent,
};
use serde_bytes::ByteBuf;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::net::{
    self, Behaviour, BehaviourEvent, FETCH_BATCH, FETCH_BYTES, INVENTORY_PAGE, MAX_BUCKETS,
    SyncRequest, SyncResponse,
};

/// Immune system: this many rejected messages from one peer within [`FAILURE_WINDOW_MS`]…
pub const FAILURE_LIMIT: usize = 10;
/// …within this window…
pub const FAILURE_WINDOW_MS: u64 = 5 * 60 * 1000;
/// …block the peer for this long.
pub const BLOCK_MS: u64 = 60 * 60 * 1000;

/// The gossipsub application score of a local trust level: quarantine drives a peer below the
/// graylist (and so into a block); higher trust helps a peer stay in the mesh.
pub fn application_score(level: &str) -> f64 {
    match level {
        "core" => 5.0,
        "trusted" => 3.0,
        "standard" => 1.0,
        "sandbox" => 0.0,
        _ => -100.0,
    }
}

/// Discovered peers are dialed while fewer than this many are connected.
pub const DIAL_TARGET: usize = 16;

/// Bound of the channel from the API to the event loop.
pub const COMMAND_QUEUE: usize = 256;
/// Group commit period of the journal for messages from the network (ms).
const COMMIT_INTERVAL_MS: u64 = 100;
/// Longest sleep of the event loop's clock when the engine has nothing scheduled.
const MAX_SLEEP_MS: u64 = 60_000;

/// Milliseconds since the Unix epoch: the only clock of the node.
#[allow(clippy::disallowed_methods)] // the shell reads the clock and passes `now` to the core
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Node settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Data directory.
    pub data_dir: PathBuf,
    /// Addresses to listen on.
    pub listen: Vec<Multiaddr>,
    /// Control API address (loopback).
    pub api: SocketAddr,
    /// Peers to dial at start.
    pub bootstrap: Vec<Multiaddr>,
    /// Interval of periodic anti-entropy.
    pub sync_interval: Duration,
    /// Most established connections.
    pub max_connections: u32,
}

/// State shared by the API and the event loop.
pub struct State {
    /// The node's identity.
    pub key: SecretKey,
    /// The store.
    pub store: Store,
    /// The engine of the federation this node follows.
    pub engine: Option<Engine>,
    /// Next author sequence number.
    seq: u64,
    /// Connected peers.
    pub peers: Vec<PeerId>,
    /// Listen addresses.
    pub listen: Vec<Multiaddr>,
    /// Gossipsub scores of connected peers (refreshed every sync round).
    pub scores: Vec<(PeerId, f64)>,
    /// Blocked peers.
    pub blocked: Vec<PeerId>,
    /// Metrics.
    pub metrics: crate::metrics::Metrics,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").field("peers", &self.peers.len()).finish_non_exhaustive()
    }
}

/// Commands from the API to the event loop.
#[derive(Debug)]
pub enum Command {
    /// Publish these envelope bytes on the federation's topic.
    Publish(Vec<u8>),
    /// Dial an address.
    Dial(Multiaddr),
    /// Close connections to a peer.
    Disconnect(PeerId),
    /// Start following a federation (subscribe, sync).
    Follow(FederationId),
    /// Refuse a peer's connections and drop the current ones.
    Block(PeerId),
    /// Accept a peer again.
    Unblock(PeerId),
}

/// A handle on the running node.
#[derive(Clone, Debug)]
pub struct Handle {
    /// Shared state.
    pub state: Arc<Mutex<State>>,
    /// Commands to the event loop.
    pub commands: mpsc::Sender<Command>,
}

impl Handle {
    /// Locks the shared state.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

impl State {
    /// Signs `payload` with the node key, applies it locally, stores and flushes it. Returns
    /// the message for publishing. Refused messages change nothing.
    pub fn create(
        &mut self,
        payload: Payload,
        target: Option<kos_protocol::Address>,
    ) -> anyhow::Result<Message> {
        let now = now_ms();
        // Above every message this node ever signed: the counter, and the clock (so a node
        // rebuilt from peers, or from a lost store, never reuses a lower sequence number).
        let seq = (self.seq + 1).max(now);
        let msg = Message::sign(&self.key, seq, now, target, payload)?;
        let engine = self.engine.as_mut().context("this node follows no federation")?;
        let me = self.key.public();
        // Store, then engine: judged first without changing anything, stored durably, and only
        // then applied; a failed write leaves the engine as it was.
        match engine.check(&msg, Origin::Local, now) {
            Ok(()) => {
                self.store.insert_durable(&msg)?;
            }
            Err(kos_engine::Refusal::Pending(_)) => {}
            Err(r) => bail!("refused: {r}"),
        }
        let engine = self.engine.as_mut().context("this node follows no federation")?;
        let step = engine.handle(&msg, Origin::Local, now, Some(&me));
        self.seq = seq;
        self.store.set_meta("seq", &self.seq.to_be_bytes())?;
        // Held messages it released are stored now.
        self.persist(&step, &msg);
        self.store.audit(now, &format!("created {} {}", msg.kind(), msg.id()))?;
        self.metrics.local_messages.inc();
        self.store.commit()?;
        Ok(msg)
    }

    /// Applies a message from the network: judged first, stored if acceptable (the journal is
    /// synced by the group commit), then applied. A message that cannot be stored is ignored —
    /// peers offer it again — and changes nothing.
    fn receive(&mut self, msg: &Message, origin: Origin) -> Option<Step> {
        let now = now_ms();
        let me = self.key.public();
        let engine = self.engine.as_mut()?;
        if engine.check(msg, origin, now).is_ok()
            && let Err(e) = self.store.insert(msg)
        {
            warn!("store: {e}; message {} not applied", msg.id());
            self.metrics.gossip("store_error");
            return Some(Step { verdict: Verdict::Ignore, refusal: None, effects: Vec::new() });
        }
        // A message of our own coming back (after a rebuild from peers): never sign below it.
        if msg.author() == me {
            self.seq = self.seq.max(msg.header().seq);
        }
        let engine = self.engine.as_mut()?;
        let step = engine.handle(msg, origin, now, Some(&me));
        self.persist(&step, msg);
        if step.verdict == Verdict::Reject {
            let _ = self
                .store
                .audit(now, &format!("rejected {} from network: {:?}", msg.id(), step.refusal));
        }
        Some(step)
    }

    /// Stores the held messages the engine released while applying `handled` (which is stored
    /// already). Held messages are never stored, so sync never serves them.
    fn persist(&mut self, step: &Step, handled: &Message) {
        for e in &step.effects {
            if let Effect::Persist(m) = e
                && m.id() != handled.id()
                && let Err(e) = self.store.insert(m)
            {
                warn!("store: {e}; released message {} is applied but not stored", m.id());
            }
        }
    }

    /// Attestations the engine asks this node to sign now.
    fn due_attestations(&mut self) -> Vec<Message> {
        let now = now_ms();
        let me = self.key.public();
        let due = match &self.engine {
            Some(e) => e.attestations_due(&me, now),
            None => return Vec::new(),
        };
        due.into_iter()
            .filter_map(|a| match self.create(Payload::TallyAttestation(a), None) {
                Ok(m) => Some(m),
                Err(e) => {
                    warn!("attestation: {e:#}");
                    None
                }
            })
            .collect()
    }

    /// Per-proposal summaries: (bucket, count, Merkle root of the bucket's message ids).
    fn summary(&self) -> Vec<(MessageId, u64, kos_protocol::Digest)> {
        self.store
            .buckets()
            .into_iter()
            .map(|(b, ids)| (b, ids.len() as u64, merkle_root(&ids)))
            .collect()
    }
}

/// How to open the data directory (see `kos_storage::OpenOptions`).
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenFlags {
    /// Keep a store that belongs to another identity.
    pub new_identity: bool,
    /// Start empty although the manifest records data that is gone.
    pub fresh_store: bool,
    /// Accept lost messages and rebuild from what is left.
    pub repair: bool,
    /// The identity came from an existing vault.
    pub existing_identity: bool,
}

/// Opens the data directory (journal, store, manifest), logs what it found, rebuilds the engine
/// from the stored messages, and returns the shared state.
pub fn open_state(
    key: SecretKey,
    data_dir: &std::path::Path,
    flags: OpenFlags,
) -> anyhow::Result<(State, kos_storage::OpenReport)> {
    let opts = kos_storage::OpenOptions {
        node_key: key.public().to_did(),
        new_identity: flags.new_identity,
        fresh_store: flags.fresh_store,
        repair: flags.repair,
        existing_identity: flags.existing_identity,
    };
    let (store, report) = Store::open_node(data_dir, &opts)
        .with_context(|| format!("cannot open the data directory {}", data_dir.display()))?;
    log_open_report(&report);
    let mut seq =
        store.meta("seq")?.and_then(|v| v.try_into().ok()).map(u64::from_be_bytes).unwrap_or(0);
    let mut federation = store.meta("federation")?.and_then(|v| <[u8; 32]>::try_from(v).ok());
    let me = key.public();
    let msgs = store.messages().collect::<Result<Vec<_>, _>>()?;
    if federation.is_none() {
        // The metadata was lost with a damaged store: the charter in the journal says which
        // federation this node follows (a node stores only its own federation's messages).
        let charters: Vec<MessageId> = msgs
            .iter()
            .filter(|m| m.payload().message_type() == kos_protocol::MessageType::Charter)
            .map(Message::id)
            .collect();
        if let [only] = charters.as_slice() {
            warn!(federation = %only, "federation id restored from the stored charter");
            store.set_meta("federation", &only.0)?;
            federation = Some(only.0);
        }
    }
    let mut engine = federation.map(|f| Engine::new(MessageId(f)));
    // The node's own history: never sign below a sequence number it used before.
    seq = msgs.iter().filter(|m| m.author() == me).map(|m| m.header().seq).fold(seq, u64::max);
    if let Some(engine) = engine.as_mut() {
        let now = now_ms();
        let n = msgs.len();
        // Replayed in dependency order whatever order the store returns: the state after a
        // restart is the state before it.
        let report = engine.replay(msgs, now);
        info!(
            messages = n,
            applied = report.applied,
            held = report.held,
            duplicates = report.duplicates,
            "rebuilt state from the store"
        );
        for (reason, count) in &report.refused {
            warn!(reason, count, "stored messages refused on replay");
        }
    }
    store.audit(now_ms(), "node started")?;
    Ok((
        State {
            key,
            store,
            engine,
            seq,
            peers: Vec::new(),
            listen: Vec::new(),
            scores: Vec::new(),
            blocked: Vec::new(),
            metrics: Default::default(),
        },
        report,
    ))
}

/// Says what opening the data directory found: loud for anything that was repaired.
fn log_open_report(r: &kos_storage::OpenReport) {
    if r.journal.truncated_bytes > 0 {
        warn!(
            bytes = r.journal.truncated_bytes,
            "journal: truncated a torn tail (a write cut short by a crash)"
        );
    }
    for (segment, offset) in &r.journal.bad_records {
        error!(segment, offset, "journal: unreadable record skipped");
    }
    for p in &r.snapshots_moved {
        warn!(path = %p.display(), "store: moved an incomplete sled snapshot aside");
    }
    if let Some(p) = &r.store_moved_to {
        error!(path = %p.display(), "store: sled could not open it; moved it aside and rebuilt it from the journal");
    }
    if r.restored_from_journal > 0 {
        error!(
            count = r.restored_from_journal,
            "store: had lost or corrupt messages; restored them from the journal"
        );
    }
    if r.restored_from_store > 0 {
        error!(
            count = r.restored_from_store,
            "journal: had lost messages; restored them from the store"
        );
    }
    if r.manifest_rewritten {
        error!("store.manifest was unreadable; rewritten from what is stored");
    }
    if r.lost > 0 {
        error!(
            count = r.lost,
            "repair: messages recorded in the manifest could not be recovered; peers will send them again by sync"
        );
    }
    info!(messages = r.messages, journal_records = r.journal.records, "opened the data directory");
}

/// Runs the event loop until the process ends.
pub async fn run(
    settings: Settings,
    handle: Handle,
    mut commands: mpsc::Receiver<Command>,
) -> anyhow::Result<()> {
    let key = handle.lock().key.to_libp2p();
    let mut swarm = net::build(key, settings.max_connections)?;
    for addr in &settings.listen {
        swarm.listen_on(addr.clone()).with_context(|| format!("cannot listen on {addr}"))?;
    }
    let federation = handle.lock().engine.as_ref().map(Engine::federation);
    if let Some(f) = federation {
        net::subscribe(&mut swarm, &f)?;
    }
    // Known peers from earlier runs, then the bootstrap peers.
    let known = handle.lock().store.peers()?;
    for (peer, addrs) in known {
        if let Ok(peer) = peer.parse::<PeerId>() {
            for a in addrs.iter().filter_map(|a| a.parse::<Multiaddr>().ok()) {
                swarm.behaviour_mut().kad.add_address(&peer, a.clone());
                let _ = swarm.dial(a);
            }
        }
    }
    for addr in &settings.bootstrap {
        if let Err(e) = swarm.dial(addr.clone()) {
            warn!("bootstrap {addr}: {e}");
        }
    }
    let mut loop_state = Loop {
        handle: handle.clone(),
        pending: HashMap::new(),
        failures: HashMap::new(),
        blocked_until: HashMap::new(),
        quota: Default::default(),
    };
    let mut sync_timer = tokio::time::interval(settings.sync_interval);
    // Group commit: messages from the network are made durable together, at most this late.
    let mut commit_timer = tokio::time::interval(Duration::from_millis(COMMIT_INTERVAL_MS));
    loop {
        // The engine says when a status next changes by the clock alone (voting opens or
        // closes, a grace period ends, an execution falls due); sleep until then, at most a
        // minute, at least 20 ms.
        let next_wake = {
            let now = now_ms();
            let at = handle.lock().engine.as_ref().and_then(|e| e.next_wakeup(now));
            let ms = at.map_or(MAX_SLEEP_MS, |t| t.saturating_sub(now)).clamp(20, MAX_SLEEP_MS);
            tokio::time::sleep(Duration::from_millis(ms))
        };
        tokio::select! {
            event = swarm.select_next_some() => loop_state.on_swarm_event(&mut swarm, event),
            Some(cmd) = commands.recv() => loop_state.on_command(&mut swarm, cmd),
            _ = sync_timer.tick() => {
                loop_state.expire_blocks(&mut swarm);
                let peers: Vec<PeerId> = swarm.connected_peers().copied().collect();
                for p in peers {
                    loop_state.start_sync(&mut swarm, p);
                }
                let _ = swarm.behaviour_mut().kad.bootstrap();
                // Local trust feeds gossip scoring (application-specific score, weight 10).
                let trust = handle.lock().store.trust().unwrap_or_default();
                let connected: Vec<PeerId> = swarm.connected_peers().copied().collect();
                for peer in connected {
                    let target = format!("peer://{peer}");
                    if let Some((_, level)) = trust.iter().find(|(t, _)| *t == target) {
                        let score = application_score(level);
                        swarm.behaviour_mut().gossipsub.set_application_score(&peer, score);
                    }
                }
                let scores: Vec<(PeerId, f64)> = swarm
                    .connected_peers()
                    .filter_map(|p| swarm.behaviour().gossipsub.peer_score(p).map(|s| (*p, s)))
                    .collect();
                // Peers whose gossip score fell below the graylist threshold (invalid messages
                // weigh -100 each) are blocked for a time.
                let graylist = gossipsub::PeerScoreThresholds::default().graylist_threshold;
                for (peer, score) in &scores {
                    if *score < graylist {
                        loop_state.block(&mut swarm, *peer, &format!("gossip score {score:.0}"));
                    }
                }
                let mut st = handle.lock();
                if let Some(e) = st.engine.as_mut() {
                    e.tick(now_ms());
                }
                st.metrics.connected_peers.set(swarm.connected_peers().count() as i64);
                st.metrics.stored_messages.set(st.store.len() as i64);
                let pending = st.engine.as_ref().map_or(0, Engine::pending_len);
                st.metrics.pending_messages.set(pending as i64);
                st.scores = scores;
                if let Err(e) = st.store.checkpoint() {
                    warn!("checkpoint: {e}");
                }
                if let Some(free) = st.store.free_space() {
                    st.metrics.free_bytes.set(i64::try_from(free).unwrap_or(i64::MAX));
                    if free < kos_storage::WARN_FREE_BYTES {
                        warn!(free_bytes = free, "low disk space: writes stop below {} bytes", kos_storage::MIN_FREE_BYTES);
                    }
                }
            }
            _ = commit_timer.tick() => {
                let st = handle.lock();
                if st.store.has_uncommitted()
                    && let Err(e) = st.store.commit()
                {
                    warn!("commit: {e}");
                }
            }
            _ = next_wake => {
                // Time-driven transitions: held messages expire, attestations fall due.
                let msgs = {
                    let mut st = handle.lock();
                    if let Some(e) = st.engine.as_mut() {
                        e.tick(now_ms());
                    }
                    st.due_attestations()
                };
                for m in msgs {
                    loop_state.publish(&mut swarm, m.bytes().to_vec());
                }
            }
        }
    }
}

struct Loop {
    handle: Handle,
    /// Outstanding inventory requests: which federation and bucket they page through.
    pending: HashMap<request_response::OutboundRequestId, (FederationId, MessageId)>,
    /// Recent rejected-message times per peer (the immune system's counter).
    failures: HashMap<PeerId, Vec<u64>>,
    /// Peers blocked by the immune system, and until when.
    blocked_until: HashMap<PeerId, u64>,
    /// Per-peer gossip quota.
    quota: crate::limits::RateLimiter,
}

impl Loop {
    /// Counts a rejected message from `peer`; past the limit the peer is blocked for a time.
    fn penalise(&mut self, swarm: &mut Swarm<Behaviour>, peer: PeerId, why: &str) {
        let now = now_ms();
        let times = self.failures.entry(peer).or_default();
        times.retain(|t| now.saturating_sub(*t) < FAILURE_WINDOW_MS);
        times.push(now);
        if times.len() >= FAILURE_LIMIT {
            let n = times.len();
            self.block(swarm, peer, &format!("{n} rejected messages in 5 minutes ({why})"));
        }
    }

    /// Immune system: blocks `peer` for [`BLOCK_MS`] and records why in the audit log.
    fn block(&mut self, swarm: &mut Swarm<Behaviour>, peer: PeerId, why: &str) {
        if self.blocked_until.contains_key(&peer) {
            return;
        }
        let now = now_ms();
        warn!(%peer, "blocking peer for 1 h: {why}");
        swarm.behaviour_mut().blocked.block_peer(peer);
        let _ = swarm.disconnect_peer_id(peer);
        self.blocked_until.insert(peer, now + BLOCK_MS);
        let mut st = self.handle.lock();
        if !st.blocked.contains(&peer) {
            st.blocked.push(peer);
        }
        st.metrics.blocks.inc();
        let _ = st.store.audit(now, &format!("immune system blocked peer {peer} for 1 h: {why}"));
    }

    /// Lifts immune-system blocks whose time is up.
    fn expire_blocks(&mut self, swarm: &mut Swarm<Behaviour>) {
        let now = now_ms();
        let expired: Vec<PeerId> = self
            .blocked_until
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(p, _)| *p)
            .collect();
        for peer in expired {
            self.blocked_until.remove(&peer);
            self.failures.remove(&peer);
            swarm.behaviour_mut().blocked.unblock_peer(peer);
            let mut st = self.handle.lock();
            st.blocked.retain(|p| *p != peer);
            let _ = st.store.audit(now, &format!("immune system unblocked peer {peer}"));
        }
    }

    fn federation(&self) -> Option<FederationId> {
        self.handle.lock().engine.as_ref().map(Engine::federation)
    }

    fn publish(&mut self, swarm: &mut Swarm<Behaviour>, bytes: Vec<u8>) {
        let Some(f) = self.federation() else { return };
        match swarm.behaviour_mut().gossipsub.publish(net::topic(&f), bytes) {
            Ok(_) => {}
            // Normal situations: nobody subscribed yet (sync will deliver), or already sent.
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic)
            | Err(gossipsub::PublishError::Duplicate) => {}
            Err(e) => warn!("publish: {e}"),
        }
    }

    fn start_sync(&mut self, swarm: &mut Swarm<Behaviour>, peer: PeerId) {
        if let Some(federation) = self.federation() {
            swarm.behaviour_mut().sync.send_request(&peer, SyncRequest::Summary { federation });
        }
    }

    fn on_command(&mut self, swarm: &mut Swarm<Behaviour>, cmd: Command) {
        match cmd {
            Command::Publish(bytes) => self.publish(swarm, bytes),
            Command::Dial(addr) => {
                if let Err(e) = swarm.dial(addr.clone()) {
                    warn!("dial {addr}: {e}");
                }
            }
            Command::Disconnect(peer) => {
                let _ = swarm.disconnect_peer_id(peer);
            }
            Command::Block(peer) => {
                swarm.behaviour_mut().blocked.block_peer(peer);
                let mut st = self.handle.lock();
                if !st.blocked.contains(&peer) {
                    st.blocked.push(peer);
                }
                let _ = st.store.audit(now_ms(), &format!("blocked peer {peer}"));
            }
            Command::Unblock(peer) => {
                swarm.behaviour_mut().blocked.unblock_peer(peer);
                let mut st = self.handle.lock();
                st.blocked.retain(|p| *p != peer);
                let _ = st.store.audit(now_ms(), &format!("unblocked peer {peer}"));
            }
            Command::Follow(f) => {
                if let Err(e) = net::subscribe(swarm, &f) {
                    warn!("subscribe: {e:#}");
                }
                let peers: Vec<PeerId> = swarm.connected_peers().copied().collect();
                for p in peers {
                    self.start_sync(swarm, p);
                }
            }
        }
    }

    fn on_swarm_event(&mut self, swarm: &mut Swarm<Behaviour>, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                info!(%address, "listening");
                self.handle.lock().listen.push(address);
            }
            SwarmEvent::ConnectionEstablished { peer_id, endpoint, .. } => {
                debug!(%peer_id, "connected");
                {
                    let mut st = self.handle.lock();
                    if !st.peers.contains(&peer_id) {
                        st.peers.push(peer_id);
                    }
                    if endpoint.is_dialer() {
                        let addr = endpoint.get_remote_address().to_string();
                        let _ = st.store.put_peer(&peer_id.to_string(), &[addr]);
                    }
                }
                self.start_sync(swarm, peer_id);
            }
            SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } => {
                self.handle.lock().peers.retain(|p| *p != peer_id);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                for addr in info.listen_addrs {
                    swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => {
                let acceptance = if self.quota.allow(
                    propagation_source,
                    now_ms(),
                    crate::limits::GOSSIP_PER_MINUTE,
                ) {
                    self.on_gossip(swarm, &message.data)
                } else {
                    self.handle.lock().metrics.gossip("over_quota");
                    self.penalise(swarm, propagation_source, "over its gossip quota");
                    gossipsub::MessageAcceptance::Ignore
                };
                let rejected = matches!(acceptance, gossipsub::MessageAcceptance::Reject);
                swarm.behaviour_mut().gossipsub.report_message_validation_result(
                    &message_id,
                    &propagation_source,
                    acceptance,
                );
                if rejected {
                    self.penalise(swarm, propagation_source, "invalid gossip");
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Sync(request_response::Event::Message {
                peer,
                message,
                ..
            })) => match message {
                request_response::Message::Request { request, channel, .. } => {
                    let response = self.answer(request);
                    let _ = swarm.behaviour_mut().sync.send_response(channel, response);
                }
                request_response::Message::Response { request_id, response } => {
                    self.on_sync_response(swarm, peer, request_id, response);
                }
            },
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::RoutingUpdated {
                peer, ..
            })) => {
                // Keep a small mesh: dial peers that discovery finds, up to a bound.
                let connected = swarm.connected_peers().count();
                let blocked = self.handle.lock().blocked.contains(&peer);
                if !blocked && !swarm.is_connected(&peer) && connected < DIAL_TARGET {
                    debug!(%peer, "dialing a discovered peer");
                    let _ = swarm.dial(peer);
                }
            }
            _ => {}
        }
    }

    fn on_gossip(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        data: &[u8],
    ) -> gossipsub::MessageAcceptance {
        let msg = match Message::decode(data) {
            Ok(m) => m,
            Err(e) => {
                debug!("malformed gossip: {e}");
                let st = self.handle.lock();
                st.metrics.gossip("malformed");
                let _ = st.store.audit(now_ms(), &format!("rejected malformed gossip: {e}"));
                return gossipsub::MessageAcceptance::Reject;
            }
        };
        let (step, due) = {
            let mut st = self.handle.lock();
            let step = st.receive(&msg, Origin::Gossip);
            st.metrics.gossip(match step.as_ref().map(|s| s.verdict) {
                Some(Verdict::Accept) => "accept",
                Some(Verdict::Reject) => "reject",
                _ => "ignore",
            });
            let due = st.due_attestations();
            (step, due)
        };
        for m in due {
            self.publish(swarm, m.bytes().to_vec());
        }
        match step.map(|s| s.verdict) {
            Some(Verdict::Accept) => gossipsub::MessageAcceptance::Accept,
            Some(Verdict::Reject) => gossipsub::MessageAcceptance::Reject,
            Some(Verdict::Ignore) | None => gossipsub::MessageAcceptance::Ignore,
        }
    }

    fn answer(&self, request: SyncRequest) -> SyncResponse {
        let st = self.handle.lock();
        let follows = |f: &FederationId| st.engine.as_ref().is_some_and(|e| e.federation() == *f);
        match request {
            SyncRequest::Summary { federation } if follows(&federation) => {
                let mut buckets = st.summary();
                let truncated = buckets.len() > MAX_BUCKETS;
                buckets.truncate(MAX_BUCKETS);
                SyncResponse::Summary { buckets, truncated }
            }
            SyncRequest::Inventory { federation, bucket, after } if follows(&federation) => {
                let ids = st.store.bucket_ids_after(&bucket, after.as_ref(), INVENTORY_PAGE + 1);
                let more = ids.len() > INVENTORY_PAGE;
                SyncResponse::Inventory {
                    ids: ids.into_iter().take(INVENTORY_PAGE).collect(),
                    more,
                }
            }
            SyncRequest::Fetch { ids } => {
                let mut envelopes = Vec::new();
                let mut bytes = 0;
                for id in ids.iter().take(FETCH_BATCH) {
                    if let Ok(Some(m)) = st.store.get(id) {
                        bytes += m.bytes().len();
                        if bytes > FETCH_BYTES {
                            break;
                        }
                        envelopes.push(ByteBuf::from(m.bytes().to_vec()));
                    }
                }
                SyncResponse::Messages { envelopes }
            }
            _ => SyncResponse::Unknown,
        }
    }

    fn on_sync_response(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        peer: PeerId,
        request_id: request_response::OutboundRequestId,
        response: SyncResponse,
    ) {
        let Some(federation) = self.federation() else { return };
        match response {
            SyncResponse::Summary { buckets, truncated } => {
                // Only the proposals whose message sets differ are paged through.
                let mine: HashMap<MessageId, (u64, kos_protocol::Digest)> =
                    self.handle.lock().summary().into_iter().map(|(b, c, r)| (b, (c, r))).collect();
                for (bucket, count, root) in buckets {
                    if mine.get(&bucket) != Some(&(count, root)) {
                        let id = swarm.behaviour_mut().sync.send_request(
                            &peer,
                            SyncRequest::Inventory { federation, bucket, after: None },
                        );
                        self.pending.insert(id, (federation, bucket));
                    }
                }
                if truncated {
                    debug!(%peer, "peer has more than {MAX_BUCKETS} proposals; syncing the first");
                }
            }
            SyncResponse::Inventory { ids, more } => {
                let Some((_, bucket)) = self.pending.remove(&request_id) else { return };
                let missing: Vec<MessageId> = {
                    let st = self.handle.lock();
                    ids.iter()
                        .filter(|id| !st.store.contains(id).unwrap_or(true))
                        .copied()
                        .collect()
                };
                for chunk in missing.chunks(FETCH_BATCH) {
                    swarm
                        .behaviour_mut()
                        .sync
                        .send_request(&peer, SyncRequest::Fetch { ids: chunk.to_vec() });
                }
                if more {
                    let after = ids.last().copied();
                    let id = swarm
                        .behaviour_mut()
                        .sync
                        .send_request(&peer, SyncRequest::Inventory { federation, bucket, after });
                    self.pending.insert(id, (federation, bucket));
                }
            }
            SyncResponse::Messages { envelopes } => {
                let mut bad = 0;
                let due = {
                    let mut st = self.handle.lock();
                    for bytes in envelopes {
                        match Message::decode(&bytes) {
                            Ok(m) => {
                                if st
                                    .receive(&m, Origin::Sync)
                                    .is_some_and(|s| s.verdict == Verdict::Reject)
                                {
                                    bad += 1;
                                }
                            }
                            Err(e) => {
                                debug!(%peer, "bad envelope from sync: {e}");
                                bad += 1;
                            }
                        }
                    }
                    st.due_attestations()
                };
                for _ in 0..bad {
                    self.penalise(swarm, peer, "invalid message in sync");
                }
                for m in due {
                    self.publish(swarm, m.bytes().to_vec());
                }
            }
            SyncResponse::Unknown => {}
        }
    }
}
