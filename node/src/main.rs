//! `kosd`: the kOS federated governance daemon.
//!
//! `kosd init` creates a data directory with an identity; `kosd run` runs the node (libp2p
//! swarm, sled store, governance engine, local control API); `kosd devnet N` runs a local
//! federation of N nodes. See `docs/operator.md`.

use kos_node::{api, core, devnet, limits, metrics, node, policy};

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

use kos_node::NODE_KEY;

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
    #[command(
        after_help = "Examples:\n  KOS_PASSPHRASE_FILE=/etc/kos/passphrase kosd --data-dir /var/lib/kos init\n  kosd init --insecure-plain-key        # development only"
    )]
    Init {
        /// Store the key under an empty passphrase with cheap key derivation. Development only:
        /// anyone who can read the data directory has the key.
        #[arg(long)]
        insecure_plain_key: bool,
    },
    /// Print this node's identity: did:key, KLP-ID, libp2p peer id, X25519 key.
    #[command(after_help = "Example:\n  kosd --data-dir /var/lib/kos id --json")]
    Id {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the node. Creates the data directory first if it does not exist.
    #[command(
        after_help = "Examples:\n  kosd run --insecure-plain-key                       # development, ./kos-data\n  KOS_PASSPHRASE_FILE=/run/secret kosd --data-dir /var/lib/kos run\n  kosd run --listen /ip4/0.0.0.0/tcp/4001 --bootstrap /ip4/192.0.2.1/tcp/4001/p2p/12D3…"
    )]
    Run(RunArgs),
    /// Rebuild the data directory from what is left (journal, store) after messages were lost,
    /// say what was recovered, and record the new state. Peers send the rest again by sync.
    #[command(
        after_help = "Example:\n  systemctl stop kosd && kosd --data-dir /var/lib/kos repair && systemctl start kosd"
    )]
    Repair,
    /// The configuration: `kosd config show [RUN FLAGS]` prints every setting `kosd run` would
    /// use with the same flags, and where each value comes from.
    #[command(subcommand, after_help = "Example:\n  kosd config show")]
    Config(ConfigCmd),
    /// Print a shell completion script.
    #[command(after_help = "Example:\n  kosd completions bash > /etc/bash_completion.d/kosd")]
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: kos_clidoc::Shell,
    },
    /// Write the manual pages (kosd.1 and one page per command).
    #[command(after_help = "Example:\n  kosd man --out /usr/local/share/man/man1 && man kosd")]
    Man {
        /// Directory for the pages; without it, kosd.1 goes to standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Run a local federation of N nodes (data under `<data-dir>/devnet`) until interrupted.
    #[command(after_help = "Example:\n  kosd --data-dir /tmp/kos devnet 3")]
    Devnet {
        /// Number of nodes.
        #[arg(value_parser = clap::value_parser!(u16).range(1..=64))]
        nodes: u16,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigCmd {
    /// Print the effective configuration and the source of each value (flag, environment
    /// variable, config file or default).
    #[command(
        after_help = "Examples:\n  kosd config show\n  kosd config show --api 127.0.0.1:7701 --json"
    )]
    Show {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        run: RunArgs,
    },
}

/// Settings of `kosd run`: flags override environment variables, which override the config file
/// (`<data-dir>/kosd.toml`), which overrides the embedded defaults.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RunArgs {
    /// Listen address (repeatable). Default: TCP and QUIC on port 4001, all interfaces.
    #[arg(long, env = "KOS_LISTEN", value_delimiter = ',')]
    listen: Vec<String>,
    /// Control API address; loopback only. Default 127.0.0.1:7700.
    #[arg(long, env = "KOS_API")]
    api: Option<String>,
    /// Peer to dial at start (repeatable).
    #[arg(long, env = "KOS_BOOTSTRAP", value_delimiter = ',')]
    bootstrap: Vec<String>,
    /// Seconds between anti-entropy rounds. Default 10.
    #[arg(long, env = "KOS_SYNC_INTERVAL")]
    sync_interval_secs: Option<u64>,
    /// Most established connections. Default 128.
    #[arg(long)]
    max_connections: Option<u32>,
    /// Signed messages one author may send in a burst over live gossip (default 2000); beyond
    /// it they are ignored (sync still brings them), never held against the relaying peer.
    #[arg(long)]
    author_burst: Option<u32>,
    /// Sustained messages per author per minute over live gossip (default 2000).
    #[arg(long)]
    author_per_minute: Option<u32>,
    /// The name this node claims in the directory (`klp://NAME/…` resolves to it).
    #[arg(long, env = "KOS_NAME")]
    name: Option<String>,
    /// Most KiB per second this node pulls of incoming vector transfers (default: no cap).
    #[arg(long)]
    vector_kib_per_sec: Option<u64>,
    /// Config file (TOML). Default `<data-dir>/kosd.toml` if it exists.
    #[arg(long, env = "KOS_CONFIG")]
    config: Option<PathBuf>,
    /// Log as JSON lines.
    #[arg(long, env = "KOS_LOG_JSON")]
    log_json: bool,
    /// If the data directory has no identity yet, create one under an empty passphrase
    /// (development only).
    #[arg(long)]
    insecure_plain_key: bool,
    /// Accept a data directory whose store belongs to another identity, or create a new
    /// identity next to an existing store (its messages stay; new ones are signed by the new key).
    #[arg(long)]
    new_identity: bool,
    /// Start with an empty store although the manifest records messages that are gone (they
    /// come back from peers by sync).
    #[arg(long)]
    fresh_store: bool,
}

/// The config file.
#[derive(serde::Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<Vec<String>>,
    api: Option<String>,
    bootstrap: Option<Vec<String>>,
    sync_interval_secs: Option<u64>,
    max_connections: Option<u32>,
    author_burst: Option<u32>,
    author_per_minute: Option<u32>,
    name: Option<String>,
    vector_kib_per_sec: Option<u64>,
}

/// The name of the passphrase in systemd's credentials directory (`LoadCredential=`).
const PASSPHRASE_CREDENTIAL: &str = "kos-passphrase";

/// Where the vault passphrase comes from: `KOS_PASSPHRASE_FILE`, then a systemd credential
/// (`$CREDENTIALS_DIRECTORY/kos-passphrase`), then `KOS_PASSPHRASE`. The file's trailing line
/// break is not part of the passphrase. `None`: no passphrase given.
fn passphrase_source() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KOS_PASSPHRASE_FILE") {
        return Some(PathBuf::from(p));
    }
    let cred =
        PathBuf::from(std::env::var_os("CREDENTIALS_DIRECTORY")?).join(PASSPHRASE_CREDENTIAL);
    cred.exists().then_some(cred)
}

/// The vault passphrase given to this process (empty if none).
fn given_passphrase() -> anyhow::Result<zeroize::Zeroizing<Vec<u8>>> {
    if let Some(path) = passphrase_source() {
        let mut bytes = std::fs::read(&path)
            .with_context(|| format!("cannot read the passphrase file {}", path.display()))?;
        while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            bytes.pop();
        }
        return Ok(zeroize::Zeroizing::new(bytes));
    }
    Ok(zeroize::Zeroizing::new(std::env::var("KOS_PASSPHRASE").unwrap_or_default().into_bytes()))
}

fn passphrase(insecure: bool) -> anyhow::Result<zeroize::Zeroizing<Vec<u8>>> {
    if insecure {
        return Ok(zeroize::Zeroizing::new(Vec::new()));
    }
    let p = given_passphrase()?;
    if p.is_empty() {
        bail!(
            "no vault passphrase: set KOS_PASSPHRASE or KOS_PASSPHRASE_FILE, or give systemd's \
             LoadCredential=kos-passphrase:… (or use --insecure-plain-key for development)"
        );
    }
    Ok(p)
}

fn vault_path(dir: &Path) -> PathBuf {
    dir.join("vault.bin")
}

/// Opens the vault: with `KOS_PASSPHRASE` if set, else as a development (empty-passphrase) vault.
fn load_vault(dir: &Path) -> anyhow::Result<Vault> {
    let path = vault_path(dir);
    if !path.exists() {
        bail!("no node identity in {}: run `kosd init` first", dir.display());
    }
    let pass = given_passphrase()?;
    Vault::load(&path, &pass).with_context(|| format!("cannot open {}", path.display()))
}

/// The node key from the vault.
fn load_identity(dir: &Path) -> anyhow::Result<SecretKey> {
    let vault = load_vault(dir)?;
    vault.get(NODE_KEY).cloned().with_context(|| format!("{} holds no node key", dir.display()))
}

/// The did:keys of the keys the node rotated away from (a store they own is the node's).
fn previous_dids(dir: &Path) -> anyhow::Result<Vec<String>> {
    if !vault_path(dir).exists() {
        return Ok(Vec::new());
    }
    let vault = load_vault(dir)?;
    Ok(core::VaultFile::previous_keys(&vault).iter().map(|k| k.public().to_did()).collect())
}

/// A key rotation cut short by a crash: the new key waits in the vault as `node-next`. If the
/// rotation was stored, the new key becomes the node key; if not, it is forgotten. Returns the
/// keys the node rotated away from, newest first.
fn finish_rotation(
    vault: &core::VaultFile,
    opened: &mut node::Opened,
) -> anyhow::Result<Vec<SecretKey>> {
    let v = Vault::load(&vault.path, &vault.passphrase)
        .with_context(|| format!("cannot open {}", vault.path.display()))?;
    if let Some(next) = v.get(core::NEXT_KEY).cloned() {
        let me = opened.key.public();
        let rotated = opened
            .engine
            .as_ref()
            .and_then(|e| e.keys().get(&me))
            .and_then(|r| r.end)
            .is_some_and(|end| end.how == kos_engine::Retirement::Rotated(next.public()));
        if rotated {
            vault.promote(&opened.key, &next)?;
            tracing::warn!(did = %next.public().to_did(), "finished a key rotation interrupted by a stop");
            opened.key = next;
        } else {
            vault.edit(|v| {
                v.remove(core::NEXT_KEY);
            })?;
            tracing::warn!(
                "a key rotation interrupted before it was signed: the node keeps its key"
            );
        }
    }
    let v = Vault::load(&vault.path, &vault.passphrase)?;
    Ok(core::VaultFile::previous_keys(&v))
}

fn init(dir: &Path, insecure_plain_key: bool) -> anyhow::Result<SecretKey> {
    let path = vault_path(dir);
    if path.exists() {
        bail!("{} already holds a node identity", dir.display());
    }
    let pass = passphrase(insecure_plain_key)?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let key = SecretKey::generate();
    let mut vault = Vault::new();
    vault.insert(NODE_KEY, key.clone());
    let params = if insecure_plain_key { KdfParams::INSECURE_FAST } else { KdfParams::STANDARD };
    vault.save(&path, &pass, params)?;
    let opts = kos_storage::OpenOptions {
        node_key: key.public().to_did(),
        new_identity: true,
        ..Default::default()
    };
    let (store, _) = kos_storage::Store::open_node(dir, &opts)?;
    store.checkpoint()?;
    Ok(key)
}

/// Whether `dir` holds node data (a store, a journal or a manifest).
fn has_data(dir: &Path) -> bool {
    ["store", "journal", "store.manifest"].iter().any(|p| dir.join(p).exists())
}

fn repair(dir: &Path) -> anyhow::Result<()> {
    let key = load_identity(dir)?;
    println!("repairing {}: rebuilding from the journal and the store", dir.display());
    let flags = node::OpenFlags {
        repair: true,
        existing_identity: true,
        previous_keys: previous_dids(dir)?,
        ..Default::default()
    };
    let (opened, r) = node::open_state(key, dir, flags)?;
    println!(
        "journal: {} records, {} bytes of torn tail cut, {} unreadable records skipped",
        r.journal.records,
        r.journal.truncated_bytes,
        r.journal.bad_records.len()
    );
    if let Some(p) = &r.store_moved_to {
        println!("store: could not be opened; moved to {} and rebuilt", p.display());
    }
    println!("store: {} messages restored from the journal", r.restored_from_journal);
    println!("journal: {} messages restored from the store", r.restored_from_store);
    println!(
        "lost: {} messages the manifest recorded could not be recovered{}",
        r.lost,
        if r.lost > 0 { " (peers send them again by sync)" } else { "" }
    );
    println!("now: {} messages", r.messages);
    opened.store.checkpoint()?;
    Ok(())
}

/// One effective setting: its name, value and where the value came from.
#[derive(serde::Serialize, Debug)]
struct Setting {
    key: &'static str,
    value: serde_json::Value,
    source: String,
}

/// Where each value of `args` came from: the command line, the environment, or neither.
#[derive(Default)]
struct Origins(Option<clap::ArgMatches>);

impl Origins {
    fn of(&self, id: &str, env: Option<&str>, in_file: bool, file: &Path) -> String {
        use clap::parser::ValueSource;
        match self.0.as_ref().and_then(|m| m.value_source(id)) {
            Some(ValueSource::CommandLine) => format!("flag --{}", id.replace('_', "-")),
            Some(ValueSource::EnvVariable) => format!("environment {}", env.unwrap_or("")),
            _ if in_file => format!("file {}", file.display()),
            _ => "default".to_owned(),
        }
    }
}

/// The settings of `kosd run` with these arguments, and every value's source.
fn settings(
    dir: &Path,
    args: &RunArgs,
    origins: &Origins,
) -> anyhow::Result<(node::Settings, Vec<Setting>)> {
    let file_path = args.config.clone().unwrap_or_else(|| dir.join("kosd.toml"));
    let file: FileConfig = match std::fs::read_to_string(&file_path) {
        Ok(text) => toml::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "invalid config {}: {}",
                file_path.display(),
                kos_clidoc::toml_error(&text, &e)
            )
        })?,
        Err(_) if args.config.is_none() => FileConfig::default(),
        Err(e) => bail!("cannot read {}: {e}", file_path.display()),
    };
    let mut shown = Vec::new();
    let mut note =
        |key: &'static str, env: Option<&str>, in_file: bool, value: serde_json::Value| {
            let source = origins.of(key, env, in_file, &file_path);
            shown.push(Setting { key, value, source });
        };
    let pick = |flag: &Vec<String>, file: Option<Vec<String>>, default: &[&str]| -> Vec<String> {
        if !flag.is_empty() {
            flag.clone()
        } else {
            file.unwrap_or_else(|| default.iter().map(|s| s.to_string()).collect())
        }
    };
    let listen_text = pick(
        &args.listen,
        file.listen.clone(),
        &["/ip4/0.0.0.0/tcp/4001", "/ip4/0.0.0.0/udp/4001/quic-v1"],
    );
    note("listen", Some("KOS_LISTEN"), file.listen.is_some(), serde_json::json!(listen_text));
    let listen = listen_text
        .iter()
        .map(|a| a.parse().with_context(|| format!("invalid listen address {a}")))
        .collect::<anyhow::Result<Vec<libp2p::Multiaddr>>>()?;
    let bootstrap_text = pick(&args.bootstrap, file.bootstrap.clone(), &[]);
    note(
        "bootstrap",
        Some("KOS_BOOTSTRAP"),
        file.bootstrap.is_some(),
        serde_json::json!(bootstrap_text),
    );
    let bootstrap = bootstrap_text
        .iter()
        .map(|a| a.parse().with_context(|| format!("invalid bootstrap address {a}")))
        .collect::<anyhow::Result<Vec<libp2p::Multiaddr>>>()?;
    let api = args.api.clone().or(file.api.clone()).unwrap_or_else(|| "127.0.0.1:7700".into());
    note("api", Some("KOS_API"), file.api.is_some(), serde_json::json!(api));
    let api: std::net::SocketAddr =
        api.parse().with_context(|| format!("invalid API address {api}"))?;
    if !api.ip().is_loopback() {
        bail!("the control API only listens on loopback addresses, not {api}");
    }
    let name = match args.name.clone().or(file.name.clone()) {
        Some(n) => match n.parse::<kos_protocol::Host>() {
            Ok(kos_protocol::Host::Name(canonical)) => Some(canonical),
            _ => bail!(
                "invalid --name {n}: a directory name is lower-case labels of a-z, 0-9 and '-', not a KLP-ID"
            ),
        },
        None => None,
    };
    note("name", Some("KOS_NAME"), file.name.is_some(), serde_json::json!(name));
    let sync_secs = args.sync_interval_secs.or(file.sync_interval_secs).unwrap_or(10).max(1);
    note(
        "sync_interval_secs",
        Some("KOS_SYNC_INTERVAL"),
        file.sync_interval_secs.is_some(),
        sync_secs.into(),
    );
    let max_connections = args.max_connections.or(file.max_connections).unwrap_or(128);
    note("max_connections", None, file.max_connections.is_some(), max_connections.into());
    let quota = core::Quota {
        burst: args.author_burst.or(file.author_burst).unwrap_or(limits::AUTHOR_BURST).max(1),
        per_minute: args
            .author_per_minute
            .or(file.author_per_minute)
            .unwrap_or(limits::AUTHOR_PER_MINUTE)
            .max(1),
    };
    note("author_burst", None, file.author_burst.is_some(), quota.burst.into());
    note("author_per_minute", None, file.author_per_minute.is_some(), quota.per_minute.into());
    let vector_kib = args.vector_kib_per_sec.or(file.vector_kib_per_sec);
    note(
        "vector_kib_per_sec",
        None,
        file.vector_kib_per_sec.is_some(),
        serde_json::json!(vector_kib),
    );
    shown.push(Setting {
        key: "data_dir",
        value: serde_json::json!(dir.display().to_string()),
        source: origins.of("data_dir", Some("KOS_DATA_DIR"), false, &file_path),
    });
    shown.push(Setting {
        key: "config_file",
        value: serde_json::json!(file_path.display().to_string()),
        source: if file_path.exists() { "read".into() } else { "absent (defaults apply)".into() },
    });
    shown.push(Setting {
        key: "passphrase",
        value: serde_json::json!("(not shown)"),
        source: match passphrase_source() {
            Some(p) => format!("file {}", p.display()),
            None if std::env::var_os("KOS_PASSPHRASE").is_some() => {
                "environment KOS_PASSPHRASE".into()
            }
            None => "none (a development vault, or the node cannot open its vault)".into(),
        },
    });
    let settings = node::Settings {
        name,
        data_dir: dir.to_path_buf(),
        listen,
        api,
        bootstrap,
        sync_interval: std::time::Duration::from_secs(sync_secs),
        max_connections,
        quota,
        vector_bytes_per_sec: vector_kib.map(|k| k.max(1).saturating_mul(1024)),
    };
    Ok((settings, shown))
}

fn config_show(dir: &Path, args: &RunArgs, origins: &Origins, json: bool) -> anyhow::Result<()> {
    let (_, shown) = settings(dir, args, origins)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&shown)?);
        return Ok(());
    }
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "—".into(),
        serde_json::Value::Array(a) if a.is_empty() => "none".into(),
        serde_json::Value::Array(a) => {
            a.iter().map(|x| x.as_str().unwrap_or_default()).collect::<Vec<_>>().join(", ")
        }
        other => other.to_string(),
    };
    let rows: Vec<(String, String)> =
        shown.iter().map(|s| (s.key.replace('_', " "), text(&s.value))).collect();
    let kw = rows.iter().map(|r| r.0.len()).max().unwrap_or(0) + 2;
    let vw = rows.iter().map(|r| r.1.chars().count()).max().unwrap_or(0).min(60) + 2;
    for ((k, v), s) in rows.iter().zip(&shown) {
        let gap = vw.saturating_sub(v.chars().count()).max(2);
        println!("{k:<kw$}{v}{:gap$}{}", "", s.source);
    }
    Ok(())
}

/// SIGHUP: reads the configuration again and applies what can change while running (the
/// per-author quotas; the `.klp-policy` is reloaded by the network task); says what needs a
/// restart.
async fn reload_on_hangup(
    dir: PathBuf,
    args: RunArgs,
    origins: Origins,
    running: node::Settings,
    core: core::CoreHandle,
) {
    let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
    else {
        return;
    };
    let mut current = running;
    while hangup.recv().await.is_some() {
        match settings(&dir, &args, &origins) {
            Err(e) => tracing::warn!("configuration not reloaded: {e:#}"),
            Ok((new, _)) => {
                let quota = new.quota;
                if quota != current.quota {
                    match core.call(move |c| c.set_quota(quota)).await {
                        Ok(()) => tracing::info!(
                            burst = quota.burst,
                            per_minute = quota.per_minute,
                            "configuration reloaded: per-author quota"
                        ),
                        Err(e) => tracing::warn!("configuration not reloaded: {e}"),
                    }
                }
                let restart: Vec<&str> = [
                    ("listen", new.listen != current.listen),
                    ("api", new.api != current.api),
                    ("bootstrap", new.bootstrap != current.bootstrap),
                    ("name", new.name != current.name),
                    ("sync_interval_secs", new.sync_interval != current.sync_interval),
                    ("max_connections", new.max_connections != current.max_connections),
                    (
                        "vector_kib_per_sec",
                        new.vector_bytes_per_sec != current.vector_bytes_per_sec,
                    ),
                ]
                .into_iter()
                .filter_map(|(k, changed)| changed.then_some(k))
                .collect();
                if !restart.is_empty() {
                    tracing::warn!(
                        "changed settings take effect at the next restart: {}",
                        restart.join(", ")
                    );
                }
                current = node::Settings { quota, ..current };
            }
        }
    }
}

fn run_node(dir: &Path, args: &RunArgs, origins: Origins) -> anyhow::Result<()> {
    // Kademlia warns "Failed to trigger bootstrap: No known peers" whenever a listen address
    // appears before any peer is known, that is on every first start: the node bootstraps on
    // its own tick once it knows peers, so kad's behaviour warnings stay quiet unless RUST_LOG
    // names libp2p_kad itself.
    let rust_log = std::env::var("RUST_LOG").unwrap_or_default();
    let mut filter = tracing_subscriber::EnvFilter::try_new(if rust_log.is_empty() {
        "info"
    } else {
        &rust_log
    })
    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if !rust_log.contains("libp2p_kad")
        && let Ok(quiet) = "libp2p_kad::behaviour=error".parse()
    {
        filter = filter.add_directive(quiet);
    }
    // Colour only on a terminal, and never under NO_COLOR (journald and log files get plain text).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    if args.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
    let (settings, _) = settings(dir, args, &origins)?;
    let progress = kos_node::progress::Progress::default();
    let existing_identity = vault_path(dir).exists();
    let key = if existing_identity {
        load_identity(dir)?
    } else {
        if has_data(dir) && !args.new_identity {
            bail!(
                "{} has a store but no vault.bin: restore the vault to keep this node's identity, \
                 or start with --new-identity to create a new one next to the existing store",
                dir.display()
            );
        }
        let key = init(dir, args.insecure_plain_key)?;
        tracing::info!(did = %key.public().to_did(), "created a new node identity");
        key
    };
    let flags = node::OpenFlags {
        new_identity: args.new_identity,
        // A directory filled by `kosctl import` starts with an empty store (peers send the rest).
        fresh_store: args.fresh_store || dir.join(IMPORT_FILE).exists(),
        repair: false,
        existing_identity,
        previous_keys: previous_dids(dir)?,
        progress: progress.clone(),
    };
    let (mut opened, _) = node::open_state(key, dir, flags)?;
    let vault_file = core::VaultFile { path: vault_path(dir), passphrase: given_passphrase()? };
    let previous_keys = finish_rotation(&vault_file, &mut opened)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let metrics = std::sync::Arc::new(metrics::Metrics::default());
        let (to_net, from_core) = tokio::sync::mpsc::channel(core::NET_QUEUE);
        let (commands_tx, commands) = tokio::sync::mpsc::channel(node::COMMAND_QUEUE);
        let (view_tx, view) = tokio::sync::watch::channel(node::NetView::default());
        let store = opened.store.clone();
        let federation = opened.engine.as_ref().map(kos_engine::Engine::federation);
        let key = opened.key.clone();
        let policy_path = settings.data_dir.join(policy::POLICY_FILE);
        let policy_text = std::fs::read_to_string(&policy_path).unwrap_or_default();
        let policy = std::sync::Arc::new(std::sync::Mutex::new(
            policy::Policy::new(&policy_text, None)
                .with_context(|| format!("{} is not a valid policy", policy_path.display()))?,
        ));
        let mut the_core = core::Core::new(opened, metrics.clone(), to_net.clone(), settings.quota);
        the_core.policy = Some(policy.clone());
        the_core.vault = Some(vault_file);
        the_core.progress = progress.clone();
        let (core, core_thread) = core::spawn(the_core)?;
        tokio::spawn(reload_on_hangup(
            dir.to_path_buf(),
            args.clone(),
            origins,
            settings.clone(),
            core.clone(),
        ));
        // On the core thread, which may block on the network queue (this task may not).
        let import_dir = settings.data_dir.clone();
        core.call(move |c| apply_import(&import_dir, c))
            .await
            .map_err(|e| anyhow::anyhow!("core: {e}"))??;
        let api = tokio::spawn(api::serve(
            api::ApiParts {
                core: core.clone(),
                net: commands_tx,
                view,
                metrics: metrics.clone(),
                store: store.clone(),
                policy: policy.clone(),
                name: settings.name.clone(),
                progress: progress.clone(),
            },
            settings.api,
            settings.data_dir.clone(),
        ));
        let net = tokio::spawn(node::run(
            settings,
            key,
            node::NetParts {
                core: core.clone(),
                store,
                metrics,
                federation,
                from_core,
                to_net,
                commands,
                view: view_tx,
                policy,
                previous_keys,
                progress,
            },
        ));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let result = tokio::select! {
            r = api => r.map_err(anyhow::Error::from).and_then(|r| r),
            r = net => r.map_err(anyhow::Error::from).and_then(|r| r),
            _ = tokio::signal::ctrl_c() => Ok(()),
            _ = term.recv() => Ok(()),
        };
        // Graceful shutdown: everything accepted is on disk, and the manifest says how much.
        core.shutdown().await;
        let _ = tokio::task::spawn_blocking(move || core_thread.join()).await;
        tracing::info!("stopped");
        result
    })
}

/// Applies what `kosctl import` left for the first start (`<data-dir>/import.json`): local
/// trust, known peers, the federation to follow. The file is renamed once applied.
fn apply_import(dir: &Path, core: &mut core::Core) -> anyhow::Result<()> {
    let path = dir.join(IMPORT_FILE);
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(()) };
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    for pair in v["trust"].as_array().into_iter().flatten() {
        if let (Some(t), Some(l)) = (pair[0].as_str(), pair[1].as_str()) {
            core.store.set_trust(t, l)?;
        }
    }
    for pair in v["peers"].as_array().into_iter().flatten() {
        if let Some(p) = pair[0].as_str() {
            let addrs: Vec<String> = pair[1]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a.as_str().map(str::to_owned))
                .collect();
            core.store.put_peer(p, &addrs)?;
        }
    }
    if let Some(f) = v["federation"].as_str()
        && core.engine.is_none()
    {
        let fed = f
            .parse()
            .map_err(|_| anyhow::anyhow!("invalid federation id in {}", path.display()))?;
        core.follow(fed)?;
    }
    core.store
        .audit(node::now_ms(), "applied an imported identity's trust, peers and federation")?;
    core.store.flush()?;
    std::fs::rename(&path, dir.join("import.applied.json"))?;
    tracing::info!("applied {}", path.display());
    Ok(())
}

/// The file `kosctl import` leaves for the node's first start.
const IMPORT_FILE: &str = "import.json";

fn run(cli: Cli, matches: &clap::ArgMatches) -> anyhow::Result<()> {
    let dir = &cli.data_dir;
    // The matches of the subcommand that takes `kosd run`'s flags: where each value came from.
    let sub = |path: &[&str]| {
        let mut m = matches;
        for name in path {
            m = m.subcommand_matches(name)?;
        }
        Some(m.clone())
    };
    match cli.command {
        Command::Run(args) => run_node(dir, &args, Origins(sub(&["run"]))),
        Command::Config(ConfigCmd::Show { json, run }) => {
            config_show(dir, &run, &Origins(sub(&["config", "show"])), json)
        }
        Command::Devnet { nodes } => devnet::run(dir, nodes),
        Command::Repair => repair(dir),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            kos_clidoc::print_completions(shell, Cli::command())
                .context("cannot write the completion script")
        }
        Command::Man { out } => {
            use clap::CommandFactory;
            for path in kos_clidoc::write_man_pages(Cli::command(), out.as_deref())
                .context("cannot write the manual pages")?
            {
                eprintln!("wrote {}", path.display());
            }
            Ok(())
        }
        Command::Init { insecure_plain_key } => {
            if has_data(dir) && !vault_path(dir).exists() {
                bail!(
                    "{} already holds a store: start it with `kosd run --new-identity` to give it \
                     a new identity",
                    dir.display()
                );
            }
            let key = init(dir, insecure_plain_key)?;
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
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    match run(cli, &matches) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kosd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
