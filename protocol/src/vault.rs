//! The key vault: named secret keys at rest, encrypted under a passphrase.
//!
//! File layout (all integers big-endian):
//!
//! ```text
//! magic "KOSVAULT" (8) ‖ version u8 = 1 ‖ m_cost u32 (KiB) ‖ t_cost u32 ‖ p_cost u32
//!   ‖ salt (16) ‖ nonce (12) ‖ AES-256-GCM(key, nonce, plaintext, aad = every preceding byte)
//! key       = Argon2id(passphrase, salt, m_cost, t_cost, p_cost), 32 bytes
//! plaintext = CBOR map { name (tstr) => Ed25519 seed (bstr 32) }
//! ```
//!
//! Opening with the wrong passphrase fails authentication and yields
//! [`VaultError::WrongPassphrase`]; nothing is decrypted.

use std::{collections::BTreeMap, fmt, fs, io::Write, path::Path};

use aes_gcm::{Aes256Gcm, KeyInit, aead::Aead, aead::Payload as AeadPayload};
use rand_core::{OsRng, RngCore};
use serde_bytes::ByteBuf;
use zeroize::Zeroizing;

use crate::{cbor, identity::SecretKey};

const MAGIC: &[u8; 8] = b"KOSVAULT";
const VERSION: u8 = 1;
const HEADER_LEN: usize = 8 + 1 + 12 + 16 + 12;
/// Largest accepted Argon2 memory cost, in KiB (1 GiB): bounds the work a crafted file causes.
pub const MAX_M_COST: u32 = 1 << 20;
/// Largest accepted Argon2 time cost.
pub const MAX_T_COST: u32 = 16;
/// Largest accepted Argon2 parallelism.
pub const MAX_P_COST: u32 = 16;
/// Largest vault file read, in bytes.
pub const MAX_VAULT_LEN: usize = 1 << 20;

/// Why a vault could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The file does not start with the vault magic.
    #[error("not a kOS key vault")]
    NotAVault,
    /// A vault format version this build does not read.
    #[error("unsupported vault version {0}")]
    UnsupportedVersion(u8),
    /// The file is shorter than its header or longer than [`MAX_VAULT_LEN`].
    #[error("vault file is truncated or oversized ({0} bytes)")]
    BadLength(usize),
    /// The key-derivation parameters are out of bounds.
    #[error("vault key-derivation parameters are out of bounds")]
    BadParameters,
    /// Authentication failed: wrong passphrase, or the file was altered.
    #[error("wrong passphrase (or the vault file was altered)")]
    WrongPassphrase,
    /// The decrypted contents are not a key table.
    #[error("vault contents are corrupt")]
    Corrupt,
    /// Reading or writing the file failed.
    #[error("vault file: {0}")]
    Io(#[from] std::io::Error),
}

/// Argon2id cost parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_cost: u32,
    /// Iterations.
    pub t_cost: u32,
    /// Parallelism.
    pub p_cost: u32,
}

impl KdfParams {
    /// The OWASP-recommended minimum for Argon2id: 19 MiB, 2 iterations, 1 lane.
    pub const STANDARD: KdfParams = KdfParams { m_cost: 19 * 1024, t_cost: 2, p_cost: 1 };
    /// Cheap parameters for tests and development data directories only.
    pub const INSECURE_FAST: KdfParams = KdfParams { m_cost: 64, t_cost: 1, p_cost: 1 };

    fn check(self) -> Result<argon2::Params, VaultError> {
        if self.m_cost > MAX_M_COST || self.t_cost > MAX_T_COST || self.p_cost > MAX_P_COST {
            return Err(VaultError::BadParameters);
        }
        argon2::Params::new(self.m_cost, self.t_cost, self.p_cost, Some(32))
            .map_err(|_| VaultError::BadParameters)
    }
}

/// A table of named secret keys. Secrets never appear in `Debug` output.
#[derive(Clone, Default)]
pub struct Vault {
    keys: BTreeMap<String, SecretKey>,
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault").field("names", &self.keys.keys().collect::<Vec<_>>()).finish()
    }
}

fn derive_key(
    passphrase: &[u8],
    salt: &[u8],
    params: KdfParams,
) -> Result<Zeroizing<[u8; 32]>, VaultError> {
    let argon =
        argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params.check()?);
    let mut key = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(passphrase, salt, key.as_mut_slice())
        .map_err(|_| VaultError::BadParameters)?;
    Ok(key)
}

impl Vault {
    /// An empty vault.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces the key called `name`.
    pub fn insert(&mut self, name: impl Into<String>, key: SecretKey) {
        self.keys.insert(name.into(), key);
    }

    /// Removes the key called `name`.
    pub fn remove(&mut self, name: &str) -> Option<SecretKey> {
        self.keys.remove(name)
    }

    /// The key called `name`.
    pub fn get(&self, name: &str) -> Option<&SecretKey> {
        self.keys.get(name)
    }

    /// The names of the keys held, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// Encrypts the vault under `passphrase` with a fresh salt and nonce.
    pub fn seal(&self, passphrase: &[u8], params: KdfParams) -> Result<Vec<u8>, VaultError> {
        let mut salt = [0u8; 16];
        let mut nonce = [0u8; 12];
        OsRng.fill_bytes(&mut salt);
        OsRng.fill_bytes(&mut nonce);
        let mut out = Vec::with_capacity(HEADER_LEN + 64 * self.keys.len());
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&params.m_cost.to_be_bytes());
        out.extend_from_slice(&params.t_cost.to_be_bytes());
        out.extend_from_slice(&params.p_cost.to_be_bytes());
        out.extend_from_slice(&salt);
        out.extend_from_slice(&nonce);
        let key = derive_key(passphrase, &salt, params)?;
        let table: BTreeMap<&str, ByteBuf> =
            self.keys.iter().map(|(n, k)| (n.as_str(), ByteBuf::from(k.seed().to_vec()))).collect();
        let plaintext = Zeroizing::new(cbor::to_vec(&table));
        drop(table.into_values().map(|b| Zeroizing::new(b.into_vec())).collect::<Vec<_>>());
        let cipher =
            Aes256Gcm::new_from_slice(key.as_slice()).map_err(|_| VaultError::BadParameters)?;
        let ct = cipher
            .encrypt((&nonce).into(), AeadPayload { msg: &plaintext, aad: &out })
            .map_err(|_| VaultError::BadParameters)?;
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Decrypts a vault.
    pub fn open(bytes: &[u8], passphrase: &[u8]) -> Result<Self, VaultError> {
        if bytes.len() < HEADER_LEN + 16 || bytes.len() > MAX_VAULT_LEN {
            if !bytes.starts_with(MAGIC) && bytes.len() >= MAGIC.len() {
                return Err(VaultError::NotAVault);
            }
            return Err(VaultError::BadLength(bytes.len()));
        }
        if &bytes[..8] != MAGIC {
            return Err(VaultError::NotAVault);
        }
        if bytes[8] != VERSION {
            return Err(VaultError::UnsupportedVersion(bytes[8]));
        }
        let u32_at =
            |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let params = KdfParams { m_cost: u32_at(9), t_cost: u32_at(13), p_cost: u32_at(17) };
        let (header, ct) = bytes.split_at(HEADER_LEN);
        let salt = &header[21..37];
        let nonce: [u8; 12] = header[37..49].try_into().map_err(|_| VaultError::Corrupt)?;
        let key = derive_key(passphrase, salt, params)?;
        let cipher =
            Aes256Gcm::new_from_slice(key.as_slice()).map_err(|_| VaultError::BadParameters)?;
        let plaintext = Zeroizing::new(
            cipher
                .decrypt((&nonce).into(), AeadPayload { msg: ct, aad: header })
                .map_err(|_| VaultError::WrongPassphrase)?,
        );
        let table: BTreeMap<String, ByteBuf> =
            cbor::from_slice_canonical(&plaintext).map_err(|_| VaultError::Corrupt)?;
        let mut keys = BTreeMap::new();
        for (name, seed) in table {
            let seed = Zeroizing::new(seed.into_vec());
            let seed: &[u8; 32] = seed.as_slice().try_into().map_err(|_| VaultError::Corrupt)?;
            keys.insert(name, SecretKey::from_seed(seed));
        }
        Ok(Vault { keys })
    }

    /// Reads and decrypts the vault file at `path`.
    pub fn load(path: &Path, passphrase: &[u8]) -> Result<Self, VaultError> {
        let meta = fs::metadata(path)?;
        if meta.len() > MAX_VAULT_LEN as u64 {
            return Err(VaultError::BadLength(usize::try_from(meta.len()).unwrap_or(usize::MAX)));
        }
        Self::open(&fs::read(path)?, passphrase)
    }

    /// Encrypts the vault and writes it to `path` atomically (temporary file, fsync, rename),
    /// readable by the owner only.
    pub fn save(
        &self,
        path: &Path,
        passphrase: &[u8],
        params: KdfParams,
    ) -> Result<(), VaultError> {
        let bytes = self.seal(passphrase, params)?;
        let tmp = path.with_extension("tmp");
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vault {
        let mut v = Vault::new();
        v.insert("node", SecretKey::from_seed(&[1u8; 32]));
        v.insert("alice", SecretKey::from_seed(&[2u8; 32]));
        v
    }

    #[test]
    fn round_trips_and_hides_secrets() {
        let sealed = sample().seal(b"correct horse", KdfParams::INSECURE_FAST).expect("seal");
        let v = Vault::open(&sealed, b"correct horse").expect("open");
        assert_eq!(v.names().collect::<Vec<_>>(), ["alice", "node"]);
        assert_eq!(
            v.get("node").map(|k| k.public()),
            Some(SecretKey::from_seed(&[1u8; 32]).public())
        );
        let shown = format!("{v:?}");
        assert!(shown.contains("alice") && !shown.contains("0101"), "{shown}");
        // The seed does not appear in the file.
        assert!(!sealed.windows(32).any(|w| w == [1u8; 32]));
    }

    #[test]
    fn wrong_passphrase_and_tampering_are_refused() {
        let sealed = sample().seal(b"correct horse", KdfParams::INSECURE_FAST).expect("seal");
        assert!(matches!(Vault::open(&sealed, b"wrong"), Err(VaultError::WrongPassphrase)));
        let mut t = sealed.clone();
        let last = t.len() - 1;
        t[last] ^= 1;
        assert!(matches!(Vault::open(&t, b"correct horse"), Err(VaultError::WrongPassphrase)));
        // The header is authenticated too: a changed salt or cost fails the same way.
        let mut t = sealed.clone();
        t[25] ^= 1;
        assert!(matches!(Vault::open(&t, b"correct horse"), Err(VaultError::WrongPassphrase)));
    }

    #[test]
    fn malformed_files_get_distinct_errors() {
        let sealed = sample().seal(b"pw", KdfParams::INSECURE_FAST).expect("seal");
        let mut t = sealed.clone();
        t[0] = b'X';
        assert!(matches!(Vault::open(&t, b"pw"), Err(VaultError::NotAVault)));
        let mut t = sealed.clone();
        t[8] = 9;
        assert!(matches!(Vault::open(&t, b"pw"), Err(VaultError::UnsupportedVersion(9))));
        assert!(matches!(Vault::open(&sealed[..30], b"pw"), Err(VaultError::BadLength(30))));
        let mut t = sealed.clone();
        t[9..13].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(Vault::open(&t, b"pw"), Err(VaultError::BadParameters)));
    }

    #[test]
    fn saves_owner_only_and_loads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("vault.bin");
        sample().save(&path, b"pw", KdfParams::INSECURE_FAST).expect("save");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let v = Vault::load(&path, b"pw").expect("load");
        assert_eq!(v.names().count(), 2);
    }
}
