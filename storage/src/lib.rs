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

use std::path::Path;

use kos_protocol::{DecodeError, Message, MessageId};

/// The schema version this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

const META_TREE: &str = "meta";
const MESSAGES_TREE: &str = "messages";
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
}

/// The sled store of a node.
#[derive(Debug, Clone)]
pub struct Store {
    db: sled::Db,
    messages: sled::Tree,
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
        Ok(Store { db, messages })
    }

    /// Stores a verified message under its id. Returns `false` if it was already stored.
    /// Durable only after [`Store::flush`].
    pub fn insert(&self, msg: &Message) -> Result<bool, StoreError> {
        let prev =
            self.messages.compare_and_swap(msg.id().0, None as Option<&[u8]>, Some(msg.bytes()))?;
        Ok(prev.is_ok())
    }

    /// Whether a message is stored.
    pub fn contains(&self, id: &MessageId) -> Result<bool, StoreError> {
        Ok(self.messages.contains_key(id.0)?)
    }

    /// The message stored under `id`, decoded and verified again.
    pub fn get(&self, id: &MessageId) -> Result<Option<Message>, StoreError> {
        self.messages.get(id.0)?.map(|bytes| verify(*id, &bytes)).transpose()
    }

    /// Every stored message, in id order, each verified again.
    pub fn messages(&self) -> impl Iterator<Item = Result<Message, StoreError>> + '_ {
        self.messages.iter().map(|entry| {
            let (key, bytes) = entry?;
            let id = MessageId(key.as_ref().try_into().map_err(|_| StoreError::CorruptMeta)?);
            verify(id, &bytes)
        })
    }

    /// Number of stored messages.
    pub fn len(&self) -> usize {
        self.messages.len()
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

/// How long [`Store::open`] waits for a lock still held by a store of this process that is
/// being dropped (sled releases its file lock from a background thread).
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

fn open_with_retry(path: &Path) -> Result<sled::Db, sled::Error> {
    let step = std::time::Duration::from_millis(20);
    let mut waited = std::time::Duration::ZERO;
    loop {
        match sled::open(path) {
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
