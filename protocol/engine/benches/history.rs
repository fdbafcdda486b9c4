#![allow(clippy::disallowed_methods)] // a benchmark measures time
//! A long-lived federation: the cost of one more message, and of the node's queries, as the
//! history of closed proposals grows. The baseline, measured in the same run, is the same work on
//! a federation with no history.
//!
//! Each history has H closed proposals, each with votes and a certificate (attestations from
//! more than 2/3 of the weight), one in ten executing a configuration change (so the registry has
//! H/10 versions) and later proposals pinning the version in force when they were signed. Then a
//! new proposal receives 20,000 votes through `Engine::handle` — what the node calls for every
//! message, attestation duties and next wake-up included.
//!
//! Run: `cargo bench -p kos-engine --bench history` (add `-- --quick` for H ≤ 1,000).

mod util;

use std::time::{Duration, Instant};

use util::{median, rss_bytes};

use kos_engine::{Engine, Origin};
use kos_protocol::{Message, Payload, SecretKey, payload::*};

const MEMBERS: usize = 20;
const T0: u64 = 1_700_000_000_000;
const S: u64 = 1000;
const VOTES: usize = 20_000;

fn key(i: usize) -> SecretKey {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
    SecretKey::from_seed(&seed)
}

struct Fed {
    keys: Vec<SecretKey>,
    charter: Message,
    seq: u64,
}

impl Fed {
    fn new() -> Fed {
        let keys: Vec<SecretKey> = (0..MEMBERS).map(key).collect();
        let charter = Charter {
            name: "history".into(),
            nonce: 0,
            bodies: vec![],
            hybrid: HybridWeights { role: 0, stake: 0, trust: 1000 },
            timing: Timing {
                grace_ms: S,
                reveal_ms: S,
                clock_skew_ms: 60 * S,
                max_voting_ms: 1 << 40,
                min_voting_ms: 1,
                default_voting_ms: S,
                min_discussion_ms: 0,
            },
            members: keys
                .iter()
                .map(|k| Member {
                    key: k.public(),
                    roles: vec![],
                    stake: 1,
                    trust: TrustLevel::Core,
                })
                .collect(),
            defaults: vec![],
            role_weights: vec![],
            max_delegation_depth: 4,
            min_protocol_version: 1,
        };
        let charter =
            Message::sign(&keys[0], 1, T0, None, Payload::Charter(charter)).expect("charter");
        Fed { keys, charter, seq: 10 }
    }

    fn sign(&mut self, who: usize, at: u64, p: Payload) -> Message {
        self.seq += 1;
        Message::sign(&self.keys[who], self.seq, at, None, p).expect("sign")
    }

    fn proposal(&mut self, e: &Engine, at: u64, voting_ms: u64, change: Option<usize>) -> Message {
        let reg = e.registry(at).expect("registry");
        let (kind, action) = match change {
            Some(i) => (
                ProposalType::Configuration,
                Action::Configuration {
                    key: format!("k{}", i % 7),
                    new: format!("{i}"),
                    old: None,
                },
            ),
            None => (ProposalType::ResourceAllocation, Action::None),
        };
        let fed = self.charter.id();
        self.sign(
            0,
            at,
            Payload::Proposal(Proposal {
                kind,
                scope: Scope::Global,
                title: "history".into(),
                action,
                voting: None,
                options: vec![],
                registry: RegistryVersion { hash: reg.hash(), epoch: reg.epoch },
                timeline: Timeline {
                    reveal_end_ms: None,
                    voting_end_ms: at + 1 + voting_ms,
                    discussion_end_ms: at + 1,
                    execution_delay_ms: 0,
                },
                federation: fed,
                description: "history".into(),
            }),
        )
    }

    fn vote(&mut self, who: usize, proposal: &Message, at: u64, yes: bool) -> Message {
        let fed = self.charter.id();
        self.sign(
            who,
            at,
            Payload::Vote(Vote {
                choice: if yes { Choice::Yes } else { Choice::No },
                reason: None,
                proposal: proposal.id(),
                revision: 0,
                federation: fed,
            }),
        )
    }
}

/// An engine with `h` closed, certified proposals; returns it and the time after the history.
fn history(fed: &mut Fed, h: usize) -> (Engine, u64) {
    let mut e = Engine::new(fed.charter.id());
    e.apply(&fed.charter, Origin::Sync, T0).expect("charter");
    let mut t = T0 + S;
    for i in 0..h {
        let change = (i % 10 == 0).then_some(i);
        let p = fed.proposal(&e, t, 2 * S, change);
        e.apply(&p, Origin::Sync, t).expect("proposal");
        for who in 0..7 {
            let v = fed.vote(who, &p, t + 10 + who as u64, true);
            e.apply(&v, Origin::Sync, t).expect("vote");
        }
        let attest_at = t + 2 * S + 1 + S;
        let me = fed.keys[0].public();
        let due = e.attestations_due(&me, attest_at);
        let a = due.into_iter().find(|a| a.proposal == p.id()).expect("attestation due");
        for who in 0..(MEMBERS * 2 / 3 + 1) {
            let m = fed.sign(who, attest_at, Payload::TallyAttestation(a.clone()));
            e.apply(&m, Origin::Sync, attest_at).expect("attestation");
        }
        assert!(e.finality(&p.id()).is_some());
        t += 4 * S;
    }
    (e, t)
}

struct Row {
    h: usize,
    versions: usize,
    rate: f64,
    status: Duration,
    tally: Duration,
    hash: Duration,
    first_hash: Duration,
    due: Duration,
    rss: usize,
}

fn measure(h: usize, fed: &mut Fed) -> Row {
    let rss_before = rss_bytes();
    let (mut e, t) = history(fed, h);
    let rss = rss_bytes().saturating_sub(rss_before);
    // The first state hash sums every proposal once (as after a restart).
    let first = Instant::now();
    std::hint::black_box(e.state_hash(t));
    let first_hash = first.elapsed();
    let versions = e.registry_chain().len();
    let p = fed.proposal(&e, t, 1 << 30, None);
    e.apply(&p, Origin::Sync, t).expect("proposal");
    let votes: Vec<Message> =
        (0..VOTES).map(|n| fed.vote(n % MEMBERS, &p, t + 2 + n as u64, n % 3 != 0)).collect();
    let me = fed.keys[0].public();
    let now = t + 2 + VOTES as u64;
    let start = Instant::now();
    for v in &votes {
        let step = e.handle(v, Origin::Gossip, now, Some(&me));
        assert!(step.refusal.is_none(), "{:?}", step.refusal);
    }
    let rate = VOTES as f64 / start.elapsed().as_secs_f64();
    let status = median(101, || {
        std::hint::black_box(e.status(&p.id(), now));
    });
    // A tally after a new vote (its cache dropped): O(electorate).
    let mut times: Vec<Duration> = (1..=21u64)
        .map(|k| {
            let v = fed.vote(k as usize % MEMBERS, &p, now + k, k % 2 == 0);
            e.apply(&v, Origin::Sync, now + k).expect("vote");
            let t0 = Instant::now();
            std::hint::black_box(e.tally(&p.id(), now + k));
            t0.elapsed()
        })
        .collect();
    times.sort();
    let tally = times[times.len() / 2];
    // The state hash after one more vote (one proposal to re-sum): the steady cost of a query.
    let mut times: Vec<Duration> = (100..121u64)
        .map(|k| {
            let v = fed.vote(k as usize % MEMBERS, &p, now + k, k % 2 == 0);
            e.apply(&v, Origin::Sync, now + k).expect("vote");
            let t0 = Instant::now();
            std::hint::black_box(e.state_hash(now + k));
            t0.elapsed()
        })
        .collect();
    times.sort();
    let hash = times[times.len() / 2];
    let due = median(101, || {
        std::hint::black_box(e.attestations_due(&me, now));
        std::hint::black_box(e.next_wakeup(now));
    });
    Row { h, versions, rate, status, tally, hash, first_hash, due, rss }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let sizes: &[usize] = if quick { &[0, 100, 1_000] } else { &[0, 100, 1_000, 10_000] };
    let mut fed = Fed::new();
    println!(
        "{:>7} | {:>8} | {:>14} | {:>7} | {:>9} | {:>9} | {:>10} | {:>11} | {:>9} | {:>9}",
        "closed",
        "versions",
        "handle votes/s",
        "vs H=0",
        "status",
        "tally",
        "state hash",
        "first hash",
        "due+wake",
        "history"
    );
    let mut base = None;
    for &h in sizes {
        let r = measure(h, &mut fed);
        let base = *base.get_or_insert(r.rate);
        println!(
            "{:>7} | {:>8} | {:>14.0} | {:>6.2}x | {:>6.2} µs | {:>6.1} µs | {:>7.1} µs | {:>8.2} ms \
             | {:>6.2} µs | {:>6.1} MB",
            r.h,
            r.versions,
            r.rate,
            r.rate / base,
            r.status.as_secs_f64() * 1e6,
            r.tally.as_secs_f64() * 1e6,
            r.hash.as_secs_f64() * 1e6,
            r.first_hash.as_secs_f64() * 1e3,
            r.due.as_secs_f64() * 1e6,
            r.rss as f64 / 1e6,
        );
    }
}
