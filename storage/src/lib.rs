//! # kos-storage
//!
//! The node's on-disk store, on sled. It keeps the **exact signed bytes** of every accepted
//! message under its id; everything else a node knows is derived from those messages, so the
//! store can always be rebuilt from them (sled is beta software: see `docs/architecture.md`).
//!
//! Every message read back is decoded and verified again: a store corrupted on disk yields a
//! typed error, never a wrong message.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use kos_protocol::{Message, Payload, SecretKey, payload::{BroadcastAnnounce}};
//! let dir = tempfile::tempdir()?;
//! let store = kos_storage::Store::open(dir.path())?;
//! let msg = Message::sign(&SecretKey::from_seed(&[1; 32]), 1, 0, None,
//!     Payload::BroadcastAnnounce(BroadcastAnnounce { text: "hi".into(), topic: "t".into() }))?;
//! assert!(store.insert(&msg)?);
//! store.flush()?;
//! assert_eq!(store.get(&msg.id())?, Some(msg));
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod journal;
mod node_store;

pub mod mail;

use std::{
    path::Path,
    sync::{Arc, Mutex},
};

use kos_protocol::{DecodeError, Message, MessageId};

pub use journal::{Journal, JournalError, JournalReport};
pub use node_store::{
    MIN_FREE_BYTES, Manifest, ManifestError, OpenOptions, OpenReport, WARN_FREE_BYTES,
};

/// Replaces `path` with `bytes` atomically and durably: a temporary file beside it (readable by
/// the owner only), fsynced, renamed over `path`, and the directory fsynced. After a crash the
/// file holds either the old bytes or the new ones.
pub fn write_durable(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().and_then(|d| std::fs::File::open(d).ok()) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// The schema version this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

const META_TREE: &str = "meta";
const MESSAGES_TREE: &str = "messages";
const PEERS_TREE: &str = "peers";
const AUDIT_TREE: &str = "audit";
const TRUST_TREE: &str = "trust";
const BY_PROPOSAL_TREE: &str = "by_proposal";
/// The bucket of messages that belong to no proposal (charter, delegations, …).
pub const FEDERATION_BUCKET: MessageId = MessageId([0; 32]);
/// Domain prefix of audit-log entry hashes.
pub const AUDIT_DOMAIN: &[u8] = b"kos-audit-v1\0";
const SCHEMA_KEY: &[u8] = b"schema_version";

/// Why the store could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed (I/O error, or a data directory sled cannot read).
    #[error("store: {0}")]
    Sled(#[from] sled::Error),
    /// The store was written by a build with another schema.
    #[error("store schema version {found} is not supported (this build reads version {expected})")]
    SchemaMismatch {
        /// Version found on disk.
        found: u32,
        /// Version this build reads.
        expected: u32,
    },
    /// The schema version record is unreadable.
    #[error("store metadata is corrupt")]
    CorruptMeta,
    /// A stored message no longer decodes or verifies.
    #[error("stored message {id} is corrupt: {error}")]
    CorruptMessage {
        /// Its key.
        id: MessageId,
        /// What failed.
        error: DecodeError,
    },
    /// A stored message's bytes do not hash to its key.
    #[error("stored message under {id} has a different id")]
    IdMismatch {
        /// Its key.
        id: MessageId,
    },
    /// The journal failed.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// Too little free disk space to write safely: writes are refused, reads keep working.
    #[error("no space left on the data directory's disk ({available} bytes free)")]
    NoSpace {
        /// Free bytes.
        available: u64,
    },
    /// The store holds fewer messages than it once had, and the journal cannot make up for it.
    #[error(
        "the store is corrupt: the manifest records {expected} messages but only {found} are \
         left in the journal and the store; run `kosd repair` to rebuild from what is left and \
         fetch the rest from peers"
    )]
    Lost {
        /// Messages the manifest records.
        expected: u64,
        /// Messages still readable.
        found: u64,
    },
    /// The data belongs to another node identity.
    #[error(
        "the store belongs to node {store}, not to this identity ({vault}); restore the right \
         vault.bin, or start with --new-identity to keep this store under the new key"
    )]
    IdentityMismatch {
        /// The identity the store was created for.
        store: String,
        /// The identity in the vault.
        vault: String,
    },
    /// The manifest says there was data, but the store and journal are gone.
    #[error(
        "the store and journal in {dir} are missing (the manifest records {records} messages) \
         but the node identity is there: restore them, or start with --fresh-store to begin \
         with an empty store"
    )]
    DataMissing {
        /// The data directory.
        dir: String,
        /// Messages the manifest records.
        records: u64,
    },
    /// A file operation on the data directory failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
}

/// Messages verified between two progress reports of [`Store::messages_parallel_with`].
pub const PROGRESS_EVERY: usize = 4096;

/// The sled store of a node, and (when opened with [`Store::open_node`]) its journal.
#[derive(Debug, Clone)]
pub struct Store {
    /// The journal of exact envelopes, the source of truth (absent for a bare sled store).
    journal: Option<Arc<Mutex<Journal>>>,
    /// The data directory (for the free-space guard and the manifest).
    data_dir: Option<std::path::PathBuf>,
    /// The node identity the data belongs to (recorded in the manifest).
    node_key: Option<String>,
    db: sled::Db,
    meta: sled::Tree,
    messages: sled::Tree,
    peers: sled::Tree,
    audit: sled::Tree,
    trust: sled::Tree,
    /// Index: bucket (proposal id, or [`FEDERATION_BUCKET`]) ‖ message id → ().
    by_proposal: sled::Tree,
    /// Per-bucket summaries, built on first use from the index and kept up to date by every
    /// insert: sync and status read them without walking the store.
    summary: Arc<Mutex<Option<Summary>>>,
}

/// What sync compares: per bucket, the number of messages and the digest of their ids.
pub type Summary = std::collections::BTreeMap<MessageId, BucketSummary>;

/// One bucket's summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BucketSummary {
    /// Messages in the bucket.
    pub count: u64,
    /// Sum modulo 2^256 of the bucket's message ids (as big-endian integers): order-free and
    /// updated in O(1) per insert.
    pub digest: [u8; 32],
}

impl BucketSummary {
    /// Adds one id.
    pub fn add(&mut self, id: &MessageId) {
        self.count += 1;
        let mut carry = 0u16;
        for i in (0..32).rev() {
            let sum = u16::from(self.digest[i]) + u16::from(id.0[i]) + carry;
            self.digest[i] = (sum & 0xff) as u8;
            carry = sum >> 8;
        }
    }
}

/// Largest sled page cache: sled's default (1 GiB) would let a node with a big history grow to
/// about a gigabyte; the journal, not sled's cache, is what start-up reads.
pub const SLED_CACHE_BYTES: u64 = 64 << 20;

/// One entry of the hash-chained audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Position, from 0.
    pub index: u64,
    /// Time of the event, ms since the Unix epoch.
    pub at_ms: u64,
    /// What happened.
    pub event: String,
    /// `SHA-256(AUDIT_DOMAIN ‖ previous hash ‖ u64be(index) ‖ u64be(at_ms) ‖ event)`.
    pub hash: [u8; 32],
}

impl Store {
    /// Opens (or creates) the store in directory `path`, checking its schema version.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = open_with_retry(path)?;
        let meta = db.open_tree(META_TREE)?;
        match meta.get(SCHEMA_KEY)? {
            None => {
                meta.insert(SCHEMA_KEY, &SCHEMA_VERSION.to_be_bytes())?;
                meta.flush()?;
            }
            Some(v) => {
                let found =
                    u32::from_be_bytes(v.as_ref().try_into().map_err(|_| StoreError::CorruptMeta)?);
                if found != SCHEMA_VERSION {
                    return Err(StoreError::SchemaMismatch { found, expected: SCHEMA_VERSION });
                }
            }
        }
        let messages = db.open_tree(MESSAGES_TREE)?;
        Ok(Store {
            journal: None,
            data_dir: None,
            node_key: None,
            peers: db.open_tree(PEERS_TREE)?,
            audit: db.open_tree(AUDIT_TREE)?,
            trust: db.open_tree(TRUST_TREE)?,
            by_proposal: db.open_tree(BY_PROPOSAL_TREE)?,
            meta,
            messages,
            db,
            summary: Arc::new(Mutex::new(None)),
        })
    }

    /// Stores a verified message under its id: first in the journal (when there is one), then in
    /// sled, both index trees in one transaction. Returns `false` if it was already stored.
    /// Durable once the journal is synced ([`Store::commit`]), or for a bare sled store after
    /// [`Store::flush`]. Refused (nothing written) when the disk is nearly full.
    pub fn insert(&self, msg: &Message) -> Result<bool, StoreError> {
        if self.messages.contains_key(msg.id().0)? {
            return Ok(false);
        }
        self.check_space()?;
        if let Some(j) = &self.journal {
            j.lock().unwrap_or_else(std::sync::PoisonError::into_inner).append(msg.bytes())?;
        }
        self.index(msg)?;
        Ok(true)
    }

    /// [`Store::insert`], then makes it durable before returning (what the API acknowledges).
    pub fn insert_durable(&self, msg: &Message) -> Result<bool, StoreError> {
        let new = self.insert(msg)?;
        self.commit()?;
        Ok(new)
    }

    /// Writes a message into sled only: the index entry, then the message. Two plain inserts
    /// (a sled transaction over both trees costs more than the rest of ingest together): a crash
    /// between them leaves an index entry whose message the journal restores at the next start.
    fn index(&self, msg: &Message) -> Result<(), StoreError> {
        let bucket = msg.payload().proposal(&msg.id()).unwrap_or(FEDERATION_BUCKET);
        let mut key = bucket.0.to_vec();
        key.extend_from_slice(&msg.id().0);
        self.by_proposal.insert(key.as_slice(), &[])?;
        self.messages.insert(msg.id().0, msg.bytes())?;
        if let Some(summary) = self.lock_summary().as_mut() {
            summary.entry(bucket).or_default().add(&msg.id());
        }
        Ok(())
    }

    fn lock_summary(&self) -> std::sync::MutexGuard<'_, Option<Summary>> {
        self.summary.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `f` on the per-bucket summaries, building them from the index on first use (one
    /// walk); later inserts keep them up to date.
    fn with_summary<R>(&self, f: impl FnOnce(&Summary) -> R) -> R {
        let mut guard = self.lock_summary();
        let s = guard.get_or_insert_with(|| {
            let mut s = Summary::new();
            for (b, m) in self.index_entries() {
                s.entry(b).or_default().add(&m);
            }
            s
        });
        f(s)
    }

    /// One bucket's summary (`None` if this node holds nothing of it).
    pub fn bucket_summary(&self, bucket: &MessageId) -> Option<BucketSummary> {
        self.with_summary(|s| s.get(bucket).copied())
    }

    /// Summaries of the buckets after `after`, at most `limit` of them, and whether more follow.
    pub fn summary_page(
        &self,
        after: Option<&MessageId>,
        limit: usize,
    ) -> (Vec<(MessageId, BucketSummary)>, bool) {
        self.with_summary(|s| {
            let range = match after {
                Some(a) => s.range((std::ops::Bound::Excluded(*a), std::ops::Bound::Unbounded)),
                None => s.range(..),
            };
            let mut page: Vec<_> = range.take(limit + 1).map(|(b, v)| (*b, *v)).collect();
            let more = page.len() > limit;
            page.truncate(limit);
            (page, more)
        })
    }

    /// The direct-message trees (outbox, inbox, directory cache) of this store.
    pub fn mail(&self) -> Result<mail::MailStore, StoreError> {
        mail::MailStore::open(&self.db)
    }

    /// The stored envelope bytes of `id`, as stored (not verified again: for serving peers, who
    /// verify what they receive).
    pub fn get_bytes(&self, id: &MessageId) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.messages.get(id.0)?.map(|b| b.to_vec()))
    }

    /// Makes every message stored so far durable in both copies — the journal, then sled — so
    /// that losing either one loses nothing acknowledged (group commit: one sync of each).
    /// The manifest is rewritten with the new count, so a later loss of both copies is caught.
    pub fn commit(&self) -> Result<(), StoreError> {
        let synced = match &self.journal {
            Some(j) => {
                let mut j = j.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let had = j.has_unsynced();
                j.sync()?;
                had
            }
            None => false,
        };
        self.db.flush()?;
        if synced && let (Some(dir), Some(key)) = (&self.data_dir, &self.node_key) {
            Manifest { node_key: key.clone(), records: self.len() as u64 }.write(dir)?;
        }
        Ok(())
    }

    /// Whether messages were stored since the last [`Store::commit`].
    pub fn has_uncommitted(&self) -> bool {
        self.journal.as_ref().is_some_and(|j| {
            j.lock().unwrap_or_else(std::sync::PoisonError::into_inner).has_unsynced()
        })
    }

    /// The node's data directory, when opened with [`Store::open_node`].
    pub fn data_dir(&self) -> Option<&Path> {
        self.data_dir.as_deref()
    }

    /// Free bytes on the data directory's disk, if known.
    pub fn free_space(&self) -> Option<u64> {
        self.data_dir.as_ref().and_then(|d| fs2::available_space(d).ok())
    }

    fn check_space(&self) -> Result<(), StoreError> {
        match self.free_space() {
            Some(available) if available < MIN_FREE_BYTES => Err(StoreError::NoSpace { available }),
            _ => Ok(()),
        }
    }

    /// Per bucket (proposal id, or [`FEDERATION_BUCKET`]): the ids of its messages, ascending.
    pub fn buckets(&self) -> std::collections::BTreeMap<MessageId, Vec<MessageId>> {
        let mut out: std::collections::BTreeMap<MessageId, Vec<MessageId>> = Default::default();
        for (b, m) in self.index_entries() {
            out.entry(b).or_default().push(m);
        }
        out
    }

    /// Every (bucket, message id) of the index, in key order.
    fn index_entries(&self) -> impl Iterator<Item = (MessageId, MessageId)> + '_ {
        self.by_proposal.iter().keys().filter_map(Result::ok).filter_map(|key| {
            let b = <[u8; 32]>::try_from(key.get(..32)?).ok()?;
            let m = <[u8; 32]>::try_from(key.get(32..64)?).ok()?;
            Some((MessageId(b), MessageId(m)))
        })
    }

    /// Up to `limit` ids of bucket `bucket` greater than `after`, ascending.
    pub fn bucket_ids_after(
        &self,
        bucket: &MessageId,
        after: Option<&MessageId>,
        limit: usize,
    ) -> Vec<MessageId> {
        let mut start = bucket.0.to_vec();
        if let Some(a) = after {
            start.extend_from_slice(&a.0);
        }
        self.by_proposal
            .range(start..)
            .keys()
            .filter_map(Result::ok)
            .take_while(|k| k.get(..32) == Some(&bucket.0[..]))
            .filter_map(|k| k.get(32..64).and_then(|m| <[u8; 32]>::try_from(m).ok()).map(MessageId))
            .filter(|m| after != Some(m))
            .take(limit)
            .collect()
    }

    /// Whether a message is stored.
    pub fn contains(&self, id: &MessageId) -> Result<bool, StoreError> {
        Ok(self.messages.contains_key(id.0)?)
    }

    /// The message stored under `id`, decoded and verified again.
    pub fn get(&self, id: &MessageId) -> Result<Option<Message>, StoreError> {
        self.messages.get(id.0)?.map(|bytes| verify(*id, &bytes)).transpose()
    }

    /// Every stored message, in id order, each verified again, using up to `threads` threads
    /// (start-up: verification dominates it).
    pub fn messages_parallel(&self, threads: usize) -> Result<Vec<Message>, StoreError> {
        self.messages_parallel_with(threads, &|_, _| {})
    }

    /// [`Store::messages_parallel`], telling `progress(verified, total)` every
    /// [`PROGRESS_EVERY`] messages.
    pub fn messages_parallel_with(
        &self,
        threads: usize,
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<Vec<Message>, StoreError> {
        let raw: Vec<(MessageId, sled::IVec)> = self
            .messages
            .iter()
            .map(|entry| {
                let (key, bytes) = entry?;
                let id = MessageId(key.as_ref().try_into().map_err(|_| StoreError::CorruptMeta)?);
                Ok((id, bytes))
            })
            .collect::<Result<_, StoreError>>()?;
        let threads = threads.clamp(1, 64);
        let chunk = raw.len().div_ceil(threads).max(1);
        let total = raw.len();
        let verified = std::sync::atomic::AtomicUsize::new(0);
        progress(0, total);
        std::thread::scope(|scope| {
            let verified = &verified;
            let handles: Vec<_> = raw
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || {
                        part.iter()
                            .enumerate()
                            .map(|(i, (id, b))| {
                                if (i + 1) % PROGRESS_EVERY == 0 {
                                    let n = verified.fetch_add(
                                        PROGRESS_EVERY,
                                        std::sync::atomic::Ordering::Relaxed,
                                    );
                                    progress(n + PROGRESS_EVERY, total);
                                }
                                verify(*id, b)
                            })
                            .collect::<Result<Vec<_>, _>>()
                    })
                })
                .collect();
            let mut out = Vec::with_capacity(raw.len());
            for h in handles {
                out.extend(h.join().map_err(|_| StoreError::CorruptMeta)??);
            }
            Ok(out)
        })
    }

    /// Every stored message, in id order, each verified again.
    pub fn messages(&self) -> impl Iterator<Item = Result<Message, StoreError>> + '_ {
        self.messages.iter().map(|entry| {
            let (key, bytes) = entry?;
            let id = MessageId(key.as_ref().try_into().map_err(|_| StoreError::CorruptMeta)?);
            verify(id, &bytes)
        })
    }

    /// Number of stored messages (from the summary cache: no walk after the first call).
    pub fn len(&self) -> usize {
        self.with_summary(|s| s.values().map(|b| b.count as usize).sum())
    }

    /// Whether no message is stored.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Writes everything to disk; returns once it is durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// A small metadata value (federation id, sequence counters).
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.meta.get(key.as_bytes())?.map(|v| v.to_vec()))
    }

    /// Sets a metadata value.
    pub fn set_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.check_space()?;
        self.meta.insert(key.as_bytes(), value)?;
        Ok(())
    }

    /// Metadata values whose key starts with `prefix`.
    pub fn meta_with_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.meta
            .scan_prefix(prefix.as_bytes())
            .map(|e| {
                let (k, v) = e?;
                Ok((String::from_utf8_lossy(&k).into_owned(), v.to_vec()))
            })
            .collect()
    }

    /// Removes a metadata value.
    pub fn remove_meta(&self, key: &str) -> Result<(), StoreError> {
        self.meta.remove(key.as_bytes())?;
        Ok(())
    }

    /// Records a peer's addresses (text multiaddrs), replacing earlier ones.
    pub fn put_peer(&self, peer: &str, addrs: &[String]) -> Result<(), StoreError> {
        self.check_space()?;
        self.peers.insert(peer.as_bytes(), addrs.join("\n").as_bytes())?;
        Ok(())
    }

    /// Every recorded peer with its addresses.
    pub fn peers(&self) -> Result<Vec<(String, Vec<String>)>, StoreError> {
        self.peers
            .iter()
            .map(|e| {
                let (k, v) = e?;
                let addrs = String::from_utf8_lossy(&v)
                    .split('\n')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect();
                Ok((String::from_utf8_lossy(&k).into_owned(), addrs))
            })
            .collect()
    }

    /// Sets this node's local trust in a peer or agent.
    pub fn set_trust(&self, target: &str, level: &str) -> Result<(), StoreError> {
        self.check_space()?;
        self.trust.insert(target.as_bytes(), level.as_bytes())?;
        Ok(())
    }

    /// This node's local trust table.
    pub fn trust(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.trust
            .iter()
            .map(|e| {
                let (k, v) = e?;
                Ok((
                    String::from_utf8_lossy(&k).into_owned(),
                    String::from_utf8_lossy(&v).into_owned(),
                ))
            })
            .collect()
    }

    /// Appends an event to the hash-chained audit log.
    pub fn audit(&self, at_ms: u64, event: &str) -> Result<AuditEntry, StoreError> {
        self.check_space()?;
        let (index, prev) = match self.audit.last()? {
            Some((k, v)) => {
                let index =
                    u64::from_be_bytes(k.as_ref().try_into().map_err(|_| StoreError::CorruptMeta)?);
                let prev: [u8; 32] =
                    v.get(..32).and_then(|h| h.try_into().ok()).ok_or(StoreError::CorruptMeta)?;
                (index + 1, prev)
            }
            None => (0, [0u8; 32]),
        };
        let hash = audit_hash(&prev, index, at_ms, event);
        let mut value = hash.to_vec();
        value.extend_from_slice(&at_ms.to_be_bytes());
        value.extend_from_slice(event.as_bytes());
        self.audit.insert(index.to_be_bytes(), value)?;
        Ok(AuditEntry { index, at_ms, event: event.to_owned(), hash })
    }

    /// Re-computes the audit chain. Returns the entries, or the index of the first entry whose
    /// hash does not follow from its predecessor.
    pub fn verify_audit(&self) -> Result<Result<Vec<AuditEntry>, u64>, StoreError> {
        let mut prev = [0u8; 32];
        let mut out = Vec::new();
        for (expected, e) in self.audit.iter().enumerate() {
            let (k, v) = e?;
            let index =
                u64::from_be_bytes(k.as_ref().try_into().map_err(|_| StoreError::CorruptMeta)?);
            if index != expected as u64 || v.len() < 40 {
                return Ok(Err(expected as u64));
            }
            let at_ms =
                u64::from_be_bytes(v[32..40].try_into().map_err(|_| StoreError::CorruptMeta)?);
            let event = String::from_utf8_lossy(&v[40..]).into_owned();
            let hash = audit_hash(&prev, index, at_ms, &event);
            if v[..32] != hash {
                return Ok(Err(index));
            }
            prev = hash;
            out.push(AuditEntry { index, at_ms, event, hash });
        }
        Ok(Ok(out))
    }

    /// Overwrites an audit entry's stored bytes (tests of tamper detection only).
    #[doc(hidden)]
    pub fn tamper_audit_for_test(&self, index: u64, event: &str) -> Result<(), StoreError> {
        if let Some(v) = self.audit.get(index.to_be_bytes())? {
            let mut value = v[..40].to_vec();
            value.extend_from_slice(event.as_bytes());
            self.audit.insert(index.to_be_bytes(), value)?;
        }
        Ok(())
    }

    /// Overwrites the raw bytes under `id` (tests of corruption handling only).
    #[doc(hidden)]
    pub fn corrupt_for_test(&self, id: &MessageId, bytes: &[u8]) -> Result<(), StoreError> {
        self.messages.insert(id.0, bytes)?;
        Ok(())
    }

    /// Sets the schema version record (tests of upgrade handling only).
    #[doc(hidden)]
    pub fn set_schema_for_test(&self, version: u32) -> Result<(), StoreError> {
        self.db.open_tree(META_TREE)?.insert(SCHEMA_KEY, &version.to_be_bytes())?;
        self.flush()
    }
}

fn audit_hash(prev: &[u8; 32], index: u64, at_ms: u64, event: &str) -> [u8; 32] {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(AUDIT_DOMAIN);
    h.update(prev);
    h.update(index.to_be_bytes());
    h.update(at_ms.to_be_bytes());
    h.update(event.as_bytes());
    h.finalize().into()
}

/// How long [`Store::open`] waits for a lock still held by a store of this process that is
/// being dropped (sled releases its file lock from a background thread).
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

fn open_with_retry(path: &Path) -> Result<sled::Db, sled::Error> {
    let step = std::time::Duration::from_millis(20);
    let mut waited = std::time::Duration::ZERO;
    loop {
        match sled::Config::new().path(path).cache_capacity(SLED_CACHE_BYTES).open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock") && waited < LOCK_WAIT =>
            {
                std::thread::sleep(step);
                waited += step;
            }
            other => return other,
        }
    }
}

fn verify(id: MessageId, bytes: &[u8]) -> Result<Message, StoreError> {
    let msg = Message::decode(bytes).map_err(|error| StoreError::CorruptMessage { id, error })?;
    if msg.id() != id {
        return Err(StoreError::IdMismatch { id });
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use kos_protocol::{
        Payload, SecretKey,
        payload::{Choice, Vote},
    };

    use super::*;

    fn vote(seq: u64) -> Message {
        let p = Payload::Vote(Vote {
            choice: Choice::Yes,
            reason: None,
            proposal: MessageId([1; 32]),
            revision: 0,
            federation: MessageId([2; 32]),
        });
        Message::sign(&SecretKey::from_seed(&[3; 32]), seq, 10, None, p).expect("sign")
    }

    #[test]
    fn messages_survive_reopening_byte_for_byte() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (vote(1), vote(2));
        {
            let store = Store::open(dir.path()).expect("open");
            assert!(store.insert(&a).expect("insert"));
            assert!(store.insert(&b).expect("insert"));
            assert!(!store.insert(&a).expect("insert again"), "duplicates are not new");
            store.flush().expect("flush");
        }
        let store = Store::open(dir.path()).expect("reopen");
        assert_eq!(store.len(), 2);
        assert_eq!(
            store.get(&a.id()).expect("get").map(|m| m.bytes().to_vec()),
            Some(a.bytes().to_vec())
        );
        let mut all: Vec<_> = store.messages().map(|m| m.expect("valid").id()).collect();
        let mut want = vec![a.id(), b.id()];
        all.sort();
        want.sort();
        assert_eq!(all, want);
    }

    #[test]
    fn the_audit_log_is_a_hash_chain_that_detects_tampering() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        store.audit(1, "started").expect("audit");
        store.audit(2, "proposal created").expect("audit");
        store.audit(3, "vote cast").expect("audit");
        let entries = store.verify_audit().expect("read").expect("intact");
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[1].event, "proposal created");
        store.tamper_audit_for_test(1, "proposal deleted").expect("tamper");
        assert_eq!(store.verify_audit().expect("read"), Err(1));
    }

    #[test]
    fn messages_are_indexed_by_proposal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let (a, b) = (vote(1), vote(2));
        store.insert(&a).expect("insert");
        store.insert(&b).expect("insert");
        let buckets = store.buckets();
        let mut want = vec![a.id(), b.id()];
        want.sort();
        assert_eq!(buckets.get(&MessageId([1; 32])), Some(&want));
        let first = store.bucket_ids_after(&MessageId([1; 32]), None, 1);
        assert_eq!(first, vec![want[0]]);
        assert_eq!(store.bucket_ids_after(&MessageId([1; 32]), Some(&want[0]), 10), vec![want[1]]);
        assert!(store.bucket_ids_after(&MessageId([2; 32]), None, 10).is_empty());
    }

    #[test]
    fn an_unknown_schema_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        Store::open(dir.path()).expect("open").set_schema_for_test(99).expect("set");
        match Store::open(dir.path()) {
            Err(StoreError::SchemaMismatch { found: 99, expected: SCHEMA_VERSION }) => {}
            other => panic!("expected a schema mismatch, got {other:?}"),
        }
    }

    #[test]
    fn corrupted_messages_are_reported_not_returned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let (a, b) = (vote(1), vote(2));
        store.insert(&a).expect("insert");
        let mut bad = a.bytes().to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        store.corrupt_for_test(&a.id(), &bad).expect("corrupt");
        assert!(matches!(
            store.get(&a.id()),
            Err(StoreError::CorruptMessage { error: DecodeError::BadSignature, .. })
        ));
        // A valid message under the wrong key.
        store.corrupt_for_test(&a.id(), b.bytes()).expect("corrupt");
        assert!(matches!(store.get(&a.id()), Err(StoreError::IdMismatch { .. })));
    }
}
