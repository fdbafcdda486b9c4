//! The libp2p side of the node: behaviours, the swarm, and the sync protocol's messages.

use std::time::Duration;

use kos_protocol::MessageId;
use libp2p::{
    StreamProtocol, Swarm, gossipsub, identify, identity::Keypair, kad, noise, ping,
    request_response, swarm::NetworkBehaviour, tcp, yamux,
};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use sha2::{Digest as _, Sha256};

/// The Kademlia protocol name: private to kOS.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/kos/kad/1.0.0");
/// The anti-entropy sync protocol.
pub const SYNC_PROTOCOL: StreamProtocol = StreamProtocol::new("/kos/sync/2.0.0");
/// The direct-message protocol: one SEALED envelope per stream, answered with a status.
pub const DIRECT_PROTOCOL: StreamProtocol = StreamProtocol::new("/kos/klp/1.0.0");
/// Chunked vector transfers (pulled by the recipient).
pub const VECTOR_PROTOCOL: StreamProtocol = StreamProtocol::new("/kos/vector/1.0.0");
/// The identify protocol version string.
pub const IDENTIFY_PROTOCOL: &str = "/kos/id/1.0.0";
/// Largest gossip message: one envelope plus gossipsub's framing.
pub const MAX_TRANSMIT: usize = 64 * 1024;
/// Most buckets (proposals) in one summary page.
pub const SUMMARY_PAGE: usize = 1024;
/// Most ids in one inventory page.
pub const INVENTORY_PAGE: usize = 2048;
/// Most messages requested in one fetch.
pub const FETCH_BATCH: usize = 128;
/// Most bytes of envelopes in one fetch response.
pub const FETCH_BYTES: usize = 2 * 1024 * 1024;

/// The gossip topic of a federation's governance messages.
pub fn topic(federation: &MessageId) -> gossipsub::IdentTopic {
    gossipsub::IdentTopic::new(format!("kos/{federation}/gov"))
}

/// The gossip topic of a federation's BROADCAST_ANNOUNCE messages (system status, events).
pub fn announce_topic(federation: &MessageId) -> gossipsub::IdentTopic {
    gossipsub::IdentTopic::new(format!("kos/{federation}/announce"))
}

/// Subscribes to a federation's topic, with peer-scoring parameters that penalise invalid
/// messages hard and do not punish the topic's low traffic.
pub fn subscribe(
    swarm: &mut libp2p::Swarm<Behaviour>,
    federation: &MessageId,
) -> anyhow::Result<()> {
    let topic = topic(federation);
    let params = gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        time_in_mesh_weight: 0.01,
        first_message_deliveries_weight: 1.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        // Our own graded actions decide blocks; gossipsub's penalty for a rejected message is
        // kept mild so that it graylists only a peer that keeps sending them.
        invalid_message_deliveries_weight: -10.0,
        invalid_message_deliveries_decay: 0.99,
        ..Default::default()
    };
    let gs = &mut swarm.behaviour_mut().gossipsub;
    gs.set_topic_params(topic.clone(), params.clone())
        .map_err(|e| anyhow::anyhow!("topic scoring: {e}"))?;
    gs.subscribe(&topic)?;
    let announce = announce_topic(federation);
    gs.set_topic_params(announce.clone(), params)
        .map_err(|e| anyhow::anyhow!("topic scoring: {e}"))?;
    gs.subscribe(&announce)?;
    Ok(())
}

/// A sync request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum SyncRequest {
    /// A page of the peer's per-bucket summaries: count and digest of message ids per bucket.
    Summary {
        /// The federation.
        federation: MessageId,
        /// Start after this bucket.
        after: Option<MessageId>,
    },
    /// A page of the peer's message ids in one bucket, ascending, after `after`.
    Inventory {
        /// The federation.
        federation: MessageId,
        /// The bucket: a proposal id, or 32 zero bytes for federation-level messages.
        bucket: MessageId,
        /// Start after this id.
        after: Option<MessageId>,
    },
    /// The envelopes with these ids (at most [`FETCH_BATCH`]).
    Fetch {
        /// Ids wanted.
        ids: Vec<MessageId>,
    },
}

/// A sync response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum SyncResponse {
    /// Per-bucket counts and digests, ascending by bucket.
    Summary {
        /// (bucket, number of messages, sum modulo 2^256 of their ids), at most
        /// [`SUMMARY_PAGE`].
        buckets: Vec<(MessageId, u64, MessageId)>,
        /// Whether more buckets follow.
        more: bool,
    },
    /// A page of ids.
    Inventory {
        /// Ids, ascending.
        ids: Vec<MessageId>,
        /// Whether more follow.
        more: bool,
    },
    /// Envelopes (exact bytes).
    Messages {
        /// The envelopes found.
        envelopes: Vec<ByteBuf>,
    },
    /// The peer does not follow that federation.
    Unknown,
}

/// The answer to a direct message: `[code, reason]` (`docs/protocol.md` §8.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectResponse {
    /// What happened.
    pub code: DirectCode,
    /// Why, for people (may be empty).
    pub reason: String,
}

/// Status codes of the direct-message protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectCode {
    /// Taken: filed in the recipient's inbox, or held by a relay that will pass it on.
    Accepted = 0,
    /// Already taken earlier (as good as accepted).
    Duplicate = 1,
    /// Not a valid envelope.
    Malformed = 2,
    /// Not a SEALED envelope addressed to a KLP-ID.
    NotSealed = 3,
    /// Addressed to this node but not sealed to its key (or altered).
    CannotOpen = 4,
    /// Refused by the receiver's policy (the reason names the rule).
    Policy = 5,
    /// Full or over quota: try again later.
    Busy = 6,
    /// This peer does not relay it: try another.
    NoRoute = 7,
    /// Opened, but the inner message fails its type's checks (an agent migration whose audit
    /// trail does not match its root).
    Invalid = 8,
}

impl DirectCode {
    fn from_u64(c: u64) -> Option<Self> {
        use DirectCode::*;
        Some(match c {
            0 => Accepted,
            1 => Duplicate,
            2 => Malformed,
            3 => NotSealed,
            4 => CannotOpen,
            5 => Policy,
            6 => Busy,
            7 => NoRoute,
            8 => Invalid,
            _ => return None,
        })
    }

    /// Whether the sender is done with the message (taken, or refused for good).
    pub fn is_final(self) -> bool {
        !matches!(self, DirectCode::Busy | DirectCode::NoRoute)
    }

    /// Whether the message was taken.
    pub fn is_taken(self) -> bool {
        matches!(self, DirectCode::Accepted | DirectCode::Duplicate)
    }
}

/// Longest reason in a direct response, in bytes.
pub const MAX_DIRECT_REASON: usize = 512;

impl DirectResponse {
    /// Encodes `[code, reason]` as deterministic CBOR.
    pub fn encode(&self) -> Vec<u8> {
        let mut reason = self.reason.clone();
        if reason.len() > MAX_DIRECT_REASON {
            let mut cut = MAX_DIRECT_REASON;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
        }
        kos_protocol::to_cbor(&(self.code as u8, reason))
    }

    /// Decodes `[code, reason]`.
    pub fn decode(bytes: &[u8]) -> std::io::Result<Self> {
        let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "bad direct response");
        let (code, reason): (u64, String) = kos_protocol::from_cbor(bytes).map_err(|_| bad())?;
        Ok(DirectResponse { code: DirectCode::from_u64(code).ok_or_else(bad)?, reason })
    }
}

/// A chunk response of `/kos/vector/1.0.0`: one code byte, then the sealed chunk (code 0) or a
/// UTF-8 reason (`docs/protocol.md` §8.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VectorResponse {
    /// 0 ok, 1 unknown transfer, 2 not the recipient, 3 no such chunk, 4 busy.
    pub code: u8,
    /// The sealed chunk, or the reason.
    pub body: Vec<u8>,
}

/// A response of a raw request–response protocol: its bytes on the stream, and the most a
/// reader accepts.
pub trait WireResponse: Sized + Send {
    /// Most bytes read.
    const MAX: usize;
    /// The bytes written.
    fn to_wire(&self) -> Vec<u8>;
    /// Parses what was read.
    fn from_wire(bytes: &[u8]) -> std::io::Result<Self>;
}

impl WireResponse for DirectResponse {
    const MAX: usize = MAX_DIRECT_REASON + 16;
    fn to_wire(&self) -> Vec<u8> {
        self.encode()
    }
    fn from_wire(bytes: &[u8]) -> std::io::Result<Self> {
        DirectResponse::decode(bytes)
    }
}

impl WireResponse for VectorResponse {
    const MAX: usize = crate::vectors::MAX_RESPONSE_BYTES;
    fn to_wire(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(1 + self.body.len());
        b.push(self.code);
        b.extend_from_slice(&self.body);
        b
    }
    fn from_wire(bytes: &[u8]) -> std::io::Result<Self> {
        let (code, body) = bytes.split_first().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "empty response")
        })?;
        Ok(VectorResponse { code: *code, body: body.to_vec() })
    }
}

/// A raw request–response codec (`/kos/klp/1.0.0`, `/kos/vector/1.0.0`): the request is bytes
/// (at most `MAX_REQUEST`), the response an `R`; each side writes its message and closes its
/// half of the stream.
#[derive(Debug)]
pub struct RawCodec<R, const MAX_REQUEST: usize>(std::marker::PhantomData<fn() -> R>);

impl<R, const M: usize> Clone for RawCodec<R, M> {
    fn clone(&self) -> Self {
        RawCodec(std::marker::PhantomData)
    }
}

impl<R, const M: usize> Default for RawCodec<R, M> {
    fn default() -> Self {
        RawCodec(std::marker::PhantomData)
    }
}

/// The direct-message codec: the request is the envelope's bytes, the response `[code, reason]`.
pub type DirectCodec = RawCodec<DirectResponse, { kos_protocol::MAX_ENVELOPE_LEN }>;
/// The vector-transfer codec: the request is 36 bytes, the response a code and a body.
pub type VectorCodec = RawCodec<VectorResponse, 36>;

async fn read_limited<T: futures::AsyncRead + Unpin + Send>(
    io: &mut T,
    limit: usize,
) -> std::io::Result<Vec<u8>> {
    use futures::AsyncReadExt;
    let mut buf = Vec::new();
    io.take(limit as u64 + 1).read_to_end(&mut buf).await?;
    if buf.len() > limit {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "message too large"));
    }
    Ok(buf)
}

/// Writes `bytes` and closes the writing half (the end of the stream ends the message).
async fn write_and_close<T: futures::AsyncWrite + Unpin + Send>(
    io: &mut T,
    bytes: &[u8],
) -> std::io::Result<()> {
    use futures::AsyncWriteExt;
    io.write_all(bytes).await?;
    io.close().await
}

impl<R: WireResponse + 'static, const MAX_REQUEST: usize> request_response::Codec
    for RawCodec<R, MAX_REQUEST>
{
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = R;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> std::io::Result<Vec<u8>>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        read_limited(io, MAX_REQUEST).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> std::io::Result<R>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        R::from_wire(&read_limited(io, R::MAX).await?)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> std::io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        write_and_close(io, &req).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: R,
    ) -> std::io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        write_and_close(io, &res.to_wire()).await
    }
}

/// The node's network behaviour.
#[allow(missing_debug_implementations)] // libp2p's behaviours are not Debug
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    // The behaviours that deny connections come first: the derive asks each behaviour in field
    // order, and one that has already registered a connection another then denies keeps a stale
    // entry (request-response asserts on it when the peer is later blocked again).
    /// Connection limits.
    pub limits: libp2p::connection_limits::Behaviour,
    /// Peers this node refuses to talk to (operator blocks and the immune system).
    pub blocked: libp2p::allow_block_list::Behaviour<libp2p::allow_block_list::BlockedPeers>,
    /// Gossip of governance messages.
    pub gossipsub: gossipsub::Behaviour,
    /// Peer discovery.
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    /// Peer information (listen addresses feed Kademlia).
    pub identify: identify::Behaviour,
    /// Liveness.
    pub ping: ping::Behaviour,
    /// Anti-entropy sync.
    pub sync: request_response::cbor::Behaviour<SyncRequest, SyncResponse>,
    /// Direct (sealed) messages.
    pub direct: request_response::Behaviour<DirectCodec>,
    /// Chunks of vector transfers.
    pub vector: request_response::Behaviour<VectorCodec>,
}

/// Builds the swarm for `key`.
pub fn build(key: Keypair, max_connections: u32) -> anyhow::Result<Swarm<Behaviour>> {
    let swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)?
        .with_quic()
        .with_dns()?
        .with_behaviour(|key| {
            let gossip_config = gossipsub::ConfigBuilder::default()
                .heartbeat_interval(Duration::from_millis(500))
                .validation_mode(gossipsub::ValidationMode::Strict)
                .validate_messages()
                .max_transmit_size(MAX_TRANSMIT)
                .mesh_n_low(1)
                .mesh_n(3)
                .mesh_n_high(6)
                .mesh_outbound_min(0)
                .message_id_fn(|m: &gossipsub::Message| {
                    gossipsub::MessageId::from(Sha256::digest(&m.data).to_vec())
                })
                .build()
                .map_err(|e| anyhow::anyhow!("gossipsub config: {e}"))?;
            let mut gossipsub = gossipsub::Behaviour::new(
                gossipsub::MessageAuthenticity::Signed(key.clone()),
                gossip_config,
            )
            .map_err(|e| anyhow::anyhow!("gossipsub: {e}"))?;
            gossipsub
                .with_peer_score(
                    gossipsub::PeerScoreParams {
                        // Many honest nodes share an address (one host, one NAT, one data
                        // centre): gossipsub's IP-colocation penalty would graylist them all.
                        ip_colocation_factor_weight: 0.0,
                        ..Default::default()
                    },
                    gossipsub::PeerScoreThresholds::default(),
                )
                .map_err(|e| anyhow::anyhow!("gossipsub scoring: {e}"))?;
            let peer_id = key.public().to_peer_id();
            let mut kad_config = kad::Config::new(KAD_PROTOCOL);
            // Directory records are checked (signature, expiry, key) before they are stored.
            kad_config.set_record_filtering(kad::StoreInserts::FilterBoth);
            kad_config.set_query_timeout(Duration::from_secs(10));
            // Directory records live an hour (each says so too, and is checked on every read).
            kad_config.set_record_ttl(Some(Duration::from_secs(3600)));
            // The node bootstraps Kademlia itself, on its sync tick and only once the routing
            // table has a peer: kad's own timer would warn "No known peers" on every first start.
            kad_config.set_periodic_bootstrap_interval(None);
            let mut kad = kad::Behaviour::with_config(
                peer_id,
                kad::store::MemoryStore::with_config(
                    peer_id,
                    kad::store::MemoryStoreConfig {
                        max_records: 4096,
                        max_value_bytes: kos_protocol::MAX_ENVELOPE_LEN,
                        ..Default::default()
                    },
                ),
                kad_config,
            );
            kad.set_mode(Some(kad::Mode::Server));
            let sync = request_response::cbor::Behaviour::with_codec(
                request_response::cbor::codec::Codec::default()
                    .set_request_size_maximum(64 * 1024)
                    .set_response_size_maximum(4 * 1024 * 1024),
                [(SYNC_PROTOCOL, request_response::ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(Duration::from_secs(20)),
            );
            let direct = request_response::Behaviour::with_codec(
                DirectCodec::default(),
                [(DIRECT_PROTOCOL, request_response::ProtocolSupport::Full)],
                request_response::Config::default()
                    .with_request_timeout(Duration::from_secs(20))
                    .with_max_concurrent_streams(64),
            );
            let limits = libp2p::connection_limits::Behaviour::new(
                libp2p::connection_limits::ConnectionLimits::default()
                    .with_max_established(Some(max_connections))
                    .with_max_established_per_peer(Some(2))
                    .with_max_pending_incoming(Some(max_connections)),
            );
            Ok(Behaviour {
                gossipsub,
                kad,
                identify: identify::Behaviour::new(identify::Config::new(
                    IDENTIFY_PROTOCOL.into(),
                    key.public(),
                )),
                ping: ping::Behaviour::default(),
                sync,
                direct,
                vector: request_response::Behaviour::with_codec(
                    VectorCodec::default(),
                    [(VECTOR_PROTOCOL, request_response::ProtocolSupport::Full)],
                    request_response::Config::default()
                        .with_request_timeout(Duration::from_secs(30))
                        .with_max_concurrent_streams(32),
                ),
                limits,
                blocked: Default::default(),
            })
        })
        .map_err(|e| anyhow::anyhow!("behaviour: {e}"))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build();
    Ok(swarm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_responses_encode_as_the_published_vectors() {
        let v: serde_json::Value =
            serde_json::from_str(include_str!("../../docs/vectors/klp-v1.json")).expect("json");
        for r in v["direct_responses"].as_array().expect("vectors") {
            let code = DirectCode::from_u64(r["code"].as_u64().expect("code")).expect("known");
            let resp =
                DirectResponse { code, reason: r["reason"].as_str().expect("reason").into() };
            let bytes = resp.encode();
            assert_eq!(hex::encode(&bytes), r["cbor_hex"].as_str().expect("hex"));
            assert_eq!(DirectResponse::decode(&bytes).expect("decodes"), resp);
        }
        assert!(DirectResponse::decode(&[0x82, 0x09, 0x60]).is_err(), "unknown code 9");
    }
}
