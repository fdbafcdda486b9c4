//! Quotas as token buckets. Time comes in as an argument, so they are tested with literal times.
//!
//! Two kinds: per *author* (signed messages per member, what a member may inject into the
//! federation) and per relaying *peer* (a flood guard far above honest relay rates). Neither ever
//! turns a message into a rejection: over quota a message is ignored, and honest relayers of a
//! burst are never punished for it.

use std::{collections::HashMap, hash::Hash};

/// Default burst of signed messages one author may have in flight: a member who votes on, and
/// attests, a few hundred proposals closing together stays well inside it.
pub const AUTHOR_BURST: u32 = 2_000;
/// Default sustained rate per author, messages per minute.
pub const AUTHOR_PER_MINUTE: u32 = 2_000;
/// Flood guard per relaying peer: burst…
pub const PEER_BURST: u32 = 50_000;
/// …and sustained rate per minute (about 1,700 messages a second).
pub const PEER_PER_MINUTE: u32 = 100_000;
/// Keys tracked at most per limiter; when full, buckets that have refilled completely (and so
/// carry no information) are dropped first, then new keys are refused.
pub const MAX_TRACKED: usize = 65_536;

/// A token bucket per key: `burst` tokens, refilled at `per_minute` a minute.
#[derive(Debug)]
pub struct Buckets<K> {
    burst: u32,
    per_minute: u32,
    /// key → (tokens × 60,000, last refill time in ms): integer arithmetic, no drift.
    state: HashMap<K, (u64, u64)>,
}

impl<K: Eq + Hash + Copy> Buckets<K> {
    /// A limiter with these bounds (`per_minute` at least 1).
    pub fn new(burst: u32, per_minute: u32) -> Self {
        Buckets { burst: burst.max(1), per_minute: per_minute.max(1), state: HashMap::new() }
    }

    /// New limits; a bucket fuller than the new burst is cut down to it when next used.
    pub fn set_limits(&mut self, burst: u32, per_minute: u32) {
        self.burst = burst.max(1);
        self.per_minute = per_minute.max(1);
    }

    /// The sustained rate, per minute.
    pub fn per_minute(&self) -> u32 {
        self.per_minute
    }

    fn full(&self) -> u64 {
        u64::from(self.burst) * 60_000
    }

    /// Whether `key` may send one more at `now_ms` (taking a token if so).
    pub fn allow(&mut self, key: K, now_ms: u64) -> bool {
        let full = self.full();
        let rate = u64::from(self.per_minute);
        if self.state.len() >= MAX_TRACKED && !self.state.contains_key(&key) {
            self.state.retain(|_, (tokens, at)| {
                tokens.saturating_add(now_ms.saturating_sub(*at).saturating_mul(rate)) < full
            });
            if self.state.len() >= MAX_TRACKED {
                return false;
            }
        }
        let (tokens, at) = self.state.entry(key).or_insert((full, now_ms));
        let elapsed = now_ms.saturating_sub(*at);
        *tokens = tokens.saturating_add(elapsed.saturating_mul(rate)).min(full);
        *at = (*at).max(now_ms);
        if *tokens >= 60_000 {
            *tokens -= 60_000;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_sustained_rate() {
        let mut b = Buckets::new(3, 60); // one a second after the burst
        for _ in 0..3 {
            assert!(b.allow(1u8, 1_000));
        }
        assert!(!b.allow(1, 1_000), "the burst is spent");
        assert!(b.allow(2, 1_000), "other keys have their own bucket");
        assert!(!b.allow(1, 1_999), "not a whole token yet");
        assert!(b.allow(1, 2_000), "one token a second");
        assert!(!b.allow(1, 2_000));
        for _ in 0..3 {
            assert!(b.allow(1, 100_000), "refills up to the burst, no further");
        }
        assert!(!b.allow(1, 100_000));
    }

    #[test]
    fn a_clock_going_back_does_not_mint_tokens() {
        let mut b = Buckets::new(1, 60);
        assert!(b.allow(1u8, 10_000));
        assert!(!b.allow(1, 5_000));
        assert!(!b.allow(1, 10_500));
        assert!(b.allow(1, 11_000));
    }
}
