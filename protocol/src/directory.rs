//! Directory records: signed, expiring answers to "how do I reach this identity?".
//!
//! A record is a `DIRECTORY_RECORD` envelope signed by the identity it describes. It is stored
//! in the Kademlia DHT under two keys: [`id_key`] (its KLP-ID) and, when it has a name,
//! [`name_key`]. A node accepts a record only if [`check_record`] passes: right type, not expired,
//! a lifetime of at most [`MAX_RECORD_LIFETIME_MS`], and — for the DHT key it was stored under —
//! the key the record itself implies (a record cannot be planted under someone else's id or a
//! name it does not claim).

use crate::{
    Message, Payload, PublicKey,
    identity::KlpId,
    payload::{DirectoryRecord, MAX_RECORD_LIFETIME_MS},
};

/// Prefix of the DHT key of a record, by KLP-ID.
pub const ID_KEY_PREFIX: &str = "/kos/dir/id/";
/// Prefix of the DHT key of a record, by name.
pub const NAME_KEY_PREFIX: &str = "/kos/dir/name/";

/// The DHT key of the record of `id`: `/kos/dir/id/<klp-id>` (UTF-8).
pub fn id_key(id: &KlpId) -> Vec<u8> {
    format!("{ID_KEY_PREFIX}{id}").into_bytes()
}

/// The DHT key of records claiming `name`: `/kos/dir/name/<name>` (UTF-8).
pub fn name_key(name: &str) -> Vec<u8> {
    format!("{NAME_KEY_PREFIX}{name}").into_bytes()
}

/// The DHT keys a record is published under: its KLP-ID's, and its name's if it has one.
pub fn record_keys(r: &CheckedRecord) -> Vec<Vec<u8>> {
    let mut keys = vec![id_key(&r.klp_id)];
    keys.extend(r.record.name.as_deref().map(name_key));
    keys
}

/// Why a directory record is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The envelope is not a DIRECTORY_RECORD.
    #[error("not a DIRECTORY_RECORD")]
    NotARecord,
    /// Past its expiry.
    #[error("the record expired at {0} ms")]
    Expired(u64),
    /// Expiry not after the signed time, or more than a day after it.
    #[error("the record's lifetime must be between 1 ms and {MAX_RECORD_LIFETIME_MS} ms")]
    BadLifetime,
    /// Stored under a DHT key the record does not imply.
    #[error("the record is stored under a key it does not claim")]
    WrongKey,
}

/// A record that passed [`check_record`]: who it describes, and what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedRecord {
    /// The identity (the envelope's author).
    pub key: PublicKey,
    /// Its KLP-ID.
    pub klp_id: KlpId,
    /// The record.
    pub record: DirectoryRecord,
    /// Its signed time.
    pub created_ms: u64,
}

/// Checks a verified envelope as a directory record at `now_ms`; with `dht_key`, also that the
/// record belongs under that key.
pub fn check_record(
    msg: &Message,
    now_ms: u64,
    dht_key: Option<&[u8]>,
) -> Result<CheckedRecord, RecordError> {
    let Payload::DirectoryRecord(record) = msg.payload() else {
        return Err(RecordError::NotARecord);
    };
    let created = msg.header().created_ms;
    if record.expires_ms <= created || record.expires_ms - created > MAX_RECORD_LIFETIME_MS {
        return Err(RecordError::BadLifetime);
    }
    if record.expires_ms <= now_ms {
        return Err(RecordError::Expired(record.expires_ms));
    }
    let key = msg.author();
    let klp_id = key.klp_id();
    if let Some(k) = dht_key {
        let by_id = k == id_key(&klp_id).as_slice();
        let by_name = record.name.as_deref().is_some_and(|n| k == name_key(n).as_slice());
        if !by_id && !by_name {
            return Err(RecordError::WrongKey);
        }
    }
    Ok(CheckedRecord { key, klp_id, record: record.clone(), created_ms: created })
}
