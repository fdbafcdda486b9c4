//! Peer reputation: graded actions (in the manner of Lighthouse), decay, and blocks that persist
//! across restarts. Pure apart from [`Reputation::load`]/[`Reputation::save`]; time comes in as
//! an argument.
//!
//! | action          | score | blocks after          | given for                                   |
//! |-----------------|-------|-----------------------|---------------------------------------------|
//! | `Fatal`         | —     | at once               | a forged signature                          |
//! | `LowTolerance`  | −10   | 5 within a half-life  | malformed or oversized envelopes            |
//! | `MidTolerance`  | −5    | 10                    | messages the engine rejects; unrequested sync data |
//! | `HighTolerance` | −1    | 50                    | over the flood guard; sync requests over quota |
//!
//! Scores decay towards zero with a half-life of [`HALF_LIFE_MS`]. Messages this node cannot
//! judge — unknown types, newer protocol versions, over an author's quota, duplicates — cost
//! nothing: a rolling upgrade or an honest burst never gets a peer blocked.

use std::{collections::BTreeMap, path::Path};

use libp2p::PeerId;

/// How bad a peer's action was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerAction {
    /// Blocks at once.
    Fatal,
    /// A few of these block.
    LowTolerance,
    /// About ten of these block.
    MidTolerance,
    /// About fifty of these block.
    HighTolerance,
}

impl PeerAction {
    fn score(self) -> f64 {
        match self {
            PeerAction::Fatal => 2.0 * BLOCK_SCORE,
            PeerAction::LowTolerance => -10.0,
            PeerAction::MidTolerance => -5.0,
            PeerAction::HighTolerance => -1.0,
        }
    }

    /// Name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerAction::Fatal => "fatal",
            PeerAction::LowTolerance => "low",
            PeerAction::MidTolerance => "mid",
            PeerAction::HighTolerance => "high",
        }
    }
}

/// A peer whose score falls to this is blocked (half a point of slack for the decay between
/// actions that come close together).
pub const BLOCK_SCORE: f64 = -49.5;
/// Half-life of a peer's score.
pub const HALF_LIFE_MS: u64 = 10 * 60 * 1000;
/// How long the immune system blocks a peer.
pub const BLOCK_MS: u64 = 60 * 60 * 1000;
/// Peers whose score is tracked at most (the closest to zero are forgotten first).
pub const MAX_SCORED: usize = 16_384;
/// Blocks kept at most (operator blocks are always kept; the oldest automatic ones go first).
pub const MAX_BLOCKS: usize = 16_384;
/// File of the blocks, in the data directory.
pub const BLOCKS_FILE: &str = "peers.blocked";

/// A block: until when (`None`: until the operator lifts it) and why.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Block {
    /// End of the block, ms since the Unix epoch; `None` for an operator's block.
    pub until_ms: Option<u64>,
    /// Why.
    pub reason: String,
}

/// Scores and blocks.
#[derive(Debug, Default)]
pub struct Reputation {
    scores: BTreeMap<PeerId, (f64, u64)>,
    blocks: BTreeMap<PeerId, Block>,
}

impl Reputation {
    /// Loads the blocks saved in `data_dir` (an unreadable file is reported and ignored).
    pub fn load(data_dir: &Path, now_ms: u64) -> Self {
        let mut r = Reputation::default();
        let path = data_dir.join(BLOCKS_FILE);
        let Ok(text) = std::fs::read_to_string(&path) else { return r };
        match serde_json::from_str::<BTreeMap<String, Block>>(&text) {
            Ok(map) => {
                for (peer, block) in map {
                    if let Ok(peer) = peer.parse::<PeerId>()
                        && block.until_ms.is_none_or(|u| u > now_ms)
                    {
                        r.blocks.insert(peer, block);
                    }
                }
            }
            Err(e) => tracing::warn!(path = %path.display(), "ignoring unreadable block list: {e}"),
        }
        r
    }

    /// Writes the blocks to `data_dir` (write to a temporary file, then rename).
    pub fn save(&self, data_dir: &Path) -> std::io::Result<()> {
        let map: BTreeMap<String, &Block> =
            self.blocks.iter().map(|(p, b)| (p.to_string(), b)).collect();
        let text = serde_json::to_string_pretty(&map).map_err(std::io::Error::other)?;
        let tmp = data_dir.join(format!("{BLOCKS_FILE}.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, data_dir.join(BLOCKS_FILE))
    }

    /// The peer's score now (0 for an unknown peer).
    pub fn score(&self, peer: &PeerId, now_ms: u64) -> f64 {
        self.scores.get(peer).map_or(0.0, |(s, at)| decay(*s, now_ms.saturating_sub(*at)))
    }

    /// Records an action. Returns the block it caused, if it caused one now.
    pub fn report(
        &mut self,
        peer: PeerId,
        action: PeerAction,
        why: &str,
        now_ms: u64,
    ) -> Option<Block> {
        if self.blocks.contains_key(&peer) {
            return None;
        }
        let score = self.score(&peer, now_ms) + action.score();
        if self.scores.len() >= MAX_SCORED && !self.scores.contains_key(&peer) {
            // Forget the peer closest to a clean record.
            if let Some(p) =
                self.scores.iter().max_by(|a, b| a.1.0.total_cmp(&b.1.0)).map(|(p, _)| *p)
            {
                self.scores.remove(&p);
            }
        }
        if score <= BLOCK_SCORE {
            self.scores.remove(&peer);
            let block = Block {
                until_ms: Some(now_ms.saturating_add(BLOCK_MS)),
                reason: format!("{} ({})", why, action.as_str()),
            };
            self.insert_block(peer, block.clone());
            return Some(block);
        }
        self.scores.insert(peer, (score, now_ms));
        None
    }

    fn insert_block(&mut self, peer: PeerId, block: Block) {
        if self.blocks.len() >= MAX_BLOCKS
            && let Some(oldest) = self
                .blocks
                .iter()
                .filter_map(|(p, b)| b.until_ms.map(|u| (u, *p)))
                .min()
                .map(|(_, p)| p)
        {
            self.blocks.remove(&oldest);
        }
        self.blocks.insert(peer, block);
    }

    /// An operator's block (until lifted).
    pub fn block(&mut self, peer: PeerId, reason: &str) {
        self.insert_block(peer, Block { until_ms: None, reason: reason.to_owned() });
    }

    /// Lifts a block and forgets the score.
    pub fn unblock(&mut self, peer: &PeerId) -> bool {
        self.scores.remove(peer);
        self.blocks.remove(peer).is_some()
    }

    /// Whether `peer` is blocked.
    pub fn is_blocked(&self, peer: &PeerId) -> bool {
        self.blocks.contains_key(peer)
    }

    /// Removes the blocks whose time is up; returns the peers.
    pub fn expire(&mut self, now_ms: u64) -> Vec<PeerId> {
        let done: Vec<PeerId> = self
            .blocks
            .iter()
            .filter(|(_, b)| b.until_ms.is_some_and(|u| u <= now_ms))
            .map(|(p, _)| *p)
            .collect();
        for p in &done {
            self.blocks.remove(p);
        }
        done
    }

    /// Current blocks.
    pub fn blocks(&self) -> impl Iterator<Item = (&PeerId, &Block)> {
        self.blocks.iter()
    }
}

fn decay(score: f64, elapsed_ms: u64) -> f64 {
    score * 0.5f64.powf(elapsed_ms as f64 / HALF_LIFE_MS as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_fatal_action_blocks_at_once() {
        let mut r = Reputation::default();
        let p = PeerId::random();
        assert!(r.report(p, PeerAction::Fatal, "forged signature", 0).is_some());
        assert!(r.is_blocked(&p));
        assert_eq!(r.expire(BLOCK_MS - 1), vec![]);
        assert_eq!(r.expire(BLOCK_MS), vec![p]);
        assert!(!r.is_blocked(&p));
    }

    #[test]
    fn tolerance_grades_count_differently_and_decay() {
        let mut r = Reputation::default();
        let (low, mid, high) = (PeerId::random(), PeerId::random(), PeerId::random());
        for i in 0..4 {
            assert!(r.report(low, PeerAction::LowTolerance, "x", i).is_none());
        }
        assert!(r.report(low, PeerAction::LowTolerance, "x", 5).is_some(), "fifth low blocks");
        for i in 0..9 {
            assert!(r.report(mid, PeerAction::MidTolerance, "x", i).is_none());
        }
        assert!(r.report(mid, PeerAction::MidTolerance, "x", 10).is_some(), "tenth mid blocks");
        for i in 0..49 {
            assert!(r.report(high, PeerAction::HighTolerance, "x", i).is_none());
        }
        // An hour later the score has mostly decayed: 49 more are tolerated again.
        let later = 6 * HALF_LIFE_MS;
        assert!(r.score(&high, later) > -1.0);
        for i in 0..40 {
            assert!(r.report(high, PeerAction::HighTolerance, "x", later + i).is_none());
        }
    }

    #[test]
    fn blocks_survive_a_save_and_load_expired_ones_do_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut r = Reputation::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        r.report(a, PeerAction::Fatal, "forged", 1_000);
        r.block(b, "operator");
        r.save(dir.path()).expect("save");
        let back = Reputation::load(dir.path(), 2_000);
        assert!(back.is_blocked(&a) && back.is_blocked(&b));
        let much_later = Reputation::load(dir.path(), 1_000 + BLOCK_MS);
        assert!(!much_later.is_blocked(&a), "its hour is up");
        assert!(much_later.is_blocked(&b), "an operator's block stays");
    }
}
