//! A test federation: named members with keys, a charter with second-scale timings, and helpers
//! that sign every governance message type.
#![allow(dead_code)]

use kos_engine::{Engine, Origin, Refusal, Registry};
use kos_protocol::{Message, Payload, SecretKey, payload::*, vote_commitment};

/// Seconds, in ms.
pub const S: u64 = 1000;
/// The charter's creation time.
pub const T0: u64 = 1_700_000_000_000;
/// Discussion ends (voting opens) at T0 + 10 s.
pub const VOTE_START: u64 = T0 + 10 * S;
/// Voting ends at T0 + 40 s.
pub const VOTE_END: u64 = T0 + 40 * S;
/// Reveal ends at T0 + 60 s.
pub const REVEAL_END: u64 = T0 + 60 * S;

pub struct Fed {
    pub keys: Vec<SecretKey>,
    pub charter: Message,
    pub engine: Engine,
    seq: std::cell::Cell<u64>,
}

pub fn key(i: usize) -> SecretKey {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
    SecretKey::from_seed(&seed)
}

/// A test timing: voting 1 s – 1 h, no minimum discussion, 5 s grace, 20 s reveal, 60 s skew.
pub fn test_timing() -> Timing {
    Timing {
        grace_ms: 5 * S,
        reveal_ms: 20 * S,
        clock_skew_ms: 60 * S,
        max_voting_ms: 3600 * S,
        min_voting_ms: S,
        default_voting_ms: 30 * S,
        min_discussion_ms: 0,
    }
}

/// The engine's built-in configuration (quorum 3/10, veto 334/1000) with this rule and
/// weighting.
pub fn config(rule: DecisionRule, weighting: Weighting) -> VotingConfig {
    VotingConfig { rule, weighting, ..kos_engine::default_config(ProposalType::ResourceAllocation) }
}

impl Fed {
    /// A federation whose members have these trust levels (member i has key `key(i)`, stake
    /// `i + 1`, role citizen), founded by member 0.
    pub fn new(levels: &[TrustLevel]) -> Fed {
        Self::with(levels, 8, |_| {})
    }

    pub fn with(levels: &[TrustLevel], depth: u8, edit: impl FnOnce(&mut Charter)) -> Fed {
        let keys: Vec<SecretKey> = (0..levels.len()).map(key).collect();
        let mut charter = Charter {
            name: "test".into(),
            nonce: 1,
            bodies: vec![],
            hybrid: HybridWeights { role: 0, stake: 0, trust: 1000 },
            timing: test_timing(),
            members: keys
                .iter()
                .zip(levels)
                .enumerate()
                .map(|(i, (k, &trust))| Member {
                    key: k.public(),
                    roles: vec![Role::Citizen],
                    stake: i as u64 + 1,
                    trust,
                })
                .collect(),
            // The fixtures' proposals set any voting configuration: the charter lets resource
            // allocations override every setting.
            defaults: vec![TypeDefault {
                kind: ProposalType::ResourceAllocation,
                config: kos_engine::default_config(ProposalType::ResourceAllocation),
                overrides: VotingField::ALL.to_vec(),
            }],
            role_weights: vec![],
            max_delegation_depth: depth,
            min_protocol_version: 1,
        };
        edit(&mut charter);
        let msg = Message::sign(&keys[0], 1, T0, None, Payload::Charter(charter)).expect("charter");
        let mut engine = Engine::new(msg.id());
        engine.apply(&msg, Origin::Sync, T0).expect("charter applies");
        Fed { keys, charter: msg, engine, seq: std::cell::Cell::new(100) }
    }

    pub fn id(&self) -> FederationId {
        self.charter.id()
    }

    pub fn registry0(&self) -> RegistryVersion {
        let Payload::Charter(c) = self.charter.payload() else { unreachable!() };
        RegistryVersion { hash: Registry::from_charter(c).hash(), epoch: 0 }
    }

    fn next_seq(&self) -> u64 {
        let s = self.seq.get() + 1;
        self.seq.set(s);
        s
    }

    pub fn sign(&self, who: usize, created: u64, p: Payload) -> Message {
        Message::sign(&self.keys[who], self.next_seq(), created, None, p).expect("sign")
    }

    pub fn proposal_body(
        &self,
        kind: ProposalType,
        config: Option<VotingConfig>,
        options: &[&str],
    ) -> Proposal {
        let secret = config.as_ref().is_some_and(|c| c.secret);
        Proposal {
            kind,
            scope: Scope::Global,
            title: "A proposal".into(),
            action: match kind {
                ProposalType::Configuration => Action::Configuration {
                    key: "relay.quota".into(),
                    new: "120".into(),
                    old: None,
                },
                _ => Action::None,
            },
            voting: config,
            options: options.iter().map(|s| s.to_string()).collect(),
            registry: self.registry0(),
            timeline: Timeline {
                reveal_end_ms: secret.then_some(REVEAL_END),
                voting_end_ms: VOTE_END,
                discussion_end_ms: VOTE_START,
                execution_delay_ms: 0,
            },
            federation: self.id(),
            description: "Details.".into(),
        }
    }

    /// Member `who` proposes; returns the PROPOSAL message.
    pub fn propose(&self, who: usize, config: VotingConfig, options: &[&str]) -> Message {
        let body = self.proposal_body(ProposalType::ResourceAllocation, Some(config), options);
        self.sign(who, T0 + S, Payload::Proposal(body))
    }

    pub fn vote(&self, who: usize, proposal: &Message, choice: Choice) -> Message {
        self.vote_at(who, proposal, choice, VOTE_START + S)
    }

    pub fn vote_at(&self, who: usize, proposal: &Message, choice: Choice, at: u64) -> Message {
        self.sign(
            who,
            at,
            Payload::Vote(Vote {
                choice,
                reason: None,
                proposal: proposal.id(),
                revision: 0,
                federation: self.id(),
            }),
        )
    }

    pub fn delegate(&self, who: usize, to: Option<usize>, scope: DelegationScope) -> Message {
        self.sign(
            who,
            T0 + 2 * S,
            Payload::Delegation(Delegation {
                scope,
                delegate: to.map(|t| self.keys[t].public()),
                federation: self.id(),
            }),
        )
    }

    pub fn commit(
        &self,
        who: usize,
        proposal: &Message,
        choice: &Choice,
        salt: [u8; 32],
    ) -> Message {
        let commitment =
            vote_commitment(&self.id(), &proposal.id(), &self.keys[who].public(), 0, &salt, choice);
        self.sign(
            who,
            VOTE_START + S,
            Payload::VoteCommit(VoteCommit {
                proposal: proposal.id(),
                revision: 0,
                commitment,
                federation: self.id(),
            }),
        )
    }

    pub fn reveal(
        &self,
        who: usize,
        proposal: &Message,
        choice: Choice,
        salt: [u8; 32],
    ) -> Message {
        self.sign(
            who,
            VOTE_END + S,
            Payload::VoteReveal(VoteReveal {
                salt,
                choice,
                reason: None,
                proposal: proposal.id(),
                revision: 0,
                federation: self.id(),
            }),
        )
    }

    pub fn apply(&mut self, m: &Message) -> Result<Vec<MessageId>, Refusal> {
        self.engine.apply(m, Origin::Sync, m.header().created_ms)
    }

    pub fn apply_all(&mut self, ms: &[Message]) {
        for m in ms {
            self.apply(m).unwrap_or_else(|e| panic!("{:?} refused: {e}", m.kind()));
        }
    }
}

impl Fed {
    /// A proposal of `kind` with `action`, simple majority by trust, weighed against `registry`,
    /// with its timeline shifted by `shift` ms.
    pub fn propose_action(
        &self,
        who: usize,
        kind: ProposalType,
        action: Action,
        registry: RegistryVersion,
        shift: u64,
    ) -> Message {
        let mut body = self.proposal_body(
            kind,
            Some(config(DecisionRule::SimpleMajority, Weighting::Trust)),
            &[],
        );
        body.action = action;
        body.registry = registry;
        body.timeline.discussion_end_ms += shift;
        body.timeline.voting_end_ms += shift;
        self.sign(who, T0 + S + shift, Payload::Proposal(body))
    }

    /// Every member signs the attestations its engine says are due at `now` (all members share
    /// this engine's view). Returns the attestation messages.
    pub fn attest_all(&self, now: u64) -> Vec<Message> {
        let mut out = vec![];
        for (i, k) in self.keys.iter().enumerate() {
            for a in self.engine.attestations_due(&k.public(), now) {
                out.push(self.sign(i, now, Payload::TallyAttestation(a)));
            }
        }
        out
    }

    /// Every member signs what is due at `now`, as one node that sees every member's
    /// attestations at once: the prepares of round 0, then the commits they make due (the
    /// engine is not changed). Returns the messages in that order.
    pub fn attest_rounds(&self, now: u64) -> Vec<Message> {
        let mut scratch = self.engine.clone();
        let mut out = vec![];
        for _ in 0..8 {
            let mut batch = vec![];
            for (i, k) in self.keys.iter().enumerate() {
                for a in scratch.attestations_due(&k.public(), now) {
                    batch.push(self.sign(i, now, Payload::TallyAttestation(a)));
                }
            }
            if batch.is_empty() {
                break;
            }
            for m in &batch {
                let _ = scratch.apply(m, kos_engine::Origin::Sync, now);
            }
            out.extend(batch);
        }
        out
    }
}
