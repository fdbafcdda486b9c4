//! `kosctl`: command-line control of a kOS node, through its local control API.
//!
//! The API address and token are read from the node's data directory (`api.addr`,
//! `api.token`), or given with `--api` and `--token`. `kosctl decode` works offline.

mod client;
mod render;
mod style;

use std::{io::Read, path::PathBuf, process::ExitCode};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use kos_protocol::{MAX_ENVELOPE_LEN, Message, diagnostic};

/// Envelopes per `POST /v1/messages` call.
const SUBMIT_CHUNK: usize = 256;

#[derive(Parser, Debug)]
#[command(name = "kosctl", version, about = "Control a kOS node")]
struct Cli {
    /// Print JSON.
    #[arg(long, global = true)]
    json: bool,
    /// The node's data directory (for its API address and token).
    #[arg(long, env = "KOS_DATA_DIR", default_value = "kos-data", global = true)]
    data_dir: PathBuf,
    /// API address (overrides the data directory's `api.addr`).
    #[arg(long, env = "KOS_API_ADDR", global = true)]
    api: Option<String>,
    /// API token (overrides the data directory's `api.token`).
    #[arg(long, env = "KOS_API_TOKEN", global = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum FederationCmd {
    /// Found a federation: this node plus the given members.
    Create {
        /// Name.
        name: String,
        /// A founding member: `did:key:…` or `did:key:…=LEVEL` (default level standard).
        #[arg(long = "member")]
        members: Vec<String>,
        /// Timings in seconds (development and tests).
        #[arg(long)]
        dev_timing: bool,
        /// A charter file (TOML, see docs/charter.example.toml): members with roles, stake and
        /// trust, governance bodies, voting defaults per proposal type, timing, weights.
        #[arg(long)]
        charter: Option<PathBuf>,
    },
    /// Follow a federation, syncing from a bootstrap peer.
    Join {
        /// Federation id.
        federation: String,
        /// A peer's multiaddr.
        #[arg(long)]
        bootstrap: Option<String>,
    },
    /// Show the federation and its members.
    Show,
}

#[derive(Subcommand, Debug)]
enum InboxCmd {
    /// List the messages sealed to this node (the default).
    List,
    /// One message, with its envelope.
    Show {
        /// Message id.
        id: String,
    },
    /// Delete a message.
    Delete {
        /// Message id.
        id: String,
    },
}

#[derive(Subcommand, Debug)]
enum VectorCmd {
    /// Transfers sent and received, with progress (the default).
    List,
    /// Send a file of little-endian f32 vectors: the recipient pulls it in verified chunks and
    /// resumes after any break.
    Send {
        /// The file (on this machine; kosd reads it).
        file: PathBuf,
        /// The recipient: `klp://NAME`, `klp://KLP-ID`, `agent://…`.
        #[arg(long)]
        to: String,
        /// Collection name.
        #[arg(long)]
        collection: String,
        /// Dimensions per vector.
        #[arg(long)]
        dims: u16,
    },
}

#[derive(Subcommand, Debug)]
enum IdCmd {
    /// The node's did, member identity, key generation, peer id and KLP-ID (the default).
    Show,
    /// Replace the node key: a KEY_ROTATION signed by the old key and proved by a new one
    /// (sealed in the vault first). Weight, roles, delegations and pending ballots follow.
    Rotate,
    /// Revoke the node key (it signs nothing that counts from now on), or a key it rotated
    /// away from.
    Revoke {
        /// The key to revoke (did:key); default: the node key.
        #[arg(long)]
        key: Option<String>,
        /// Why (kept in the signed message).
        #[arg(long)]
        reason: String,
    },
}

#[derive(Subcommand, Debug)]
enum PolicyCmd {
    /// The `.klp-policy` in force: this node's and the federation's.
    Show,
    /// Check a policy file and apply it at once (written to the data directory).
    Apply {
        /// The policy file (TOML).
        file: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum AuditCmd {
    /// Re-compute the audit log's hash chain.
    Verify,
    /// The last entries of the audit log.
    Show {
        /// How many (at most 1000).
        #[arg(long, default_value_t = 50)]
        last: usize,
    },
}

/// `propose` flags, or a TOML file with the same keys.
#[derive(clap::Args, Debug, serde::Serialize, serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ProposeArgs {
    /// Proposal type (configuration, membership, trust_adjustment, …).
    #[arg(long)]
    #[serde(default)]
    kind: Option<String>,
    /// Title.
    #[arg(long)]
    #[serde(default)]
    title: Option<String>,
    /// Description.
    #[arg(long)]
    #[serde(default)]
    description: Option<String>,
    /// Scope (global, regional, local, emergency).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
    /// Configuration key.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    /// New value (configuration) or version (protocol_upgrade).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    /// Expected old configuration value.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    old: Option<String>,
    /// Member (did:key) for trust, membership and emergency actions.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    member: Option<String>,
    /// Trust level.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    level: Option<String>,
    /// add or remove (membership).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    membership: Option<String>,
    /// Policy document (policy proposals).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    policy: Option<String>,
    /// Roll back the execution of this proposal (its id) — propose it with the kind of the
    /// proposal it undoes.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rollback: Option<String>,
    /// An option (approval or ranked-choice voting), repeatable.
    #[arg(long = "option")]
    #[serde(default)]
    options: Vec<String>,
    /// Discussion length in seconds.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    discussion_secs: Option<u64>,
    /// Voting length in seconds.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    voting_secs: Option<u64>,
    /// Decision rule instead of the charter's default for the type: simple_majority,
    /// supermajority:N/D, consensus, plurality (approval ballots over the options) or
    /// instant_runoff (ranked ballots).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rule: Option<String>,
    /// Weighting: one_person_one_vote, trust, stake, role or hybrid.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    weighting: Option<String>,
    /// Secret ballot (commit, then reveal).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    secret: Option<bool>,
    /// Quorum as N/D of the eligible weight.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    quorum: Option<String>,
    /// Veto threshold as N/D of the participation.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    veto: Option<String>,
    /// Sponsors needed before discussion opens.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sponsors: Option<u16>,
    /// Close early once the outcome cannot change.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    early_close: Option<bool>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The node's status.
    #[command(
        after_help = "Examples:\n  kosctl status\n  kosctl --data-dir /var/lib/kos status --json"
    )]
    Status,
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  kosctl completions bash > /etc/bash_completion.d/kosctl\n  kosctl completions zsh > \"${fpath[1]}/_kosctl\"\n  kosctl completions fish > ~/.config/fish/completions/kosctl.fish"
    )]
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: kos_clidoc::Shell,
    },
    /// Write the manual pages (kosctl.1 and one page per command).
    Man {
        /// Directory for the pages; without it, kosctl.1 goes to standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Open the web dashboard: prints a sign-in link that works once, within 5 minutes.
    #[command(
        after_help = "Example:\n  kosctl dashboard        # then open the printed link in a browser on this machine"
    )]
    Dashboard,
    /// The node's identity; `rotate` and `revoke` change its key.
    Id {
        #[command(subcommand)]
        command: Option<IdCmd>,
    },
    /// Connected and known peers.
    Peers,
    /// Dial a peer: a multiaddr or `peer://ID`.
    Connect {
        /// Address.
        addr: String,
    },
    /// Close connections to a peer.
    Disconnect {
        /// Peer id.
        peer: String,
    },
    /// Refuse a peer's connections (and drop the current ones).
    Block {
        /// Peer id.
        peer: String,
    },
    /// Accept a blocked peer again.
    Unblock {
        /// Peer id.
        peer: String,
    },
    /// Set this node's local trust in a peer or agent.
    Trust {
        /// `peer://…`, `agent://…` or `klp://…`.
        target: String,
        /// core, trusted, standard, sandbox or quarantine.
        level: String,
    },
    /// Federations.
    #[command(subcommand)]
    Federation(FederationCmd),
    /// Create a proposal, from flags or a TOML file.
    Propose {
        #[command(flatten)]
        args: Box<ProposeArgs>,
        /// TOML file with the same keys as the flags.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// List proposals.
    Proposals {
        /// Only this status (seeking_sponsors, discussion, voting, reveal, approved, …).
        #[arg(long)]
        status: Option<String>,
        /// Only this proposal type.
        #[arg(long)]
        kind: Option<String>,
        /// Only proposals by this author (did:key).
        #[arg(long)]
        author: Option<String>,
    },
    /// Show a proposal.
    Show {
        /// Proposal id.
        id: String,
    },
    /// Comment on a proposal.
    Comment {
        /// Proposal id.
        id: String,
        /// Text.
        text: String,
        /// comment, suggestion, objection, support or summary.
        #[arg(long)]
        kind: Option<String>,
        /// The comment replied to.
        #[arg(long)]
        parent: Option<String>,
    },
    /// Publish a new revision of your proposal (during discussion).
    Revise {
        /// Proposal id.
        id: String,
        #[command(flatten)]
        args: Box<ProposeArgs>,
    },
    /// Sponsor a proposal.
    Sponsor {
        /// Proposal id.
        id: String,
    },
    /// Withdraw your proposal (before voting).
    Withdraw {
        /// Proposal id.
        id: String,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Vote: yes, no, abstain, veto, approve:I,J or rank:I,J.
    Vote {
        /// Proposal id.
        id: String,
        /// Choice.
        choice: String,
        /// Reasoning.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Reveal this node's secret ballot on a proposal (the node also reveals by itself when
    /// voting ends).
    Reveal {
        /// Proposal id.
        id: String,
    },
    /// Delegate your vote (no --to: revoke).
    Delegate {
        /// Delegate's did:key.
        #[arg(long)]
        to: Option<String>,
        /// all, kind:TYPE or scope:SCOPE.
        #[arg(long)]
        scope: Option<String>,
    },
    /// Look up an address in the directory: `klp://NAME-OR-KLP-ID/…` or `agent://…`.
    Resolve {
        /// The address.
        address: String,
    },
    /// Send an encrypted KLP message: sealed to the recipient, delivered hop by hop (through
    /// relays that see only ciphertext when there is no direct connection).
    Send {
        /// `klp://NAME-OR-KLP-ID/PATH` or `agent://…`.
        address: String,
        /// TASK_REQUEST, TASK_RESULT or BROADCAST_ANNOUNCE.
        #[arg(long = "type")]
        kind: String,
        /// The body as JSON, or a file holding it.
        #[arg(long)]
        payload: String,
    },
    /// Chunked vector transfers to and from other nodes (VECTOR_SYNC).
    Vector {
        #[command(subcommand)]
        command: Option<VectorCmd>,
    },
    /// Messages sealed to this node.
    Inbox {
        #[command(subcommand)]
        command: Option<InboxCmd>,
    },
    /// Answer a TASK_REQUEST from the inbox with a TASK_RESULT bound to it.
    Reply {
        /// The request's id.
        id: String,
        /// An output (repeatable).
        #[arg(long = "output")]
        outputs: Vec<String>,
        /// The task failed, with this error.
        #[arg(long)]
        error: Option<String>,
    },
    /// Messages waiting for a next hop, and those given up.
    Outbox,
    /// Export this node (identity sealed under its passphrase, local trust, policy, peers,
    /// directory name, federation) to a file, signed by the identity.
    Export {
        /// The file to write (YAML, in its JSON form).
        #[arg(long, default_value = "kind-export.yaml")]
        out: PathBuf,
    },
    /// Restore an exported node into a fresh data directory (before its first start). Needs the
    /// exporting node's passphrase (`KOS_PASSPHRASE`), or `--insecure-plain-key` for a
    /// development node.
    Import {
        /// The export file.
        file: PathBuf,
        /// The exported vault is under an empty passphrase (development nodes).
        #[arg(long)]
        insecure_plain_key: bool,
    },
    /// Publish an advisory reputation change about a member (REPUTATION_DELTA): receivers weigh
    /// it by their trust in this node, cap it per sender, and never change trust by it.
    Reputation {
        /// The subject's did:key.
        subject: String,
        /// The change in thousandths (−1000 … 1000).
        #[arg(allow_hyphen_values = true)]
        delta: i32,
        /// Why.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Publish a BROADCAST_ANNOUNCE on the federation's announcement topic (members' inboxes).
    Announce {
        /// The text.
        text: String,
        /// The topic (a short label: `maintenance`, `status`, …).
        #[arg(long, default_value = "status")]
        topic: String,
    },
    /// The `.klp-policy`.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Whom a member (default: this node) delegates to, and who delegates to it — directly or
    /// through a chain — for each scope.
    Delegations {
        /// The member's did:key.
        #[arg(long)]
        member: Option<String>,
    },
    /// Submit envelopes signed elsewhere (an agent, another tool): a file with one envelope in
    /// hex per line (`-` reads standard input). Each is verified and judged like any message;
    /// fails if any is refused.
    Submit {
        /// The file.
        file: PathBuf,
    },
    /// Local tally, attestations and finality of a proposal.
    Tally {
        /// Proposal id.
        id: String,
    },
    /// Export a final proposal's certificate (signed charter, proposal and attestations).
    Certificate {
        /// Proposal id.
        id: String,
        /// Write it to this file (default: standard output).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Check a certificate file offline, against the charter it carries. Exit status 1 if invalid.
    VerifyCertificate {
        /// The certificate file.
        file: std::path::PathBuf,
    },
    /// Export the inclusion receipt of a voter's counted ballot under the certified votes root.
    Receipt {
        /// Proposal id.
        id: String,
        /// The voter's did:key (default: this node's identity).
        #[arg(long)]
        voter: Option<String>,
        /// Write it to this file (default: standard output).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Check a receipt file offline: its certificate, the ballot's signature and its Merkle path.
    VerifyReceipt {
        /// The receipt file.
        file: std::path::PathBuf,
    },
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// A message from the node's store, decoded (the envelope exactly as it travelled).
    Message {
        /// Message id.
        id: String,
        /// Print the envelope in hex instead.
        #[arg(long)]
        hex: bool,
    },
    /// Decode and verify a KLP envelope (hex, or raw bytes with --raw) from a file or stdin.
    Decode {
        /// File to read; `-` or absent for standard input.
        file: Option<String>,
        /// The input is raw bytes, not hex.
        #[arg(long)]
        raw: bool,
    },
}

fn read_input(file: Option<&str>) -> anyhow::Result<Vec<u8>> {
    // Read at most twice the hex length of the largest envelope, plus slack for whitespace.
    let limit = (2 * MAX_ENVELOPE_LEN + 4096) as u64;
    let mut buf = Vec::new();
    match file {
        None | Some("-") => std::io::stdin().take(limit + 1).read_to_end(&mut buf),
        Some(path) => std::fs::File::open(path)
            .with_context(|| format!("cannot open {path}"))?
            .take(limit + 1)
            .read_to_end(&mut buf),
    }
    .context("cannot read input")?;
    if buf.len() as u64 > limit {
        bail!("input is larger than any KLP envelope ({MAX_ENVELOPE_LEN} bytes)");
    }
    Ok(buf)
}

/// Most bytes of a certificate or receipt file: a charter of at most 512 members and one
/// attestation per member, hex-encoded, with room to spare.
const MAX_BUNDLE_LEN: u64 = 16 << 20;

fn read_json<T: serde::de::DeserializeOwned>(file: &std::path::Path) -> anyhow::Result<T> {
    let f = std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let mut buf = Vec::new();
    f.take(MAX_BUNDLE_LEN + 1)
        .read_to_end(&mut buf)
        .with_context(|| format!("cannot read {}", file.display()))?;
    if buf.len() as u64 > MAX_BUNDLE_LEN {
        bail!("{} is larger than {MAX_BUNDLE_LEN} bytes", file.display());
    }
    serde_json::from_slice(&buf).with_context(|| format!("{} is not a kOS file", file.display()))
}

fn write_out(v: &serde_json::Value, out: Option<&std::path::Path>) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(v)?;
    match out {
        Some(path) => {
            std::fs::write(path, text + "\n")
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
        None => println!("{text}"),
    }
    Ok(())
}

/// One example per command, shown at the end of its `--help` and in its manual page.
const EXAMPLES: &[(&str, &str)] = &[
    ("status", "kosctl status\n  kosctl --data-dir /var/lib/kos status --json"),
    (
        "completions",
        "kosctl completions bash > /etc/bash_completion.d/kosctl\n  kosctl completions fish > ~/.config/fish/completions/kosctl.fish",
    ),
    ("man", "kosctl man --out /usr/local/share/man/man1 && man kosctl-vote"),
    (
        "dashboard",
        "kosctl dashboard        # then open the printed link in a browser on this machine",
    ),
    ("id", "kosctl id\n  kosctl id rotate\n  kosctl id revoke --reason \"laptop stolen\""),
    ("peers", "kosctl peers"),
    (
        "connect",
        "kosctl connect /ip4/192.0.2.7/tcp/4001/p2p/12D3KooW…\n  kosctl connect peer://12D3KooW…",
    ),
    ("disconnect", "kosctl disconnect 12D3KooW…"),
    ("block", "kosctl block 12D3KooW…"),
    ("unblock", "kosctl unblock 12D3KooW…"),
    (
        "trust",
        "kosctl trust peer://12D3KooW… quarantine\n  kosctl trust agent://did:key:z6Mk… trusted",
    ),
    (
        "federation",
        "kosctl federation create demo --member did:key:z6Mk…=trusted\n  kosctl federation create coop --charter docs/charter.example.toml\n  kosctl federation join FEDERATION_ID --bootstrap /ip4/192.0.2.7/tcp/4001/p2p/12D3KooW…\n  kosctl federation show",
    ),
    (
        "propose",
        "kosctl propose --kind configuration --title \"Raise the relay quota\" --description \"Doubles it.\" --key relay.quota --value 120\n  kosctl propose --kind configuration --title \"Logo\" --description \"Pick one\" --option red --option blue --rule plurality\n  kosctl propose --file proposal.toml",
    ),
    ("proposals", "kosctl proposals --status voting"),
    ("show", "kosctl show PROPOSAL_ID"),
    ("comment", "kosctl comment PROPOSAL_ID \"I support this\" --kind support"),
    (
        "revise",
        "kosctl revise PROPOSAL_ID --title \"Raise the relay quota to 150\" --description \"Revised.\" --key relay.quota --value 150",
    ),
    ("sponsor", "kosctl sponsor PROPOSAL_ID"),
    ("withdraw", "kosctl withdraw PROPOSAL_ID --reason \"superseded\""),
    (
        "vote",
        "kosctl vote PROPOSAL_ID yes --reason \"cheap and reversible\"\n  kosctl vote PROPOSAL_ID approve:0,2\n  kosctl vote PROPOSAL_ID rank:2,0,1",
    ),
    ("reveal", "kosctl reveal PROPOSAL_ID"),
    (
        "delegate",
        "kosctl delegate --to did:key:z6Mk… --scope kind:configuration\n  kosctl delegate --scope kind:configuration      # revokes it",
    ),
    ("resolve", "kosctl resolve klp://worker/tasks"),
    (
        "send",
        "kosctl send klp://worker/tasks --type TASK_REQUEST --payload '{\"inputs\":[\"summarise\"],\"task_id\":\"t1\"}'",
    ),
    (
        "vector",
        "kosctl vector send embeddings.bin --to klp://worker --collection docs --dims 384\n  kosctl vector",
    ),
    ("inbox", "kosctl inbox\n  kosctl inbox show MESSAGE_ID"),
    ("reply", "kosctl reply MESSAGE_ID --output \"done\""),
    ("outbox", "kosctl outbox"),
    ("export", "KOS_PASSPHRASE=… kosctl export --out node-backup.json"),
    ("import", "KOS_PASSPHRASE=… kosctl --data-dir new-node import node-backup.json"),
    ("reputation", "kosctl reputation did:key:z6Mk… -5 --reason \"dropped tasks\""),
    ("announce", "kosctl announce \"maintenance tonight at 22:00 UTC\""),
    ("policy", "kosctl policy show\n  kosctl policy apply docs/klp-policy.example.toml"),
    ("delegations", "kosctl delegations\n  kosctl delegations --member did:key:z6Mk…"),
    ("submit", "kosctl submit envelopes.hex\n  some-agent | kosctl submit -"),
    ("tally", "kosctl tally PROPOSAL_ID"),
    ("certificate", "kosctl certificate PROPOSAL_ID --out cert.json"),
    ("verify-certificate", "kosctl verify-certificate cert.json"),
    ("receipt", "kosctl receipt PROPOSAL_ID --out receipt.json"),
    ("verify-receipt", "kosctl verify-receipt receipt.json"),
    ("audit", "kosctl audit show --last 20\n  kosctl audit verify"),
    ("message", "kosctl message MESSAGE_ID"),
    ("decode", "kosctl decode envelope.hex\n  kosctl decode --raw envelope.bin"),
];

/// The command line, with each command's example.
fn command() -> clap::Command {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    for (name, example) in EXAMPLES {
        let label = if example.contains('\n') { "Examples" } else { "Example" };
        cmd = cmd.mut_subcommand(*name, |c| c.after_help(format!("{label}:\n  {example}")));
    }
    cmd
}

/// `man`: the pages, and the files written on standard error.
fn man_pages(cmd: clap::Command, out: Option<&std::path::Path>) -> anyhow::Result<()> {
    for path in kos_clidoc::write_man_pages(cmd, out).context("cannot write the manual pages")? {
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let api = || client::Client::new(&cli.data_dir, cli.api.as_deref(), cli.token.as_deref());
    let show = |v: serde_json::Value| client::print(&v, cli.json);

    match cli.command {
        Command::Completions { shell } => kos_clidoc::print_completions(shell, command())
            .context("cannot write the completion script"),
        Command::Man { out } => man_pages(command(), out.as_deref()),
        Command::Dashboard => {
            let v = api()?.post("/v1/dashboard/link", serde_json::json!({}))?;
            if cli.json {
                println!("{v}");
            } else {
                println!("{}", v["url"].as_str().unwrap_or_default());
                eprintln!(
                    "Open it in a browser on this machine; it works once, within 5 minutes \
                     (or sign in with the token in {}).",
                    cli.data_dir.join("api.token").display()
                );
            }
            Ok(())
        }
        Command::Status => human(api()?.get("/v1/status")?, cli.json, render::status),
        Command::Reveal { id } => {
            let v = api()?.post(&format!("/v1/proposals/{id}/reveal"), serde_json::json!({}))?;
            let n = v["revealed"].as_array().map_or(0, Vec::len);
            let headline = if n == 0 {
                "Nothing to reveal: this node has no committed ballot on it left unrevealed."
                    .to_owned()
            } else {
                format!("Revealed this node's ballot; `kosctl tally {id}` now counts it.")
            };
            done(v, cli.json, &headline)
        }
        Command::Submit { file } => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).context("cannot read standard input")?
            } else {
                std::fs::read_to_string(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?
            };
            let lines: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .collect();
            let client = api()?;
            let (mut counts, mut errors) = (std::collections::BTreeMap::new(), Vec::new());
            let mut progress = render::Progress::new("submitted", lines.len(), "envelopes");
            for (n, chunk) in lines.chunks(SUBMIT_CHUNK).enumerate() {
                let r = client.post("/v1/messages", serde_json::json!({ "envelopes": chunk }))?;
                progress.advance(chunk.len());
                for (i, item) in r["results"].as_array().into_iter().flatten().enumerate() {
                    match item["status"].as_str() {
                        Some(s) => *counts.entry(s.to_owned()).or_insert(0u64) += 1,
                        None => errors.push(serde_json::json!({
                            "line": n * SUBMIT_CHUNK + i + 1,
                            "error": item["error"],
                        })),
                    }
                }
            }
            progress.finish();
            let refused = errors.len();
            show(serde_json::json!({
                "accepted": counts.get("accepted").copied().unwrap_or(0),
                "held": counts.get("held").copied().unwrap_or(0),
                "duplicate": counts.get("duplicate").copied().unwrap_or(0),
                "refused": refused,
                "errors": errors.into_iter().take(20).collect::<Vec<_>>(),
            }))?;
            if refused > 0 {
                bail!("{refused} envelope(s) refused");
            }
            Ok(())
        }
        Command::Id { command } => match command.unwrap_or(IdCmd::Show) {
            IdCmd::Show => {
                let s = api()?.get("/v1/status")?;
                show(serde_json::json!({
                    "did": s["did"],
                    "member": s["member"],
                    "key_generation": s["key_generation"],
                    "key_retired": s["key_retired"],
                    "peer_id": s["peer_id"],
                    "klp_id": s["klp_id"],
                }))
            }
            IdCmd::Rotate => show(api()?.post("/v1/id/rotate", serde_json::json!({}))?),
            IdCmd::Revoke { key, reason } => show(
                api()?.post("/v1/id/revoke", serde_json::json!({"key": key, "reason": reason}))?,
            ),
        },
        Command::Peers => human(api()?.get("/v1/peers")?, cli.json, render::peers),
        Command::Connect { addr } => {
            show(api()?.post("/v1/connect", serde_json::json!({"addr": addr}))?)
        }
        Command::Disconnect { peer } => {
            show(api()?.post("/v1/disconnect", serde_json::json!({"peer": peer}))?)
        }
        Command::Block { peer } => {
            show(api()?.post("/v1/block", serde_json::json!({"peer": peer}))?)
        }
        Command::Unblock { peer } => {
            show(api()?.post("/v1/unblock", serde_json::json!({"peer": peer}))?)
        }
        Command::Trust { target, level } => {
            show(api()?.post("/v1/trust", serde_json::json!({"target": target, "level": level}))?)
        }
        Command::Federation(FederationCmd::Create { name, members, dev_timing, charter }) => {
            let charter = match charter {
                Some(f) => {
                    let text = std::fs::read_to_string(&f)
                        .with_context(|| format!("cannot read {}", f.display()))?;
                    let v: toml::Value = toml::from_str(&text).map_err(|e| {
                        anyhow::anyhow!(
                            "invalid charter file {}: {}",
                            f.display(),
                            kos_clidoc::toml_error(&text, &e)
                        )
                    })?;
                    Some(serde_json::to_value(v).context("charter file")?)
                }
                None => None,
            };
            let headline = format!("Founded the federation {name}; this node is its first member.");
            done(
                api()?.post(
                    "/v1/federation/create",
                    serde_json::json!({"name": name, "members": members, "dev_timing": dev_timing,
                        "charter": charter}),
                )?,
                cli.json,
                &headline,
            )
        }
        Command::Federation(FederationCmd::Join { federation, bootstrap }) => done(
            api()?.post(
                "/v1/federation/join",
                serde_json::json!({"federation": federation, "bootstrap": bootstrap}),
            )?,
            cli.json,
            "Following the federation; its messages arrive by sync (kosctl status shows progress).",
        ),
        Command::Federation(FederationCmd::Show) => {
            human(api()?.get("/v1/federation")?, cli.json, render::federation)
        }
        Command::Propose { args, file } => {
            let mut args = *args;
            if let Some(f) = file {
                let text = std::fs::read_to_string(&f)
                    .with_context(|| format!("cannot read {}", f.display()))?;
                let from_file: ProposeArgs = toml::from_str(&text).map_err(|e| {
                    anyhow::anyhow!(
                        "invalid proposal file {}: {}",
                        f.display(),
                        kos_clidoc::toml_error(&text, &e)
                    )
                })?;
                args = merge(from_file, args);
            }
            for (name, v) in [
                ("--kind", &args.kind),
                ("--title", &args.title),
                ("--description", &args.description),
            ] {
                if v.is_none() {
                    bail!("{name} is required (as a flag or in --file)");
                }
            }
            let v = api()?.post("/v1/proposals", serde_json::to_value(&args)?)?;
            let headline = format!(
                "Proposal created. `kosctl show {}` follows it.",
                v["id"].as_str().unwrap_or("ID")
            );
            done(v, cli.json, &headline)
        }
        Command::Proposals { status, kind, author } => {
            let mut v = api()?.get("/v1/proposals")?;
            if let Some(list) = v["proposals"].as_array_mut() {
                for (field, want) in [("status", status), ("kind", kind), ("author", author)] {
                    if let Some(w) = want {
                        list.retain(|p| p[field].as_str() == Some(w.as_str()));
                    }
                }
            }
            human(v, cli.json, render::proposals)
        }
        Command::Show { id } => {
            let v = api()?.get(&format!("/v1/proposals/{id}"))?;
            human(v, cli.json, render::proposal)
        }
        Command::Comment { id, text, kind, parent } => done(
            api()?.post(
                &format!("/v1/proposals/{id}/comment"),
                serde_json::json!({"text": text, "kind": kind, "parent": parent}),
            )?,
            cli.json,
            "Comment posted.",
        ),
        Command::Revise { id, args } => {
            let mut args = *args;
            if args.kind.is_none() {
                args.kind = Some("unused".into());
            }
            for (name, v) in [("--title", &args.title), ("--description", &args.description)] {
                if v.is_none() {
                    bail!("{name} is required");
                }
            }
            let v =
                api()?.post(&format!("/v1/proposals/{id}/revise"), serde_json::to_value(&args)?)?;
            done(v, cli.json, "Revision published.")
        }
        Command::Sponsor { id } => done(
            api()?.post(&format!("/v1/proposals/{id}/sponsor"), serde_json::json!({}))?,
            cli.json,
            "Sponsored.",
        ),
        Command::Withdraw { id, reason } => done(
            api()?.post(
                &format!("/v1/proposals/{id}/withdraw"),
                serde_json::json!({"reason": reason}),
            )?,
            cli.json,
            "Withdrawn.",
        ),
        Command::Vote { id, choice, reason } => {
            let v = api()?.post(
                &format!("/v1/proposals/{id}/vote"),
                serde_json::json!({"choice": choice, "reason": reason}),
            )?;
            let headline = if v["committed"] == true {
                format!(
                    "Secret ballot committed: {choice} stays on this node, sealed, until the \
                     reveal window, when the node reveals it by itself (`kosctl reveal {id}` by hand)."
                )
            } else {
                format!("Vote recorded: {choice}. `kosctl tally {id}` shows the count.")
            };
            done(v, cli.json, &headline)
        }
        Command::Delegate { to, scope } => {
            let v = api()?.post("/v1/delegate", serde_json::json!({"to": to, "scope": scope}))?;
            let scope = scope.as_deref().unwrap_or("all");
            let headline = match &to {
                Some(to) => format!(
                    "Delegated to {to} for {scope}: its ballot carries this node's weight unless \
                     this node votes itself. `kosctl delegations` shows the chain."
                ),
                None => format!("Delegation for {scope} revoked: this node's weight is its own."),
            };
            done(v, cli.json, &headline)
        }
        Command::Tally { id } => {
            let client = api()?;
            let t = client.get(&format!("/v1/proposals/{id}/tally"))?;
            if cli.json {
                return show(t);
            }
            let p = client.get(&format!("/v1/proposals/{id}"))?;
            print!("{}", render::tally(&p, &t));
            Ok(())
        }
        Command::Resolve { address } => {
            let client = api()?;
            show(client.get(&format!("/v1/resolve?address={address}"))?)
        }
        Command::Send { address, kind, payload } => {
            let text = if std::path::Path::new(&payload).is_file() {
                std::fs::read_to_string(&payload)
                    .with_context(|| format!("cannot read {payload}"))?
            } else {
                payload
            };
            let body: serde_json::Value =
                serde_json::from_str(&text).context("--payload is not JSON (nor a JSON file)")?;
            let v = api()?.post(
                "/v1/send",
                serde_json::json!({"address": address, "type": kind, "payload": body}),
            )?;
            let headline = format!(
                "Sealed for {address} and queued: it is kept until a next hop acknowledges it \
                 (`kosctl outbox` shows it meanwhile)."
            );
            done(v, cli.json, &headline)
        }
        Command::Vector { command } => match command.unwrap_or(VectorCmd::List) {
            VectorCmd::List => show(api()?.get("/v1/vectors")?),
            VectorCmd::Send { file, to, collection, dims } => {
                let path = std::fs::canonicalize(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?;
                show(api()?.post(
                    "/v1/vectors/send",
                    serde_json::json!({"path": path, "to": to, "collection": collection, "dims": dims}),
                )?)
            }
        },
        Command::Inbox { command } => match command.unwrap_or(InboxCmd::List) {
            InboxCmd::List => human(api()?.get("/v1/inbox")?, cli.json, render::inbox),
            InboxCmd::Show { id } => {
                human(api()?.get(&format!("/v1/inbox/{id}"))?, cli.json, render::inbox_message)
            }
            InboxCmd::Delete { id } => show(api()?.delete(&format!("/v1/inbox/{id}"))?),
        },
        Command::Reply { id, outputs, error } => {
            let v = api()?.post(
                &format!("/v1/inbox/{id}/reply"),
                serde_json::json!({"ok": error.is_none(), "outputs": outputs, "error": error}),
            )?;
            done(v, cli.json, "TASK_RESULT sealed for the requester and queued.")
        }
        Command::Outbox => human(api()?.get("/v1/outbox")?, cli.json, render::outbox),
        Command::Reputation { subject, delta, reason } => show(api()?.post(
            "/v1/reputation",
            serde_json::json!({"subject": subject, "delta": delta, "reason": reason}),
        )?),
        Command::Export { out } => {
            let v = api()?.get("/v1/export")?;
            let text = serde_json::to_string_pretty(&v)?;
            write_private(&out, text.as_bytes())?;
            show(serde_json::json!({"exported": out.display().to_string()}))
        }
        Command::Import { file, insecure_plain_key } => {
            let report = import(&cli.data_dir, &file, insecure_plain_key)?;
            show(report)
        }
        Command::Announce { text, topic } => {
            show(api()?.post("/v1/announce", serde_json::json!({"topic": topic, "text": text}))?)
        }
        Command::Policy(PolicyCmd::Show) => {
            human(api()?.get("/v1/policy")?, cli.json, render::policy)
        }
        Command::Policy(PolicyCmd::Apply { file }) => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let v = api()?.post("/v1/policy", serde_json::json!({"text": text}))?;
            done(v, cli.json, "The policy is in force now; `kosctl policy show` prints its rules.")
        }
        Command::Delegations { member } => {
            let path = match member {
                Some(did) => format!("/v1/delegations?member={did}"),
                None => "/v1/delegations".to_owned(),
            };
            human(api()?.get(&path)?, cli.json, render::delegations)
        }
        Command::Certificate { id, out } => {
            let v = api()?.get(&format!("/v1/proposals/{id}/certificate"))?;
            write_out(&v, out.as_deref())
        }
        Command::Receipt { id, voter, out } => {
            let path = match voter {
                Some(did) => format!("/v1/proposals/{id}/receipt?voter={did}"),
                None => format!("/v1/proposals/{id}/receipt"),
            };
            let v = api()?.get(&path)?;
            write_out(&v, out.as_deref())
        }
        Command::VerifyCertificate { file } => {
            let bundle: kos_engine::CertificateBundle = read_json(&file)?;
            let c = kos_engine::verify_certificate(&bundle)
                .with_context(|| format!("{} is not a valid certificate", file.display()))?;
            show(serde_json::json!({
                "valid": true,
                "federation": c.federation.to_string(),
                "proposal": c.proposal.to_string(),
                "round": c.round,
                "outcome": c.key.outcome.as_str(),
                "winner": c.key.winner,
                "revision": c.key.revision,
                "votes_root": c.key.votes_root.to_string(),
                "weight": c.weight,
                "eligible": c.eligible,
                "attesters": c.attesters,
            }))
        }
        Command::VerifyReceipt { file } => {
            let bundle: kos_engine::ReceiptBundle = read_json(&file)?;
            let r = kos_engine::verify_receipt(&bundle)
                .with_context(|| format!("{} is not a valid receipt", file.display()))?;
            show(serde_json::json!({
                "valid": true,
                "proposal": r.certificate.proposal.to_string(),
                "voter": r.voter.to_did(),
                "ballot": r.ballot.to_string(),
                "votes_root": r.certificate.key.votes_root.to_string(),
                "outcome": r.certificate.key.outcome.as_str(),
            }))
        }
        Command::Audit(AuditCmd::Show { last }) => {
            let v = api()?.get(&format!("/v1/audit?last={last}"))?;
            if cli.json {
                return show(v);
            }
            for e in v["entries"].as_array().into_iter().flatten() {
                println!(
                    "{:>6}  {}  {}",
                    e["index"],
                    e["at_ms"].as_u64().map_or("—".into(), render::date),
                    e["event"].as_str().unwrap_or("")
                );
            }
            Ok(())
        }
        Command::Audit(AuditCmd::Verify) => {
            let v = api()?.get("/v1/audit/verify")?;
            if v["ok"] != serde_json::Value::Bool(true) {
                bail!("audit log broken at entry {}", v["first_bad_entry"]);
            }
            show(v)
        }
        Command::Decode { file, raw } => {
            let input = read_input(file.as_deref())?;
            let bytes = if raw {
                input
            } else {
                let text: String = String::from_utf8_lossy(&input)
                    .chars()
                    .filter(|c| !c.is_whitespace())
                    .collect();
                hex::decode(&text).context("input is not hexadecimal (use --raw for binary)")?
            };
            print_envelope(&bytes, cli.json)
        }
        Command::Message { id, hex: as_hex } => {
            let v = api()?.get(&format!("/v1/messages/{id}"))?;
            let text = v["envelope"].as_str().context("the node sent no envelope")?;
            if as_hex {
                println!("{text}");
                return Ok(());
            }
            print_envelope(
                &hex::decode(text).context("the node sent an envelope that is not hex")?,
                cli.json,
            )
        }
    }
}

/// Decodes, verifies and prints one envelope.
fn print_envelope(bytes: &[u8], json: bool) -> anyhow::Result<()> {
    let msg = Message::decode(bytes).context("invalid envelope")?;
    let h = msg.header();
    let body = diagnostic(&msg.payload().encode()).context("body")?;
    if json {
        let out = serde_json::json!({
            "id": msg.id().to_string(),
            "type": h.kind.name(),
            "version": h.version,
            "author": h.author.to_did(),
            "seq": h.seq,
            "created_ms": h.created_ms,
            "target": h.target.as_ref().map(|t| t.to_string()),
            "body": body,
            "size": bytes.len(),
        });
        println!("{out}");
    } else {
        println!("id:         {}", msg.id());
        println!("type:       {} (version {})", h.kind, h.version);
        println!("author:     {}", h.author);
        println!("seq:        {}", h.seq);
        println!("created:    {} ({} ms)", render::date(h.created_ms), h.created_ms);
        if let Some(t) = &h.target {
            println!("target:     {t}");
        }
        println!("body:       {body}");
        println!("signature:  valid");
    }
    Ok(())
}

/// Writes a file readable by its owner only.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))?;
    std::io::Write::write_all(&mut f, bytes)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Checks an export file (the vault opens with the passphrase, the signature is the identity's)
/// and writes it into `dir`, which must not hold an identity yet: the vault, the policy, the
/// name in `kosd.toml`, and `import.json` (trust, peers, federation) for the first start.
fn import(
    dir: &std::path::Path,
    file: &std::path::Path,
    insecure: bool,
) -> anyhow::Result<serde_json::Value> {
    if dir.join("vault.bin").exists() {
        bail!("{} already holds an identity: import into a fresh data directory", dir.display());
    }
    let v: serde_json::Value = read_json(file)?;
    let (Some(body), Some(sig)) = (v["export"].as_str(), v["signature"].as_str()) else {
        bail!("{} is not a kOS export file", file.display());
    };
    let inner: serde_json::Value = serde_json::from_str(body)
        .with_context(|| format!("{} is not a kOS export file", file.display()))?;
    if inner["kind"] != kos_protocol::EXPORT_KIND {
        bail!("{} is not a kOS export file (kind {})", file.display(), inner["kind"]);
    }
    let vault_bytes = hex::decode(inner["vault"].as_str().unwrap_or(""))
        .map_err(|_| anyhow::anyhow!("{} was altered: its vault is not hex", file.display()))?;
    let passphrase = if insecure {
        Vec::new()
    } else {
        std::env::var("KOS_PASSPHRASE").map(String::into_bytes).map_err(|_| {
            anyhow::anyhow!(
                "KOS_PASSPHRASE is not set: the exported identity is sealed under its passphrase"
            )
        })?
    };
    let vault = kos_protocol::vault::Vault::open(&vault_bytes, &passphrase)
        .context("cannot open the exported identity")?;
    let key = vault.get("node").context("the export holds no node key")?;
    let sig: [u8; 64] = hex::decode(sig).ok().and_then(|b| b.try_into().ok()).ok_or_else(|| {
        anyhow::anyhow!("{} was altered: its signature is malformed", file.display())
    })?;
    let statement = kos_protocol::export_statement(body.as_bytes());
    if !key.public().verify(&statement, &sig)
        || inner["did"].as_str() != Some(key.public().to_did().as_str())
    {
        bail!("{} was altered: its signature does not verify", file.display());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let policy = inner["policy"].as_str().unwrap_or("");
    if !policy.is_empty() {
        std::fs::write(dir.join("klp-policy.toml"), policy)?;
    }
    if let Some(name) = inner["name"].as_str()
        && !dir.join("kosd.toml").exists()
    {
        std::fs::write(
            dir.join("kosd.toml"),
            format!("name = {}\n", serde_json::Value::from(name)),
        )?;
    }
    let pending = serde_json::json!({
        "trust": inner["trust"], "peers": inner["peers"], "federation": inner["federation"],
    });
    std::fs::write(dir.join("import.json"), pending.to_string())?;
    // The vault last: its presence marks the directory as holding an identity.
    write_private(&dir.join("vault.bin"), &vault_bytes)?;
    Ok(serde_json::json!({
        "imported": key.public().to_did(),
        "data_dir": dir.display().to_string(),
        "federation": inner["federation"],
        "next": "start the node: kosd --data-dir DIR run (stop the old one first: one identity, one node)",
    }))
}

/// Prints `v` as JSON, or as `render` lays it out for people.
/// A change done: a sentence for people, then the answer's fields (`--json`: the answer).
fn done(v: serde_json::Value, json: bool, headline: &str) -> anyhow::Result<()> {
    if json {
        println!("{v}");
    } else {
        println!("{headline}");
        print!("{}", render::generic(&v));
    }
    Ok(())
}

fn human(
    v: serde_json::Value,
    json: bool,
    render: fn(&serde_json::Value) -> String,
) -> anyhow::Result<()> {
    if json {
        println!("{v}");
    } else {
        print!("{}", render(&v));
    }
    Ok(())
}

/// Flags win over the file.
fn merge(file: ProposeArgs, flags: ProposeArgs) -> ProposeArgs {
    ProposeArgs {
        kind: flags.kind.or(file.kind),
        title: flags.title.or(file.title),
        description: flags.description.or(file.description),
        scope: flags.scope.or(file.scope),
        key: flags.key.or(file.key),
        value: flags.value.or(file.value),
        old: flags.old.or(file.old),
        member: flags.member.or(file.member),
        level: flags.level.or(file.level),
        membership: flags.membership.or(file.membership),
        policy: flags.policy.or(file.policy),
        rollback: flags.rollback.or(file.rollback),
        options: if flags.options.is_empty() { file.options } else { flags.options },
        discussion_secs: flags.discussion_secs.or(file.discussion_secs),
        voting_secs: flags.voting_secs.or(file.voting_secs),
        rule: flags.rule.or(file.rule),
        weighting: flags.weighting.or(file.weighting),
        secret: flags.secret.or(file.secret),
        quorum: flags.quorum.or(file.quorum),
        veto: flags.veto.or(file.veto),
        sponsors: flags.sponsors.or(file.sponsors),
        early_close: flags.early_close.or(file.early_close),
    }
}

fn main() -> ExitCode {
    use clap::FromArgMatches;
    let cli = match Cli::from_arg_matches(&command().get_matches()) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kosctl: {} {e:#}", style::error_label());
            ExitCode::FAILURE
        }
    }
}
