#![allow(clippy::disallowed_methods)] // a benchmark measures time
//! Engine throughput: votes applied per second and tally-query time at 10k, 100k and 1M votes,
//! with decoding (signature verification) of the same votes as the baseline measured in the same
//! run. Run: `cargo bench -p kos-engine --bench engine` (add `-- --quick` for 10k and 100k only).
//!
//! The electorate is 500 members (trust weighting, transitive delegations for a tenth of them);
//! votes beyond 500 are vote changes, so every tally resolves "latest vote wins" over the full
//! history.

mod util;

use std::time::{Duration, Instant};

use util::{median, rss_bytes};

use kos_engine::{Engine, Origin, Registry};
use kos_protocol::{Message, Payload, SecretKey, payload::*};

const MEMBERS: usize = 500;
const T0: u64 = 1_700_000_000_000;

fn key(i: usize) -> SecretKey {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
    SecretKey::from_seed(&seed)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let keys: Vec<SecretKey> = (0..MEMBERS).map(key).collect();
    let levels = [TrustLevel::Core, TrustLevel::Trusted, TrustLevel::Standard, TrustLevel::Sandbox];
    let charter = Charter {
        name: "bench".into(),
        nonce: 0,
        bodies: vec![],
        hybrid: HybridWeights { role: 0, stake: 0, trust: 1000 },
        timing: Timing {
            grace_ms: 1000,
            reveal_ms: 1000,
            clock_skew_ms: 60_000,
            max_voting_ms: 1 << 40,
            min_voting_ms: 1,
            default_voting_ms: 1000,
            min_discussion_ms: 0,
        },
        members: keys
            .iter()
            .enumerate()
            .map(|(i, k)| Member { key: k.public(), roles: vec![], stake: 1, trust: levels[i % 4] })
            .collect(),
        defaults: vec![],
        role_weights: vec![],
        max_delegation_depth: 4,
        min_protocol_version: 1,
    };
    let registry = RegistryVersion { hash: Registry::from_charter(&charter).hash(), epoch: 0 };
    let charter = Message::sign(&keys[0], 1, T0, None, Payload::Charter(charter)).expect("charter");
    let fed = charter.id();
    let voting_end = T0 + (1 << 39);
    let proposal = Message::sign(
        &keys[0],
        2,
        T0,
        None,
        Payload::Proposal(Proposal {
            kind: ProposalType::ResourceAllocation,
            scope: Scope::Global,
            title: "bench".into(),
            action: Action::None,
            voting: None,
            options: vec![],
            registry,
            timeline: Timeline {
                reveal_end_ms: None,
                voting_end_ms: voting_end,
                discussion_end_ms: T0 + 1,
                execution_delay_ms: 0,
            },
            federation: fed,
            description: "bench".into(),
        }),
    )
    .expect("proposal");
    // A tenth of the members delegate to the next member (chains of up to 4 hops are followed).
    let delegations: Vec<Message> = (0..MEMBERS / 10)
        .map(|i| {
            let payload = Payload::Delegation(Delegation {
                scope: DelegationScope::All,
                delegate: Some(keys[(i * 10 + 1) % MEMBERS].public()),
                federation: fed,
            });
            Message::sign(&keys[i * 10], 3, T0, None, payload).expect("delegation")
        })
        .collect();

    let sizes: &[usize] = if quick { &[10_000, 100_000] } else { &[10_000, 100_000, 1_000_000] };
    let max = *sizes.last().expect("sizes");
    let started = Instant::now();
    let choices = [Choice::Yes, Choice::No, Choice::Abstain, Choice::Veto];
    let votes: Vec<Message> = (0..max)
        .map(|n| {
            let voter = n % MEMBERS;
            let payload = Payload::Vote(Vote {
                choice: choices[(n / MEMBERS + voter) % 4].clone(),
                reason: None,
                proposal: proposal.id(),
                revision: 0,
                federation: fed,
            });
            Message::sign(&keys[voter], 10 + n as u64, T0 + 2 + n as u64, None, payload)
                .expect("vote")
        })
        .collect();
    // Five more votes, used to drop the tally cache before each tally measurement.
    let extra: Vec<Message> = (0..5)
        .map(|k| {
            let payload = Payload::Vote(Vote {
                choice: Choice::Yes,
                reason: None,
                proposal: proposal.id(),
                revision: 0,
                federation: fed,
            });
            Message::sign(&keys[k], u64::MAX - 10 + k as u64, T0 + 3, None, payload).expect("vote")
        })
        .collect();
    println!(
        "signed {max} votes in {:.1} s (setup, not measured)",
        started.elapsed().as_secs_f64()
    );

    // Baseline: decoding and verifying the same envelopes (what every node does before apply).
    let sample = 20_000.min(max);
    let t = Instant::now();
    for v in &votes[..sample] {
        std::hint::black_box(Message::decode(v.bytes()).expect("decode"));
    }
    let decode_rate = sample as f64 / t.elapsed().as_secs_f64();
    println!("baseline: decode+verify {decode_rate:.0} messages/s ({sample} envelopes)");
    println!();
    println!(
        "{:>9} | {:>14} | {:>9} | {:>13} | {:>10} | {:>12}",
        "votes", "apply votes/s", "vs decode", "tally query", "state hash", "engine RSS"
    );

    for &n in sizes {
        let rss_before = rss_bytes();
        let mut engine = Engine::new(fed);
        engine.apply(&charter, Origin::Sync, T0).expect("charter");
        engine.apply(&proposal, Origin::Sync, T0).expect("proposal");
        for d in &delegations {
            engine.apply(d, Origin::Sync, T0).expect("delegation");
        }
        let t = Instant::now();
        for v in &votes[..n] {
            engine.apply(v, Origin::Sync, T0).expect("vote");
        }
        let apply = t.elapsed();
        let rate = n as f64 / apply.as_secs_f64();
        let rss = rss_bytes().saturating_sub(rss_before);
        // The tally after a new vote (its cache dropped): what a query costs when ballots move.
        let mut times: Vec<Duration> = (0..5)
            .map(|k| {
                engine.apply(&extra[k], Origin::Sync, T0).expect("vote");
                let t = Instant::now();
                std::hint::black_box(engine.tally(&proposal.id(), voting_end).expect("tally"));
                t.elapsed()
            })
            .collect();
        times.sort();
        let tally_time = times[2];
        let hash_time = median(3, || {
            std::hint::black_box(engine.state_hash(voting_end));
        });
        let t = engine.tally(&proposal.id(), voting_end).expect("tally");
        assert_eq!(t.counted.len(), MEMBERS.min(n + 5));
        println!(
            "{n:>9} | {rate:>14.0} | {:>8.1}x | {:>10.3} ms | {:>7.3} ms | {:>9.1} MB",
            rate / decode_rate,
            tally_time.as_secs_f64() * 1e3,
            hash_time.as_secs_f64() * 1e3,
            rss as f64 / 1e6,
        );
        drop(engine);
    }
}
