//! The network task: the swarm, the verification pool, sync, and peer reputation.
//!
//! It owns the swarm and nothing else: the engine and the store belong to the core
//! ([`crate::core`]). Gossip and sync data go to a bounded backlog, are decoded and verified in
//! batches on a bounded pool of blocking workers, and only then reach the core; the core answers
//! with [`ToNet`] (verdicts, publications, penalties). While the backlog is full the task stops
//! reading the swarm — gossipsub's deferred validation holds the messages, TCP pushes back — but
//! keeps draining the core's answers, so the pipeline cannot deadlock.

use std::{
    collections::{BTreeSet, HashMap, HashSet, VecDeque},
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use futures::StreamExt;
use kos_engine::Engine;
use kos_protocol::{DecodeError, Message, MessageId, SecretKey, payload::FederationId};
use kos_storage::Store;
use libp2p::{
    Multiaddr, PeerId, Swarm, gossipsub, identify, kad, request_response, swarm::SwarmEvent,
};
use serde_bytes::ByteBuf;
use tokio::sync::{Semaphore, mpsc, watch};
use tracing::{debug, error, info, warn};

use crate::{
    core::{CoreHandle, Inbound, Source, ToCore, ToNet},
    limits::Buckets,
    mail::{self, MailState, Resolving},
    metrics::Metrics,
    net::{
        self, Behaviour, BehaviourEvent, FETCH_BATCH, FETCH_BYTES, INVENTORY_PAGE, SUMMARY_PAGE,
        SyncRequest, SyncResponse,
    },
    peers::{PeerAction, Reputation},
    policy::{Decision, Policy},
};

/// The gossipsub application score of a local trust level: higher trust helps a peer stay in
/// the mesh; quarantine pushes it out of it.
pub fn application_score(level: &str) -> f64 {
    match level {
        "core" => 5.0,
        "trusted" => 3.0,
        "standard" => 1.0,
        "sandbox" => 0.0,
        _ => -100.0,
    }
}

/// Why a peer under local trust `quarantine` is blocked.
const QUARANTINE_REASON: &str = "local trust: quarantine";

/// Discovered peers are dialed while fewer than this many are connected.
pub const DIAL_TARGET: usize = 16;
/// Bound of the channel from the API to the network task.
pub const COMMAND_QUEUE: usize = 256;
/// Messages waiting for verification at most; beyond it the swarm is not read.
pub const VERIFY_BACKLOG: usize = 8192;
/// Messages verified by one worker in one go (and handed to the core as one batch).
pub const VERIFY_BATCH: usize = 128;
/// Sync requests in flight to one peer at most.
pub const SYNC_IN_FLIGHT: usize = 4;
/// Sync requests queued for one peer at most (the rest wait for the next round).
pub const SYNC_QUEUE: usize = 4096;
/// Sync requests of one peer waiting or being served at most; more are refused and held
/// against it (an honest peer keeps [`SYNC_IN_FLIGHT`]).
pub const SYNC_PEER_OUTSTANDING: usize = 16;
/// Sync requests waiting for a server at most (beyond: refused, the peer asks again later).
pub const SYNC_WAITING: usize = 1024;

/// Waiting sync requests.
type SyncWaiting = VecDeque<(PeerId, SyncRequest, request_response::ResponseChannel<SyncResponse>)>;

/// Sync requests served at once (on blocking threads).
pub const SYNC_SERVERS: usize = 2;

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
    /// Per-author quota of live gossip.
    pub quota: crate::core::Quota,
    /// The name this node claims in the directory.
    pub name: Option<String>,
    /// Cap on pulling incoming vector transfers, bytes per second (none: no cap).
    pub vector_bytes_per_sec: Option<u64>,
}

/// What the API shows of the network (published by the network task).
#[derive(Debug, Clone, Default)]
pub struct NetView {
    /// Connected peers.
    pub peers: Vec<PeerId>,
    /// Listen addresses.
    pub listen: Vec<Multiaddr>,
    /// Gossipsub scores of connected peers.
    pub scores: Vec<(PeerId, f64)>,
    /// Blocked peers: (peer, until ms or none, why).
    pub blocked: Vec<(PeerId, Option<u64>, String)>,
    /// Peers with a sync walk in progress, and sync requests in flight.
    pub syncing: (usize, usize),
    /// The transport's peer id (the node key at start: it moves to a rotated key on restart).
    pub local: Option<PeerId>,
}

/// Commands from the API to the network task.
#[derive(Debug)]
pub enum Command {
    /// Dial an address.
    Dial(Multiaddr),
    /// Close connections to a peer.
    Disconnect(PeerId),
    /// Refuse a peer's connections and drop the current ones (until unblocked).
    Block(PeerId),
    /// Accept a peer again.
    Unblock(PeerId),
    /// Look up a directory record.
    Resolve {
        /// A KLP-ID or a name.
        host: kos_protocol::Host,
        /// The answer: the record(s), or why there is none.
        reply: tokio::sync::oneshot::Sender<
            Result<Vec<kos_protocol::directory::CheckedRecord>, String>,
        >,
    },
    /// Something entered the outbox: try to send now.
    Pump,
}

/// A handled direct message, ready to be answered.
type Received =
    (PeerId, request_response::ResponseChannel<net::DirectResponse>, net::DirectResponse);

/// The grade of an envelope that failed decoding or verification: `None` for what a newer or
/// different peer may legitimately send (ignored, never punished).
pub fn grade(e: &DecodeError) -> Option<PeerAction> {
    match e {
        DecodeError::UnknownType(_) | DecodeError::UnsupportedVersion(_) => None,
        DecodeError::BadSignature => Some(PeerAction::Fatal),
        _ => Some(PeerAction::LowTolerance),
    }
}

/// One unit of verification work.
#[derive(Debug)]
struct Job {
    bytes: Vec<u8>,
    from: Source,
}

/// Decodes and verifies a batch on a blocking thread; hands the good ones to the core as one
/// batch, reports the bad ones' verdicts and penalties.
fn verify_batch(jobs: Vec<Job>, core: &CoreHandle, net: &mpsc::Sender<ToNet>, metrics: &Metrics) {
    let mut good = Vec::with_capacity(jobs.len());
    for Job { bytes, from } in jobs {
        match Message::decode(&bytes) {
            Ok(msg) => good.push(Inbound { msg, from }),
            Err(e) => {
                let action = grade(&e);
                let (peer, verdict) = match &from {
                    Source::Gossip { id, source } => (*source, Some((id.clone(), *source))),
                    Source::Sync { peer } => (*peer, None),
                };
                if let Some((id, source)) = verdict {
                    metrics.gossip(if action.is_some() { "invalid" } else { "unreadable" });
                    let acceptance = if action.is_some() {
                        gossipsub::MessageAcceptance::Reject
                    } else {
                        gossipsub::MessageAcceptance::Ignore
                    };
                    let _ = net.blocking_send(ToNet::Verdict { id, source, acceptance });
                }
                if let Some(action) = action {
                    let _ = net.blocking_send(ToNet::Penalise {
                        peer,
                        action,
                        why: format!("sent an invalid envelope: {e}"),
                    });
                } else {
                    debug!(%peer, "ignored an envelope this node cannot read: {e}");
                }
            }
        }
    }
    if !good.is_empty() {
        let _ = core.send_blocking(ToCore::Ingest(good));
    }
}

/// Answers a sync request from the store (a blocking read, off the network task).
fn serve(store: &Store, federation: Option<FederationId>, request: SyncRequest) -> SyncResponse {
    let follows = |f: &FederationId| federation == Some(*f);
    match request {
        SyncRequest::Summary { federation, after } if follows(&federation) => {
            let (page, more) = store.summary_page(after.as_ref(), SUMMARY_PAGE);
            SyncResponse::Summary {
                buckets: page.into_iter().map(|(b, s)| (b, s.count, MessageId(s.digest))).collect(),
                more,
            }
        }
        SyncRequest::Inventory { federation, bucket, after } if follows(&federation) => {
            let ids = store.bucket_ids_after(&bucket, after.as_ref(), INVENTORY_PAGE + 1);
            let more = ids.len() > INVENTORY_PAGE;
            SyncResponse::Inventory { ids: ids.into_iter().take(INVENTORY_PAGE).collect(), more }
        }
        SyncRequest::Fetch { ids } => {
            let mut envelopes = Vec::new();
            let mut bytes = 0;
            for id in ids.iter().take(FETCH_BATCH) {
                // Served as stored: the receiver verifies.
                if let Ok(Some(b)) = store.get_bytes(id) {
                    bytes += b.len();
                    if bytes > FETCH_BYTES {
                        break;
                    }
                    envelopes.push(ByteBuf::from(b));
                }
            }
            SyncResponse::Messages { envelopes }
        }
        _ => SyncResponse::Unknown,
    }
}

/// What an outstanding sync request was for.
#[derive(Debug)]
enum Asked {
    Summary,
    Inventory { bucket: MessageId },
    Fetch { ids: BTreeSet<MessageId> },
}

/// One peer's sync walk.
#[derive(Debug, Default)]
struct SyncPeer {
    queue: VecDeque<SyncRequest>,
    in_flight: usize,
}

/// Results of the blocking work of vector transfers, back to the network task.
enum VectorDone {
    /// Incoming transfers found on disk (their held chunks verified): record and missing chunks.
    Loaded(Vec<(crate::vectors::Incoming, BTreeSet<u32>)>),
    /// A chunk request served.
    Served(request_response::ResponseChannel<net::VectorResponse>, net::VectorResponse),
    /// A chunk response verified and stored (or refused).
    Stored { transfer: String, chunk: u32, ok: bool },
    /// An assembly ran: the chunks to fetch again (none: complete), or why it failed.
    Assembled { transfer: String, result: Result<BTreeSet<u32>, String> },
}

/// The network task's state.
struct Net {
    core: CoreHandle,
    store: Store,
    metrics: Arc<Metrics>,
    data_dir: PathBuf,
    federation: Option<FederationId>,
    reputation: Reputation,
    view: watch::Sender<NetView>,
    /// Messages waiting for a verification worker.
    backlog: VecDeque<Job>,
    /// Outstanding outbound sync requests.
    asked: HashMap<request_response::OutboundRequestId, (PeerId, Asked)>,
    /// Ids requested and not yet answered (never asked of two peers at once).
    wanted: HashSet<MessageId>,
    /// Sync walks in progress.
    walks: HashMap<PeerId, SyncPeer>,
    /// Per-peer flood guard on gossip.
    flood: Buckets<PeerId>,
    /// Sync requests waiting for a server, first come first served.
    sync_waiting: SyncWaiting,
    /// Sync requests of each peer waiting or being served.
    sync_outstanding: HashMap<PeerId, usize>,
    /// Sync requests being served.
    serving: Arc<Semaphore>,
    /// Answers of the sync servers.
    served: mpsc::Sender<(PeerId, request_response::ResponseChannel<SyncResponse>, SyncResponse)>,
    /// The core's sender of [`ToNet`] (cloned into the workers).
    to_net: mpsc::Sender<ToNet>,
    /// Direct messages at rest.
    mail: kos_storage::mail::MailStore,
    /// Direct messages in motion.
    ms: MailState,
    /// The node key, then the keys it rotated away from (opening sealed messages; never
    /// logged).
    keys: Vec<SecretKey>,
    /// The name claimed in the directory.
    name: Option<String>,
    /// The `.klp-policy` in force.
    policy: Arc<std::sync::Mutex<Policy>>,
    /// Answers of the direct-message handlers.
    received: mpsc::Sender<Received>,
    /// Vector transfers on disk.
    vectors: crate::vectors::Vectors,
    /// Incoming transfers being pulled, by transfer id (hex).
    pulls: std::collections::BTreeMap<String, crate::vectors::Pull>,
    /// Outstanding chunk requests: transfer and chunk.
    vector_requests: HashMap<request_response::OutboundRequestId, (String, u32)>,
    /// Chunk requests being served.
    vector_serving: usize,
    /// The operator's cap on pulling.
    vector_rate: crate::vectors::Rate,
    /// When the incoming directory was last scanned, and whether a scan is running.
    vector_scan: (u64, bool),
    /// Long tasks' progress (shared with the API).
    progress: crate::progress::Progress,
    /// The sync catch-up under way: messages asked for and received since it began.
    catchup: Option<Catchup>,
    /// Results of blocking vector work.
    vector_done: mpsc::Sender<VectorDone>,
}

/// Everything the network task needs.
#[derive(Debug)]
pub struct NetParts {
    /// The core.
    pub core: CoreHandle,
    /// A handle on the store, for serving sync (reads only).
    pub store: Store,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The federation followed at start.
    pub federation: Option<FederationId>,
    /// Answers from the core.
    pub from_core: mpsc::Receiver<ToNet>,
    /// Sender of the same channel (for the verification workers).
    pub to_net: mpsc::Sender<ToNet>,
    /// Commands from the API.
    pub commands: mpsc::Receiver<Command>,
    /// Where the API reads the network's state.
    pub view: watch::Sender<NetView>,
    /// The `.klp-policy` in force (shared with the API and the core).
    pub policy: Arc<std::sync::Mutex<Policy>>,
    /// Keys the node rotated away from (direct messages still sealed to them are opened).
    pub previous_keys: Vec<SecretKey>,
    /// Long tasks' progress (shared with the API).
    pub progress: crate::progress::Progress,
}

/// A sync catch-up: from the first missing message found until nothing is wanted.
#[derive(Debug, Clone, Copy, Default)]
struct Catchup {
    requested: u64,
    received: u64,
}

/// The progress task of sync catch-up.
pub const CATCHUP_TASK: &str = "sync catch-up";

/// Keys rotated away from that the network task still opens direct messages with.
pub const MAX_PREVIOUS_KEYS: usize = 8;

/// Runs the network task until the process ends.
pub async fn run(settings: Settings, key: SecretKey, parts: NetParts) -> anyhow::Result<()> {
    let NetParts {
        core,
        store,
        metrics,
        federation,
        mut from_core,
        to_net,
        mut commands,
        view,
        policy,
        previous_keys,
        progress,
    } = parts;
    let mut swarm = net::build(key.to_libp2p(), settings.max_connections)?;
    let mail = store.mail()?;
    for addr in &settings.listen {
        swarm.listen_on(addr.clone()).with_context(|| format!("cannot listen on {addr}"))?;
    }
    if let Some(f) = federation {
        net::subscribe(&mut swarm, &f)?;
    }
    let reputation = Reputation::load(&settings.data_dir, now_ms());
    for (peer, _) in reputation.blocks() {
        swarm.behaviour_mut().blocked.block_peer(*peer);
    }
    // Known peers from earlier runs, then the bootstrap peers.
    for (peer, addrs) in store.peers()? {
        if let Ok(peer) = peer.parse::<PeerId>() {
            if reputation.is_blocked(&peer) {
                continue;
            }
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
    let (served_tx, mut served_rx) = mpsc::channel(SYNC_SERVERS * 4);
    let (received_tx, mut received_rx) = mpsc::channel(mail::MAX_RECEIVING);
    // Bounded by what can be outstanding: served requests, stored chunks, one scan, assemblies.
    let (vector_tx, mut vector_rx) = mpsc::channel(
        crate::vectors::MAX_SERVING
            + crate::vectors::MAX_ACTIVE_INCOMING * (crate::vectors::WINDOW + 1)
            + 1,
    );
    let mut n = Net {
        core,
        store,
        metrics,
        data_dir: settings.data_dir.clone(),
        federation,
        reputation,
        view,
        backlog: VecDeque::new(),
        asked: HashMap::new(),
        wanted: HashSet::new(),
        walks: HashMap::new(),
        flood: Buckets::new(crate::limits::PEER_BURST, crate::limits::PEER_PER_MINUTE),
        sync_waiting: VecDeque::new(),
        sync_outstanding: HashMap::new(),
        serving: Arc::new(Semaphore::new(SYNC_SERVERS)),
        served: served_tx,
        to_net,
        mail,
        ms: MailState::default(),
        keys: std::iter::once(key).chain(previous_keys).collect(),
        name: settings.name.clone(),
        policy,
        received: received_tx,
        vectors: crate::vectors::Vectors::new(&settings.data_dir),
        pulls: std::collections::BTreeMap::new(),
        vector_requests: HashMap::new(),
        vector_serving: 0,
        vector_rate: crate::vectors::Rate::new(settings.vector_bytes_per_sec),
        vector_scan: (0, false),
        vector_done: vector_tx,
        progress,
        catchup: None,
    };
    n.publish_view(&swarm);
    let workers = Arc::new(Semaphore::new(
        std::thread::available_parallelism().map_or(2, std::num::NonZero::get),
    ));
    let mut sync_timer = tokio::time::interval(settings.sync_interval);
    let mut mail_timer = tokio::time::interval(Duration::from_secs(1));
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    loop {
        tokio::select! {
            event = swarm.select_next_some(), if n.backlog.len() < VERIFY_BACKLOG => {
                n.on_swarm_event(&mut swarm, event);
            }
            Some(m) = from_core.recv() => n.on_core(&mut swarm, m),
            Some(cmd) = commands.recv() => n.on_command(&mut swarm, cmd),
            Some((peer, channel, response)) = served_rx.recv() => {
                n.on_served(&mut swarm, peer, channel, response);
            }
            Ok(permit) = workers.clone().acquire_owned(), if !n.backlog.is_empty() => {
                let take = n.backlog.len().min(VERIFY_BATCH);
                let jobs: Vec<Job> = n.backlog.drain(..take).collect();
                n.metrics.ingest_backlog.set(n.backlog.len() as i64);
                let core = n.core.clone();
                let to_net = n.to_net.clone();
                let metrics = n.metrics.clone();
                tokio::task::spawn_blocking(move || {
                    verify_batch(jobs, &core, &to_net, &metrics);
                    drop(permit);
                });
            }
            _ = sync_timer.tick() => n.periodic(&mut swarm),
            _ = mail_timer.tick() => {
                n.mail_tick(&mut swarm);
                n.vector_tick(&mut swarm);
                n.catchup_tick();
                // Sync walks end between rounds: the API's view follows within a second.
                n.publish_view(&swarm);
            }
            Some((peer, channel, response)) = received_rx.recv() => {
                n.ms.receiving = n.ms.receiving.saturating_sub(1);
                n.answer_direct(&mut swarm, peer, channel, response);
            }
            _ = hangup.recv() => n.reload_policy(),
            Some(done) = vector_rx.recv() => n.on_vector_done(&mut swarm, done),
        }
    }
}

impl Net {
    fn publish_view(&self, swarm: &Swarm<Behaviour>) {
        let now = now_ms();
        let peers: Vec<PeerId> = swarm.connected_peers().copied().collect();
        let scores = peers
            .iter()
            .filter_map(|p| swarm.behaviour().gossipsub.peer_score(p).map(|s| (*p, s)))
            .collect();
        let blocked =
            self.reputation.blocks().map(|(p, b)| (*p, b.until_ms, b.reason.clone())).collect();
        let listen = swarm.listeners().cloned().collect();
        let in_flight = self.walks.values().map(|w| w.in_flight).sum();
        self.metrics.connected_peers.set(peers.len() as i64);
        let _ = now;
        self.view.send_replace(NetView {
            peers,
            listen,
            scores,
            blocked,
            syncing: (self.walks.len(), in_flight),
            local: Some(*swarm.local_peer_id()),
        });
    }

    /// Records a graded action; blocks the peer (connected or not) when its score says so.
    fn penalise(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        peer: PeerId,
        action: PeerAction,
        why: &str,
    ) {
        self.metrics
            .peer_actions
            .get_or_create(&crate::metrics::ActionLabel { action: action.as_str() })
            .inc();
        debug!(%peer, action = action.as_str(), "peer action: {why}");
        if let Some(block) = self.reputation.report(peer, action, why, now_ms()) {
            warn!(%peer, "blocking peer for 1 h: {}", block.reason);
            self.apply_block(
                swarm,
                peer,
                &format!("immune system blocked peer {peer} for 1 h: {}", block.reason),
            );
        }
    }

    fn apply_block(&mut self, swarm: &mut Swarm<Behaviour>, peer: PeerId, audit: &str) {
        swarm.behaviour_mut().blocked.block_peer(peer);
        let _ = swarm.disconnect_peer_id(peer);
        self.walks.remove(&peer);
        self.metrics.blocks.inc();
        if let Err(e) = self.reputation.save(&self.data_dir) {
            warn!("cannot save the block list: {e}");
        }
        self.audit(audit.to_owned());
        self.publish_view(swarm);
    }

    /// Appends to the audit log (the core owns it).
    fn audit(&self, event: String) {
        let _ = self.core.try_send(ToCore::Call(Box::new(move |core| {
            let _ = core.store.audit(now_ms(), &event);
        })));
    }

    fn publish(&mut self, swarm: &mut Swarm<Behaviour>, bytes: Vec<u8>) {
        let Some(f) = self.federation else { return };
        match swarm.behaviour_mut().gossipsub.publish(net::topic(&f), bytes) {
            // The gossipsub id is the message id (SHA-256 of the bytes).
            Ok(id) => debug!(id = %hex::encode(id.0), "published"),
            // Normal situations: nobody subscribed yet (sync will deliver), or already sent.
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic)
            | Err(gossipsub::PublishError::Duplicate) => {}
            Err(e) => warn!("publish: {e}"),
        }
    }

    fn on_core(&mut self, swarm: &mut Swarm<Behaviour>, m: ToNet) {
        match m {
            ToNet::Verdict { id, source, acceptance } => {
                debug!(id = %hex::encode(&id.0), "verdict reported");
                swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&id, &source, acceptance);
            }
            ToNet::Publish(bytes) => self.publish(swarm, bytes),
            ToNet::Penalise { peer, action, why } => self.penalise(swarm, peer, action, &why),
            ToNet::Record(bytes) => self.put_record(swarm, bytes),
            ToNet::Rekey(key) => {
                // Bounded: a node rotates rarely; keep the last few old keys.
                self.keys.insert(0, key);
                self.keys.truncate(MAX_PREVIOUS_KEYS + 1);
                // The directory record under the new key, now.
                self.sign_record(swarm);
            }
            ToNet::Announce(bytes) => {
                let Some(f) = self.federation else { return };
                match swarm.behaviour_mut().gossipsub.publish(net::announce_topic(&f), bytes) {
                    Ok(_)
                    | Err(gossipsub::PublishError::NoPeersSubscribedToTopic)
                    | Err(gossipsub::PublishError::Duplicate) => {}
                    Err(e) => warn!("announce: {e}"),
                }
            }
            ToNet::Follow(f) => {
                self.federation = Some(f);
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

    fn on_command(&mut self, swarm: &mut Swarm<Behaviour>, cmd: Command) {
        match cmd {
            Command::Dial(addr) => {
                if let Err(e) = swarm.dial(addr.clone()) {
                    warn!("dial {addr}: {e}");
                }
            }
            Command::Disconnect(peer) => {
                let _ = swarm.disconnect_peer_id(peer);
            }
            Command::Block(peer) => {
                self.reputation.block(peer, "blocked by the operator");
                self.apply_block(swarm, peer, &format!("blocked peer {peer}"));
            }
            Command::Resolve { host, reply } => self.resolve(swarm, host, reply),
            Command::Pump => self.pump_outbox(swarm),
            Command::Unblock(peer) => {
                self.reputation.unblock(&peer);
                swarm.behaviour_mut().blocked.unblock_peer(peer);
                if let Err(e) = self.reputation.save(&self.data_dir) {
                    warn!("cannot save the block list: {e}");
                }
                self.audit(format!("unblocked peer {peer}"));
                self.publish_view(swarm);
            }
        }
    }

    fn periodic(&mut self, swarm: &mut Swarm<Behaviour>) {
        let now = now_ms();
        let expired = self.reputation.expire(now);
        for peer in &expired {
            swarm.behaviour_mut().blocked.unblock_peer(*peer);
            self.audit(format!("immune system unblocked peer {peer}"));
        }
        if !expired.is_empty()
            && let Err(e) = self.reputation.save(&self.data_dir)
        {
            warn!("cannot save the block list: {e}");
        }
        let peers: Vec<PeerId> = swarm.connected_peers().copied().collect();
        for p in &peers {
            self.start_sync(swarm, *p);
        }
        let kad = &mut swarm.behaviour_mut().kad;
        if kad.kbuckets().any(|b| b.num_entries() > 0) {
            let _ = kad.bootstrap();
        }
        // Local trust feeds gossip scoring (application-specific score); a peer the operator
        // quarantines is blocked for as long as that trust stands.
        let trust = self.store.trust().unwrap_or_default();
        for peer in peers {
            let target = format!("peer://{peer}");
            if let Some((_, level)) = trust.iter().find(|(t, _)| *t == target) {
                swarm
                    .behaviour_mut()
                    .gossipsub
                    .set_application_score(&peer, application_score(level));
            }
        }
        let quarantined: HashSet<PeerId> = trust
            .iter()
            .filter(|(_, level)| level == "quarantine")
            .filter_map(|(t, _)| t.strip_prefix("peer://").and_then(|p| p.parse().ok()))
            .collect();
        for peer in &quarantined {
            if !self.reputation.is_blocked(peer) {
                warn!(%peer, "blocking a peer under local trust quarantine");
                self.reputation.block(*peer, QUARANTINE_REASON);
                self.apply_block(
                    swarm,
                    *peer,
                    &format!("blocked peer {peer}: local trust quarantine"),
                );
            }
        }
        let lifted: Vec<PeerId> = self
            .reputation
            .blocks()
            .filter(|(p, b)| b.reason == QUARANTINE_REASON && !quarantined.contains(p))
            .map(|(p, _)| *p)
            .collect();
        for peer in lifted {
            self.on_command(swarm, Command::Unblock(peer));
        }
        self.publish_view(swarm);
    }

    fn on_swarm_event(&mut self, swarm: &mut Swarm<Behaviour>, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                info!(%address, "listening");
                self.publish_view(swarm);
            }
            SwarmEvent::ConnectionEstablished { peer_id, endpoint, num_established, .. } => {
                debug!(%peer_id, "connected");
                if endpoint.is_dialer() {
                    let addr = endpoint.get_remote_address().to_string();
                    let _ = self.store.put_peer(&peer_id.to_string(), &[addr]);
                }
                if num_established.get() == 1 {
                    self.start_sync(swarm, peer_id);
                    if let Ok(k) = kos_protocol::PublicKey::from_peer_id(&peer_id) {
                        self.ms.by_klp.insert(k.klp_id(), peer_id);
                    }
                    self.offer_record(swarm, peer_id);
                    self.pump_outbox(swarm);
                }
                self.publish_view(swarm);
            }
            SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } => {
                self.walks.remove(&peer_id);
                self.ms.by_klp.retain(|_, p| *p != peer_id);
                self.publish_view(swarm);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Direct(event)) => self.on_direct(swarm, event),
            SwarmEvent::Behaviour(BehaviourEvent::Vector(event)) => self.on_vector(swarm, event),
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::InboundRequest {
                request: kad::InboundRequest::PutRecord { record: Some(record), .. },
            })) => self.on_put_record(swarm, record),
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::InboundRequest { request })) => {
                debug!("kad inbound request: {request:?}");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result: kad::QueryResult::GetRecord(result),
                step,
                ..
            })) => self.on_get_record(id, result, step.last),
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
                let announcement = self
                    .federation
                    .is_some_and(|f| message.topic == net::announce_topic(&f).hash());
                if announcement && self.flood.allow(propagation_source, now_ms()) {
                    self.on_announcement(propagation_source, message_id, message.data);
                } else if self.flood.allow(propagation_source, now_ms()) {
                    debug!(id = %hex::encode(&message_id.0), "received");
                    self.backlog.push_back(Job {
                        bytes: message.data,
                        from: Source::Gossip { id: message_id, source: propagation_source },
                    });
                    self.metrics.ingest_backlog.set(self.backlog.len() as i64);
                } else {
                    // Far above any honest relay rate: ignored, and a little held against it.
                    self.metrics.gossip("over_flood_guard");
                    swarm.behaviour_mut().gossipsub.report_message_validation_result(
                        &message_id,
                        &propagation_source,
                        gossipsub::MessageAcceptance::Ignore,
                    );
                    self.penalise(
                        swarm,
                        propagation_source,
                        PeerAction::HighTolerance,
                        "over the gossip flood guard",
                    );
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Sync(request_response::Event::Message {
                peer,
                message,
                ..
            })) => match message {
                request_response::Message::Request { request, channel, .. } => {
                    self.on_sync_request(swarm, peer, request, channel);
                }
                request_response::Message::Response { request_id, response } => {
                    self.on_sync_response(swarm, peer, request_id, response);
                }
            },
            SwarmEvent::Behaviour(BehaviourEvent::Sync(
                request_response::Event::OutboundFailure { peer, request_id, error, .. },
            )) => {
                debug!(%peer, "sync request failed: {error}");
                self.finish(swarm, peer, request_id);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::RoutingUpdated {
                peer, ..
            })) => {
                // Keep a small mesh: dial peers that discovery finds, up to a bound.
                let connected = swarm.connected_peers().count();
                if !self.reputation.is_blocked(&peer)
                    && !swarm.is_connected(&peer)
                    && connected < DIAL_TARGET
                {
                    debug!(%peer, "dialing a discovered peer");
                    let _ = swarm.dial(peer);
                }
            }
            _ => {}
        }
    }

    fn on_sync_request(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        peer: PeerId,
        request: SyncRequest,
        channel: request_response::ResponseChannel<SyncResponse>,
    ) {
        // An honest peer keeps at most SYNC_IN_FLIGHT requests outstanding; far more is a flood.
        // Dropping the channel fails the request.
        let outstanding = self.sync_outstanding.get(&peer).copied().unwrap_or(0);
        if outstanding >= SYNC_PEER_OUTSTANDING {
            self.metrics.sync_refused.inc();
            self.penalise(
                swarm,
                peer,
                PeerAction::HighTolerance,
                "too many sync requests outstanding",
            );
            return;
        }
        if self.sync_waiting.len() >= SYNC_WAITING {
            self.metrics.sync_refused.inc(); // busy: the peer asks again later
            return;
        }
        *self.sync_outstanding.entry(peer).or_default() += 1;
        self.sync_waiting.push_back((peer, request, channel));
        self.dispatch_sync();
    }

    /// Serves waiting sync requests, first come first served, on at most [`SYNC_SERVERS`]
    /// blocking threads.
    fn dispatch_sync(&mut self) {
        while !self.sync_waiting.is_empty() {
            let Ok(permit) = self.serving.clone().try_acquire_owned() else { return };
            let Some((peer, request, channel)) = self.sync_waiting.pop_front() else { return };
            self.metrics.sync_served.inc();
            let store = self.store.clone();
            let federation = self.federation;
            let served = self.served.clone();
            tokio::task::spawn_blocking(move || {
                let response = serve(&store, federation, request);
                drop(permit);
                let _ = served.blocking_send((peer, channel, response));
            });
        }
    }

    /// A sync answer is ready: sent, and the next waiting request served.
    fn on_served(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        peer: PeerId,
        channel: request_response::ResponseChannel<SyncResponse>,
        response: SyncResponse,
    ) {
        let _ = swarm.behaviour_mut().sync.send_response(channel, response);
        if let Some(n) = self.sync_outstanding.get_mut(&peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.sync_outstanding.remove(&peer);
            }
        }
        self.dispatch_sync();
    }

    /// Every second: the catch-up's progress (logged every few seconds while it lasts); it ends
    /// when no walk is left and nothing is wanted.
    fn catchup_tick(&mut self) {
        let Some(c) = self.catchup else { return };
        let now = now_ms();
        self.progress.update(CATCHUP_TASK, c.received, c.requested, now);
        if self.walks.is_empty() && self.wanted.is_empty() {
            self.progress.finish(CATCHUP_TASK, now);
            self.catchup = None;
        }
    }

    /// Starts a sync walk with `peer` unless one is in progress.
    fn start_sync(&mut self, swarm: &mut Swarm<Behaviour>, peer: PeerId) {
        let Some(federation) = self.federation else { return };
        if self.walks.contains_key(&peer) {
            return;
        }
        let mut walk = SyncPeer::default();
        walk.queue.push_back(SyncRequest::Summary { federation, after: None });
        self.walks.insert(peer, walk);
        self.pump(swarm, peer);
    }

    /// Sends queued requests to `peer` while fewer than [`SYNC_IN_FLIGHT`] are outstanding; ends
    /// the walk when nothing is left.
    fn pump(&mut self, swarm: &mut Swarm<Behaviour>, peer: PeerId) {
        let Some(walk) = self.walks.get_mut(&peer) else { return };
        while walk.in_flight < SYNC_IN_FLIGHT {
            let Some(req) = walk.queue.pop_front() else { break };
            let asked = match &req {
                SyncRequest::Summary { .. } => Asked::Summary,
                SyncRequest::Inventory { bucket, .. } => Asked::Inventory { bucket: *bucket },
                SyncRequest::Fetch { ids } => Asked::Fetch { ids: ids.iter().copied().collect() },
            };
            let id = swarm.behaviour_mut().sync.send_request(&peer, req);
            self.asked.insert(id, (peer, asked));
            walk.in_flight += 1;
        }
        if walk.in_flight == 0 && walk.queue.is_empty() {
            self.walks.remove(&peer);
        }
    }

    fn enqueue(&mut self, peer: PeerId, req: SyncRequest) {
        if let Some(walk) = self.walks.get_mut(&peer)
            && walk.queue.len() < SYNC_QUEUE
        {
            walk.queue.push_back(req);
        }
    }

    /// A request is answered or failed: its bookkeeping is released.
    fn finish(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        peer: PeerId,
        request_id: request_response::OutboundRequestId,
    ) {
        let Some((_, asked)) = self.asked.remove(&request_id) else { return };
        if let Asked::Fetch { ids } = &asked {
            for id in ids {
                self.wanted.remove(id);
            }
        }
        if let Some(walk) = self.walks.get_mut(&peer) {
            walk.in_flight = walk.in_flight.saturating_sub(1);
        }
        self.pump(swarm, peer);
    }

    fn on_sync_response(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        peer: PeerId,
        request_id: request_response::OutboundRequestId,
        response: SyncResponse,
    ) {
        let Some(federation) = self.federation else { return };
        // Released first so that what this response queues is sent by the same pump.
        let Some((_, asked)) = self.asked.remove(&request_id) else { return };
        if let Some(walk) = self.walks.get_mut(&peer) {
            walk.in_flight = walk.in_flight.saturating_sub(1);
        }
        match (asked, response) {
            (Asked::Summary, SyncResponse::Summary { buckets, more }) => {
                // Only the buckets whose message sets differ are paged through.
                let last = buckets.last().map(|b| b.0);
                for (bucket, count, digest) in buckets.into_iter().take(SUMMARY_PAGE) {
                    let mine = self.store.bucket_summary(&bucket);
                    if mine.map(|s| (s.count, s.digest)) != Some((count, digest.0)) {
                        self.enqueue(
                            peer,
                            SyncRequest::Inventory { federation, bucket, after: None },
                        );
                    }
                }
                if more && let Some(after) = last {
                    self.enqueue(peer, SyncRequest::Summary { federation, after: Some(after) });
                }
            }
            (Asked::Inventory { bucket }, SyncResponse::Inventory { ids, more }) => {
                let missing: Vec<MessageId> = ids
                    .iter()
                    .take(INVENTORY_PAGE)
                    .filter(|id| {
                        !self.wanted.contains(id) && !self.store.contains(id).unwrap_or(true)
                    })
                    .copied()
                    .collect();
                if !missing.is_empty() {
                    let c = self.catchup.get_or_insert_with(|| {
                        self.progress.start(CATCHUP_TASK, 0, "messages", now_ms());
                        Catchup::default()
                    });
                    c.requested += missing.len() as u64;
                }
                for chunk in missing.chunks(FETCH_BATCH) {
                    self.wanted.extend(chunk.iter().copied());
                    self.enqueue(peer, SyncRequest::Fetch { ids: chunk.to_vec() });
                }
                if more && let Some(after) = ids.last().copied() {
                    self.enqueue(
                        peer,
                        SyncRequest::Inventory { federation, bucket, after: Some(after) },
                    );
                }
            }
            (Asked::Fetch { ids }, SyncResponse::Messages { envelopes }) => {
                for id in &ids {
                    self.wanted.remove(id);
                }
                let mut unasked = 0;
                for bytes in envelopes {
                    // Only what was asked for is taken (checked before any verification).
                    if ids.contains(&kos_protocol::message_id(&bytes)) {
                        self.backlog.push_back(Job {
                            bytes: bytes.into_vec(),
                            from: Source::Sync { peer },
                        });
                    } else {
                        unasked += 1;
                    }
                }
                if let Some(c) = self.catchup.as_mut() {
                    c.received += (ids.len() as u64).min(c.requested.saturating_sub(c.received));
                }
                if unasked > 0 {
                    self.penalise(
                        swarm,
                        peer,
                        PeerAction::MidTolerance,
                        &format!("sent {unasked} messages not asked for"),
                    );
                }
            }
            (_, SyncResponse::Unknown) => {}
            (_, _) => {
                self.penalise(
                    swarm,
                    peer,
                    PeerAction::MidTolerance,
                    "answered a sync request with the wrong kind of response",
                );
            }
        }
        self.pump(swarm, peer);
    }
}

/// How to open the data directory (see `kos_storage::OpenOptions`).
#[derive(Debug, Clone, Default)]
pub struct OpenFlags {
    /// Keep a store that belongs to another identity.
    pub new_identity: bool,
    /// Start empty although the manifest records data that is gone.
    pub fresh_store: bool,
    /// Accept lost messages and rebuild from what is left.
    pub repair: bool,
    /// The identity came from an existing vault.
    pub existing_identity: bool,
    /// Where the start-up reports its progress.
    pub progress: crate::progress::Progress,
    /// Keys the node rotated away from (did:key): a store recorded under one is the node's.
    pub previous_keys: Vec<String>,
}

/// What opening the data directory gives the core.
#[derive(Debug)]
pub struct Opened {
    /// The node identity.
    pub key: SecretKey,
    /// The store.
    pub store: Store,
    /// The engine, rebuilt from the stored messages (if the node follows a federation).
    pub engine: Option<Engine>,
    /// Highest sequence number this node used.
    pub seq: u64,
}

/// The progress task of the start-up's verification of every stored message.
pub const VERIFY_TASK: &str = "start-up verification";
/// The progress task of the start-up's replay of the stored messages into the engine.
pub const REPLAY_TASK: &str = "start-up replay";

/// Opens the data directory (journal, store, manifest), logs what it found, rebuilds the engine
/// from the stored messages, and returns the state for the core.
pub fn open_state(
    key: SecretKey,
    data_dir: &std::path::Path,
    flags: OpenFlags,
) -> anyhow::Result<(Opened, kos_storage::OpenReport)> {
    let opts = kos_storage::OpenOptions {
        node_key: key.public().to_did(),
        new_identity: flags.new_identity,
        fresh_store: flags.fresh_store,
        repair: flags.repair,
        existing_identity: flags.existing_identity,
        previous_keys: flags.previous_keys,
    };
    let (store, report) = Store::open_node(data_dir, &opts)
        .with_context(|| format!("cannot open the data directory {}", data_dir.display()))?;
    log_open_report(&report);
    let mut seq =
        store.meta("seq")?.and_then(|v| v.try_into().ok()).map(u64::from_be_bytes).unwrap_or(0);
    let mut federation = store.meta("federation")?.and_then(|v| <[u8; 32]>::try_from(v).ok());
    let me = key.public();
    // Every stored message is verified again (one thread per core): the store is not trusted
    // with deciding what is valid.
    let threads = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
    // An empty store has no long work to show.
    let progress = if store.is_empty() { Default::default() } else { flags.progress.clone() };
    progress.start(VERIFY_TASK, store.len() as u64, "messages", now_ms());
    let msgs = store.messages_parallel_with(threads, &|done, total| {
        progress.update(VERIFY_TASK, done as u64, total as u64, now_ms());
    })?;
    progress.update(VERIFY_TASK, msgs.len() as u64, msgs.len() as u64, now_ms());
    progress.finish(VERIFY_TASK, now_ms());
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
        progress.start(REPLAY_TASK, n as u64, "messages", now);
        let report = engine.replay_with(msgs, now, &mut |done, total| {
            progress.update(REPLAY_TASK, done as u64, total as u64, now_ms());
        });
        progress.finish(REPLAY_TASK, now_ms());
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
    Ok((Opened { key, store, engine, seq }, report))
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

// Direct messages and the directory.
impl Net {
    /// Every second: publish this node's record when due, send what the outbox holds.
    fn mail_tick(&mut self, swarm: &mut Swarm<Behaviour>) {
        let now = now_ms();
        if now.saturating_sub(self.ms.pruned_ms) >= mail::PRUNE_EVERY_MS {
            self.ms.pruned_ms = now;
            let mail = self.mail.clone();
            tokio::task::spawn_blocking(move || {
                let ids = mail.prune(now).unwrap_or(0);
                let records = mail.prune_records(now).unwrap_or(0);
                debug!(ids, records, "pruned handled ids and expired directory records");
            });
        }
        if swarm.listeners().next().is_some()
            && now.saturating_sub(self.ms.published_ms) >= mail::RECORD_REFRESH_MS
        {
            self.ms.published_ms = now;
            self.sign_record(swarm);
        }
        self.pump_outbox(swarm);
    }

    /// Hands this node's record to a peer that just connected (the DHT's closest peers may not
    /// have existed when it was published).
    fn offer_record(&mut self, swarm: &mut Swarm<Behaviour>, peer: PeerId) {
        let Some(bytes) = self.ms.own_record.clone() else { return };
        let Ok(msg) = Message::decode(&bytes) else { return };
        let Ok(rec) = kos_protocol::directory::check_record(&msg, now_ms(), None) else { return };
        for key in kos_protocol::directory::record_keys(&rec) {
            let record = kad::Record::new(key, bytes.clone());
            swarm.behaviour_mut().kad.put_record_to(
                record,
                std::iter::once(peer),
                kad::Quorum::One,
            );
        }
        debug!(%peer, "directory record offered");
    }

    /// Asks the core to sign this node's directory record; it comes back as [`ToNet::Record`].
    fn sign_record(&mut self, swarm: &Swarm<Behaviour>) {
        let addresses: Vec<String> = swarm.listeners().map(ToString::to_string).collect();
        let name = self.name.clone();
        let _ = self.core.try_send(ToCore::Call(Box::new(move |core| {
            let signed = core.sign_detached(|key, seq, now| {
                let record = mail::own_record(
                    key,
                    name,
                    addresses,
                    now.saturating_add(mail::RECORD_LIFETIME_MS),
                );
                Ok(Message::sign(
                    key,
                    seq,
                    now,
                    None,
                    kos_protocol::Payload::DirectoryRecord(record),
                )?)
            });
            match signed {
                Ok(msg) => core.to_net(ToNet::Record(msg.bytes().to_vec())),
                Err(e) => warn!("cannot sign the directory record: {e:#}"),
            }
        })));
    }

    /// Publishes a directory record (this node's) under its KLP-ID and its name.
    fn put_record(&mut self, swarm: &mut Swarm<Behaviour>, bytes: Vec<u8>) {
        let now = now_ms();
        let Ok(msg) = Message::decode(&bytes) else { return };
        let Ok(rec) = kos_protocol::directory::check_record(&msg, now, None) else { return };
        let _ = self.mail.put_record(
            &rec.klp_id.to_string(),
            rec.record.name.as_deref(),
            rec.record.expires_ms,
            &bytes,
            now,
        );
        for key in kos_protocol::directory::record_keys(&rec) {
            let record = kad::Record::new(key, bytes.clone());
            if let Err(e) = swarm.behaviour_mut().kad.put_record(record, kad::Quorum::One) {
                warn!("cannot publish the directory record: {e}");
            }
        }
        self.ms.own_record = Some(bytes);
        debug!(klp_id = %rec.klp_id, "directory record published");
    }

    /// A peer stores a record with us: kept only if it checks out for the key it is stored
    /// under. A name already claimed by another key keeps its first claim (the conflict is
    /// cached and shown when the name is resolved).
    fn on_put_record(&mut self, swarm: &mut Swarm<Behaviour>, record: kad::Record) {
        let now = now_ms();
        let Ok(msg) = Message::decode(&record.value) else {
            debug!("refused a directory record that is not a valid envelope");
            return;
        };
        let rec = match kos_protocol::directory::check_record(&msg, now, Some(record.key.as_ref()))
        {
            Ok(r) => r,
            Err(e) => {
                debug!("refused a directory record: {e}");
                return;
            }
        };
        let _ = self.mail.put_record(
            &rec.klp_id.to_string(),
            rec.record.name.as_deref(),
            rec.record.expires_ms,
            &record.value,
            now,
        );
        let store = swarm.behaviour_mut().kad.store_mut();
        use kad::store::RecordStore;
        if let Some(existing) = store.get(&record.key)
            && let Ok(old) = Message::decode(&existing.value)
            && old.author() != msg.author()
            && kos_protocol::directory::check_record(&old, now, None).is_ok()
            && !self.key_retired(&old.author().klp_id())
        {
            return; // the first claim stays (unless its key was retired); both are cached
        }
        match store.put(record) {
            Ok(()) => debug!(klp_id = %rec.klp_id, "stored a directory record"),
            Err(e) => debug!("directory store: {e}"),
        }
    }

    /// Whether the key with this KLP-ID was rotated away or revoked (per the policy's view of
    /// the federation's key lifecycle).
    fn key_retired(&self, klp_id: &kos_protocol::KlpId) -> bool {
        self.policy.lock().unwrap_or_else(std::sync::PoisonError::into_inner).is_retired(klp_id)
    }

    /// Starts a lookup (answered at once from the cache for a fresh KLP-ID record).
    fn resolve(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        host: kos_protocol::Host,
        reply: tokio::sync::oneshot::Sender<
            Result<Vec<kos_protocol::directory::CheckedRecord>, String>,
        >,
    ) {
        let now = now_ms();
        if let kos_protocol::Host::Id(id) = &host {
            let cached = self.mail.record(&id.to_string()).ok().flatten();
            let found = mail::check_all(cached, now);
            if !found.is_empty() {
                let records: Vec<_> = found.into_iter().map(|(r, _)| r).collect();
                let _ = reply.send(mail::answer(&host, &records, |k| self.key_retired(k)));
                return;
            }
        }
        let key = match &host {
            kos_protocol::Host::Id(id) => kos_protocol::directory::id_key(id),
            kos_protocol::Host::Name(n) => kos_protocol::directory::name_key(n),
        };
        let qid = swarm.behaviour_mut().kad.get_record(kad::RecordKey::new(&key));
        debug!(%host, "directory lookup started");
        self.ms.resolving.insert(qid, Resolving { host, found: Vec::new(), reply });
    }

    fn on_get_record(
        &mut self,
        id: kad::QueryId,
        result: Result<kad::GetRecordOk, kad::GetRecordError>,
        last: bool,
    ) {
        let now = now_ms();
        let done = {
            let Some(r) = self.ms.resolving.get_mut(&id) else { return };
            match result {
                Ok(kad::GetRecordOk::FoundRecord(peer_record)) => {
                    r.found.extend(mail::check_all([peer_record.record.value], now));
                    last
                }
                Ok(kad::GetRecordOk::FinishedWithNoAdditionalRecord { .. }) | Err(_) => true,
            }
        };
        if !done {
            return;
        }
        let Some(r) = self.ms.resolving.remove(&id) else { return };
        debug!(host = %r.host, found = r.found.len(), "directory lookup finished");
        for (rec, bytes) in &r.found {
            let _ = self.mail.put_record(
                &rec.klp_id.to_string(),
                rec.record.name.as_deref(),
                rec.record.expires_ms,
                bytes,
                now,
            );
        }
        // What the cache knows too: every key that claimed the name, the id's record.
        let cached_ids: Vec<String> = match &r.host {
            kos_protocol::Host::Name(n) => self.mail.claimants(n),
            kos_protocol::Host::Id(i) => vec![i.to_string()],
        };
        let cached = cached_ids.iter().filter_map(|i| self.mail.record(i).ok().flatten());
        let mut records: Vec<_> = r.found.into_iter().map(|(rec, _)| rec).collect();
        records.extend(mail::check_all(cached, now).into_iter().map(|(rec, _)| rec));
        let _ = r.reply.send(mail::answer(&r.host, &records, |k| self.key_retired(k)));
    }

    /// Sends what is due in the outbox: straight to the recipient when connected, else (while
    /// dialing the addresses its record gives) to a connected peer that will relay it.
    fn pump_outbox(&mut self, swarm: &mut Swarm<Behaviour>) {
        let now = now_ms();
        let mut per_peer: HashMap<PeerId, usize> = HashMap::new();
        for (_, p) in self.ms.in_flight.values() {
            *per_peer.entry(*p).or_default() += 1;
        }
        for (id, mut entry) in self.mail.outbox() {
            if self.ms.in_flight.len() >= mail::MAX_IN_FLIGHT {
                return;
            }
            let mid = MessageId(id);
            if entry.next_ms > now || self.ms.busy.contains(&mid) {
                continue;
            }
            if now.saturating_sub(entry.queued_ms) > mail::GIVE_UP_MS {
                let _ = self.mail.fail(&id, "not delivered within 7 days", now);
                self.audit(format!("gave up delivering {mid} to {}", entry.target));
                continue;
            }
            let Ok(target) = entry.target.parse::<kos_protocol::KlpId>() else {
                let _ = self.mail.fail(&id, "the target is not a KLP-ID", now);
                continue;
            };
            let Ok(Some(bytes)) = self.mail.envelope(&id) else {
                let _ = self.mail.fail(&id, "the stored envelope is missing", now);
                continue;
            };
            let from: Option<PeerId> = entry.from.as_deref().and_then(|f| f.parse().ok());
            let next = match self.ms.by_klp.get(&target) {
                Some(p) => Some(*p),
                None => {
                    self.dial_recipient(swarm, &target, now);
                    let mut relays: Vec<PeerId> = swarm
                        .connected_peers()
                        .filter(|p| Some(**p) != from && !self.reputation.is_blocked(p))
                        .copied()
                        .collect();
                    relays.sort();
                    (!relays.is_empty()).then(|| relays[entry.attempts as usize % relays.len()])
                }
            };
            entry.attempts = entry.attempts.saturating_add(1);
            entry.next_ms = now.saturating_add(mail::backoff(entry.attempts));
            let Some(peer) = next else {
                entry.last_error = Some(
                    "no route: the recipient is not reachable and no peer is connected".into(),
                );
                let _ = self.mail.update(&id, &entry);
                continue;
            };
            if per_peer.get(&peer).copied().unwrap_or(0) >= mail::MAX_IN_FLIGHT_PER_PEER {
                continue;
            }
            let _ = self.mail.update(&id, &entry);
            *per_peer.entry(peer).or_default() += 1;
            let rid = swarm.behaviour_mut().direct.send_request(&peer, bytes);
            debug!(id = %mid, %peer, "direct message sent");
            self.ms.in_flight.insert(rid, (mid, peer));
            self.ms.busy.insert(mid);
        }
    }

    /// Dials the recipient at the addresses its cached record gives (unless blocked).
    fn dial_recipient(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        target: &kos_protocol::KlpId,
        now: u64,
    ) {
        let cached = self.mail.record(&target.to_string()).ok().flatten();
        let Some((rec, _)) = mail::check_all(cached, now).into_iter().next() else { return };
        let peer = rec.key.to_peer_id();
        if self.reputation.is_blocked(&peer) || swarm.is_connected(&peer) {
            return;
        }
        let addrs: Vec<Multiaddr> =
            rec.record.addresses.iter().filter_map(|a| a.parse().ok()).collect();
        if addrs.is_empty() {
            return;
        }
        let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer).addresses(addrs).build();
        let _ = swarm.dial(opts);
    }

    fn on_direct(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        event: request_response::Event<Vec<u8>, net::DirectResponse>,
    ) {
        match event {
            request_response::Event::Message {
                peer,
                message: request_response::Message::Request { request, channel, .. },
                ..
            } => self.on_direct_request(swarm, peer, request, channel),
            request_response::Event::Message {
                peer,
                message: request_response::Message::Response { request_id, response },
                ..
            } => {
                let Some((mid, _)) = self.ms.in_flight.remove(&request_id) else { return };
                self.ms.busy.remove(&mid);
                let now = now_ms();
                if response.code.is_taken() {
                    let _ = self.mail.delivered(&mid.0, now);
                    self.metrics.direct("delivered");
                    info!(id = %mid, %peer, "direct message handed on");
                } else if response.code.is_final() {
                    let why =
                        format!("refused by peer {peer}: {:?}: {}", response.code, response.reason);
                    let _ = self.mail.fail(&mid.0, &why, now);
                    self.metrics.direct("failed");
                    self.audit(format!("direct message {mid} {why}"));
                    warn!(id = %mid, "direct message {why}");
                } else {
                    self.note_error(
                        &mid,
                        format!("peer {peer}: {:?}: {}", response.code, response.reason),
                    );
                }
            }
            request_response::Event::OutboundFailure { peer, request_id, error, .. } => {
                if let Some((mid, _)) = self.ms.in_flight.remove(&request_id) {
                    self.ms.busy.remove(&mid);
                    self.note_error(&mid, format!("peer {peer}: {error}"));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                debug!(%peer, "direct message not received: {error}");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn note_error(&mut self, mid: &MessageId, error: String) {
        if let Ok(Some(mut e)) = self.mail.outbox_entry(&mid.0) {
            e.last_error = Some(error);
            let _ = self.mail.update(&mid.0, &e);
        }
    }

    /// A peer hands us a direct message: policy and quota first, then decoding, opening and a
    /// durable write on a blocking thread; the answer goes back when that is done.
    fn on_direct_request(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        peer: PeerId,
        request: Vec<u8>,
        channel: request_response::ResponseChannel<net::DirectResponse>,
    ) {
        let now = now_ms();
        let refused = {
            let mut policy = self.policy.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match policy.check_peer(&peer) {
                Decision::Deny(why) => Some((net::DirectCode::Policy, why)),
                Decision::Allow => match policy.take_peer_quota(peer, now) {
                    Decision::Deny(why) => Some((net::DirectCode::Busy, why)),
                    Decision::Allow => None,
                },
            }
        };
        if let Some((code, reason)) = refused {
            self.answer_direct(swarm, peer, channel, net::DirectResponse { code, reason });
            return;
        }
        if self.ms.receiving >= mail::MAX_RECEIVING {
            let busy = net::DirectResponse { code: net::DirectCode::Busy, reason: "busy".into() };
            self.answer_direct(swarm, peer, channel, busy);
            return;
        }
        self.ms.receiving += 1;
        let mail = self.mail.clone();
        let keys = self.keys.clone();
        let policy = self.policy.clone();
        let received = self.received.clone();
        let vectors = self.vectors.clone();
        tokio::task::spawn_blocking(move || {
            let response = {
                let mut policy = policy.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                mail::receive(&mail, &vectors, &keys, &mut policy, peer, &request, now)
            };
            let _ = received.blocking_send((peer, channel, response));
        });
    }

    /// Sends the answer to a direct message; refusals are counted and audited.
    fn answer_direct(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        peer: PeerId,
        channel: request_response::ResponseChannel<net::DirectResponse>,
        response: net::DirectResponse,
    ) {
        use net::DirectCode::*;
        let label = match response.code {
            Accepted => "accepted",
            Duplicate => "duplicate",
            Malformed => "malformed",
            NotSealed => "not_sealed",
            CannotOpen => "cannot_open",
            Policy => "policy",
            Busy => "busy",
            NoRoute => "no_route",
            Invalid => "invalid",
        };
        self.metrics.direct(label);
        match response.code {
            Accepted | Duplicate => debug!(%peer, "direct message taken: {}", response.reason),
            Busy => {}
            Malformed => {
                self.audit(format!(
                    "refused a direct message from peer {peer}: {}",
                    response.reason
                ));
                self.penalise(
                    swarm,
                    peer,
                    PeerAction::LowTolerance,
                    "sent an invalid direct message",
                );
            }
            _ => {
                info!(%peer, "refused a direct message: {:?}: {}", response.code, response.reason);
                self.audit(format!(
                    "refused a direct message from peer {peer}: {label}: {}",
                    response.reason
                ));
            }
        }
        if response.code == Accepted && response.reason == "held for relaying" {
            self.pump_outbox(swarm);
        }
        let _ = swarm.behaviour_mut().direct.send_response(channel, response);
    }

    /// A BROADCAST_ANNOUNCE from the federation's announcement topic: verified, judged by the
    /// policy and filed in the inbox on a blocking thread; the verdict goes back to gossipsub
    /// (accepted ones are relayed; a bad signature or another type is rejected).
    fn on_announcement(&mut self, source: PeerId, id: gossipsub::MessageId, data: Vec<u8>) {
        let mail = self.mail.clone();
        let policy = self.policy.clone();
        let to_net = self.to_net.clone();
        let metrics = self.metrics.clone();
        tokio::task::spawn_blocking(move || {
            let now = now_ms();
            let acceptance = match Message::decode(&data) {
                Ok(msg) if msg.kind() == kos_protocol::MessageType::ReputationDelta => {
                    let policy = policy.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    mail::receive_reputation(&mail, &policy, &msg, now, &metrics)
                }
                Ok(msg) if msg.kind() == kos_protocol::MessageType::BroadcastAnnounce => {
                    let decision = policy
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .check_sender(&msg.author(), msg.kind());
                    if let Decision::Deny(why) = decision {
                        metrics.policy_refusal("gossip");
                        debug!("announcement refused: {why}");
                        gossipsub::MessageAcceptance::Ignore
                    } else {
                        let entry = kos_storage::mail::InboxEntry {
                            envelope: hex::encode(&data),
                            sender: msg.author().to_did(),
                            sender_klp_id: msg.author().klp_id().to_string(),
                            kind: msg.kind().name().to_owned(),
                            body: mail::body_json(msg.payload()).to_string(),
                            target: String::new(),
                            created_ms: msg.header().created_ms,
                            received_ms: now,
                            from_peer: source.to_string(),
                        };
                        match mail.file(&msg.id().0, &entry) {
                            Ok(_) => gossipsub::MessageAcceptance::Accept,
                            Err(_) => gossipsub::MessageAcceptance::Ignore,
                        }
                    }
                }
                Ok(_) | Err(_) => gossipsub::MessageAcceptance::Reject,
            };
            let _ = to_net.blocking_send(ToNet::Verdict { id, source, acceptance });
        });
    }

    /// Reads `<data-dir>/klp-policy.toml` again (SIGHUP); a bad file changes nothing.
    fn reload_policy(&mut self) {
        let path = self.data_dir.join(crate::policy::POLICY_FILE);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let result =
            self.policy.lock().unwrap_or_else(std::sync::PoisonError::into_inner).set_local(&text);
        match result {
            Ok(()) => {
                info!("policy reloaded from {}", path.display());
                self.audit(format!("policy reloaded from {}", path.display()));
            }
            Err(e) => warn!("policy not reloaded: {e}"),
        }
    }
}

/// Vector transfers: serving chunks to their recipient, pulling missing ones
/// (`docs/protocol.md` §8.5). File work runs on the blocking pool; results come back as
/// [`VectorDone`].
impl Net {
    /// Every second (and after each stored chunk): finds new incoming transfers, requests
    /// missing chunks within each transfer's window and the rate cap, assembles finished ones.
    fn vector_tick(&mut self, swarm: &mut Swarm<Behaviour>) {
        let now = now_ms();
        let (last, scanning) = self.vector_scan;
        if !scanning && now.saturating_sub(last) >= 1000 {
            self.vector_scan = (now, true);
            let vectors = self.vectors.clone();
            let keys = self.keys.clone();
            let known: HashSet<String> = self.pulls.keys().cloned().collect();
            let done = self.vector_done.clone();
            tokio::task::spawn_blocking(move || {
                let mut found = Vec::new();
                for mut meta in vectors.incoming() {
                    if meta.state != "receiving" || known.contains(&meta.transfer) {
                        continue;
                    }
                    match vectors.check_held(&mut meta, &keys) {
                        Ok(missing) => found.push((meta, missing)),
                        Err(e) => warn!(transfer = %meta.transfer, "vector transfer: {e}"),
                    }
                }
                let _ = done.blocking_send(VectorDone::Loaded(found));
            });
        }
        let ids: Vec<String> = self.pulls.keys().cloned().collect();
        for t in ids {
            let Some(pull) = self.pulls.get_mut(&t) else { continue };
            if pull.ready() {
                pull.assembling = true;
                let vectors = self.vectors.clone();
                let keys = self.keys.clone();
                let mut meta = pull.meta.clone();
                let done = self.vector_done.clone();
                tokio::task::spawn_blocking(move || {
                    let result = vectors.assemble(&mut meta, &keys).map_err(|e| e.to_string());
                    let _ = done
                        .blocking_send(VectorDone::Assembled { transfer: meta.transfer, result });
                });
                continue;
            }
            let peer = pull.sender.to_peer_id();
            if !swarm.is_connected(&peer) {
                if now >= pull.next_ms && !pull.missing.is_empty() {
                    pull.next_ms = now.saturating_add(5000);
                    let _ = swarm.dial(libp2p::swarm::dial_opts::DialOpts::peer_id(peer).build());
                }
                continue;
            }
            let Some(transfer) = crate::vectors::parse_transfer(&t) else { continue };
            let len = crate::vectors::chunk_len(pull.meta.dims).unwrap_or(0);
            while pull.in_flight.len() < crate::vectors::WINDOW
                && !pull.missing.is_empty()
                && now >= pull.next_ms
                && self.vector_rate.take(len, now)
            {
                let Some(k) = pull.next_request(now) else { break };
                let id = swarm
                    .behaviour_mut()
                    .vector
                    .send_request(&peer, crate::vectors::encode_request(&transfer, k));
                self.vector_requests.insert(id, (t.clone(), k));
            }
        }
    }

    fn on_vector_done(&mut self, swarm: &mut Swarm<Behaviour>, done: VectorDone) {
        let now = now_ms();
        match done {
            VectorDone::Loaded(found) => {
                self.vector_scan.1 = false;
                for (meta, missing) in found {
                    if self.pulls.len() >= crate::vectors::MAX_ACTIVE_INCOMING {
                        break;
                    }
                    info!(transfer = %meta.transfer, chunks = meta.chunks, missing = missing.len(), "pulling a vector transfer");
                    if let Some(p) = crate::vectors::Pull::new(meta.clone(), missing) {
                        self.pulls.insert(meta.transfer, p);
                    }
                }
            }
            VectorDone::Served(channel, response) => {
                self.vector_serving = self.vector_serving.saturating_sub(1);
                let _ = swarm.behaviour_mut().vector.send_response(channel, response);
            }
            VectorDone::Stored { transfer, chunk, ok } => {
                if let Some(p) = self.pulls.get_mut(&transfer) {
                    if ok {
                        p.stored(chunk);
                    } else {
                        p.meta.rejected += 1;
                        p.retry(chunk, true, now);
                    }
                }
            }
            VectorDone::Assembled { transfer, result } => match result {
                Ok(missing) if missing.is_empty() => {
                    info!(%transfer, "vector transfer complete");
                    self.pulls.remove(&transfer);
                }
                Ok(missing) => {
                    if let Some(p) = self.pulls.get_mut(&transfer) {
                        p.assembling = false;
                        p.meta.refetched += missing.len() as u64;
                        p.missing.extend(missing);
                    }
                }
                Err(e) => {
                    warn!(%transfer, "vector transfer failed: {e}");
                    self.pulls.remove(&transfer);
                }
            },
        }
        self.vector_tick(swarm);
    }

    fn on_vector(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        event: request_response::Event<Vec<u8>, net::VectorResponse>,
    ) {
        let now = now_ms();
        match event {
            request_response::Event::Message {
                peer,
                message: request_response::Message::Request { request, channel, .. },
                ..
            } => {
                if self.vector_serving >= crate::vectors::MAX_SERVING {
                    let busy = net::VectorResponse { code: 4, body: b"busy".to_vec() };
                    let _ = swarm.behaviour_mut().vector.send_response(channel, busy);
                    return;
                }
                self.vector_serving += 1;
                let vectors = self.vectors.clone();
                let key = self.keys[0].clone();
                let done = self.vector_done.clone();
                tokio::task::spawn_blocking(move || {
                    let response = serve_chunk(&vectors, &key, peer, &request, now);
                    let _ = done.blocking_send(VectorDone::Served(channel, response));
                });
            }
            request_response::Event::Message {
                peer,
                message: request_response::Message::Response { request_id, response },
                ..
            } => {
                let Some((t, k)) = self.vector_requests.remove(&request_id) else { return };
                let Some(pull) = self.pulls.get_mut(&t) else { return };
                if response.code != 0 {
                    debug!(%peer, transfer = %t, chunk = k, code = response.code, "chunk not served");
                    pull.retry(k, true, now);
                    return;
                }
                let vectors = self.vectors.clone();
                let keys = self.keys.clone();
                let (sender, meta) = (pull.sender, pull.meta.clone());
                let done = self.vector_done.clone();
                tokio::task::spawn_blocking(move || {
                    let ok = match crate::vectors::Vectors::verify(
                        &response.body,
                        &sender,
                        &keys,
                        Some((&meta, k)),
                    ) {
                        Ok(_) => vectors.store_chunk(&meta.transfer, k, &response.body).is_ok(),
                        Err(e) => {
                            warn!(transfer = %meta.transfer, "refused a chunk: {e}");
                            false
                        }
                    };
                    let _ = done.blocking_send(VectorDone::Stored {
                        transfer: meta.transfer,
                        chunk: k,
                        ok,
                    });
                });
            }
            request_response::Event::OutboundFailure { request_id, error, .. } => {
                if let Some((t, k)) = self.vector_requests.remove(&request_id)
                    && let Some(pull) = self.pulls.get_mut(&t)
                {
                    debug!(transfer = %t, chunk = k, "chunk request failed: {error}");
                    pull.retry(k, true, now);
                }
            }
            _ => {}
        }
    }
}

/// Answers a chunk request: only the transfer's recipient gets its chunks, sealed to it.
fn serve_chunk(
    vectors: &crate::vectors::Vectors,
    key: &SecretKey,
    peer: PeerId,
    request: &[u8],
    now: u64,
) -> net::VectorResponse {
    let reply = |code: u8, why: &str| net::VectorResponse { code, body: why.as_bytes().to_vec() };
    let Some((t, k)) = crate::vectors::decode_request(request) else {
        return reply(3, "malformed request");
    };
    let Ok(meta) = vectors.outgoing(&t) else { return reply(1, "unknown transfer") };
    let recipient = kos_protocol::PublicKey::from_did(&meta.recipient).map(|k| k.to_peer_id());
    if recipient.ok() != Some(peer) {
        return reply(2, "not the recipient of this transfer");
    }
    if k >= meta.chunks {
        return reply(3, "no such chunk");
    }
    match vectors.sealed_chunk(&meta, k, key, now) {
        Ok(m) => net::VectorResponse { code: 0, body: m.bytes().to_vec() },
        Err(e) => reply(4, &e.to_string()),
    }
}
