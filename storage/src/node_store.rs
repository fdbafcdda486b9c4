//! Opening a node's data directory: the journal (source of truth), the sled store (index and
//! derived state, rebuilt from the journal whenever it is missing, unopenable or disagrees), the
//! manifest (how many messages the node once had, and whose they are), and sled's snapshot trap.
//!
//! Layout of a data directory:
//!
//! ```text
//! journal/NNNNNNNN.seg   the exact envelopes, append-only (journal.rs)
//! store/                 sled: messages by id, the bucket index, meta, peers, trust, audit log
//! store.manifest         node key, federation, message count; checksummed, replaced atomically
//! ```

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use kos_protocol::{Message, MessageId, message_id};
use sha2::{Digest as _, Sha256};

use crate::{Journal, JournalReport, Store, StoreError};

/// Writes are refused (with [`StoreError::NoSpace`]) below this much free disk space, well
/// before sled or the journal could hit the wall and block.
pub const MIN_FREE_BYTES: u64 = 16 << 20;
/// Below this much free space the node warns (log and metric).
pub const WARN_FREE_BYTES: u64 = 256 << 20;

const MANIFEST: &str = "store.manifest";
const MANIFEST_VERSION: u32 = 1;

/// The manifest: what the data directory must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    /// The node identity (did:key) the data belongs to.
    pub node_key: String,
    /// Messages stored as of the last checkpoint (a lower bound of what the node had).
    pub records: u64,
}

impl Manifest {
    fn encode(&self) -> String {
        let body = format!(
            "version={MANIFEST_VERSION}\nnode_key={}\nrecords={}\n",
            self.node_key, self.records
        );
        let sum = hex::encode(Sha256::digest(body.as_bytes()));
        format!("{body}sha256={sum}\n")
    }

    fn decode(text: &str) -> Option<Manifest> {
        let (body, sum_line) = text.rsplit_once("sha256=")?;
        if hex::encode(Sha256::digest(body.as_bytes())) != sum_line.trim() {
            return None;
        }
        let mut m = Manifest::default();
        for line in body.lines() {
            match line.split_once('=')? {
                ("version", v) if v == MANIFEST_VERSION.to_string() => {}
                ("version", _) => return None,
                ("node_key", v) => m.node_key = v.to_owned(),
                ("records", v) => m.records = v.parse().ok()?,
                _ => {}
            }
        }
        Some(m)
    }

    /// Reads the manifest of `data_dir`: `Ok(None)` if there is none, `Err` if it is unreadable
    /// or its checksum does not match.
    pub fn read(data_dir: &Path) -> Result<Option<Manifest>, ManifestError> {
        match std::fs::read_to_string(data_dir.join(MANIFEST)) {
            Ok(text) => Manifest::decode(&text).map(Some).ok_or(ManifestError),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(_) => Err(ManifestError),
        }
    }

    /// Replaces the manifest atomically (temporary file, fsync, rename).
    pub fn write(&self, data_dir: &Path) -> Result<(), StoreError> {
        let dst = data_dir.join(MANIFEST);
        crate::write_durable(&dst, self.encode().as_bytes())
            .map_err(|source| StoreError::Io { path: dst.display().to_string(), source })
    }
}

/// The manifest is unreadable or its checksum does not match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("store.manifest is unreadable or corrupt")]
pub struct ManifestError;

/// How to open a data directory.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// The node identity (did:key) opening it.
    pub node_key: String,
    /// Accept a store that belongs to another identity (re-key it to this one).
    pub new_identity: bool,
    /// Start empty even though the manifest records data that is gone.
    pub fresh_store: bool,
    /// Accept lost messages: rebuild from what is left and record the new count (`kosd repair`).
    pub repair: bool,
    /// The identity was loaded from an existing vault (not created now): a missing store next
    /// to it is an error unless [`OpenOptions::fresh_store`].
    pub existing_identity: bool,
    /// Keys the identity rotated away from (did:key): a store recorded under one of them is
    /// this node's (the manifest moves to the current key).
    pub previous_keys: Vec<String>,
}

/// What opening a data directory found and did. Every field a human should know about is
/// reported by the node at start-up.
#[derive(Debug, Clone, Default)]
pub struct OpenReport {
    /// The journal's own findings (records, torn tail, bad records).
    pub journal: JournalReport,
    /// Incomplete sled snapshot files moved aside.
    pub snapshots_moved: Vec<PathBuf>,
    /// sled could not be opened: the broken store was moved here and rebuilt from the journal.
    pub store_moved_to: Option<PathBuf>,
    /// Messages sled had lost (or held corrupt), restored from the journal.
    pub restored_from_journal: u64,
    /// Messages the journal had lost, restored from sled.
    pub restored_from_store: u64,
    /// Messages in the store after opening.
    pub messages: u64,
    /// The manifest was unreadable (its checksum failed) and was rewritten.
    pub manifest_rewritten: bool,
    /// With [`OpenOptions::repair`]: messages the manifest recorded that could not be recovered.
    pub lost: u64,
}

fn ioerr(p: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let p = p.display().to_string();
    move |source| StoreError::Io { path: p, source }
}

/// sled 0.34 takes an empty or partial `snap.*.generating` file (left by a kill during a
/// snapshot) as its newest snapshot and refuses to open; move such files aside.
fn move_aside_snapshots(store: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let mut moved = Vec::new();
    let Ok(entries) = std::fs::read_dir(store) else { return Ok(moved) };
    for e in entries.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            let to = store.join(format!("aside.{name}"));
            std::fs::rename(e.path(), &to).map_err(ioerr(&e.path()))?;
            moved.push(to);
        }
    }
    Ok(moved)
}

impl Store {
    /// Opens a node's data directory `data_dir` (see the module documentation): checks the
    /// identity, moves sled's incomplete snapshots aside, opens the journal (truncating a torn
    /// tail), opens sled (moving it aside and rebuilding it if it cannot be opened), makes sled
    /// and the journal agree (each restores what the other lost), and checks nothing the manifest
    /// records is missing.
    pub fn open_node(
        data_dir: &Path,
        opts: &OpenOptions,
    ) -> Result<(Store, OpenReport), StoreError> {
        let mut report = OpenReport::default();
        std::fs::create_dir_all(data_dir).map_err(ioerr(data_dir))?;
        let store_dir = data_dir.join("store");
        let journal_dir = data_dir.join("journal");
        let manifest = match Manifest::read(data_dir) {
            Ok(m) => m,
            Err(ManifestError) => {
                report.manifest_rewritten = true;
                None
            }
        };
        if let Some(m) = &manifest
            && !m.node_key.is_empty()
            && m.node_key != opts.node_key
            && !opts.previous_keys.contains(&m.node_key)
            && !opts.new_identity
        {
            return Err(StoreError::IdentityMismatch {
                store: m.node_key.clone(),
                vault: opts.node_key.clone(),
            });
        }
        // A store is created with its manifest (at `kosd init` or the first start): a manifest,
        // or an identity, without a store and a journal means they were lost.
        let had_data = manifest.is_some() || report.manifest_rewritten || opts.existing_identity;
        if had_data && !store_dir.exists() && !journal_dir.exists() && !opts.fresh_store {
            return Err(StoreError::DataMissing {
                dir: data_dir.display().to_string(),
                records: manifest.as_ref().map_or(0, |m| m.records),
            });
        }
        report.snapshots_moved = move_aside_snapshots(&store_dir)?;
        let (journal, jreport) = Journal::open(&journal_dir)?;
        report.journal = jreport;
        let mut store = match Store::open(&store_dir) {
            Ok(s) => s,
            Err(StoreError::SchemaMismatch { found, expected }) => {
                return Err(StoreError::SchemaMismatch { found, expected });
            }
            Err(_) => {
                // sled refuses to open: keep the broken copy for inspection, rebuild from the
                // journal.
                let to = data_dir.join(format!("store.broken-{}", std::process::id()));
                std::fs::rename(&store_dir, &to).map_err(ioerr(&store_dir))?;
                report.store_moved_to = Some(to);
                Store::open(&store_dir)?
            }
        };
        store.data_dir = Some(data_dir.to_path_buf());
        store.node_key = Some(opts.node_key.clone());
        let journal = Arc::new(Mutex::new(journal));

        // Make sled and the journal agree.
        let mut in_journal: BTreeSet<MessageId> = BTreeSet::new();
        journal.lock().unwrap_or_else(std::sync::PoisonError::into_inner).for_each_record(
            |bytes| {
                let id = message_id(bytes);
                if !in_journal.insert(id) {
                    return Ok::<(), StoreError>(());
                }
                // The journal's bytes are checksummed and were verified when accepted: sled is
                // right if it holds the same bytes (messages are verified again on replay).
                let good = matches!(store.messages.get(id.0), Ok(Some(b)) if b.as_ref() == bytes);
                if !good && let Ok(msg) = Message::decode(bytes) {
                    store.index(&msg)?;
                    report.restored_from_journal += 1;
                }
                Ok(())
            },
        )?;
        let mut missing_from_journal = Vec::new();
        for key in store.messages.iter().keys().filter_map(Result::ok) {
            let Ok(id) = <[u8; 32]>::try_from(key.as_ref()).map(MessageId) else { continue };
            if !in_journal.contains(&id)
                && let Ok(Some(msg)) = store.get(&id)
            {
                missing_from_journal.push(msg);
            }
        }
        {
            let mut j = journal.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for msg in &missing_from_journal {
                j.append(msg.bytes())?;
            }
            j.sync()?;
        }
        report.restored_from_store = missing_from_journal.len() as u64;
        if report.restored_from_journal > 0 {
            store.db.flush()?;
        }
        store.journal = Some(journal);
        let count = store.messages.len() as u64;
        report.messages = count;
        if let Some(m) = &manifest
            && m.records > count
        {
            if !opts.repair && !opts.fresh_store {
                return Err(StoreError::Lost { expected: m.records, found: count });
            }
            report.lost = m.records - count;
        }
        store.write_manifest()?;
        Ok((store, report))
    }

    /// Commits, and records the current message count in the manifest even if nothing new was
    /// committed. Call periodically and at shutdown.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        self.commit()?;
        self.write_manifest()
    }

    /// Writes the manifest (node key, message count) of a data directory opened with
    /// [`Store::open_node`]; nothing for a bare sled store.
    pub(crate) fn write_manifest(&self) -> Result<(), StoreError> {
        match (&self.data_dir, &self.node_key) {
            (Some(dir), Some(key)) => {
                Manifest { node_key: key.clone(), records: self.len() as u64 }.write(dir)
            }
            _ => Ok(()),
        }
    }
}
