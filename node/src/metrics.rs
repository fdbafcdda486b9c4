//! Prometheus metrics of the node, all declared here (served at `GET /metrics` on the control
//! API, with its token).

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

/// The outcome of a gossip message, as a metric label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabel {
    /// accept, ignore, reject, malformed or over_quota.
    pub verdict: &'static str,
}

/// A peer action, as a metric label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabel {
    /// fatal, low, mid or high.
    pub action: &'static str,
}

/// What became of a direct message, as a metric label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectLabel {
    /// accepted, duplicate, malformed, not_sealed, cannot_open, policy, busy, no_route (received);
    /// delivered, failed (sent).
    pub outcome: &'static str,
}

/// A policy refusal, as a metric label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabel {
    /// direct, gossip or sync.
    pub path: &'static str,
}

/// Every metric of the node.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Gossip messages by verdict.
    pub gossip: Family<VerdictLabel, Counter>,
    /// Messages received by sync.
    pub sync_messages: Counter,
    /// Messages created on this node.
    pub local_messages: Counter,
    /// Rebuilds of the state after a key rotation or revocation invalidated applied messages.
    pub rebuilds: Counter,
    /// Peers blocked by the immune system or the operator.
    pub blocks: Counter,
    /// Connected peers.
    pub connected_peers: Gauge,
    /// Messages in the store.
    pub stored_messages: Gauge,
    /// Messages held for a missing dependency.
    pub pending_messages: Gauge,
    /// Free bytes on the data directory's disk.
    pub free_bytes: Gauge,
    /// Graded actions against peers.
    pub peer_actions: Family<ActionLabel, Counter>,
    /// Sync requests served.
    pub sync_served: Counter,
    /// Sync requests refused (over a peer's quota, or the server is busy).
    pub sync_refused: Counter,
    /// Messages waiting for verification or the core.
    pub ingest_backlog: Gauge,
    /// Direct messages by outcome.
    pub direct: Family<DirectLabel, Counter>,
    /// Messages refused by the `.klp-policy`, by ingress path.
    pub policy_refusals: Family<PolicyLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("kos");
        let m = Metrics {
            gossip: Family::default(),
            sync_messages: Counter::default(),
            local_messages: Counter::default(),
            rebuilds: Counter::default(),
            blocks: Counter::default(),
            connected_peers: Gauge::default(),
            stored_messages: Gauge::default(),
            pending_messages: Gauge::default(),
            free_bytes: Gauge::default(),
            peer_actions: Family::default(),
            sync_served: Counter::default(),
            sync_refused: Counter::default(),
            ingest_backlog: Gauge::default(),
            direct: Family::default(),
            policy_refusals: Family::default(),
            registry: Registry::default(),
        };
        registry.register("gossip_messages", "Gossip messages by verdict", m.gossip.clone());
        registry.register("sync_messages", "Messages received by sync", m.sync_messages.clone());
        registry.register(
            "local_messages",
            "Messages created on this node",
            m.local_messages.clone(),
        );
        registry.register(
            "state_rebuilds",
            "State rebuilds after a key rotation or revocation invalidated applied messages",
            m.rebuilds.clone(),
        );
        registry.register("peer_blocks", "Peers blocked", m.blocks.clone());
        registry.register("connected_peers", "Connected peers", m.connected_peers.clone());
        registry.register("stored_messages", "Messages in the store", m.stored_messages.clone());
        registry.register(
            "pending_messages",
            "Messages waiting for a dependency",
            m.pending_messages.clone(),
        );
        registry.register(
            "data_dir_free_bytes",
            "Free bytes on the data directory's disk (writes stop below 16 MiB)",
            m.free_bytes.clone(),
        );
        registry.register("peer_actions", "Graded actions against peers", m.peer_actions.clone());
        registry.register("sync_served", "Sync requests served", m.sync_served.clone());
        registry.register(
            "sync_refused",
            "Sync requests refused (over quota or busy)",
            m.sync_refused.clone(),
        );
        registry.register(
            "ingest_backlog",
            "Gossip messages waiting for verification",
            m.ingest_backlog.clone(),
        );
        registry.register("direct_messages", "Direct messages by outcome", m.direct.clone());
        registry.register(
            "policy_refusals",
            "Messages refused by the .klp-policy, by ingress path",
            m.policy_refusals.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// Counts a gossip message with its verdict.
    pub fn gossip(&self, verdict: &'static str) {
        self.gossip.get_or_create(&VerdictLabel { verdict }).inc();
    }

    /// Counts a direct message with its outcome.
    pub fn direct(&self, outcome: &'static str) {
        self.direct.get_or_create(&DirectLabel { outcome }).inc();
        if outcome == "policy" {
            self.policy_refusals.get_or_create(&PolicyLabel { path: "direct" }).inc();
        }
    }

    /// Counts a message the policy refused on `path`.
    pub fn policy_refusal(&self, path: &'static str) {
        self.policy_refusals.get_or_create(&PolicyLabel { path }).inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
