//! Direct messages at rest: the outbox (SEALED envelopes this node must hand on — its own, or
//! others' it relays — until a next hop acknowledges them), the inbox (messages sealed to this
//! node, opened), the ids already handled (relays and recipients acknowledge a repeat without
//! taking it twice), and the directory cache (records of other identities).
//!
//! Every write that acknowledges something is flushed before it returns: a message is durable
//! before the sender is told it was taken. Each tree is bounded ([`MAX_OUTBOX`], [`MAX_INBOX`]).

use serde::{Deserialize, Serialize};

use crate::StoreError;

/// Most envelopes waiting in the outbox (own and relayed).
pub const MAX_OUTBOX: usize = 10_000;
/// Most envelopes waiting in the outbox that one peer handed over for relaying.
pub const MAX_RELAYED_PER_PEER: usize = 1_000;
/// Most messages in the inbox.
pub const MAX_INBOX: usize = 10_000;
/// Most directory records cached (expired ones are dropped first when it is reached).
pub const MAX_CACHED_RECORDS: usize = 10_000;
/// How long a handled id is remembered (a repeat within it is acknowledged, not taken again).
pub const DONE_TTL_MS: u64 = 7 * 24 * 3600 * 1000;

/// A SEALED envelope waiting for a next hop: its delivery state (the envelope's bytes are kept
/// apart, read only when it is sent: [`MailStore::envelope`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// The recipient's KLP-ID.
    pub target: String,
    /// The peer that handed it over, for relayed messages (never sent back there).
    pub from: Option<String>,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// Earliest time of the next attempt (ms).
    pub next_ms: u64,
    /// When it entered the outbox (ms).
    pub queued_ms: u64,
    /// The last failure, if any.
    pub last_error: Option<String>,
}

/// One advisory reputation change received (REPUTATION_DELTA), with the weight it was given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReputationEntry {
    /// The subject's KLP-ID.
    pub subject: String,
    /// The subject (did:key).
    pub subject_did: String,
    /// The sender (did:key).
    pub sender: String,
    /// The sender's KLP-ID.
    pub sender_klp_id: String,
    /// The change, in thousandths.
    pub delta: i32,
    /// The sender's trust weight here when it arrived, in thousandths (0 for no trust).
    pub weight: u64,
    /// Why.
    pub reason: String,
    /// Signed time.
    pub created_ms: u64,
}

/// A message sealed to this node, opened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxEntry {
    /// The SEALED envelope (hex), exactly as received.
    pub envelope: String,
    /// The sender (did:key), who signed the envelope.
    pub sender: String,
    /// The sender's KLP-ID.
    pub sender_klp_id: String,
    /// The inner message type (`TASK_REQUEST`, …).
    pub kind: String,
    /// The inner body as JSON.
    pub body: String,
    /// The envelope's target address.
    pub target: String,
    /// The envelope's signed time (ms).
    pub created_ms: u64,
    /// When it arrived (ms).
    pub received_ms: u64,
    /// The peer that delivered it.
    pub from_peer: String,
}

/// The direct-message trees of a store.
#[derive(Debug, Clone)]
pub struct MailStore {
    db: sled::Db,
    outbox: sled::Tree,
    /// The outbox's envelopes, by id (bytes as signed).
    envelopes: sled::Tree,
    inbox: sled::Tree,
    done: sled::Tree,
    failed: sled::Tree,
    dir: sled::Tree,
    names: sled::Tree,
    reputation: sled::Tree,
}

/// Most reputation changes kept (the oldest are dropped beyond it).
pub const MAX_REPUTATION_ENTRIES: usize = 10_000;

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

fn parse<T: for<'de> Deserialize<'de>>(b: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(b).map_err(|_| StoreError::CorruptMeta)
}

/// Every readable entry of a tree keyed by message id.
fn entries<T: for<'de> Deserialize<'de>>(tree: &sled::Tree) -> Vec<([u8; 32], T)> {
    tree.iter()
        .filter_map(|r| r.ok())
        .filter_map(|(k, v)| Some((k.as_ref().try_into().ok()?, parse(&v).ok()?)))
        .collect()
}

/// Why the outbox or inbox did not take a message.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The tree is at its bound.
    #[error("the {0} is full")]
    Full(&'static str),
}

impl From<sled::Error> for MailError {
    fn from(e: sled::Error) -> Self {
        MailError::Store(StoreError::Sled(e))
    }
}

impl MailStore {
    pub(crate) fn open(db: &sled::Db) -> Result<Self, StoreError> {
        Ok(MailStore {
            db: db.clone(),
            outbox: db.open_tree("mail.outbox")?,
            envelopes: db.open_tree("mail.envelopes")?,
            inbox: db.open_tree("mail.inbox")?,
            done: db.open_tree("mail.done")?,
            failed: db.open_tree("mail.failed")?,
            dir: db.open_tree("dir.records")?,
            names: db.open_tree("dir.names")?,
            reputation: db.open_tree("rep.deltas")?,
        })
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// Whether message `id` is waiting, in the inbox, or was handled recently.
    pub fn knows(&self, id: &[u8; 32]) -> Result<bool, StoreError> {
        Ok(self.outbox.contains_key(id)?
            || self.inbox.contains_key(id)?
            || self.done.contains_key(id)?)
    }

    /// Puts an envelope in the outbox, durably. `false` if it was already known.
    pub fn enqueue(
        &self,
        id: &[u8; 32],
        entry: &OutboxEntry,
        envelope: &[u8],
    ) -> Result<bool, MailError> {
        if self.knows(id)? {
            return Ok(false);
        }
        if self.outbox.len() >= MAX_OUTBOX {
            return Err(MailError::Full("outbox"));
        }
        if let Some(from) = &entry.from {
            let relayed =
                self.outbox().iter().filter(|(_, e)| e.from.as_deref() == Some(from)).count();
            if relayed >= MAX_RELAYED_PER_PEER {
                return Err(MailError::Full("outbox share of that peer"));
            }
        }
        self.envelopes.insert(id, envelope)?;
        self.outbox.insert(id, json(entry))?;
        self.flush()?;
        Ok(true)
    }

    /// The envelope of an outbox entry.
    pub fn envelope(&self, id: &[u8; 32]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.envelopes.get(id)?.map(|v| v.to_vec()))
    }

    /// Every outbox entry (bounded by [`MAX_OUTBOX`]).
    pub fn outbox(&self) -> Vec<([u8; 32], OutboxEntry)> {
        entries(&self.outbox)
    }

    /// One outbox entry.
    pub fn outbox_entry(&self, id: &[u8; 32]) -> Result<Option<OutboxEntry>, StoreError> {
        self.outbox.get(id)?.map(|v| parse(&v)).transpose()
    }

    /// Rewrites an outbox entry (attempts, next time, last error).
    pub fn update(&self, id: &[u8; 32], entry: &OutboxEntry) -> Result<(), StoreError> {
        if self.outbox.contains_key(id)? {
            self.outbox.insert(id, json(entry))?;
        }
        Ok(())
    }

    /// A next hop took the message: it leaves the outbox and is remembered as handled.
    pub fn delivered(&self, id: &[u8; 32], now_ms: u64) -> Result<(), StoreError> {
        self.done.insert(id, &now_ms.to_be_bytes())?;
        self.outbox.remove(id)?;
        self.envelopes.remove(id)?;
        self.flush()
    }

    /// A permanent failure: the message leaves the outbox, the reason is kept.
    pub fn fail(&self, id: &[u8; 32], reason: &str, now_ms: u64) -> Result<(), StoreError> {
        if let Some(v) = self.outbox.remove(id)? {
            let mut e: OutboxEntry = parse(&v)?;
            e.last_error = Some(reason.to_owned());
            e.next_ms = now_ms;
            self.failed.insert(id, json(&e))?;
        }
        self.envelopes.remove(id)?;
        self.done.insert(id, &now_ms.to_be_bytes())?;
        self.flush()
    }

    /// Messages that could not be delivered, with the reason.
    pub fn failed(&self) -> Vec<([u8; 32], OutboxEntry)> {
        entries(&self.failed)
    }

    /// Files an opened message in the inbox, durably. `false` if it was already known.
    pub fn file(&self, id: &[u8; 32], entry: &InboxEntry) -> Result<bool, MailError> {
        if self.knows(id)? {
            return Ok(false);
        }
        if self.inbox.len() >= MAX_INBOX {
            return Err(MailError::Full("inbox"));
        }
        self.inbox.insert(id, json(entry))?;
        self.done.insert(id, &entry.received_ms.to_be_bytes())?;
        self.flush()?;
        Ok(true)
    }

    /// The inbox, oldest first.
    pub fn inbox(&self) -> Vec<([u8; 32], InboxEntry)> {
        let mut all: Vec<([u8; 32], InboxEntry)> = entries(&self.inbox);
        all.sort_by_key(|(id, e)| (e.received_ms, *id));
        all
    }

    /// One inbox message.
    pub fn inbox_entry(&self, id: &[u8; 32]) -> Result<Option<InboxEntry>, StoreError> {
        self.inbox.get(id)?.map(|v| parse(&v)).transpose()
    }

    /// Deletes an inbox message (it stays known: a repeat is not filed again). `false` if absent.
    pub fn delete(&self, id: &[u8; 32]) -> Result<bool, StoreError> {
        let removed = self.inbox.remove(id)?.is_some();
        self.flush()?;
        Ok(removed)
    }

    /// Forgets handled ids older than [`DONE_TTL_MS`].
    pub fn prune(&self, now_ms: u64) -> Result<usize, StoreError> {
        let cutoff = now_ms.saturating_sub(DONE_TTL_MS);
        let mut n = 0;
        for (k, v) in self.done.iter().filter_map(|r| r.ok()) {
            let at = v.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(0);
            if at < cutoff {
                self.done.remove(k)?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Records a reputation change under `id` (its message id); `false` if it was known.
    pub fn add_reputation(&self, id: &[u8; 32], e: &ReputationEntry) -> Result<bool, StoreError> {
        let mut key = e.created_ms.to_be_bytes().to_vec();
        key.extend_from_slice(id);
        if self.reputation.contains_key(&key)? {
            return Ok(false);
        }
        while self.reputation.len() >= MAX_REPUTATION_ENTRIES {
            match self.reputation.pop_min()? {
                Some(_) => {}
                None => break,
            }
        }
        self.reputation.insert(key, json(e))?;
        Ok(true)
    }

    /// Every reputation change kept, oldest first.
    pub fn reputation(&self) -> Vec<ReputationEntry> {
        self.reputation.iter().filter_map(|r| r.ok()).filter_map(|(_, v)| parse(&v).ok()).collect()
    }

    /// Caches a directory record (envelope bytes) of `klp_id`, valid until `expires_ms`, under
    /// its name too. At [`MAX_CACHED_RECORDS`], expired records are dropped first; if none
    /// expired, a new identity's record is not cached (`false`).
    pub fn put_record(
        &self,
        klp_id: &str,
        name: Option<&str>,
        expires_ms: u64,
        envelope: &[u8],
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        if !self.dir.contains_key(klp_id.as_bytes())? && self.dir.len() >= MAX_CACHED_RECORDS {
            self.prune_records(now_ms)?;
            if self.dir.len() >= MAX_CACHED_RECORDS {
                return Ok(false);
            }
        }
        let mut value = expires_ms.to_be_bytes().to_vec();
        value.extend_from_slice(envelope);
        self.dir.insert(klp_id.as_bytes(), value)?;
        if let Some(n) = name {
            self.names.insert(format!("{n}\0{klp_id}").as_bytes(), &expires_ms.to_be_bytes())?;
        }
        Ok(true)
    }

    /// Drops cached records (and name claims) that expired before `now_ms`.
    pub fn prune_records(&self, now_ms: u64) -> Result<usize, StoreError> {
        let expired = |v: &[u8]| {
            v.get(..8)
                .and_then(|b| b.try_into().ok())
                .is_none_or(|b| u64::from_be_bytes(b) <= now_ms)
        };
        let mut n = 0;
        for (k, v) in self.dir.iter().filter_map(|r| r.ok()) {
            if expired(&v) {
                self.dir.remove(k)?;
                n += 1;
            }
        }
        for (k, v) in self.names.iter().filter_map(|r| r.ok()) {
            if expired(&v) {
                self.names.remove(k)?;
            }
        }
        Ok(n)
    }

    /// The cached record (envelope bytes) of `klp_id`.
    pub fn record(&self, klp_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.dir.get(klp_id.as_bytes())?.and_then(|v| v.get(8..).map(<[u8]>::to_vec)))
    }

    /// KLP-IDs whose cached records claimed `name`.
    pub fn claimants(&self, name: &str) -> Vec<String> {
        self.names
            .scan_prefix(format!("{name}\0").as_bytes())
            .keys()
            .filter_map(|k| k.ok())
            .filter_map(|k| {
                String::from_utf8(k.to_vec()).ok()?.split_once('\0').map(|(_, id)| id.to_owned())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(from: Option<&str>) -> OutboxEntry {
        OutboxEntry {
            target: "t".into(),
            from: from.map(str::to_owned),
            attempts: 0,
            next_ms: 0,
            queued_ms: 0,
            last_error: None,
        }
    }

    #[test]
    fn every_message_is_taken_once_and_kept_until_handed_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::Store::open(&dir.path().join("s")).expect("store");
        let mail = store.mail().expect("mail");
        assert!(mail.enqueue(&[1; 32], &entry(None), b"e1").expect("enqueue"));
        assert_eq!(mail.envelope(&[1; 32]).expect("envelope").as_deref(), Some(&b"e1"[..]));
        assert!(
            !mail.enqueue(&[1; 32], &entry(Some("p")), b"e1").expect("again"),
            "a repeat is not taken"
        );
        assert_eq!(mail.outbox().len(), 1);
        mail.delivered(&[1; 32], 1_000).expect("delivered");
        assert!(mail.outbox().is_empty());
        assert_eq!(mail.envelope(&[1; 32]).expect("envelope"), None, "dropped once handed on");
        assert!(mail.knows(&[1; 32]).expect("knows"), "handled ids are remembered");
        assert!(!mail.enqueue(&[1; 32], &entry(None), b"e1").expect("after delivery"));
        mail.enqueue(&[2; 32], &entry(None), b"e2").expect("enqueue");
        mail.fail(&[2; 32], "refused", 2_000).expect("fail");
        assert_eq!(mail.failed()[0].1.last_error.as_deref(), Some("refused"));
        // Handled ids are forgotten after their time; expired records are dropped.
        assert_eq!(mail.prune(1_000 + DONE_TTL_MS + 1).expect("prune"), 1);
        assert!(!mail.knows(&[1; 32]).expect("knows"));
        assert!(mail.put_record("id1", Some("n"), 5_000, b"env", 0).expect("cache"));
        assert_eq!(mail.record("id1").expect("record").as_deref(), Some(&b"env"[..]));
        assert_eq!(mail.claimants("n"), ["id1"]);
        assert_eq!(mail.prune_records(5_000).expect("prune"), 1);
        assert_eq!(mail.record("id1").expect("record"), None);
        assert!(mail.claimants("n").is_empty());
    }

    #[test]
    fn the_inbox_files_once_and_deletes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::Store::open(&dir.path().join("s")).expect("store");
        let mail = store.mail().expect("mail");
        let e = InboxEntry {
            envelope: "00".into(),
            sender: "did".into(),
            sender_klp_id: "k".into(),
            kind: "TASK_REQUEST".into(),
            body: "{}".into(),
            target: String::new(),
            created_ms: 1,
            received_ms: 2,
            from_peer: "p".into(),
        };
        assert!(mail.file(&[3; 32], &e).expect("file"));
        assert!(!mail.file(&[3; 32], &e).expect("again"));
        assert_eq!(mail.inbox_entry(&[3; 32]).expect("entry"), Some(e));
        assert!(mail.delete(&[3; 32]).expect("delete"));
        assert!(mail.inbox().is_empty());
        assert!(!mail.delete(&[3; 32]).expect("absent"));
    }
}
