//! Per-peer quotas. Time comes in as an argument, so the limiter is tested with literal times.

use std::collections::HashMap;

use libp2p::PeerId;

/// Gossip messages accepted from one peer per minute; beyond it messages are ignored and count
/// against the peer.
pub const GOSSIP_PER_MINUTE: u32 = 600;
/// Peers tracked at most (the oldest windows are dropped first).
pub const MAX_TRACKED: usize = 4096;

/// A fixed-window counter per peer.
#[derive(Debug, Default)]
pub struct RateLimiter {
    windows: HashMap<PeerId, (u64, u32)>,
}

impl RateLimiter {
    /// Whether `peer` may send one more message at `now_ms` (and counts it).
    pub fn allow(&mut self, peer: PeerId, now_ms: u64, per_minute: u32) -> bool {
        if self.windows.len() >= MAX_TRACKED && !self.windows.contains_key(&peer) {
            let cutoff = now_ms.saturating_sub(60_000);
            self.windows.retain(|_, (start, _)| *start >= cutoff);
            if self.windows.len() >= MAX_TRACKED {
                return false;
            }
        }
        let entry = self.windows.entry(peer).or_insert((now_ms, 0));
        if now_ms.saturating_sub(entry.0) >= 60_000 {
            *entry = (now_ms, 0);
        }
        entry.1 += 1;
        entry.1 <= per_minute
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_the_quota_per_minute_then_refuses_until_the_window_moves() {
        let mut r = RateLimiter::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        for _ in 0..3 {
            assert!(r.allow(a, 1_000, 3));
        }
        assert!(!r.allow(a, 1_500, 3), "fourth message within the minute");
        assert!(r.allow(b, 1_500, 3), "other peers have their own quota");
        assert!(!r.allow(a, 60_999, 3));
        assert!(r.allow(a, 61_000, 3), "a new window starts a minute later");
    }
}
