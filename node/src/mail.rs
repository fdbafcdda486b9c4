//! Direct KLP messages between instances: receiving (open and file, or take in custody to
//! relay), routing the outbox, and the directory (records in the Kademlia DHT, a local cache).
//!
//! A SEALED envelope names its recipient by KLP-ID in its target. A node that receives one it
//! cannot open — it is not the recipient — may hold it and pass it on: it sees the outer header
//! (sender, recipient, time) and ciphertext only. Every hop stores the envelope durably before it
//! acknowledges (`Accepted`), and keeps it until a next hop acknowledges in turn, so a crash
//! anywhere loses nothing. Ids already handled are acknowledged as `Duplicate`, which also ends
//! any loop.

use std::collections::{HashMap, HashSet};

use kos_protocol::{
    Address, Host, KlpId, Message, MessageId, MessageType, Payload, SecretKey,
    directory::{self, CheckedRecord},
    payload::DirectoryRecord,
    seal,
};
use kos_storage::mail::{InboxEntry, MailError, MailStore, OutboxEntry};
use libp2p::{PeerId, request_response};

use crate::{
    net::{DirectCode, DirectResponse},
    policy::{Decision, Policy},
};

/// Message types this node accepts sealed to it (announced in its directory record).
pub const ACCEPTED_TYPES: &[MessageType] = &[
    MessageType::TaskRequest,
    MessageType::TaskResult,
    MessageType::AgentMigration,
    MessageType::BroadcastAnnounce,
];
/// Lifetime of this node's directory record.
pub const RECORD_LIFETIME_MS: u64 = 3600 * 1000;
/// How often the record is published again (well within its lifetime).
pub const RECORD_REFRESH_MS: u64 = 20 * 60 * 1000;
/// Direct messages sent at once at most (to all peers).
pub const MAX_IN_FLIGHT: usize = 64;
/// Direct messages sent at once to one peer at most.
pub const MAX_IN_FLIGHT_PER_PEER: usize = 8;
/// Direct messages received and being handled at once at most (more are answered `Busy`).
pub const MAX_RECEIVING: usize = 32;
/// How often handled ids older than a week and expired directory records are dropped.
pub const PRUNE_EVERY_MS: u64 = 10 * 60 * 1000;
/// Longest wait between two attempts of one message.
pub const MAX_BACKOFF_MS: u64 = 60_000;
/// How long a message may wait in an outbox before it is given up.
pub const GIVE_UP_MS: u64 = 7 * 24 * 3600 * 1000;

/// Wait before attempt `attempts + 1`: 1 s, 2 s, 4 s … up to [`MAX_BACKOFF_MS`].
pub fn backoff(attempts: u32) -> u64 {
    1000u64.saturating_mul(1 << attempts.min(16)).min(MAX_BACKOFF_MS)
}

/// The recipient KLP-ID of a SEALED envelope: its target must name a KLP-ID.
pub fn recipient(msg: &Message) -> Option<KlpId> {
    if msg.kind() != MessageType::Sealed {
        return None;
    }
    match msg.header().target.as_ref()? {
        Address::Klp { host: Host::Id(id), .. } | Address::Agent(Host::Id(id)) => Some(*id),
        _ => None,
    }
}

fn response(code: DirectCode, reason: impl Into<String>) -> DirectResponse {
    DirectResponse { code, reason: reason.into() }
}

/// The inner body of an opened message as JSON (members as did:key where the type has them).
pub fn body_json(p: &Payload) -> serde_json::Value {
    match p {
        Payload::TaskRequest(t) => serde_json::json!({
            "inputs": t.inputs, "task_id": t.task_id, "min_trust": t.min_trust.as_str(),
            "deadline_ms": t.deadline_ms,
        }),
        Payload::TaskResult(t) => serde_json::json!({
            "ok": t.ok, "error": t.error, "outputs": t.outputs, "task_id": t.task_id,
            "request": t.request.map(|r| r.to_string()),
        }),
        Payload::BroadcastAnnounce(b) => serde_json::json!({ "topic": b.topic, "text": b.text }),
        Payload::AgentMigration(m) => match kos_protocol::agent::verify_migration(m) {
            Ok(s) => serde_json::json!({
                "name": m.name, "agent": m.agent.to_did(), "audit_root": m.audit_root.to_string(),
                "config": s.config,
                "audit": s.audit.iter().map(|r| serde_json::json!({"at_ms": r.at_ms, "event": r.event})).collect::<Vec<_>>(),
                "verified": true,
            }),
            Err(e) => serde_json::json!({ "name": m.name, "error": e.to_string() }),
        },
        other => {
            serde_json::json!({ "diagnostic": kos_protocol::diagnostic(&other.encode()).ok() })
        }
    }
}

/// Handles one received direct message (blocking: decoding, opening and a flushed write).
/// Returns the answer for the peer and, for the audit log and metrics, what happened.
pub fn receive(
    mail: &MailStore,
    vectors: &crate::vectors::Vectors,
    keys: &[SecretKey],
    policy: &mut Policy,
    peer: PeerId,
    bytes: &[u8],
    now_ms: u64,
) -> DirectResponse {
    let msg = match Message::decode(bytes) {
        Ok(m) => m,
        Err(e) => return response(DirectCode::Malformed, format!("invalid envelope: {e}")),
    };
    let Some(to) = recipient(&msg) else {
        return response(DirectCode::NotSealed, "not a SEALED envelope addressed to a KLP-ID");
    };
    let id = msg.id();
    match mail.knows(&id.0) {
        Ok(true) => return response(DirectCode::Duplicate, ""),
        Ok(false) => {}
        Err(e) => return response(DirectCode::Busy, format!("store: {e}")),
    }
    // (The peer's lists and quota were checked by the network task before this.)
    let sender = msg.author();
    if let Decision::Deny(why) = policy.check_sender(&sender, MessageType::Sealed) {
        return response(DirectCode::Policy, why);
    }
    // A key rotated away or revoked sends nothing signed from then on (relayed or not).
    if let Some(since) = policy.retired_since(&sender)
        && msg.header().created_ms >= since
    {
        return response(
            DirectCode::Invalid,
            format!("the sender's key was retired at {since} (rotated or revoked)"),
        );
    }
    // The node key, or a key it rotated away from (messages sealed to its old address).
    let Some(key) = keys.iter().find(|k| k.public().klp_id() == to) else {
        // Custody for relaying: ciphertext only.
        if let Decision::Deny(why) = policy.check_relay(&sender) {
            return response(DirectCode::NoRoute, why);
        }
        let entry = OutboxEntry {
            target: to.to_string(),
            from: Some(peer.to_string()),
            attempts: 0,
            next_ms: now_ms,
            queued_ms: now_ms,
            last_error: None,
        };
        return match mail.enqueue(&id.0, &entry, bytes) {
            Ok(true) => response(DirectCode::Accepted, "held for relaying"),
            Ok(false) => response(DirectCode::Duplicate, ""),
            Err(MailError::Full(what)) => response(DirectCode::Busy, format!("the {what} is full")),
            Err(e) => response(DirectCode::Busy, format!("store: {e}")),
        };
    };
    let inner = match seal::open(&msg, key) {
        Ok(p) => p,
        Err(e) => return response(DirectCode::CannotOpen, e.to_string()),
    };
    let kind = inner.message_type();
    if let Decision::Deny(why) = policy.check_sender(&sender, kind) {
        return response(DirectCode::Policy, why);
    }
    if let Decision::Deny(why) = policy.take_type_quota(kind, now_ms) {
        return response(DirectCode::Busy, why);
    }
    // A vector transfer's offer (its chunk 0): recorded, the rest pulled from the sender.
    if let Payload::VectorSync(v) = &inner {
        if v.transfer.is_none() || v.chunk != 0 {
            return response(DirectCode::Invalid, "a pushed VECTOR_SYNC is a transfer's chunk 0");
        }
        return match vectors.accept_offer(bytes, &sender, v, now_ms) {
            Ok(true) => response(DirectCode::Accepted, "transfer offered: pulling the chunks"),
            Ok(false) => response(DirectCode::Duplicate, "transfer known"),
            Err(e) => response(DirectCode::Invalid, e.to_string()),
        };
    }
    if let Payload::AgentMigration(m) = &inner
        && let Err(e) = kos_protocol::agent::verify_migration(m)
    {
        return response(DirectCode::Invalid, e.to_string());
    }
    let entry = InboxEntry {
        envelope: hex::encode(bytes),
        sender: sender.to_did(),
        sender_klp_id: sender.klp_id().to_string(),
        kind: kind.name().to_owned(),
        body: body_json(&inner).to_string(),
        target: msg.header().target.as_ref().map(|t| t.to_string()).unwrap_or_default(),
        created_ms: msg.header().created_ms,
        received_ms: now_ms,
        from_peer: peer.to_string(),
    };
    match mail.file(&id.0, &entry) {
        Ok(true) => response(DirectCode::Accepted, "filed"),
        Ok(false) => response(DirectCode::Duplicate, ""),
        Err(MailError::Full(what)) => response(DirectCode::Busy, format!("the {what} is full")),
        Err(e) => response(DirectCode::Busy, format!("store: {e}")),
    }
}

/// Most reputation change (absolute, in thousandths) one sender may make per day, over all
/// subjects; beyond it its REPUTATION_DELTAs are ignored.
pub const REPUTATION_CAP_PER_DAY: u64 = 1000;
/// Largest single change, in thousandths.
pub const MAX_REPUTATION_DELTA: i32 = 1000;

/// A REPUTATION_DELTA from the announcement topic: advisory, never binding. Weighted by the
/// sender's trust here (no trust: weight 0, still listed), capped per sender per day; a sender
/// rating itself is refused. Returns the gossip verdict.
pub fn receive_reputation(
    mail: &MailStore,
    policy: &Policy,
    msg: &Message,
    now_ms: u64,
    metrics: &crate::metrics::Metrics,
) -> libp2p::gossipsub::MessageAcceptance {
    use libp2p::gossipsub::MessageAcceptance::{Accept, Ignore, Reject};
    let Payload::ReputationDelta(d) = msg.payload() else { return Reject };
    let sender = msg.author();
    if d.subject == sender || d.delta.unsigned_abs() > MAX_REPUTATION_DELTA.unsigned_abs() {
        return Reject;
    }
    if let Decision::Deny(why) = policy.check_sender(&sender, msg.kind()) {
        metrics.policy_refusal("gossip");
        tracing::debug!("reputation change refused: {why}");
        return Ignore;
    }
    let sender_id = sender.klp_id().to_string();
    let day = now_ms.saturating_sub(24 * 3600 * 1000);
    let spent: u64 = mail
        .reputation()
        .iter()
        .filter(|e| e.sender_klp_id == sender_id && e.created_ms >= day)
        .map(|e| u64::from(e.delta.unsigned_abs()))
        .sum();
    if spent + u64::from(d.delta.unsigned_abs()) > REPUTATION_CAP_PER_DAY {
        tracing::debug!(%sender_id, "reputation change over the sender's daily cap");
        return Ignore;
    }
    let entry = kos_storage::mail::ReputationEntry {
        subject: d.subject.klp_id().to_string(),
        subject_did: d.subject.to_did(),
        sender: sender.to_did(),
        sender_klp_id: sender_id,
        delta: d.delta,
        weight: policy.trust_of(&sender).map_or(0, kos_protocol::payload::TrustLevel::milli_weight),
        reason: d.reason.clone(),
        created_ms: msg.header().created_ms,
    };
    match mail.add_reputation(&msg.id().0, &entry) {
        Ok(_) => Accept,
        Err(_) => Ignore,
    }
}

/// The advisory reputation of every subject: the sum of each change times its sender's weight
/// (thousandths), with its sources.
pub fn reputation_json(entries: &[kos_storage::mail::ReputationEntry]) -> serde_json::Value {
    let mut by: std::collections::BTreeMap<&str, Vec<&kos_storage::mail::ReputationEntry>> =
        std::collections::BTreeMap::new();
    for e in entries {
        by.entry(e.subject_did.as_str()).or_default().push(e);
    }
    serde_json::Value::Array(
        by.into_iter()
            .map(|(subject, list)| {
                let score: i64 = list
                    .iter()
                    .map(|e| i64::from(e.delta) * i64::try_from(e.weight).unwrap_or(0) / 1000)
                    .sum();
                serde_json::json!({
                    "subject": subject,
                    "advisory_score": score,
                    "sources": list.iter().map(|e| serde_json::json!({
                        "sender": e.sender, "delta": e.delta, "weight": e.weight,
                        "reason": e.reason, "created_ms": e.created_ms,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect(),
    )
}

/// The directory record body this node publishes.
pub fn own_record(
    key: &SecretKey,
    name: Option<String>,
    addresses: Vec<String>,
    expires_ms: u64,
) -> DirectoryRecord {
    let mut types: Vec<u16> = ACCEPTED_TYPES.iter().map(|t| t.code()).collect();
    types.sort_unstable();
    DirectoryRecord {
        name,
        types,
        x25519: key.encryption_key().0,
        addresses: addresses
            .into_iter()
            .take(kos_protocol::payload::MAX_RECORD_ADDRESSES)
            .collect(),
        expires_ms,
    }
}

/// A resolution in progress.
#[derive(Debug)]
pub struct Resolving {
    /// What is looked up.
    pub host: Host,
    /// Records found so far (checked).
    pub found: Vec<(CheckedRecord, Vec<u8>)>,
    /// Who waits for the answer.
    pub reply: tokio::sync::oneshot::Sender<Result<Vec<CheckedRecord>, String>>,
}

/// The network task's direct-message state.
#[derive(Debug, Default)]
pub struct MailState {
    /// Outstanding sends: request → (message id, peer).
    pub in_flight: HashMap<request_response::OutboundRequestId, (MessageId, PeerId)>,
    /// Messages being sent.
    pub busy: HashSet<MessageId>,
    /// Connected peers by KLP-ID (from the key in their peer id).
    pub by_klp: HashMap<KlpId, PeerId>,
    /// Lookups in the DHT.
    pub resolving: HashMap<libp2p::kad::QueryId, Resolving>,
    /// Received messages being handled.
    pub receiving: usize,
    /// When this node's record was last published.
    pub published_ms: u64,
    /// This node's current record (envelope bytes), handed to each peer that connects.
    pub own_record: Option<Vec<u8>>,
    /// When handled ids and expired records were last pruned.
    pub pruned_ms: u64,
}

/// The checked records among `envelopes` (bytes) for `host`, at `now_ms`; bad ones are skipped.
pub fn check_all(
    envelopes: impl IntoIterator<Item = Vec<u8>>,
    now_ms: u64,
) -> Vec<(CheckedRecord, Vec<u8>)> {
    envelopes
        .into_iter()
        .filter_map(|b| {
            let msg = Message::decode(&b).ok()?;
            Some((directory::check_record(&msg, now_ms, None).ok()?, b))
        })
        .collect()
}

/// The answer to a lookup of `host` from checked records: for a KLP-ID its record, for a name
/// the one key that claims it — two keys claiming one name is a conflict, never picked. A
/// name's claim by a key `retired` says was rotated away or revoked (the federation's key
/// lifecycle, as this node knows it) does not count: the name follows the member's new key.
pub fn answer(
    host: &Host,
    records: &[CheckedRecord],
    retired: impl Fn(&KlpId) -> bool,
) -> Result<Vec<CheckedRecord>, String> {
    let mut by_key: HashMap<KlpId, &CheckedRecord> = HashMap::new();
    for r in records {
        let matches = match host {
            Host::Id(id) => r.klp_id == *id,
            Host::Name(n) => r.record.name.as_deref() == Some(n.as_str()) && !retired(&r.klp_id),
        };
        if matches {
            // The newest record of each key.
            let e = by_key.entry(r.klp_id).or_insert(r);
            if r.created_ms > e.created_ms {
                *e = r;
            }
        }
    }
    match by_key.len() {
        0 => Err(format!("no directory record for {host}: nobody answered with one")),
        1 => Ok(by_key.into_values().cloned().collect()),
        _ => {
            let mut ids: Vec<String> = by_key.keys().map(ToString::to_string).collect();
            ids.sort();
            Err(format!(
                "conflict: the name {host} is claimed by {} keys ({}); address one by its KLP-ID",
                ids.len(),
                ids.join(", ")
            ))
        }
    }
}
