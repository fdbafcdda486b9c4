//! Chunked vector transfers (VECTOR_SYNC, `docs/protocol.md` §8.5), on disk.
//!
//! The sender copies the data into `vectors/out/<transfer>.f32` (the transfer id is SHA-256 of
//! the data) and pushes chunk 0 to the recipient as a sealed direct message (the offer, through
//! the outbox: delivered once, acknowledged, retried after a restart). The recipient keeps each
//! chunk as the sealed, signed envelope it received (`vectors/in/<transfer>/<k>.klp`, written
//! atomically), and pulls the missing ones from the sender over `/kos/vector/1.0.0`. A chunk is
//! kept only after its signature, its seal and its place in the transfer are verified; every
//! stored chunk is verified again at start-up and before assembly, so a chunk damaged at rest is
//! deleted and fetched again. The assembled file (`vectors/<collection>-<transfer>.f32`) is
//! checked against the transfer id before it is published. Everything here is blocking file
//! I/O, run on the blocking pool.

use std::{
    collections::BTreeSet,
    io::{Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
};

use kos_protocol::{
    Address, Host, Message, Payload, PublicKey, SecretKey, payload::Digest, payload::VectorSync,
    seal,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Most data bytes in one chunk (a sealed chunk must fit in an envelope of 60 KiB).
pub const MAX_CHUNK_BYTES: usize = 48 * 1024;
/// Largest transfer.
pub const MAX_TRANSFER_BYTES: u64 = 1 << 30;
/// Chunk requests in flight per incoming transfer.
pub const WINDOW: usize = 8;
/// Incoming transfers pulled at once (more wait).
pub const MAX_ACTIVE_INCOMING: usize = 16;
/// Chunk requests this node serves at once.
pub const MAX_SERVING: usize = 8;
/// Largest chunk response (a sealed chunk, with its framing).
pub const MAX_RESPONSE_BYTES: usize = kos_protocol::MAX_ENVELOPE_LEN + 1024;

/// What went wrong with a transfer or a chunk.
#[derive(Debug, thiserror::Error)]
pub enum VectorError {
    /// A file operation.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The data does not fit the request.
    #[error("{0}")]
    Invalid(String),
    /// A chunk failed verification.
    #[error("chunk {chunk}: {why}")]
    BadChunk {
        /// Its index.
        chunk: u32,
        /// Why.
        why: String,
    },
    /// No such transfer here.
    #[error("no transfer {0}")]
    Unknown(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> VectorError + '_ {
    move |source| VectorError::Io { path: path.display().to_string(), source }
}

/// The data bytes per chunk for vectors of `dims` dimensions: whole vectors, at most
/// [`MAX_CHUNK_BYTES`].
pub fn chunk_len(dims: u16) -> Option<usize> {
    let v = 4 * usize::from(dims);
    (v > 0 && v <= MAX_CHUNK_BYTES).then(|| MAX_CHUNK_BYTES / v * v)
}

/// The number of chunks of a transfer of `size` bytes (at least one).
pub fn chunk_count(size: u64, dims: u16) -> Option<u32> {
    let len = chunk_len(dims)? as u64;
    u32::try_from(size.div_ceil(len).max(1)).ok()
}

/// A sending node's record of a transfer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outgoing {
    /// SHA-256 of the data, hex.
    pub transfer: String,
    /// The recipient's did:key (only it may fetch chunks).
    pub recipient: String,
    /// Its KLP-ID.
    pub to: String,
    /// Its X25519 key (hex), from its directory record.
    pub x25519: String,
    /// Collection name.
    pub collection: String,
    /// Dimensions per vector.
    pub dims: u16,
    /// Number of chunks.
    pub chunks: u32,
    /// Bytes.
    pub size: u64,
    /// When the transfer was started.
    pub created_ms: u64,
}

/// A receiving node's record of a transfer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Incoming {
    /// SHA-256 of the data, hex.
    pub transfer: String,
    /// The sender's did:key.
    pub sender: String,
    /// Collection name.
    pub collection: String,
    /// Dimensions per vector.
    pub dims: u16,
    /// Number of chunks.
    pub chunks: u32,
    /// When the offer arrived.
    pub received_ms: u64,
    /// `receiving`, `complete` or `failed`.
    pub state: String,
    /// The assembled file, once complete.
    #[serde(default)]
    pub file: Option<String>,
    /// Chunks fetched again because a stored copy no longer verified.
    #[serde(default)]
    pub refetched: u64,
    /// Chunk responses refused (bad signature, seal or place), each fetched again.
    #[serde(default)]
    pub rejected: u64,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<String>,
}

impl Incoming {
    /// A transfer just offered by `sender`, nothing fetched yet.
    pub fn offered(
        transfer: String,
        sender: &PublicKey,
        v: (&str, u16, u32),
        received_ms: u64,
    ) -> Self {
        let (collection, dims, chunks) = v;
        Incoming {
            transfer,
            sender: sender.to_did(),
            collection: collection.to_owned(),
            dims,
            chunks,
            received_ms,
            state: "receiving".into(),
            file: None,
            refetched: 0,
            rejected: 0,
            error: None,
        }
    }
}

/// The vectors directory of a data directory.
#[derive(Debug, Clone)]
pub struct Vectors {
    root: PathBuf,
}

/// Writes `bytes` to `path` atomically and durably (temporary file, fsync, rename).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), VectorError> {
    kos_storage::write_durable(path, bytes).map_err(io(path))
}

fn hex_digest(d: &Digest) -> String {
    hex::encode(d.0)
}

/// Parses a transfer id (64 hex digits).
pub fn parse_transfer(s: &str) -> Option<Digest> {
    let mut d = [0u8; 32];
    hex::decode_to_slice(s, &mut d).ok()?;
    Some(Digest(d))
}

impl Vectors {
    /// `data_dir/vectors`.
    pub fn new(data_dir: &Path) -> Self {
        Vectors { root: data_dir.join("vectors") }
    }

    fn out_dir(&self) -> PathBuf {
        self.root.join("out")
    }

    fn in_dir(&self, t: &str) -> PathBuf {
        self.root.join("in").join(t)
    }

    fn chunk_path(&self, t: &str, k: u32) -> PathBuf {
        self.in_dir(t).join(format!("{k}.klp"))
    }

    /// Copies `data` as the source of a new outgoing transfer and records it. Returns the
    /// record (the same transfer twice is the same record).
    pub fn start_outgoing(
        &self,
        data: &[u8],
        mut meta: Outgoing,
    ) -> Result<(Outgoing, Digest), VectorError> {
        let len = chunk_len(meta.dims)
            .ok_or_else(|| VectorError::Invalid(format!("dims {} is out of range", meta.dims)))?;
        if data.is_empty() || !data.len().is_multiple_of(4 * usize::from(meta.dims)) {
            return Err(VectorError::Invalid(format!(
                "the data ({} bytes) is not a whole, non-zero number of {}-dimensional f32 vectors",
                data.len(),
                meta.dims
            )));
        }
        if data.len() as u64 > MAX_TRANSFER_BYTES {
            return Err(VectorError::Invalid(format!(
                "the data is larger than {MAX_TRANSFER_BYTES} bytes"
            )));
        }
        let transfer = Digest(Sha256::digest(data).into());
        meta.transfer = hex_digest(&transfer);
        meta.size = data.len() as u64;
        meta.chunks = u32::try_from(data.len().div_ceil(len))
            .map_err(|_| VectorError::Invalid("too many chunks".into()))?;
        let dir = self.out_dir();
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let src = dir.join(format!("{}.f32", meta.transfer));
        if !src.exists() {
            write_atomic(&src, data)?;
        }
        let rec = dir.join(format!("{}.json", meta.transfer));
        let json = serde_json::to_vec(&meta).map_err(|e| VectorError::Invalid(e.to_string()))?;
        write_atomic(&rec, &json)?;
        Ok((meta, transfer))
    }

    /// The outgoing transfer `t`.
    pub fn outgoing(&self, t: &Digest) -> Result<Outgoing, VectorError> {
        let path = self.out_dir().join(format!("{}.json", hex_digest(t)));
        let bytes = std::fs::read(&path).map_err(|_| VectorError::Unknown(hex_digest(t)))?;
        serde_json::from_slice(&bytes).map_err(|e| VectorError::Invalid(e.to_string()))
    }

    /// Chunk `k` of outgoing transfer `t`, as the payload to seal.
    pub fn chunk_payload(&self, meta: &Outgoing, k: u32) -> Result<VectorSync, VectorError> {
        let t = parse_transfer(&meta.transfer)
            .ok_or_else(|| VectorError::Unknown(meta.transfer.clone()))?;
        if k >= meta.chunks {
            return Err(VectorError::BadChunk {
                chunk: k,
                why: format!("the transfer has {} chunks", meta.chunks),
            });
        }
        let len = chunk_len(meta.dims).ok_or_else(|| VectorError::Invalid("dims".into()))? as u64;
        let path = self.out_dir().join(format!("{}.f32", meta.transfer));
        let mut f = std::fs::File::open(&path).map_err(io(&path))?;
        let start = u64::from(k) * len;
        let n = len.min(meta.size.saturating_sub(start));
        f.seek(SeekFrom::Start(start)).map_err(io(&path))?;
        let mut data = vec![0u8; usize::try_from(n).unwrap_or(0)];
        f.read_exact(&mut data).map_err(io(&path))?;
        Ok(VectorSync {
            data: serde_bytes::ByteBuf::from(data),
            dims: meta.dims,
            chunk: k,
            chunks: meta.chunks,
            transfer: Some(t),
            collection: meta.collection.clone(),
        })
    }

    /// Seals chunk `k` of `meta` to its recipient, signed by `key`.
    pub fn sealed_chunk(
        &self,
        meta: &Outgoing,
        k: u32,
        key: &SecretKey,
        now_ms: u64,
    ) -> Result<Message, VectorError> {
        let payload = Payload::VectorSync(self.chunk_payload(meta, k)?);
        let mut x = [0u8; 32];
        hex::decode_to_slice(&meta.x25519, &mut x)
            .map_err(|_| VectorError::Invalid("recipient key".into()))?;
        let to = meta.to.parse().map_err(|_| VectorError::Invalid("recipient KLP-ID".into()))?;
        seal::seal(
            key,
            &seal::EncryptionKey(x),
            now_ms,
            now_ms,
            Address::Agent(Host::Id(to)),
            &payload,
        )
        .map_err(|e| VectorError::Invalid(format!("cannot seal: {e}")))
    }

    /// Verifies a sealed chunk: decodes and checks the signature, the author, opens the seal
    /// with one of `keys`, and checks its place in the transfer. Returns the chunk.
    pub fn verify(
        bytes: &[u8],
        sender: &PublicKey,
        keys: &[SecretKey],
        expect: Option<(&Incoming, u32)>,
    ) -> Result<VectorSync, VectorError> {
        let chunk = expect.map_or(0, |(_, k)| k);
        let bad = |why: String| VectorError::BadChunk { chunk, why };
        let msg = Message::decode(bytes).map_err(|e| bad(format!("invalid envelope: {e}")))?;
        if msg.author() != *sender {
            return Err(bad("not signed by the sender".into()));
        }
        let to =
            crate::mail::recipient(&msg).ok_or_else(|| bad("not sealed to a KLP-ID".into()))?;
        let key = keys
            .iter()
            .find(|k| k.public().klp_id() == to)
            .ok_or_else(|| bad("not sealed to this node".into()))?;
        let Payload::VectorSync(v) = seal::open(&msg, key).map_err(|e| bad(e.to_string()))? else {
            return Err(bad("not a VECTOR_SYNC".into()));
        };
        let Some(t) = v.transfer else { return Err(bad("no transfer id".into())) };
        if let Some((meta, k)) = expect {
            let len = chunk_len(meta.dims).unwrap_or(0);
            let last = v.chunk + 1 == v.chunks;
            let fits = if last { v.data.len() <= len } else { v.data.len() == len };
            if hex_digest(&t) != meta.transfer
                || v.chunk != k
                || v.chunks != meta.chunks
                || v.dims != meta.dims
                || v.collection != meta.collection
                || !fits
            {
                return Err(bad("does not belong at this place of the transfer".into()));
            }
        } else if chunk_len(v.dims).is_none_or(|len| v.data.len() > len) {
            return Err(bad("larger than a chunk".into()));
        }
        Ok(v)
    }

    /// Records a transfer offered by `sender` (its chunk 0, verified by the caller): the record
    /// and the chunk. Returns false if it was known.
    pub fn accept_offer(
        &self,
        bytes: &[u8],
        sender: &PublicKey,
        v: &VectorSync,
        now_ms: u64,
    ) -> Result<bool, VectorError> {
        let Some(t) = v.transfer else { return Err(VectorError::Invalid("no transfer id".into())) };
        if v.chunk != 0 {
            return Err(VectorError::Invalid("an offer carries chunk 0".into()));
        }
        if chunk_len(v.dims).is_none() {
            return Err(VectorError::Invalid("dims out of range".into()));
        }
        let t = hex_digest(&t);
        let dir = self.in_dir(&t);
        if dir.join("meta.json").exists() {
            return Ok(false);
        }
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let meta = Incoming::offered(t.clone(), sender, (&v.collection, v.dims, v.chunks), now_ms);
        write_atomic(&self.chunk_path(&t, 0), bytes)?;
        self.save(&meta)?;
        Ok(true)
    }

    /// Writes an incoming transfer's record.
    pub fn save(&self, meta: &Incoming) -> Result<(), VectorError> {
        let json = serde_json::to_vec(meta).map_err(|e| VectorError::Invalid(e.to_string()))?;
        write_atomic(&self.in_dir(&meta.transfer).join("meta.json"), &json)
    }

    /// Stores a verified chunk.
    pub fn store_chunk(&self, t: &str, k: u32, bytes: &[u8]) -> Result<(), VectorError> {
        write_atomic(&self.chunk_path(t, k), bytes)
    }

    /// Every incoming transfer.
    pub fn incoming(&self) -> Vec<Incoming> {
        let Ok(dirs) = std::fs::read_dir(self.root.join("in")) else { return Vec::new() };
        let mut out: Vec<Incoming> = dirs
            .flatten()
            .filter_map(|d| std::fs::read(d.path().join("meta.json")).ok())
            .filter_map(|b| serde_json::from_slice(&b).ok())
            .collect();
        out.sort_by_key(|m: &Incoming| m.received_ms);
        out
    }

    /// Every outgoing transfer.
    pub fn outgoing_all(&self) -> Vec<Outgoing> {
        let Ok(files) = std::fs::read_dir(self.out_dir()) else { return Vec::new() };
        let mut out: Vec<Outgoing> = files
            .flatten()
            .filter(|f| f.path().extension().is_some_and(|e| e == "json"))
            .filter_map(|f| std::fs::read(f.path()).ok())
            .filter_map(|b| serde_json::from_slice(&b).ok())
            .collect();
        out.sort_by_key(|m: &Outgoing| m.created_ms);
        out
    }

    /// The chunks of `meta` held here (files present; not verified).
    pub fn held(&self, meta: &Incoming) -> BTreeSet<u32> {
        (0..meta.chunks).filter(|k| self.chunk_path(&meta.transfer, *k).exists()).collect()
    }

    /// Verifies every chunk of `meta` held here; deletes those that fail (counted in
    /// `refetched`, the record saved). Returns the chunks still missing.
    pub fn check_held(
        &self,
        meta: &mut Incoming,
        keys: &[SecretKey],
    ) -> Result<BTreeSet<u32>, VectorError> {
        let sender = PublicKey::from_did(&meta.sender)
            .map_err(|e| VectorError::Invalid(format!("sender: {e}")))?;
        let mut missing = BTreeSet::new();
        let mut dropped = 0;
        for k in 0..meta.chunks {
            let path = self.chunk_path(&meta.transfer, k);
            match std::fs::read(&path) {
                Ok(bytes) => {
                    if Self::verify(&bytes, &sender, keys, Some((meta, k))).is_err() {
                        tracing::warn!(transfer = %meta.transfer, chunk = k, "a stored chunk no longer verifies: deleted, fetched again");
                        std::fs::remove_file(&path).map_err(io(&path))?;
                        dropped += 1;
                        missing.insert(k);
                    }
                }
                Err(_) => {
                    missing.insert(k);
                }
            }
        }
        if dropped > 0 {
            meta.refetched += dropped;
            self.save(meta)?;
        }
        Ok(missing)
    }

    /// Assembles a transfer whose chunks are all held: verifies each again (a failing one is
    /// deleted and returned to fetch again), writes the data, checks it against the transfer
    /// id and publishes it as `vectors/<collection>-<transfer>.f32`; the chunks are removed.
    pub fn assemble(
        &self,
        meta: &mut Incoming,
        keys: &[SecretKey],
    ) -> Result<BTreeSet<u32>, VectorError> {
        let missing = self.check_held(meta, keys)?;
        if !missing.is_empty() {
            return Ok(missing);
        }
        let sender = PublicKey::from_did(&meta.sender)
            .map_err(|e| VectorError::Invalid(format!("sender: {e}")))?;
        let safe: String = meta
            .collection
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
            .take(64)
            .collect();
        let out = self.root.join(format!("{safe}-{}.f32", meta.transfer));
        let tmp = out.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        let mut h = Sha256::new();
        for k in 0..meta.chunks {
            let path = self.chunk_path(&meta.transfer, k);
            let bytes = std::fs::read(&path).map_err(io(&path))?;
            let v = Self::verify(&bytes, &sender, keys, Some((meta, k)))?;
            h.update(&v.data);
            f.write_all(&v.data).map_err(io(&tmp))?;
        }
        f.sync_all().map_err(io(&tmp))?;
        if hex::encode(h.finalize()) != meta.transfer {
            let _ = std::fs::remove_file(&tmp);
            meta.state = "failed".into();
            meta.error = Some("the data does not match the transfer id".into());
            self.save(meta)?;
            return Err(VectorError::Invalid("the data does not match the transfer id".into()));
        }
        std::fs::rename(&tmp, &out).map_err(io(&out))?;
        meta.state = "complete".into();
        meta.file = Some(out.display().to_string());
        self.save(meta)?;
        // The chunks, and any half-written file a crash left: only the record stays.
        if let Ok(entries) = std::fs::read_dir(self.in_dir(&meta.transfer)) {
            for e in entries.flatten() {
                if e.file_name() != "meta.json" {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(BTreeSet::new())
    }
}

/// A chunk request: the transfer id and the chunk index (big-endian), 36 bytes.
pub fn encode_request(t: &Digest, k: u32) -> Vec<u8> {
    let mut b = t.0.to_vec();
    b.extend_from_slice(&k.to_be_bytes());
    b
}

/// Decodes a chunk request.
pub fn decode_request(b: &[u8]) -> Option<(Digest, u32)> {
    let (t, k) = b.split_at_checked(32)?;
    Some((Digest(t.try_into().ok()?), u32::from_be_bytes(k.try_into().ok()?)))
}

/// One incoming transfer being pulled.
#[derive(Debug)]
pub struct Pull {
    /// Its record.
    pub meta: Incoming,
    /// The sender's key (its peer id is where chunks come from).
    pub sender: PublicKey,
    /// Chunks not held and not requested.
    pub missing: BTreeSet<u32>,
    /// Chunks requested (or being verified and stored).
    pub in_flight: BTreeSet<u32>,
    /// No request before this time (after a failure).
    pub next_ms: u64,
    /// Consecutive failures (for the backoff).
    pub failures: u32,
    /// An assembly is running.
    pub assembling: bool,
}

impl Pull {
    /// A pull of `meta` with `missing` chunks.
    pub fn new(meta: Incoming, missing: BTreeSet<u32>) -> Option<Pull> {
        let sender = PublicKey::from_did(&meta.sender).ok()?;
        Some(Pull {
            meta,
            sender,
            missing,
            in_flight: BTreeSet::new(),
            next_ms: 0,
            failures: 0,
            assembling: false,
        })
    }

    /// The next chunk to request at `now_ms`, if the window and the backoff allow.
    pub fn next_request(&mut self, now_ms: u64) -> Option<u32> {
        if now_ms < self.next_ms || self.in_flight.len() >= WINDOW {
            return None;
        }
        let k = self.missing.pop_first()?;
        self.in_flight.insert(k);
        Some(k)
    }

    /// Chunk `k` must be fetched again; after a failure, wait (1 s doubling to 30 s).
    pub fn retry(&mut self, k: u32, failed: bool, now_ms: u64) {
        self.in_flight.remove(&k);
        self.missing.insert(k);
        if failed {
            self.failures = self.failures.saturating_add(1);
            let wait = 1000u64.saturating_mul(1 << self.failures.min(5)).min(30_000);
            self.next_ms = now_ms.saturating_add(wait);
        }
    }

    /// Chunk `k` was verified and stored.
    pub fn stored(&mut self, k: u32) {
        self.in_flight.remove(&k);
        self.failures = 0;
    }

    /// Every chunk is held: time to assemble.
    pub fn ready(&self) -> bool {
        self.missing.is_empty() && self.in_flight.is_empty() && !self.assembling
    }
}

/// A byte budget refilled at a fixed rate (the operator's cap on pulling), or none.
#[derive(Debug)]
pub struct Rate {
    per_sec: Option<u64>,
    tokens: f64,
    at_ms: u64,
}

impl Rate {
    /// `per_sec` bytes a second (none: unlimited); a burst of one second.
    pub fn new(per_sec: Option<u64>) -> Self {
        Rate { per_sec, tokens: per_sec.unwrap_or(0) as f64, at_ms: 0 }
    }

    /// Takes `bytes` if the budget allows.
    pub fn take(&mut self, bytes: usize, now_ms: u64) -> bool {
        let Some(rate) = self.per_sec else { return true };
        let dt = now_ms.saturating_sub(self.at_ms) as f64 / 1000.0;
        self.at_ms = now_ms;
        self.tokens = (self.tokens + dt * rate as f64).min(rate.max(bytes as u64) as f64);
        if self.tokens >= bytes as f64 {
            self.tokens -= bytes as f64;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(dir: &Path) -> (Vectors, SecretKey, SecretKey, Outgoing, Vec<u8>) {
        let v = Vectors::new(dir);
        let sender = SecretKey::from_seed(&[1; 32]);
        let recipient = SecretKey::from_seed(&[2; 32]);
        let data: Vec<u8> = (0..(MAX_CHUNK_BYTES * 2 + 64)).map(|i| (i % 251) as u8).collect();
        let meta = Outgoing {
            transfer: String::new(),
            recipient: recipient.public().to_did(),
            to: recipient.public().klp_id().to_string(),
            x25519: hex::encode(recipient.encryption_key().0),
            collection: "c".into(),
            dims: 16,
            chunks: 0,
            size: 0,
            created_ms: 1,
        };
        let (meta, _) = v.start_outgoing(&data, meta).expect("start");
        (v, sender, recipient, meta, data)
    }

    fn incoming(meta: &Outgoing, sender: &SecretKey) -> Incoming {
        Incoming::offered(
            meta.transfer.clone(),
            &sender.public(),
            (&meta.collection, meta.dims, meta.chunks),
            1,
        )
    }

    #[test]
    fn a_chunk_verifies_only_untouched_from_its_sender_at_its_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (v, sender, recipient, meta, data) = setup(dir.path());
        assert_eq!(meta.chunks, 3);
        assert_eq!(meta.transfer, hex::encode(Sha256::digest(&data)));
        let inc = incoming(&meta, &sender);
        let keys = [recipient.clone()];
        let m = v.sealed_chunk(&meta, 1, &sender, 5).expect("seal");
        let ok = Vectors::verify(m.bytes(), &sender.public(), &keys, Some((&inc, 1))).expect("ok");
        assert_eq!(&ok.data[..], &data[MAX_CHUNK_BYTES..2 * MAX_CHUNK_BYTES]);
        // Every flipped byte is caught: the signature, the seal or the envelope's shape.
        let mut flipped = m.bytes().to_vec();
        for i in (0..flipped.len()).step_by(97) {
            flipped[i] ^= 0x40;
            assert!(Vectors::verify(&flipped, &sender.public(), &keys, Some((&inc, 1))).is_err());
            flipped[i] ^= 0x40;
        }
        // Another place in the transfer, another sender, another recipient: refused.
        assert!(Vectors::verify(m.bytes(), &sender.public(), &keys, Some((&inc, 2))).is_err());
        assert!(Vectors::verify(m.bytes(), &recipient.public(), &keys, Some((&inc, 1))).is_err());
        assert!(
            Vectors::verify(
                m.bytes(),
                &sender.public(),
                std::slice::from_ref(&sender),
                Some((&inc, 1))
            )
            .is_err()
        );
    }

    #[test]
    fn stored_chunks_are_checked_again_and_the_file_matches_the_transfer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (v, sender, recipient, meta, data) = setup(dir.path());
        let keys = [recipient];
        let first = v.sealed_chunk(&meta, 0, &sender, 5).expect("seal");
        let offer = Vectors::verify(first.bytes(), &sender.public(), &keys, None).expect("offer");
        assert!(v.accept_offer(first.bytes(), &sender.public(), &offer, 9).expect("accept"));
        let mut inc = v.incoming().pop().expect("recorded");
        for k in 1..meta.chunks {
            let m = v.sealed_chunk(&meta, k, &sender, 5).expect("seal");
            v.store_chunk(&inc.transfer, k, m.bytes()).expect("store");
        }
        // Damage chunk 2 at rest: assembly deletes it and asks for it again.
        let path = v.chunk_path(&inc.transfer, 2);
        let mut b = std::fs::read(&path).expect("read");
        b[100] ^= 1;
        std::fs::write(&path, b).expect("write");
        assert_eq!(v.assemble(&mut inc, &keys).expect("assemble"), BTreeSet::from([2]));
        assert_eq!(inc.refetched, 1);
        let m = v.sealed_chunk(&meta, 2, &sender, 6).expect("seal");
        v.store_chunk(&inc.transfer, 2, m.bytes()).expect("store");
        assert!(v.assemble(&mut inc, &keys).expect("assemble").is_empty());
        assert_eq!(inc.state, "complete");
        let file = inc.file.clone().expect("file");
        assert_eq!(std::fs::read(file).expect("read"), data);
    }
}
