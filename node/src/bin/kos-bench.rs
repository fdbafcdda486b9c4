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
        other => bail!("unknown benchmark {other}: ingest, catchup or syncflood"),
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
        core.commit()?;
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
            .env("RUST_LOG", "warn")
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

fn catchup(n: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut a = Kosd::start(&dir.path().join("a"))?;
    std::thread::sleep(Duration::from_secs(2));
    let idle = a.rss_mb();
    let members: Vec<SecretKey> = (0..MEMBERS).map(|_| SecretKey::generate()).collect();
    let list: Vec<String> = members.iter().map(|m| m.public().to_did()).collect();
    let fed = a.call(
        "POST",
        "/v1/federation/create",
        Some(json!({"name": "catchup", "members": list, "dev_timing": true})),
    )?["federation"]
        .as_str()
        .context("federation")?
        .to_owned();
    let federation: MessageId = fed.parse().map_err(|_| anyhow::anyhow!("federation id"))?;
    let mut proposals = Vec::new();
    for i in 0..n.div_ceil(MEMBERS) {
        let r = a.call(
            "POST",
            "/v1/proposals",
            Some(json!({"kind": "resource_allocation", "title": format!("p{i}"),
                "description": "Benchmark.", "voting_secs": 3000})),
        )?;
        let id: MessageId =
            r["id"].as_str().context("id")?.parse().map_err(|_| anyhow::anyhow!("id"))?;
        proposals.push(id);
    }
    std::thread::sleep(Duration::from_millis(1_100));
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
    let members: Vec<SecretKey> = (0..MEMBERS).map(|_| SecretKey::generate()).collect();
    let list: Vec<String> = members.iter().map(|m| m.public().to_did()).collect();
    let fed = a.call(
        "POST",
        "/v1/federation/create",
        Some(json!({"name": "flood", "members": list, "dev_timing": true})),
    )?["federation"]
        .as_str()
        .context("federation")?
        .to_owned();
    let federation: MessageId = fed.parse().map_err(|_| anyhow::anyhow!("federation id"))?;
    let per_run = n.div_ceil(MEMBERS);
    let mut proposals = Vec::new();
    for i in 0..2 * per_run {
        let r = a.call(
            "POST",
            "/v1/proposals",
            Some(json!({"kind": "resource_allocation", "title": format!("p{i}"),
                "description": "Benchmark.", "voting_secs": 3000})),
        )?;
        proposals.push(r["id"].as_str().context("id")?.parse().map_err(|_| anyhow::anyhow!("id"))?);
    }
    std::thread::sleep(Duration::from_millis(1_100));
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
