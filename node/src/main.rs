//! `kosd`: the kOS federated governance daemon.
//!
//! This build provides the node's identity and data directory (`kosd init`, `kosd id`); the
//! networked daemon lands with issue #4 (see `docs/architecture.md`).

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use kos_protocol::{
    SecretKey,
    vault::{KdfParams, Vault},
};

/// Name of the node's own key in the vault.
const NODE_KEY: &str = "node";

#[derive(Parser, Debug)]
#[command(name = "kosd", version, about = "kOS federated governance node")]
struct Cli {
    /// Data directory (vault, sled store).
    #[arg(long, env = "KOS_DATA_DIR", default_value = "kos-data", global = true)]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create the data directory: a new node identity in an encrypted vault, and the store.
    Init {
        /// Store the key under an empty passphrase with cheap key derivation. Development only:
        /// anyone who can read the data directory has the key.
        #[arg(long)]
        insecure_plain_key: bool,
    },
    /// Print this node's identity: did:key, KLP-ID, libp2p peer id, X25519 key.
    Id {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn passphrase(insecure: bool) -> anyhow::Result<Vec<u8>> {
    if insecure {
        return Ok(Vec::new());
    }
    match std::env::var("KOS_PASSPHRASE") {
        Ok(p) if !p.is_empty() => Ok(p.into_bytes()),
        _ => bail!(
            "KOS_PASSPHRASE is not set: set it to the vault passphrase (or use --insecure-plain-key for development)"
        ),
    }
}

fn vault_path(dir: &Path) -> PathBuf {
    dir.join("vault.bin")
}

/// Opens the vault: with `KOS_PASSPHRASE` if set, else as a development (empty-passphrase) vault.
fn load_identity(dir: &Path) -> anyhow::Result<SecretKey> {
    let path = vault_path(dir);
    if !path.exists() {
        bail!("no node identity in {}: run `kosd init` first", dir.display());
    }
    let pass = std::env::var("KOS_PASSPHRASE").unwrap_or_default();
    let vault = Vault::load(&path, pass.as_bytes())
        .with_context(|| format!("cannot open {}", path.display()))?;
    vault.get(NODE_KEY).cloned().with_context(|| format!("{} holds no node key", path.display()))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let dir = &cli.data_dir;
    match cli.command {
        Command::Init { insecure_plain_key } => {
            let path = vault_path(dir);
            if path.exists() {
                bail!("{} already holds a node identity", dir.display());
            }
            let pass = passphrase(insecure_plain_key)?;
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let key = SecretKey::generate();
            let mut vault = Vault::new();
            vault.insert(NODE_KEY, key.clone());
            let params =
                if insecure_plain_key { KdfParams::INSECURE_FAST } else { KdfParams::STANDARD };
            vault.save(&path, &pass, params)?;
            let store = kos_storage::Store::open(&dir.join("store"))?;
            store.flush()?;
            println!("initialised {} for {}", dir.display(), key.public().to_did());
            Ok(())
        }
        Command::Id { json } => {
            let key = load_identity(dir)?;
            let pk = key.public();
            let info = serde_json::json!({
                "did": pk.to_did(),
                "klp_id": pk.klp_id().to_string(),
                "peer_id": pk.to_peer_id().to_string(),
                "x25519_public_key": key.encryption_key().0.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            });
            if json {
                println!("{info}");
            } else {
                for (k, v) in info.as_object().into_iter().flatten() {
                    println!("{k}: {}", v.as_str().unwrap_or_default());
                }
            }
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kosd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
