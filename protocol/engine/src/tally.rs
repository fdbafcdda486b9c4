//! Counting: decision rules over weighted ballots, and the Merkle root of counted votes.

use sha2::{Digest as _, Sha256};

use kos_protocol::payload::{Choice, DecisionRule, Digest, MessageId, Outcome, Ratio};
use serde::{Deserialize, Serialize};

/// The result of counting a proposal's ballots.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Count {
    /// Weight per choice: `[yes, no, abstain, veto]` for binary rules, per option otherwise
    /// (first preferences for ranked choice).
    pub totals: Vec<u64>,
    /// Weight of every ballot counted (direct and delegated).
    pub participation: u64,
    /// Total eligible weight.
    pub eligible: u64,
    /// The decision.
    pub outcome: Outcome,
    /// The winning option (approval and ranked choice).
    pub winner: Option<u16>,
    /// Instant-runoff rounds: weight per option in each round (empty for other rules).
    pub rounds: Vec<Vec<u64>>,
}

fn at_least(part: u64, whole: u64, r: Ratio) -> bool {
    // part / whole >= num / den, exactly.
    u128::from(part) * u128::from(r.den()) >= u128::from(r.num()) * u128::from(whole)
}

fn above(part: u64, whole: u64, r: Ratio) -> bool {
    u128::from(part) * u128::from(r.den()) > u128::from(r.num()) * u128::from(whole)
}

/// Counts `ballots` (each a choice and the weight it carries) under `rule`.
///
/// Order: quorum (participation / eligible ≥ quorum, else `failed_quorum`), then veto
/// (veto / participation > threshold, binary rules only, else `vetoed`), then the rule.
pub fn count(
    rule: DecisionRule,
    quorum: Ratio,
    veto_threshold: Ratio,
    eligible: u64,
    options: usize,
    ballots: &[(&Choice, u64)],
) -> Count {
    let participation = ballots.iter().fold(0u64, |acc, (_, w)| acc.saturating_add(*w));
    let quorum_met = eligible > 0 && at_least(participation, eligible, quorum);
    let mut c = Count {
        totals: Vec::new(),
        participation,
        eligible,
        outcome: Outcome::FailedQuorum,
        winner: None,
        rounds: Vec::new(),
    };
    match rule {
        DecisionRule::SimpleMajority | DecisionRule::Supermajority(_) | DecisionRule::Consensus => {
            let mut t = [0u64; 4];
            for (choice, w) in ballots {
                let i = match choice {
                    Choice::Yes => 0,
                    Choice::No => 1,
                    Choice::Abstain => 2,
                    Choice::Veto => 3,
                    // Refused at acceptance for binary rules.
                    Choice::Approve(_) | Choice::Rank(_) => continue,
                };
                t[i] = t[i].saturating_add(*w);
            }
            c.totals = t.to_vec();
            let [yes, no, _abstain, veto] = t;
            let decided = yes.saturating_add(no).saturating_add(veto);
            c.outcome = if !quorum_met {
                Outcome::FailedQuorum
            } else if above(veto, participation, veto_threshold) {
                Outcome::Vetoed
            } else {
                let approved = match rule {
                    DecisionRule::SimpleMajority => u128::from(yes) * 2 > u128::from(decided),
                    DecisionRule::Supermajority(r) => decided > 0 && at_least(yes, decided, r),
                    _ => yes > 0 && no == 0 && veto == 0,
                };
                if approved { Outcome::Approved } else { Outcome::Rejected }
            };
        }
        DecisionRule::Plurality => {
            let mut t = vec![0u64; options];
            for (choice, w) in ballots {
                if let Choice::Approve(set) = choice {
                    for &i in set {
                        if let Some(slot) = t.get_mut(usize::from(i)) {
                            *slot = slot.saturating_add(*w);
                        }
                    }
                }
            }
            // Most approvals wins; ties go to the lowest option index.
            let best = t.iter().enumerate().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(&a.0)));
            c.totals = t.clone();
            c.outcome = if !quorum_met {
                Outcome::FailedQuorum
            } else if let Some((i, &w)) = best.filter(|(_, w)| **w > 0) {
                let _ = w;
                c.winner = u16::try_from(i).ok();
                Outcome::Approved
            } else {
                Outcome::Rejected
            };
        }
        DecisionRule::InstantRunoff => {
            let (rounds, winner) = instant_runoff(options, ballots);
            c.totals = rounds.first().cloned().unwrap_or_else(|| vec![0; options]);
            c.rounds = rounds;
            c.outcome = if !quorum_met {
                Outcome::FailedQuorum
            } else if let Some(w) = winner {
                c.winner = Some(w);
                Outcome::Approved
            } else {
                Outcome::Rejected
            };
        }
    }
    c
}

/// Instant runoff. Each round, every ballot counts for its most preferred continuing option;
/// an option with more than half of the round's counted weight wins. Otherwise the option with
/// the least weight is eliminated, ties eliminating the highest index. No winner if every
/// ballot is exhausted.
fn instant_runoff(options: usize, ballots: &[(&Choice, u64)]) -> (Vec<Vec<u64>>, Option<u16>) {
    let mut continuing = vec![true; options];
    let mut rounds = Vec::new();
    loop {
        let mut t = vec![0u64; options];
        for (choice, w) in ballots {
            if let Choice::Rank(order) = choice
                && let Some(&top) = order
                    .iter()
                    .find(|&&i| continuing.get(usize::from(i)).copied().unwrap_or(false))
            {
                t[usize::from(top)] = t[usize::from(top)].saturating_add(*w);
            }
        }
        let total: u128 = t.iter().map(|&x| u128::from(x)).sum();
        rounds.push(t.clone());
        if total == 0 {
            return (rounds, None);
        }
        let leader = (0..options)
            .filter(|&i| continuing[i])
            .max_by(|&a, &b| t[a].cmp(&t[b]).then(b.cmp(&a)));
        if let Some(l) = leader {
            let left = continuing.iter().filter(|&&c| c).count();
            if u128::from(t[l]) * 2 > total || left == 1 {
                return (rounds, u16::try_from(l).ok());
            }
        }
        let loser = (0..options)
            .filter(|&i| continuing[i])
            .min_by(|&a, &b| t[a].cmp(&t[b]).then(b.cmp(&a)));
        match loser {
            Some(i) => continuing[i] = false,
            None => return (rounds, None),
        }
    }
}

/// Merkle root over message ids: leaves `SHA-256(0x00 ‖ id)` in ascending id order, inner nodes
/// `SHA-256(0x01 ‖ left ‖ right)`, an odd node carried up unchanged; the empty set's root is
/// `SHA-256("kos-klp-v1/empty-root")`.
pub fn merkle_root(ids: &[MessageId]) -> Digest {
    let mut sorted: Vec<&MessageId> = ids.iter().collect();
    sorted.sort();
    sorted.dedup();
    if sorted.is_empty() {
        return Digest(Sha256::digest(b"kos-klp-v1/empty-root").into());
    }
    let mut level: Vec<[u8; 32]> = sorted.iter().map(|id| leaf_hash(id)).collect();
    while level.len() > 1 {
        level = parent_level(&level);
    }
    Digest(level[0])
}

/// The next level up: pairs hashed, an odd last node carried up unchanged.
fn parent_level(level: &[[u8; 32]]) -> Vec<[u8; 32]> {
    level
        .chunks(2)
        .map(|pair| match pair {
            [l, r] => node_hash(l, r),
            [one] => *one,
            _ => unreachable!("chunks(2) yields one or two items"),
        })
        .collect()
}

fn leaf_hash(id: &MessageId) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(id.0);
    h.finalize().into()
}

fn node_hash(l: &[u8; 32], r: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(l);
    h.update(r);
    h.finalize().into()
}

/// One step of a Merkle inclusion proof: the sibling's hash and which side it is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProofStep {
    /// The sibling node (hex in JSON).
    #[serde(with = "hex_digest")]
    pub sibling: Digest,
    /// Whether the sibling is the left child (the proven node is then on the right).
    pub left: bool,
}

/// The inclusion proof of `id` in the tree of [`merkle_root`] over `ids`, or `None` if `id` is
/// not a leaf. Levels where the node is carried up unchanged contribute no step.
pub fn merkle_proof(ids: &[MessageId], id: &MessageId) -> Option<Vec<ProofStep>> {
    let mut sorted: Vec<&MessageId> = ids.iter().collect();
    sorted.sort();
    sorted.dedup();
    let mut index = sorted.binary_search(&id).ok()?;
    let mut level: Vec<[u8; 32]> = sorted.iter().map(|id| leaf_hash(id)).collect();
    let mut steps = Vec::new();
    while level.len() > 1 {
        let sibling = index ^ 1;
        if let Some(s) = level.get(sibling) {
            steps.push(ProofStep { sibling: Digest(*s), left: sibling < index });
        }
        level = parent_level(&level);
        index /= 2;
    }
    Some(steps)
}

/// Whether `proof` leads from the leaf `id` to `root`.
pub fn verify_merkle_proof(id: &MessageId, proof: &[ProofStep], root: &Digest) -> bool {
    let mut h = leaf_hash(id);
    for step in proof {
        h = if step.left { node_hash(&step.sibling.0, &h) } else { node_hash(&h, &step.sibling.0) };
    }
    h == root.0
}

mod hex_digest {
    use kos_protocol::payload::Digest;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub(super) fn serialize<S: Serializer>(d: &Digest, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&d.to_string())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(|_| D::Error::custom("expected 64 hex digits"))
    }
}
