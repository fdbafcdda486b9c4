//! `kos-bench`: measures the node and prints each figure as a ratio against a baseline measured
//! in the same run, on the same machine.
//!
//! ```text
//! cargo run --release -p kos-node --bin kos-bench -- ingest  [--votes N]
//! cargo run --release -p kos-node --bin kos-bench -- catchup [--votes N]   # real kosd processes
//! ```
//!
//! - `ingest`: the node's own ingest path on one core — decode and verify, quota, engine, store,
//!   group commit every 1,024 messages — against raw Ed25519 `verify_strict` on one core, and
//!   against decode + verify alone.
//! - `catchup`: a node is loaded with N votes through its API (500 members); its RSS is read
//!   idle and loaded; a late joiner syncs them all (time until it holds as many messages); the
//!   loaded node is restarted (time until its API answers with every message). Baseline:
//!   decode + verify of the same N envelopes on one core.
//! - `syncflood`: N votes submitted to a node through its API (the core's ingest path), once
//!   quiet and once while a peer floods it with sync fetches (16 outstanding at all times, the
//!   most it may hold without penalty). Baseline: the quiet run.
//! - `propagation [--nodes N] [--votes V]`: N `kosd` processes (5, 10 and 20 by default); V
//!   votes submitted one at a time at node 0; the time from node 0's publication to the last
//!   node's acceptance, read from the nodes' JSON debug logs (one clock: one machine). Baseline:
//!   N minimal rust-libp2p gossipsub peers in this process with the same mesh settings and the
//!   same connections (each dials the ones before it, at most 16), validating at once.
//! - `direct [--votes N]`: N sealed TASK_REQUESTs sent through the API of one `kosd` to another,
//!   once over a direct connection and once through a relay (the two block each other), timed
//!   from the first send until the recipient's inbox holds all N. Baseline: sealing and opening
//!   the same N messages in this process on one core.
#![allow(clippy::disallowed_methods)] // a benchmark reads the clock

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use kos_node::{
    core::{Core, Inbound, Quota, Source},
    metrics::Metrics,
    node::{OpenFlags, now_ms, open_state},
};
use kos_protocol::{
    Message, Payload, SecretKey,
    payload::{
        Action, Charter, Choice, HybridWeights, Member, MessageId, Proposal, ProposalType,
        RegistryVersion, Role, Scope, Timeline, Timing, TrustLevel, Vote,
    },
};
use serde_json::{Value, json};

const MEMBERS: usize = 500;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let what = args.first().map(String::as_str).unwrap_or("ingest");
    let votes = args
        .iter()
        .position(|a| a == "--votes")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse::<usize>())
        .transpose()
        .context("--votes N")?;
    match what {
        "ingest" => ingest(votes.unwrap_or(20_000)),
        "catchup" => catchup(votes.unwrap_or(100_000)),
        "syncflood" => syncflood(votes.unwrap_or(10_000)),
        "propagation" => {
            let nodes = args
                .iter()
                .position(|a| a == "--nodes")
                .and_then(|i| args.get(i + 1))
                .map(|v| v.parse::<usize>())
                .transpose()
                .context("--nodes N")?;
            match nodes {
                Some(n) => propagation(n, votes.unwrap_or(30)),
                None => {
                    [5, 10, 20].into_iter().try_for_each(|n| propagation(n, votes.unwrap_or(30)))
                }
            }
        }
        "direct" => direct(votes.unwrap_or(300)),
        "vectors" => {
            let mb = args
                .iter()
                .position(|a| a == "--mb")
                .and_then(|i| args.get(i + 1))
                .map(|v| v.parse::<usize>())
                .transpose()
                .context("--mb N")?;
            vectors(mb.unwrap_or(50))
        }
        other => {
            bail!(
                "unknown benchmark {other}: ingest, catchup, syncflood, propagation, direct or vectors"
            )
        }
    }
}

fn dev_timing() -> Timing {
    Timing {
        grace_ms: 2_000,
        reveal_ms: 5_000,
        clock_skew_ms: 60_000,
        max_voting_ms: 3_600_000,
        min_voting_ms: 1_000,
        default_voting_ms: 10_000,
        min_discussion_ms: 0,
    }
}

fn member(key: &SecretKey, trust: TrustLevel) -> Member {
    Member { key: key.public(), roles: vec![Role::Citizen, Role::Validator], stake: 1, trust }
}

/// Signs `per_proposal × proposals.len()` votes, members in turn.
fn sign_votes(
    members: &[SecretKey],
    proposals: &[MessageId],
    federation: MessageId,
    n: usize,
) -> Vec<Vec<u8>> {
    let now = now_ms();
    let mut out = Vec::with_capacity(n);
    'outer: for (i, p) in proposals.iter().enumerate() {
        for (j, m) in members.iter().enumerate() {
            if out.len() == n {
                break 'outer;
            }
            let choice = if (i + j) % 3 == 0 { Choice::No } else { Choice::Yes };
            let vote = Vote { choice, reason: None, proposal: *p, revision: 0, federation };
            let msg = Message::sign(m, i as u64 + 1, now, None, Payload::Vote(vote))
                .expect("a vote signs");
            out.push(msg.bytes().to_vec());
        }
    }
    out
}

fn per_sec(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

/// Raw `verify_strict` on one core: `n` signatures over 200-byte messages.
fn raw_verify_rate(n: usize) -> f64 {
    use ed25519_dalek::{Signer, SigningKey};
    let key = SigningKey::from_bytes(&[7u8; 32]);
    let vk = key.verifying_key();
    let msgs: Vec<([u8; 200], ed25519_dalek::Signature)> = (0..n)
        .map(|i| {
            let mut m = [0u8; 200];
            m[..8].copy_from_slice(&(i as u64).to_be_bytes());
            (m, key.sign(&m))
        })
        .collect();
    let t = Instant::now();
    let ok = msgs.iter().filter(|(m, s)| vk.verify_strict(m, s).is_ok()).count();
    assert_eq!(ok, n);
    per_sec(n, t.elapsed())
}

/// Decode + verify on one core.
fn decode_rate(envelopes: &[Vec<u8>]) -> f64 {
    let t = Instant::now();
    let ok = envelopes.iter().filter(|b| Message::decode(b).is_ok()).count();
    assert_eq!(ok, envelopes.len());
    per_sec(envelopes.len(), t.elapsed())
}

fn ingest(n: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let founder = SecretKey::generate();
    let members: Vec<SecretKey> = (0..MEMBERS).map(|_| SecretKey::generate()).collect();
    let flags = OpenFlags { new_identity: true, ..Default::default() };
    let (opened, _) = open_state(founder.clone(), dir.path(), flags)?;
    let (to_net, mut from_core) = tokio::sync::mpsc::channel(1 << 16);
    let drain = std::thread::spawn(move || while from_core.blocking_recv().is_some() {});
    let mut core = Core::new(opened, Arc::new(Metrics::default()), to_net, Quota::default());
    let mut list = vec![member(&founder, TrustLevel::Core)];
    list.extend(members.iter().map(|m| member(m, TrustLevel::Standard)));
    let charter = Charter {
        name: "bench".into(),
        nonce: now_ms(),
        bodies: vec![],
        hybrid: HybridWeights { role: 0, stake: 0, trust: 1000 },
        timing: dev_timing(),
        members: list,
        defaults: vec![],
        role_weights: vec![],
        max_delegation_depth: 4,
        min_protocol_version: 1,
    };
    let charter = Message::sign(&founder, 0, now_ms(), None, Payload::Charter(charter))?;
    let federation = core.found(charter)?;
    let proposals_needed = n.div_ceil(MEMBERS);
    let mut proposals = Vec::new();
    for i in 0..proposals_needed {
        let now = now_ms();
        let engine = core.engine.as_ref().context("engine")?;
        let reg = engine.registry(now).context("registry")?;
        let body = Proposal {
            kind: ProposalType::ResourceAllocation,
            scope: Scope::Global,
            title: format!("bench {i}"),
            action: Action::None,
            voting: None,
            options: vec![],
            registry: RegistryVersion { hash: reg.hash(), epoch: reg.epoch },
            timeline: Timeline {
                reveal_end_ms: None,
                discussion_end_ms: now + 1_000,
                voting_end_ms: now + 3_000_000,
                execution_delay_ms: 0,
            },
            federation,
            description: "Benchmark.".into(),
        };
        proposals.push(core.create(Payload::Proposal(body), None)?.id());
    }
    std::thread::sleep(Duration::from_millis(1_100)); // voting opens
    let envelopes = sign_votes(&members, &proposals, federation, n);
    let raw = raw_verify_rate(n.min(20_000));
    let decoded = decode_rate(&envelopes);
    let peer = libp2p::PeerId::random();
    let t = Instant::now();
    let (mut in_decode, mut in_core, mut in_commit) =
        (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for chunk in envelopes.chunks(1024) {
        for batch in chunk.chunks(128) {
            let t0 = Instant::now();
            let items = batch
                .iter()
                .map(|b| Inbound {
                    msg: Message::decode(b).expect("valid"),
                    from: Source::Sync { peer },
                })
                .collect();
            let t1 = Instant::now();
            core.ingest_batch(items);
            in_decode += t1 - t0;
            in_core += t1.elapsed();
        }
        let t2 = Instant::now();
        core.store.commit()?;
        in_commit += t2.elapsed();
    }
    let ingest = per_sec(n, t.elapsed());
    let stored = core.store.len();
    // The parts alone: the engine (a fresh one, fed the same messages), and the store.
    let msgs: Vec<Message> = envelopes.iter().filter_map(|b| Message::decode(b).ok()).collect();
    let mut engine = kos_engine::Engine::new(federation);
    let history: Vec<Message> = [federation]
        .iter()
        .chain(&proposals)
        .filter_map(|id| core.store.get(id).ok().flatten())
        .collect();
    engine.replay(history, now_ms());
    let t3 = Instant::now();
    let me = core.key.public();
    for m in &msgs {
        let now = now_ms();
        if engine.check(m, kos_engine::Origin::Sync, now).is_ok() {
            engine.handle(m, kos_engine::Origin::Sync, now, Some(&me));
        }
    }
    let engine_only = t3.elapsed();
    let dir2 = tempfile::tempdir()?;
    let opts = kos_storage::OpenOptions {
        node_key: me.to_did(),
        new_identity: true,
        ..Default::default()
    };
    let (store2, _) = kos_storage::Store::open_node(dir2.path(), &opts)?;
    let t4 = Instant::now();
    for chunk in msgs.chunks(1024) {
        for m in chunk {
            store2.insert(m)?;
        }
        store2.commit()?;
    }
    let store_only = t4.elapsed();
    drop(core);
    let _ = drain.join();
    anyhow::ensure!(stored >= n, "only {stored} of {n} votes were stored");
    println!("ingest, one core, {n} votes from {MEMBERS} members on {proposals_needed} proposals:");
    println!("  raw verify_strict        {raw:>10.0}/s   1.00");
    println!("  decode + verify          {decoded:>10.0}/s   {:.2}", decoded / raw);
    println!(
        "  ingest (decode, verify, engine, store, group commit) {ingest:>10.0}/s   {:.2}",
        ingest / raw
    );
    let us = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    println!(
        "  per message: decode + verify {:.1} µs, engine + store {:.1} µs, group commits {:.1} µs",
        us(in_decode),
        us(in_core),
        us(in_commit)
    );
    println!(
        "  alone: engine check + handle {:.1} µs, store insert + commit {:.1} µs",
        us(engine_only),
        us(store_only)
    );
    Ok(())
}

/// A `kosd` process for the benchmark.
struct Kosd {
    dir: PathBuf,
    child: Option<Child>,
}

impl Kosd {
    fn start(dir: &Path) -> anyhow::Result<Kosd> {
        Kosd::start_with(dir, &[], "warn")
    }

    fn start_with(dir: &Path, extra: &[&str], log: &str) -> anyhow::Result<Kosd> {
        let exe = std::env::current_exe()?.with_file_name("kosd");
        let _ = std::fs::remove_file(dir.join("api.addr"));
        std::fs::create_dir_all(dir)?;
        let child = Command::new(exe)
            .arg("--data-dir")
            .arg(dir)
            .args([
                "run",
                "--insecure-plain-key",
                "--listen",
                "/ip4/127.0.0.1/tcp/0",
                "--api",
                "127.0.0.1:0",
                "--sync-interval-secs",
                "1",
            ])
            .args(extra)
            .env("RUST_LOG", log)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.with_extension("log"))?)
            .spawn()
            .context("cannot start kosd (build it first: cargo build --release -p kos-node)")?;
        let k = Kosd { dir: dir.to_path_buf(), child: Some(child) };
        k.wait(|s| s["listen"].as_array().is_some_and(|a| !a.is_empty()))?;
        Ok(k)
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let addr = std::fs::read_to_string(self.dir.join("api.addr"))?;
        let token = std::fs::read_to_string(self.dir.join("api.token"))?;
        let url = format!("http://{}{path}", addr.trim());
        let auth = format!("Bearer {}", token.trim());
        let agent: ureq::Agent =
            ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let mut r = if method == "GET" {
            agent.get(&url).header("Authorization", &auth).call()?
        } else {
            agent.post(&url).header("Authorization", &auth).send_json(body.unwrap_or(json!({})))?
        };
        let v: Value = r.body_mut().with_config().limit(64 << 20).read_json()?;
        if !r.status().is_success() {
            bail!("{path}: {}", v["error"]);
        }
        Ok(v)
    }

    /// Polls status until `f` holds (at most 10 minutes).
    fn wait(&self, f: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
        let until = Instant::now() + Duration::from_secs(600);
        while Instant::now() < until {
            if self.dir.join("api.addr").exists()
                && let Ok(s) = self.call("GET", "/v1/status", None)
                && f(&s)
            {
                return Ok(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("timed out waiting for kosd in {}", self.dir.display())
    }

    fn rss_mb(&self) -> f64 {
        let pid = self.child.as_ref().map_or(0, Child::id);
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1).and_then(|k| k.parse::<f64>().ok()))
            })
            .map_or(0.0, |kb| kb / 1024.0)
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
    }
}

impl Drop for Kosd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Founds a federation at `a` with [`MEMBERS`] fresh member keys and `count` open proposals,
/// and waits until voting opens. Returns the keys, the federation (text and id) and the
/// proposals.
fn found_with_proposals(
    a: &Kosd,
    count: usize,
) -> anyhow::Result<(Vec<SecretKey>, String, MessageId, Vec<MessageId>)> {
    let members: Vec<SecretKey> = (0..MEMBERS).map(|_| SecretKey::generate()).collect();
    let list: Vec<String> = members.iter().map(|m| m.public().to_did()).collect();
    let fed = a.call(
        "POST",
        "/v1/federation/create",
        Some(json!({"name": "bench", "members": list, "dev_timing": true})),
    )?["federation"]
        .as_str()
        .context("federation")?
        .to_owned();
    let federation: MessageId = fed.parse().map_err(|_| anyhow::anyhow!("federation id"))?;
    let mut proposals = Vec::new();
    for i in 0..count {
        let r = a.call(
            "POST",
            "/v1/proposals",
            Some(json!({"kind": "resource_allocation", "title": format!("p{i}"),
                "description": "Benchmark.", "voting_secs": 3000})),
        )?;
        proposals.push(r["id"].as_str().context("id")?.parse().map_err(|_| anyhow::anyhow!("id"))?);
    }
    std::thread::sleep(Duration::from_millis(1_100)); // voting opens
    Ok((members, fed, federation, proposals))
}

fn catchup(n: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut a = Kosd::start(&dir.path().join("a"))?;
    std::thread::sleep(Duration::from_secs(2));
    let idle = a.rss_mb();
    let (members, fed, federation, proposals) = found_with_proposals(&a, n.div_ceil(MEMBERS))?;
    let mut envelopes = Vec::with_capacity(n);
    let t_submit = Instant::now();
    // Signed in slices so that every vote is submitted within the clock-skew bound.
    for slice in proposals.chunks(40) {
        let votes = sign_votes(&members, slice, federation, slice.len() * MEMBERS);
        for chunk in votes.chunks(512) {
            let hexes: Vec<String> = chunk.iter().map(hex::encode).collect();
            a.call("POST", "/v1/messages", Some(json!({ "envelopes": hexes })))?;
        }
        envelopes.extend(votes);
    }
    envelopes.truncate(n);
    let submit = t_submit.elapsed();
    let total = a.wait(|_| true)?["messages"].as_u64().context("messages")?;
    let loaded = a.rss_mb();
    let decoded = decode_rate(&envelopes);
    println!("catch-up, {} votes ({total} messages) from {MEMBERS} members:", envelopes.len());
    println!(
        "  decode + verify, one core        {decoded:>10.0}/s   1.00   ({:.2} s for all)",
        envelopes.len() as f64 / decoded
    );
    println!("  submitted through the API (signing included) in {:.2} s", submit.as_secs_f64());
    let bootstrap = {
        let s = a.call("GET", "/v1/status", None)?;
        format!(
            "{}/p2p/{}",
            s["listen"][0].as_str().unwrap_or(""),
            s["peer_id"].as_str().unwrap_or("")
        )
    };
    let b = Kosd::start(&dir.path().join("b"))?;
    let t = Instant::now();
    b.call(
        "POST",
        "/v1/federation/join",
        Some(json!({"federation": fed, "bootstrap": bootstrap})),
    )?;
    b.wait(|s| s["messages"].as_u64() >= Some(total))?;
    let caught = t.elapsed();
    let rate = per_sec(total as usize, caught);
    println!(
        "  late joiner holds all of them    {rate:>10.0}/s   {:.2}   ({:.2} s)",
        rate / decoded,
        caught.as_secs_f64()
    );
    println!("  RSS of the loaded node: idle {idle:.0} MB, holding them {loaded:.0} MB");
    drop(b);
    a.stop();
    let t = Instant::now();
    let mut a = Kosd::start(&dir.path().join("a"))?;
    a.wait(|s| s["messages"].as_u64() == Some(total))?;
    let startup = t.elapsed();
    println!(
        "  restart with {total} stored messages: API answers with all of them after {:.2} s ({:.2}× decode + verify of them)",
        startup.as_secs_f64(),
        startup.as_secs_f64() / (total as f64 / decoded)
    );
    println!("  RSS after restart: {:.0} MB", a.rss_mb());
    a.stop();
    Ok(())
}

/// Submits `votes` through the API in batches of 512; returns the elapsed time.
fn submit_all(a: &Kosd, votes: &[Vec<u8>]) -> anyhow::Result<Duration> {
    let t = Instant::now();
    for chunk in votes.chunks(512) {
        let hexes: Vec<String> = chunk.iter().map(hex::encode).collect();
        let r = a.call("POST", "/v1/messages", Some(json!({ "envelopes": hexes })))?;
        let ok = r["results"]
            .as_array()
            .map_or(0, |l| l.iter().filter(|x| x["status"] == "accepted").count());
        anyhow::ensure!(ok == chunk.len(), "only {ok} of {} accepted", chunk.len());
    }
    Ok(t.elapsed())
}

fn syncflood(n: usize) -> anyhow::Result<()> {
    use futures::StreamExt;
    use kos_node::net::{SYNC_PROTOCOL, SyncRequest, SyncResponse};
    use libp2p::{request_response, swarm::SwarmEvent};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    let dir = tempfile::tempdir()?;
    let a = Kosd::start(&dir.path().join("a"))?;
    let per_run = n.div_ceil(MEMBERS);
    let (members, _, federation, proposals) = found_with_proposals(&a, 2 * per_run)?;
    let quiet_votes = sign_votes(&members, &proposals[..per_run], federation, n);
    let quiet = submit_all(&a, &quiet_votes)?;
    let ids: Vec<MessageId> = quiet_votes.iter().map(|b| kos_protocol::message_id(b)).collect();

    // The flooder: a libp2p peer that keeps 16 fetches of 128 stored votes outstanding.
    let s = a.call("GET", "/v1/status", None)?;
    let addr: libp2p::Multiaddr = format!(
        "{}/p2p/{}",
        s["listen"][0].as_str().unwrap_or(""),
        s["peer_id"].as_str().unwrap_or("")
    )
    .parse()?;
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let (stop2, served2) = (stop.clone(), served.clone());
    let flooder = std::thread::spawn(move || -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async move {
            let mut swarm = libp2p::SwarmBuilder::with_new_identity()
                .with_tokio()
                .with_tcp(
                    libp2p::tcp::Config::default(),
                    libp2p::noise::Config::new,
                    libp2p::yamux::Config::default,
                )?
                .with_behaviour(|_| {
                    request_response::cbor::Behaviour::<SyncRequest, SyncResponse>::with_codec(
                        request_response::cbor::codec::Codec::default()
                            .set_response_size_maximum(4 * 1024 * 1024),
                        [(SYNC_PROTOCOL, request_response::ProtocolSupport::Outbound)],
                        request_response::Config::default(),
                    )
                })?
                .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
                .build();
            swarm.dial(addr)?;
            let mut k = 0usize;
            let next = |k: &mut usize| {
                let start = (*k * 128) % ids.len().max(1);
                *k += 1;
                SyncRequest::Fetch {
                    ids: ids.iter().cycle().skip(start).take(128).copied().collect(),
                }
            };
            let mut peer = None;
            while !stop2.load(Ordering::Relaxed) {
                let ev = tokio::time::timeout(Duration::from_millis(200), swarm.select_next_some())
                    .await;
                match ev {
                    Ok(SwarmEvent::ConnectionEstablished { peer_id, .. }) => {
                        peer = Some(peer_id);
                        for _ in 0..16 {
                            swarm.behaviour_mut().send_request(&peer_id, next(&mut k));
                        }
                    }
                    Ok(SwarmEvent::Behaviour(request_response::Event::Message {
                        message: request_response::Message::Response { .. },
                        ..
                    })) => {
                        served2.fetch_add(1, Ordering::Relaxed);
                        if let Some(p) = peer {
                            swarm.behaviour_mut().send_request(&p, next(&mut k));
                        }
                    }
                    Ok(SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                        ..
                    })) => {
                        if let Some(p) = peer {
                            swarm.behaviour_mut().send_request(&p, next(&mut k));
                        }
                    }
                    _ => {}
                }
            }
            Ok::<(), anyhow::Error>(())
        })
    });
    // Let the flood reach its pace, then measure.
    while served.load(Ordering::Relaxed) < 50 {
        anyhow::ensure!(!flooder.is_finished(), "the flooder stopped");
        std::thread::sleep(Duration::from_millis(50));
    }
    let flood_votes = sign_votes(&members, &proposals[per_run..], federation, n);
    let before = served.load(Ordering::Relaxed);
    let flooded = submit_all(&a, &flood_votes)?;
    let fetches = served.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    let _ = flooder.join();
    let blocked = a.call("GET", "/v1/peers", None)?["blocked"].as_array().map_or(0, Vec::len);
    println!("sync flood, {n} votes submitted through the API each run:");
    println!("  quiet                     {:>10.0} votes/s   1.00", per_sec(n, quiet));
    println!(
        "  while a peer floods fetches {:>8.0} votes/s   {:.2}   ({fetches} fetches of 128 served meanwhile, {:.0}/s; peers blocked: {blocked})",
        per_sec(n, flooded),
        quiet.as_secs_f64() / flooded.as_secs_f64(),
        per_sec(fetches as usize, flooded)
    );
    Ok(())
}

/// Microseconds since the Unix epoch of an RFC 3339 UTC timestamp (`…T…Z`, as tracing writes).
fn parse_ts(ts: &str) -> Option<i64> {
    let (date, time) = ts.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|x| x.parse::<i64>());
    let (h, mi, s) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    let micros: i64 = format!("{frac:0<6}").get(..6)?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + h * 3_600 + mi * 60 + s) * 1_000_000) + micros)
}

/// (message id, µs) of every log line with `message == what` in a JSON log file.
fn log_times(path: &Path, what: &str) -> std::collections::HashMap<String, i64> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["fields"]["message"] == what)
        .filter_map(|v| {
            Some((v["fields"]["id"].as_str()?.to_owned(), parse_ts(v["timestamp"].as_str()?)?))
        })
        .collect()
}

fn percentiles(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let at = |p: f64| v.get(((v.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(0.0);
    (at(0.5), at(0.95), at(0.99))
}

fn propagation(n: usize, votes: usize) -> anyhow::Result<()> {
    let kosd = propagation_kosd(n, votes)?;
    let raw = propagation_raw(n, votes)?;
    let (k, r) = (percentiles(kosd), percentiles(raw));
    println!("propagation to every one of {n} nodes, {votes} votes (ms):");
    println!("  raw gossipsub  p50 {:7.1}  p95 {:7.1}  p99 {:7.1}   1.00", r.0, r.1, r.2);
    println!(
        "  kosd           p50 {:7.1}  p95 {:7.1}  p99 {:7.1}   {:.2} (p50), {:.2} (p95)",
        k.0,
        k.1,
        k.2,
        k.0 / r.0.max(1e-3),
        k.1 / r.1.max(1e-3)
    );
    Ok(())
}

fn propagation_kosd(n: usize, votes: usize) -> anyhow::Result<Vec<f64>> {
    let dir = tempfile::tempdir()?;
    let log = "warn,kos_node::core=debug,kos_node::node=debug";
    let mut nodes = Vec::new();
    for i in 0..n {
        nodes.push(Kosd::start_with(&dir.path().join(format!("n{i}")), &["--log-json"], log)?);
    }
    let voters: Vec<SecretKey> = (0..votes).map(|_| SecretKey::generate()).collect();
    let mut members: Vec<String> = Vec::new();
    for k in &nodes[1..] {
        members.push(k.call("GET", "/v1/status", None)?["did"].as_str().context("did")?.to_owned());
    }
    members.extend(voters.iter().map(|v| v.public().to_did()));
    let fed = nodes[0].call(
        "POST",
        "/v1/federation/create",
        Some(json!({"name": "propagation", "members": members, "dev_timing": true})),
    )?["federation"]
        .as_str()
        .context("federation")?
        .to_owned();
    let s = nodes[0].call("GET", "/v1/status", None)?;
    let boot = format!(
        "{}/p2p/{}",
        s["listen"][0].as_str().unwrap_or(""),
        s["peer_id"].as_str().unwrap_or("")
    );
    for k in &nodes[1..] {
        k.call("POST", "/v1/federation/join", Some(json!({"federation": fed, "bootstrap": boot})))?;
    }
    let p = nodes[0].call(
        "POST",
        "/v1/proposals",
        Some(json!({"kind": "resource_allocation", "title": "p", "description": "Benchmark.",
            "voting_secs": 3000})),
    )?["id"]
        .as_str()
        .context("id")?
        .to_owned();
    for k in &nodes {
        k.wait(|s| {
            s["messages"].as_u64() >= Some(2)
                && s["peers"].as_array().is_some_and(|a| !a.is_empty())
        })?;
    }
    std::thread::sleep(Duration::from_secs(5)); // discovery and gossipsub meshes settle
    let proposal: MessageId = p.parse().map_err(|_| anyhow::anyhow!("id"))?;
    let federation: MessageId = fed.parse().map_err(|_| anyhow::anyhow!("id"))?;
    let mut ids = Vec::new();
    for v in &voters {
        let vote = Vote { choice: Choice::Yes, reason: None, proposal, revision: 0, federation };
        let m = Message::sign(v, 1, now_ms(), None, Payload::Vote(vote))?;
        ids.push(m.id().to_string());
        nodes[0].call("POST", "/v1/messages", Some(json!({"envelope": hex::encode(m.bytes())})))?;
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_secs(3));
    for k in &mut nodes {
        k.stop();
    }
    let published = log_times(&dir.path().join("n0.log"), "published");
    let accepted: Vec<_> =
        (1..n).map(|i| log_times(&dir.path().join(format!("n{i}.log")), "accepted")).collect();
    let mut out = Vec::new();
    for id in &ids {
        let Some(t0) = published.get(id) else { continue };
        let last = accepted.iter().map(|a| a.get(id).copied()).collect::<Option<Vec<i64>>>();
        if let Some(last) = last.and_then(|l| l.into_iter().max()) {
            out.push((last - t0) as f64 / 1000.0);
        }
    }
    anyhow::ensure!(
        out.len() == votes,
        "only {} of {votes} votes reached every node live (the others came by sync)",
        out.len()
    );
    // Where a hop's time goes inside a node: received → accepted (verification and the core),
    // accepted → verdict reported to gossipsub (back to the network task).
    let (mut inside, mut back) = (Vec::new(), Vec::new());
    for i in 1..n {
        let log = dir.path().join(format!("n{i}.log"));
        let (rx, acc, ver) = (
            log_times(&log, "received"),
            log_times(&log, "accepted"),
            log_times(&log, "verdict reported"),
        );
        for id in &ids {
            if let (Some(r), Some(a), Some(v)) = (rx.get(id), acc.get(id), ver.get(id)) {
                inside.push((a - r) as f64 / 1000.0);
                back.push((v - a) as f64 / 1000.0);
            }
        }
    }
    let (i, b) = (percentiles(inside), percentiles(back));
    println!(
        "  inside a node (ms, p50/p95): received → accepted {:.2}/{:.2}, accepted → verdict {:.2}/{:.2}",
        i.0, i.1, b.0, b.1
    );
    Ok(out)
}

/// A raw peer received a message: (peer index, data, ms since the start).
type Seen = (usize, Vec<u8>, f64);

fn propagation_raw(n: usize, votes: usize) -> anyhow::Result<Vec<f64>> {
    use futures::StreamExt;
    use libp2p::{gossipsub, swarm::SwarmEvent};
    use sha2::{Digest as _, Sha256};
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let topic = gossipsub::IdentTopic::new("bench");
        let base = Instant::now();
        let seen: Arc<std::sync::Mutex<Vec<Seen>>> = Default::default();
        let mut addrs: Vec<libp2p::Multiaddr> = Vec::new();
        let mut publish_tx = None;
        for i in 0..n {
            let mut swarm = libp2p::SwarmBuilder::with_new_identity()
                .with_tokio()
                .with_tcp(
                    libp2p::tcp::Config::default().nodelay(true),
                    libp2p::noise::Config::new,
                    libp2p::yamux::Config::default,
                )?
                .with_behaviour(|key| {
                    let config = gossipsub::ConfigBuilder::default()
                        .heartbeat_interval(Duration::from_millis(500))
                        .validation_mode(gossipsub::ValidationMode::Strict)
                        .validate_messages()
                        .mesh_n_low(1)
                        .mesh_n(3)
                        .mesh_n_high(6)
                        .mesh_outbound_min(0)
                        .message_id_fn(|m: &gossipsub::Message| {
                            gossipsub::MessageId::from(Sha256::digest(&m.data).to_vec())
                        })
                        .build()
                        .map_err(std::io::Error::other)?;
                    let b: gossipsub::Behaviour = gossipsub::Behaviour::new(
                        gossipsub::MessageAuthenticity::Signed(key.clone()),
                        config,
                    )
                    .map_err(std::io::Error::other)?;
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(b)
                })?
                .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
                .build();
            swarm.behaviour_mut().subscribe(&topic)?;
            swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
            let addr = loop {
                if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                    break address;
                }
            };
            for a in addrs.iter().rev().take(16) {
                swarm.dial(a.clone())?;
            }
            addrs.push(addr);
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
            if i == 0 {
                publish_tx = Some(tx);
            }
            let seen = seen.clone();
            let topic = topic.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        Some(data) = rx.recv() => {
                            let _ = swarm.behaviour_mut().publish(topic.clone(), data);
                        }
                        ev = swarm.select_next_some() => {
                            if let SwarmEvent::Behaviour(gossipsub::Event::Message { propagation_source, message_id, message }) = ev {
                                let at = base.elapsed().as_secs_f64() * 1000.0;
                                seen.lock().map(|mut s| s.push((i, message.data.clone(), at))).ok();
                                swarm.behaviour_mut().report_message_validation_result(
                                    &message_id, &propagation_source, gossipsub::MessageAcceptance::Accept,
                                );
                            }
                        }
                    }
                }
            });
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        let tx = publish_tx.context("no publisher")?;
        let mut sent = Vec::new();
        for k in 0..votes {
            let mut data = vec![0u8; 230];
            data[..8].copy_from_slice(&(k as u64).to_be_bytes());
            sent.push((data.clone(), base.elapsed().as_secs_f64() * 1000.0));
            tx.send(data).await.ok();
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
        let mut out = Vec::new();
        for (data, t0) in sent {
            let times: Vec<f64> = seen.iter().filter(|(_, d, _)| *d == data).map(|(_, _, t)| *t).collect();
            if times.len() == n - 1 {
                out.push(times.iter().copied().fold(0.0, f64::max) - t0);
            }
        }
        anyhow::ensure!(out.len() == votes, "only {} of {votes} reached every raw peer", out.len());
        Ok(out)
    })
}

/// Sealed messages per second: A → C directly, and A → B → C with A and C blocking each other.
fn direct(n: usize) -> anyhow::Result<()> {
    // Baseline: seal + open on one core.
    let a_key = SecretKey::from_seed(&[1; 32]);
    let c_key = SecretKey::from_seed(&[3; 32]);
    let to: kos_protocol::Address =
        format!("klp://{}/tasks", c_key.public().klp_id()).parse().expect("address");
    let inner = Payload::TaskRequest(kos_protocol::payload::TaskRequest {
        inputs: vec!["x".repeat(200)],
        task_id: "bench".into(),
        min_trust: TrustLevel::Sandbox,
        deadline_ms: None,
    });
    let t = Instant::now();
    for i in 0..n {
        let m = kos_protocol::seal::seal(
            &a_key,
            &c_key.encryption_key(),
            i as u64 + 1,
            1,
            to.clone(),
            &inner,
        )?;
        kos_protocol::seal::open(&m, &c_key)?;
    }
    let baseline = per_sec(n, t.elapsed());
    println!("direct: baseline seal + open in process: {baseline:.0} messages/s");
    for relayed in [false, true] {
        let dir = tempfile::tempdir()?;
        let a = Kosd::start(&dir.path().join("a"))?;
        let b = Kosd::start(&dir.path().join("b"))?;
        let c = Kosd::start(&dir.path().join("c"))?;
        let addr = |k: &Kosd| -> anyhow::Result<String> {
            let s = k.call("GET", "/v1/status", None)?;
            Ok(format!(
                "{}/p2p/{}",
                s["listen"][0].as_str().unwrap_or(""),
                s["peer_id"].as_str().unwrap_or("")
            ))
        };
        let peer = |k: &Kosd| -> anyhow::Result<String> {
            Ok(k.call("GET", "/v1/status", None)?["peer_id"].as_str().unwrap_or("").to_owned())
        };
        if relayed {
            a.call("POST", "/v1/block", Some(json!({"peer": peer(&c)?})))?;
            c.call("POST", "/v1/block", Some(json!({"peer": peer(&a)?})))?;
            a.call("POST", "/v1/connect", Some(json!({"addr": addr(&b)?})))?;
            c.call("POST", "/v1/connect", Some(json!({"addr": addr(&b)?})))?;
        } else {
            a.call("POST", "/v1/connect", Some(json!({"addr": addr(&c)?})))?;
        }
        let c_id = c.call("GET", "/v1/status", None)?["klp_id"].as_str().unwrap_or("").to_owned();
        let address = format!("klp://{c_id}/tasks");
        let until = Instant::now() + Duration::from_secs(120);
        while a.call("GET", &format!("/v1/resolve?address={address}"), None).is_err() {
            if Instant::now() > until {
                bail!("C's record never reached A");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let start = Instant::now();
        for i in 0..n {
            a.call(
                "POST",
                "/v1/send",
                Some(json!({"address": address, "type": "TASK_REQUEST",
                    "payload": {"inputs": ["x".repeat(200)], "task_id": format!("t{i}"), "min_trust": "sandbox"}})),
            )?;
        }
        let queued = start.elapsed();
        let until = Instant::now() + Duration::from_secs(600);
        loop {
            let got = c.call("GET", "/v1/inbox", None)?["messages"].as_array().map_or(0, Vec::len);
            if got >= n {
                break;
            }
            if Instant::now() > until {
                bail!("only {got} of {n} arrived");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let rate = per_sec(n, start.elapsed());
        println!(
            "direct: {} {n} messages: {rate:.0} messages/s end to end ({:.0}/s queued by the API), {:.3}x the in-process baseline",
            if relayed { "relayed through B," } else { "direct connection," },
            per_sec(n, queued),
            rate / baseline
        );
    }
    Ok(())
}

/// A vector transfer of `mb` MB between two kosd processes on loopback, against the in-process
/// baseline of the same work per chunk (read, seal and sign; verify and open) and a plain
/// SHA-256 of the data.
fn vectors(mb: usize) -> anyhow::Result<()> {
    use kos_node::vectors::{Incoming, Outgoing, Vectors};
    use sha2::Digest as _;
    let dims = 256usize;
    let size = mb * 1_000_000 / (4 * dims) * 4 * dims;
    let data: Vec<u8> = (0..size).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let mb_s = |bytes: usize, d: Duration| bytes as f64 / 1e6 / d.as_secs_f64().max(1e-9);
    // Baselines, in process.
    let t = Instant::now();
    let digest = sha2::Sha256::digest(&data);
    let hash_rate = mb_s(size, t.elapsed());
    let dir = tempfile::tempdir()?;
    let v = Vectors::new(dir.path());
    let sender = SecretKey::from_seed(&[1; 32]);
    let recipient = SecretKey::from_seed(&[2; 32]);
    let meta = Outgoing {
        transfer: String::new(),
        recipient: recipient.public().to_did(),
        to: recipient.public().klp_id().to_string(),
        x25519: hex::encode(recipient.encryption_key().0),
        collection: "bench".into(),
        dims: dims as u16,
        chunks: 0,
        size: 0,
        created_ms: 1,
    };
    let (meta, _) = v.start_outgoing(&data, meta)?;
    let inc = Incoming::offered(
        meta.transfer.clone(),
        &sender.public(),
        (&meta.collection, meta.dims, meta.chunks),
        1,
    );
    let keys = [recipient];
    let t = Instant::now();
    for k in 0..meta.chunks {
        let m = v.sealed_chunk(&meta, k, &sender, 1)?;
        Vectors::verify(m.bytes(), &sender.public(), &keys, Some((&inc, k)))?;
    }
    let baseline = mb_s(size, t.elapsed());
    println!(
        "vectors: {size} bytes in {} chunks; baseline in process (seal + sign, verify + open per chunk): {baseline:.1} MB/s; SHA-256 alone {hash_rate:.0} MB/s ({})",
        meta.chunks,
        hex::encode(&digest[..4])
    );
    // Two nodes.
    let nodes = tempfile::tempdir()?;
    let a = Kosd::start(&nodes.path().join("a"))?;
    let c = Kosd::start(&nodes.path().join("c"))?;
    let s = c.call("GET", "/v1/status", None)?;
    let addr = format!(
        "{}/p2p/{}",
        s["listen"][0].as_str().unwrap_or(""),
        s["peer_id"].as_str().unwrap_or("")
    );
    a.call("POST", "/v1/connect", Some(json!({"addr": addr})))?;
    let to = format!("klp://{}/vectors", s["klp_id"].as_str().unwrap_or(""));
    let until = Instant::now() + Duration::from_secs(120);
    while a.call("GET", &format!("/v1/resolve?address={to}"), None).is_err() {
        if Instant::now() > until {
            bail!("C's record never reached A");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let file = nodes.path().join("data.f32");
    std::fs::write(&file, &data)?;
    let start = Instant::now();
    let r = a.call(
        "POST",
        "/v1/vectors/send",
        Some(json!({"path": file, "to": to, "collection": "bench", "dims": dims})),
    )?;
    let transfer = r["transfer"].as_str().unwrap_or("").to_owned();
    let until = Instant::now() + Duration::from_secs(900);
    loop {
        let list = c.call("GET", "/v1/vectors", None)?;
        let done = list["incoming"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|t| t["transfer"] == transfer.as_str() && t["state"] == "complete");
        if done {
            break;
        }
        if Instant::now() > until {
            bail!("the transfer did not complete");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let rate = mb_s(size, start.elapsed());
    println!(
        "vectors: A -> C over loopback, offered, pulled, verified, assembled and checked: {rate:.1} MB/s, {:.3}x the in-process baseline",
        rate / baseline
    );
    Ok(())
}
