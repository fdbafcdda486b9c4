//! The governance engine: a pure, deterministic state machine over verified messages.
//!
//! Inputs are [`Engine::apply`] (a verified [`Message`], where it came from, and the current
//! time) and queries that take `now`. The engine does no I/O, reads no clock and draws no
//! randomness. Its derived state — proposals, statuses, tallies, and the [`Engine::state_hash`]
//! over them — depends only on the set of valid messages it has been given and on `now`, never
//! on their order, on duplicates, or on who relayed what.
//!
//! How that is achieved:
//! - a message's validity depends only on the message and on messages it names (its charter,
//!   proposal, revision, registry version, commitment); a message whose dependency is missing is
//!   held ([`Refusal::Pending`]) and re-applied when the dependency arrives;
//! - where several messages compete (vote changes, conflicting revisions, repeated sponsorship),
//!   the winner is chosen by a total order on `(sequence number, message id)`, never by arrival;
//! - statuses are functions of each proposal's signed timeline and `now`.
//!
//! Every refusal has a typed reason and a gossip [`Verdict`] (ignore or reject); a refused
//! message changes nothing.

mod registry;
mod tally;

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use sha2::{Digest as _, Sha256};

pub use registry::{REGISTRY_DOMAIN, Registry};
pub use tally::{Count, merkle_root};

use crate::{
    Message, MessageType, Payload, cbor, identity::PublicKey, payload::*, vote_commitment,
};

/// Domain prefix of the state hash.
pub const STATE_DOMAIN: &[u8] = b"kos-klp-v1/state\0";
/// Most messages held while waiting for a dependency.
pub const MAX_PENDING: usize = 65_536;

/// Where a message came from. Live gossip is held to the charter's clock skew; messages fetched
/// by sync, and the node's own, are judged by their signed time alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Created on this node.
    Local,
    /// Received on a gossip topic.
    Gossip,
    /// Fetched by anti-entropy sync or loaded from the store.
    Sync,
}

/// What gossip should do with a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Valid: deliver and relay.
    Accept,
    /// Not relayed, sender not penalised (duplicates, missing dependencies, stale gossip).
    Ignore,
    /// Invalid: not relayed, sender penalised.
    Reject,
}

/// What the shell must do after [`Engine::handle`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Persist (flush) this accepted message's bytes before acknowledging it.
    Persist(MessageId),
    /// Keep this message's bytes: it is held until a dependency arrives (sync may fetch it).
    Hold(MessageId, Dependency),
    /// Penalise the peer that relayed the message.
    Penalise(Refusal),
    /// Sign and publish this attestation with the node's identity.
    Attest(TallyAttestation),
    /// Call [`Engine::tick`] (or `handle` again) at this time: a status changes then.
    WakeAt(u64),
}

/// The engine's answer to one message: a gossip verdict and effects for the shell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// What gossip does with the message.
    pub verdict: Verdict,
    /// Why it was refused, if it was.
    pub refusal: Option<Refusal>,
    /// What to do, in order.
    pub effects: Vec<Effect>,
}

/// Something a message waits for before it can be judged.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dependency {
    /// The federation's charter.
    Charter,
    /// A registry version (epoch).
    Registry(u64),
    /// A proposal.
    Proposal(ProposalId),
    /// A revision of a proposal.
    Revision(ProposalId, u32),
    /// A comment (a reply's parent).
    Comment(MessageId),
    /// A VOTE_COMMIT by this voter (its public key bytes) on this proposal.
    Commit(ProposalId, [u8; 32]),
}

/// Why the engine refused a message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Already applied.
    #[error("duplicate message")]
    Duplicate,
    /// Held until a dependency arrives; it will be applied then.
    #[error("waiting for {0:?}")]
    Pending(Dependency),
    /// The pool of held messages is full.
    #[error("too many messages waiting for dependencies")]
    PendingFull,
    /// The message belongs to another federation.
    #[error("message is for another federation")]
    WrongFederation,
    /// Not a governance message.
    #[error("{0} is not a governance message")]
    NotGovernance(MessageType),
    /// Live gossip whose signed time is too far from this node's clock.
    #[error("signed time {created_ms} is more than {skew_ms} ms from now ({now_ms})")]
    ClockSkew {
        /// Signed time.
        created_ms: u64,
        /// This node's time.
        now_ms: u64,
        /// Allowed skew.
        skew_ms: u64,
    },
    /// The charter's author is not a founding member.
    #[error("charter author is not a founding member")]
    CharterAuthor,
    /// The proposal names a registry version whose hash differs from this federation's.
    #[error("proposal names registry epoch {0} with a hash that does not match")]
    RegistryMismatch(u64),
    /// The author is not a member of the registry version that applies.
    #[error("author is not a member")]
    NotMember,
    /// The author is quarantined.
    #[error("author is quarantined")]
    Quarantined,
    /// The author's vote would weigh nothing under the proposal's weighting.
    #[error("author has no vote weight under this weighting")]
    ZeroWeight,
    /// The proposer's trust is below what the proposal type requires.
    #[error("{kind} proposals need trust {required} or higher (proposer has {actual})")]
    InsufficientTrust {
        /// Proposal type.
        kind: ProposalType,
        /// Required level.
        required: TrustLevel,
        /// The proposer's level.
        actual: TrustLevel,
    },
    /// The proposal's timeline breaks the charter's bounds.
    #[error("timeline: {0}")]
    BadTimeline(&'static str),
    /// The action does not fit the proposal type.
    #[error("action does not fit a {0} proposal")]
    ActionMismatch(ProposalType),
    /// The options do not fit the decision rule.
    #[error("options do not fit the decision rule")]
    OptionsMismatch,
    /// Signed time outside the window in which this message is allowed.
    #[error("signed time {created_ms} outside [{start_ms}, {end_ms})")]
    OutsideWindow {
        /// Signed time.
        created_ms: u64,
        /// Window start.
        start_ms: u64,
        /// Window end (exclusive).
        end_ms: u64,
    },
    /// The ballot's form does not fit the decision rule.
    #[error("ballot does not fit the decision rule")]
    WrongBallot,
    /// The ballot names an option the proposal does not have.
    #[error("ballot names option {0}, which does not exist")]
    NoSuchOption(u16),
    /// The voting configuration requires reasoning.
    #[error("this vote requires reasoning")]
    MissingReason,
    /// A public VOTE on a secret ballot.
    #[error("proposal uses secret ballots: commit and reveal instead")]
    SecretBallot,
    /// A commit or reveal on a public ballot.
    #[error("proposal does not use secret ballots")]
    NotSecret,
    /// Only the proposer may do this.
    #[error("only the proposer may do this")]
    NotProposer,
    /// Another revision with the same number was already accepted.
    #[error("conflicting revision {0}")]
    ConflictingRevision(u32),
    /// A second reveal of the same commitment.
    #[error("commitment already revealed")]
    DoubleReveal,
    /// The reveal does not open any of the voter's commitments.
    #[error("reveal does not match a commitment")]
    CommitmentMismatch,
    /// A proposer cannot sponsor their own proposal, nor a member delegate to themselves.
    #[error("cannot sponsor own proposal or delegate to self")]
    SelfReference,
    /// A summary by someone who is neither proposer nor mediator.
    #[error("only the proposer or a mediator may summarise")]
    NotMediator,
    /// A reply to a comment on another proposal.
    #[error("parent comment belongs to another proposal")]
    ParentMismatch,
}

impl Refusal {
    /// The gossip verdict for this refusal.
    pub fn verdict(&self) -> Verdict {
        match self {
            Refusal::Duplicate
            | Refusal::Pending(_)
            | Refusal::PendingFull
            | Refusal::NotGovernance(_)
            | Refusal::ClockSkew { .. }
            | Refusal::WrongFederation
            | Refusal::ConflictingRevision(_)
            | Refusal::DoubleReveal => Verdict::Ignore,
            _ => Verdict::Reject,
        }
    }
}

/// A proposal's lifecycle state at some `now`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Waiting for sponsors (before discussion ends).
    SeekingSponsors,
    /// In discussion; the proposer may revise or withdraw.
    Discussion,
    /// Voting is open.
    Voting,
    /// Secret ballot reveal window.
    Reveal,
    /// Voting over, outcome not yet final.
    Closed,
    /// Final and approved.
    Approved,
    /// Final and rejected.
    Rejected,
    /// Final, quorum not met.
    FailedQuorum,
    /// Final, vetoed.
    Vetoed,
    /// Did not get its sponsors in time.
    Expired,
    /// Withdrawn by the proposer.
    Withdrawn,
    /// Final, approved and executed.
    Executed,
    /// Final and approved, but its action could not be applied.
    ExecutionFailed,
}

/// The minimum proposer trust for each proposal type (SPEC 4.2). Emergency actions also accept
/// members of the Security Board.
pub fn required_trust(kind: ProposalType) -> TrustLevel {
    match kind {
        ProposalType::ResourceAllocation | ProposalType::Membership => TrustLevel::Standard,
        ProposalType::EmergencyAction => TrustLevel::Core,
        _ => TrustLevel::Trusted,
    }
}

fn trust_rank(t: TrustLevel) -> u8 {
    match t {
        TrustLevel::Quarantine => 0,
        TrustLevel::Sandbox => 1,
        TrustLevel::Standard => 2,
        TrustLevel::Trusted => 3,
        TrustLevel::Core => 4,
    }
}

/// The built-in voting configuration for a proposal type the charter does not configure.
pub fn default_config(kind: ProposalType) -> VotingConfig {
    let rule = match kind {
        ProposalType::ConstitutionalChange | ProposalType::ProtocolUpgrade => {
            DecisionRule::Supermajority(Ratio(2, 3))
        }
        _ => DecisionRule::SimpleMajority,
    };
    VotingConfig {
        rule,
        veto: Ratio(334, 1000),
        quorum: Ratio(3, 10),
        secret: false,
        sponsors: 0,
        reasoning: false,
        weighting: Weighting::Trust,
        early_close: false,
    }
}

fn action_fits(kind: ProposalType, action: &Action) -> bool {
    use ProposalType as K;
    match action {
        Action::None => !matches!(
            kind,
            K::Configuration
                | K::TrustAdjustment
                | K::Membership
                | K::EmergencyAction
                | K::ProtocolUpgrade
        ),
        Action::Configuration { .. } => kind == K::Configuration,
        Action::TrustAdjustment { .. } => kind == K::TrustAdjustment,
        Action::AddMember(_) | Action::RemoveMember(_) => kind == K::Membership,
        Action::PolicyUpdate(_) => matches!(
            kind,
            K::ServicePolicy | K::AgentBehavior | K::SecurityPolicy | K::ConstitutionalChange
        ),
        Action::ProtocolUpgrade(_) => kind == K::ProtocolUpgrade,
        Action::Quarantine(_) => kind == K::EmergencyAction,
        Action::Rollback(_) => kind != K::EmergencyAction,
    }
}

/// Key ordering "latest wins": higher sequence number, then higher message id.
type Order = (u64, MessageId);

/// Every delegation message of one delegator and scope: signed time and delegate, by order.
type DelegationHistory = BTreeMap<Order, (u64, Option<PublicKey>)>;

#[derive(Clone, Debug)]
struct RevisionRec {
    id: MessageId,
    body: Revision,
}

#[derive(Clone, Debug)]
struct VoteRec {
    id: MessageId,
    created_ms: u64,
    revision: u32,
    choice: Choice,
}

#[derive(Clone, Debug)]
struct CommitRec {
    id: MessageId,
    revision: u32,
    commitment: Digest,
}

#[derive(Clone, Debug)]
struct AttestationRec {
    created_ms: u64,
    key: FinalKey,
}

/// What a final result agrees on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct FinalKey {
    /// The revision tallied.
    pub revision: u32,
    /// Merkle root of the counted ballots.
    pub votes_root: Digest,
    /// The outcome.
    pub outcome: Outcome,
    /// The winning option, if any.
    pub winner: Option<u16>,
}

/// A final result: attestations from members holding at least 2/3 of the eligible weight agree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Final {
    /// What they agree on.
    pub key: FinalKey,
    /// The signed time at which the agreeing weight first reached 2/3.
    pub final_at_ms: u64,
    /// Weight of the agreeing attesters.
    pub weight: u64,
}

/// How to undo an execution (the rollback plan).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Inverse {
    /// Restore a configuration key (`None`: remove it).
    Config {
        /// The key.
        key: String,
        /// Its previous value.
        value: Option<String>,
    },
    /// Restore a member record (`None`: remove the member).
    Member {
        /// The member's key.
        key: PublicKey,
        /// Its previous record.
        record: Option<Box<Member>>,
    },
    /// Restore the policy document.
    Policy(Option<String>),
    /// Restore the minimum protocol version.
    MinProtocolVersion(u16),
}

/// The recorded execution of a final, approved proposal.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Execution {
    /// The proposal executed.
    pub proposal: ProposalId,
    /// When it executed (signed time: finality plus the proposal's execution delay).
    pub at_ms: u64,
    /// The registry epoch it produced, if it changed the registry.
    pub epoch: Option<u64>,
    /// `Err` with the reason if the action could not be applied (nothing changed).
    pub result: Result<(), String>,
    /// How to undo it.
    pub inverse: Option<Inverse>,
}

#[derive(Clone, Debug, Serialize)]
struct CommentRec {
    author: PublicKey,
    kind: CommentKind,
    parent: Option<MessageId>,
    revision: u32,
}

#[derive(Clone, Debug)]
struct ProposalState {
    id: ProposalId,
    author: PublicKey,
    body: Proposal,
    /// The registry version the proposal is weighed against.
    registry: Registry,
    attestations: BTreeMap<PublicKey, BTreeMap<Order, AttestationRec>>,
    config: VotingConfig,
    revisions: BTreeMap<u32, RevisionRec>,
    sponsors: BTreeMap<PublicKey, MessageId>,
    withdrawn: Option<MessageId>,
    votes: BTreeMap<PublicKey, BTreeMap<Order, VoteRec>>,
    commits: BTreeMap<PublicKey, BTreeMap<Order, CommitRec>>,
    reveals: BTreeMap<(PublicKey, Digest), Choice>,
    comments: BTreeMap<MessageId, CommentRec>,
}

impl ProposalState {
    /// The revision in force: the highest `n` such that revisions `1..=n` are all known.
    fn current_revision(&self) -> u32 {
        let mut n = 0;
        while self.revisions.contains_key(&(n + 1)) {
            n += 1;
        }
        n
    }

    fn options(&self, revision: u32) -> Option<&[String]> {
        if revision == 0 {
            Some(&self.body.options)
        } else {
            self.revisions.get(&revision).map(|r| r.body.options.as_slice())
        }
    }

    fn voting_start(&self) -> u64 {
        self.body.timeline.discussion_end_ms
    }

    fn voting_end(&self) -> u64 {
        self.body.timeline.voting_end_ms
    }

    fn closes_at(&self) -> u64 {
        self.body.timeline.reveal_end_ms.unwrap_or(self.body.timeline.voting_end_ms)
    }
}

/// The result of counting a proposal, as a node sees it now.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Tally {
    /// The proposal.
    pub proposal: ProposalId,
    /// The revision counted.
    pub revision: u32,
    /// Ids of the counted ballots (VOTE, or VOTE_COMMIT for secret ballots), ascending.
    pub counted: Vec<MessageId>,
    /// Merkle root over `counted`.
    pub votes_root: Digest,
    /// The count.
    pub count: Count,
}

/// The governance engine of one federation.
#[derive(Clone, Debug)]
pub struct Engine {
    federation: FederationId,
    charter: Option<Charter>,
    /// The charter's registry (epoch 0); later epochs are derived by [`Engine::executions`].
    base: Option<Registry>,
    /// Registry epochs known at the last `apply`/`tick`, for releasing held proposals.
    known_epochs: u64,
    proposals: BTreeMap<ProposalId, ProposalState>,
    /// Every delegation message, by (delegator, scope), ordered "latest wins".
    delegations: BTreeMap<(PublicKey, DelegationScope), DelegationHistory>,
    applied: BTreeSet<MessageId>,
    pending: BTreeMap<Dependency, Vec<Message>>,
    pending_len: usize,
}

impl Engine {
    /// An engine for the federation whose charter has id `federation`.
    pub fn new(federation: FederationId) -> Self {
        Engine {
            federation,
            charter: None,
            base: None,
            known_epochs: 0,
            proposals: BTreeMap::new(),
            delegations: BTreeMap::new(),
            applied: BTreeSet::new(),
            pending: BTreeMap::new(),
            pending_len: 0,
        }
    }

    /// The federation id.
    pub fn federation(&self) -> FederationId {
        self.federation
    }

    /// The charter, once known.
    pub fn charter(&self) -> Option<&Charter> {
        self.charter.as_ref()
    }

    /// The registry in force at `now_ms`: the charter's, with every execution due by then.
    pub fn registry(&self, now_ms: u64) -> Option<Registry> {
        self.registry_chain(now_ms).0.pop()
    }

    /// Applies a verified message. On success returns the ids of every message applied, this one
    /// first, then any held messages it released (all of them to be persisted and relayed).
    pub fn apply(
        &mut self,
        msg: &Message,
        origin: Origin,
        now_ms: u64,
    ) -> Result<Vec<MessageId>, Refusal> {
        if origin == Origin::Gossip
            && let Some(c) = &self.charter
        {
            let skew = c.timing.clock_skew_ms;
            let created = msg.header().created_ms;
            if created.abs_diff(now_ms) > skew {
                return Err(Refusal::ClockSkew { created_ms: created, now_ms, skew_ms: skew });
            }
        }
        let mut queue = self.apply_one(msg)?;
        queue.extend(self.new_epochs(now_ms));
        let mut applied = vec![msg.id()];
        applied.extend(self.release(queue, now_ms));
        Ok(applied)
    }

    /// Handles one verified message for the shell: applies it, and returns the gossip verdict
    /// with effects — what to persist, what to hold, whom to penalise, which attestations `me`
    /// (the node's identity, if it is a member) must sign, and when to wake up next.
    pub fn handle(
        &mut self,
        msg: &Message,
        origin: Origin,
        now_ms: u64,
        me: Option<&PublicKey>,
    ) -> Step {
        let mut effects = Vec::new();
        let (verdict, refusal) = match self.apply(msg, origin, now_ms) {
            Ok(applied) => {
                effects.extend(applied.into_iter().map(Effect::Persist));
                (Verdict::Accept, None)
            }
            Err(r) => {
                match &r {
                    Refusal::Pending(dep) => effects.push(Effect::Hold(msg.id(), dep.clone())),
                    r if r.verdict() == Verdict::Reject => {
                        effects.push(Effect::Penalise(r.clone()))
                    }
                    _ => {}
                }
                (r.verdict(), Some(r))
            }
        };
        if let Some(me) = me {
            effects.extend(self.attestations_due(me, now_ms).into_iter().map(Effect::Attest));
        }
        if let Some(t) = self.next_wakeup(now_ms) {
            effects.push(Effect::WakeAt(t));
        }
        Step { verdict, refusal, effects }
    }

    /// The next time after `now_ms` at which some proposal's status can change by the clock
    /// alone (voting opens or closes, a reveal ends, a grace period ends, an execution falls
    /// due).
    pub fn next_wakeup(&self, now_ms: u64) -> Option<u64> {
        let grace = self.charter.as_ref().map_or(0, |c| c.timing.grace_ms);
        let mut times = BTreeSet::new();
        for p in self.proposals.values() {
            let close = self.effective_close(p);
            times.extend([
                p.voting_start(),
                p.voting_end(),
                close,
                close.saturating_add(grace),
                close.saturating_add(grace).saturating_add(p.body.timeline.execution_delay_ms),
            ]);
            if let Some(f) = self.finality_of(p) {
                times.insert(f.final_at_ms.saturating_add(p.body.timeline.execution_delay_ms));
            }
        }
        times.into_iter().find(|&t| t > now_ms)
    }

    /// Advances time: executions that fall due release proposals waiting for the registry epochs
    /// they create. Returns the ids of messages applied as a result.
    pub fn tick(&mut self, now_ms: u64) -> Vec<MessageId> {
        let queue = self.new_epochs(now_ms);
        self.release(queue, now_ms)
    }

    /// Re-applies the messages held for each satisfied dependency in `queue`, and for every
    /// dependency those satisfy in turn. Returns the ids applied.
    fn release(&mut self, mut queue: Vec<Dependency>, now_ms: u64) -> Vec<MessageId> {
        let mut applied = Vec::new();
        while let Some(dep) = queue.pop() {
            let Some(waiting) = self.pending.remove(&dep) else { continue };
            self.pending_len -= waiting.len();
            for m in waiting {
                if let Ok(more) = self.apply_one(&m) {
                    applied.push(m.id());
                    queue.extend(more);
                    queue.extend(self.new_epochs(now_ms));
                }
            }
        }
        applied
    }

    fn new_epochs(&mut self, now_ms: u64) -> Vec<Dependency> {
        // Only proposals waiting for a registry epoch care; computing the chain is not free.
        if !self.pending.keys().any(|d| matches!(d, Dependency::Registry(_))) {
            return Vec::new();
        }
        let count = self.registry_chain(now_ms).0.len() as u64;
        let deps = (self.known_epochs..count).map(Dependency::Registry).collect();
        self.known_epochs = self.known_epochs.max(count);
        deps
    }

    /// Applies one message; on success returns the dependencies it satisfies.
    fn apply_one(&mut self, msg: &Message) -> Result<Vec<Dependency>, Refusal> {
        if self.applied.contains(&msg.id()) {
            return Err(Refusal::Duplicate);
        }
        let result = self.judge(msg);
        match result {
            Ok(deps) => {
                self.applied.insert(msg.id());
                Ok(deps)
            }
            Err(Refusal::Pending(dep)) => {
                if self.pending_len >= MAX_PENDING {
                    return Err(Refusal::PendingFull);
                }
                let list = self.pending.entry(dep.clone()).or_default();
                if !list.iter().any(|m| m.id() == msg.id()) {
                    list.push(msg.clone());
                    self.pending_len += 1;
                }
                Err(Refusal::Pending(dep))
            }
            Err(e) => Err(e),
        }
    }

    fn check_federation(&self, federation: &FederationId) -> Result<&Charter, Refusal> {
        if *federation != self.federation {
            return Err(Refusal::WrongFederation);
        }
        self.charter.as_ref().ok_or(Refusal::Pending(Dependency::Charter))
    }

    fn known_proposal(&self, id: &ProposalId) -> Result<&ProposalState, Refusal> {
        self.proposals.get(id).ok_or(Refusal::Pending(Dependency::Proposal(*id)))
    }

    fn member_of<'a>(&self, p: &'a ProposalState, key: &PublicKey) -> Result<&'a Member, Refusal> {
        p.registry.member(key).ok_or(Refusal::NotMember)
    }

    fn eligible_voter(&self, p: &ProposalState, key: &PublicKey) -> Result<(), Refusal> {
        let m = self.member_of(p, key)?;
        if m.trust == TrustLevel::Quarantine {
            return Err(Refusal::Quarantined);
        }
        if p.registry.weight(m, p.config.weighting) == 0 {
            return Err(Refusal::ZeroWeight);
        }
        Ok(())
    }

    fn in_window(created: u64, start: u64, end: u64) -> Result<(), Refusal> {
        if created < start || created >= end {
            return Err(Refusal::OutsideWindow {
                created_ms: created,
                start_ms: start,
                end_ms: end,
            });
        }
        Ok(())
    }

    fn check_ballot(p: &ProposalState, revision: u32, choice: &Choice) -> Result<(), Refusal> {
        let options =
            p.options(revision).ok_or(Refusal::Pending(Dependency::Revision(p.id, revision)))?;
        let indices = match (p.config.rule, choice) {
            (r, Choice::Yes | Choice::No | Choice::Abstain | Choice::Veto) if r.is_binary() => {
                return Ok(());
            }
            (DecisionRule::Plurality, Choice::Approve(v)) => v,
            (DecisionRule::InstantRunoff, Choice::Rank(v)) => v,
            _ => return Err(Refusal::WrongBallot),
        };
        match indices.iter().find(|&&i| usize::from(i) >= options.len()) {
            Some(&i) => Err(Refusal::NoSuchOption(i)),
            None => Ok(()),
        }
    }

    /// Decides whether `msg` is valid given what is known, and records it if so.
    fn judge(&mut self, msg: &Message) -> Result<Vec<Dependency>, Refusal> {
        let author = msg.author();
        let created = msg.header().created_ms;
        let id = msg.id();
        match msg.payload() {
            Payload::Charter(c) => {
                if id != self.federation {
                    return Err(Refusal::WrongFederation);
                }
                if !c.members.iter().any(|m| m.key == author) {
                    return Err(Refusal::CharterAuthor);
                }
                self.base = Some(Registry::from_charter(c));
                self.charter = Some(c.clone());
                Ok(vec![Dependency::Charter, Dependency::Registry(0)])
            }
            Payload::Proposal(p) => {
                let charter = self.check_federation(&p.federation)?;
                let timing = charter.timing.clone();
                let config = p.voting.clone().unwrap_or_else(|| {
                    charter
                        .defaults
                        .iter()
                        .find(|d| d.kind == p.kind)
                        .map(|d| d.config.clone())
                        .unwrap_or_else(|| default_config(p.kind))
                });
                let epoch = p.registry.epoch;
                // The registry in force when the proposal was signed.
                let (mut chain, _) = self.registry_chain(created);
                if epoch as usize >= chain.len() {
                    return Err(Refusal::Pending(Dependency::Registry(epoch)));
                }
                let reg = chain.swap_remove(epoch as usize);
                if reg.hash() != p.registry.hash {
                    return Err(Refusal::RegistryMismatch(epoch));
                }
                let member = reg.member(&author).ok_or(Refusal::NotMember)?;
                let required = required_trust(p.kind);
                let security_board = p.kind == ProposalType::EmergencyAction
                    && reg.on_body(BodyKind::SecurityBoard, &author);
                if trust_rank(member.trust) < trust_rank(required) && !security_board {
                    return Err(Refusal::InsufficientTrust {
                        kind: p.kind,
                        required,
                        actual: member.trust,
                    });
                }
                let t = &p.timeline;
                if created > t.discussion_end_ms {
                    return Err(Refusal::BadTimeline("created after discussion ends"));
                }
                if t.discussion_end_ms - created < timing.min_discussion_ms {
                    return Err(Refusal::BadTimeline(
                        "discussion shorter than the charter's minimum",
                    ));
                }
                let voting = t.voting_ms();
                if voting < timing.min_voting_ms || voting > timing.max_voting_ms {
                    return Err(Refusal::BadTimeline("voting window outside the charter's bounds"));
                }
                if config.secret != t.reveal_end_ms.is_some() {
                    return Err(Refusal::BadTimeline(
                        "a reveal window is required exactly for secret ballots",
                    ));
                }
                if !action_fits(p.kind, &p.action) {
                    return Err(Refusal::ActionMismatch(p.kind));
                }
                if config.rule.is_binary() != p.options.is_empty() {
                    return Err(Refusal::OptionsMismatch);
                }
                self.proposals.insert(
                    id,
                    ProposalState {
                        id,
                        author,
                        body: p.clone(),
                        registry: reg,
                        attestations: BTreeMap::new(),
                        config,
                        revisions: BTreeMap::new(),
                        sponsors: BTreeMap::new(),
                        withdrawn: None,
                        votes: BTreeMap::new(),
                        commits: BTreeMap::new(),
                        reveals: BTreeMap::new(),
                        comments: BTreeMap::new(),
                    },
                );
                Ok(vec![Dependency::Proposal(id), Dependency::Revision(id, 0)])
            }
            Payload::Revision(r) => {
                self.check_federation(&r.federation)?;
                let p = self.known_proposal(&r.proposal)?;
                if author != p.author {
                    return Err(Refusal::NotProposer);
                }
                Self::in_window(created, 0, p.voting_start())?;
                if !action_fits(p.body.kind, &r.action) {
                    return Err(Refusal::ActionMismatch(p.body.kind));
                }
                if p.config.rule.is_binary() != r.options.is_empty() {
                    return Err(Refusal::OptionsMismatch);
                }
                if r.revision > 1 && !p.revisions.contains_key(&(r.revision - 1)) {
                    return Err(Refusal::Pending(Dependency::Revision(r.proposal, r.revision - 1)));
                }
                let pid = r.proposal;
                let n = r.revision;
                let p = self
                    .proposals
                    .get_mut(&pid)
                    .ok_or(Refusal::Pending(Dependency::Proposal(pid)))?;
                match p.revisions.get(&n) {
                    // Competing revisions with one number: the lowest message id stands.
                    Some(existing) if existing.id < id => {
                        return Err(Refusal::ConflictingRevision(n));
                    }
                    _ => {
                        p.revisions.insert(n, RevisionRec { id, body: r.clone() });
                    }
                }
                Ok(vec![Dependency::Revision(pid, n)])
            }
            Payload::Sponsor(s) => {
                self.check_federation(&s.federation)?;
                let p = self.known_proposal(&s.proposal)?;
                if author == p.author {
                    return Err(Refusal::SelfReference);
                }
                self.member_of(p, &author)?;
                Self::in_window(created, 0, p.voting_start())?;
                let p = self.proposals.get_mut(&s.proposal).ok_or(Refusal::NotMember)?;
                let slot = p.sponsors.entry(author).or_insert(id);
                *slot = (*slot).min(id);
                Ok(vec![])
            }
            Payload::Withdraw(w) => {
                self.check_federation(&w.federation)?;
                let p = self.known_proposal(&w.proposal)?;
                if author != p.author {
                    return Err(Refusal::NotProposer);
                }
                Self::in_window(created, 0, p.voting_start())?;
                let p = self.proposals.get_mut(&w.proposal).ok_or(Refusal::NotMember)?;
                p.withdrawn = Some(p.withdrawn.map_or(id, |prev| prev.min(id)));
                Ok(vec![])
            }
            Payload::Comment(c) => {
                self.check_federation(&c.federation)?;
                let p = self.known_proposal(&c.proposal)?;
                let member = self.member_of(p, &author)?;
                if c.kind == CommentKind::Summary
                    && author != p.author
                    && !member.roles.contains(&Role::Mediator)
                {
                    return Err(Refusal::NotMediator);
                }
                Self::in_window(created, 0, p.voting_end())?;
                if c.revision > 0 && !p.revisions.contains_key(&c.revision) {
                    return Err(Refusal::Pending(Dependency::Revision(c.proposal, c.revision)));
                }
                if let Some(parent) = c.parent
                    && !p.comments.contains_key(&parent)
                {
                    // A known comment on another proposal is an error; otherwise wait.
                    if self.proposals.values().any(|q| q.comments.contains_key(&parent)) {
                        return Err(Refusal::ParentMismatch);
                    }
                    return Err(Refusal::Pending(Dependency::Comment(parent)));
                }
                let rec =
                    CommentRec { author, kind: c.kind, parent: c.parent, revision: c.revision };
                let p = self.proposals.get_mut(&c.proposal).ok_or(Refusal::NotMember)?;
                p.comments.insert(id, rec);
                Ok(vec![Dependency::Comment(id)])
            }
            Payload::Vote(v) => {
                self.check_federation(&v.federation)?;
                let p = self.known_proposal(&v.proposal)?;
                if p.config.secret {
                    return Err(Refusal::SecretBallot);
                }
                self.eligible_voter(p, &author)?;
                Self::in_window(created, p.voting_start(), p.voting_end())?;
                if p.config.reasoning && v.reason.is_none() {
                    return Err(Refusal::MissingReason);
                }
                Self::check_ballot(p, v.revision, &v.choice)?;
                let rec = VoteRec {
                    id,
                    created_ms: created,
                    revision: v.revision,
                    choice: v.choice.clone(),
                };
                let p = self.proposals.get_mut(&v.proposal).ok_or(Refusal::NotMember)?;
                p.votes.entry(author).or_default().insert((msg.header().seq, id), rec);
                Ok(vec![])
            }
            Payload::VoteCommit(v) => {
                self.check_federation(&v.federation)?;
                let p = self.known_proposal(&v.proposal)?;
                if !p.config.secret {
                    return Err(Refusal::NotSecret);
                }
                self.eligible_voter(p, &author)?;
                Self::in_window(created, p.voting_start(), p.voting_end())?;
                if p.options(v.revision).is_none() {
                    return Err(Refusal::Pending(Dependency::Revision(v.proposal, v.revision)));
                }
                let rec = CommitRec { id, revision: v.revision, commitment: v.commitment };
                let p = self.proposals.get_mut(&v.proposal).ok_or(Refusal::NotMember)?;
                p.commits.entry(author).or_default().insert((msg.header().seq, id), rec);
                Ok(vec![Dependency::Commit(v.proposal, author.to_bytes())])
            }
            Payload::VoteReveal(v) => {
                self.check_federation(&v.federation)?;
                let p = self.known_proposal(&v.proposal)?;
                if !p.config.secret {
                    return Err(Refusal::NotSecret);
                }
                self.eligible_voter(p, &author)?;
                Self::in_window(created, p.voting_end(), p.closes_at())?;
                if p.config.reasoning && v.reason.is_none() {
                    return Err(Refusal::MissingReason);
                }
                Self::check_ballot(p, v.revision, &v.choice)?;
                let commitment = vote_commitment(
                    &v.federation,
                    &v.proposal,
                    &author,
                    v.revision,
                    &v.salt,
                    &v.choice,
                );
                let Some(commits) = p.commits.get(&author) else {
                    return Err(Refusal::Pending(Dependency::Commit(
                        v.proposal,
                        author.to_bytes(),
                    )));
                };
                if !commits.values().any(|c| c.commitment == commitment && c.revision == v.revision)
                {
                    return Err(Refusal::CommitmentMismatch);
                }
                if p.reveals.contains_key(&(author, commitment)) {
                    return Err(Refusal::DoubleReveal);
                }
                let p = self.proposals.get_mut(&v.proposal).ok_or(Refusal::NotMember)?;
                p.reveals.insert((author, commitment), v.choice.clone());
                Ok(vec![])
            }
            Payload::TallyAttestation(a) => {
                self.check_federation(&a.federation)?;
                let grace = self.charter.as_ref().map_or(0, |c| c.timing.grace_ms);
                let p = self.known_proposal(&a.proposal)?;
                self.eligible_voter(p, &author)?;
                // A static bound (independent of which votes have arrived): the earliest moment
                // voting can close, plus grace.
                let earliest_close =
                    if p.config.early_close { p.voting_start() } else { p.closes_at() };
                Self::in_window(created, earliest_close.saturating_add(grace), u64::MAX)?;
                if p.options(a.revision).is_none() {
                    return Err(Refusal::Pending(Dependency::Revision(a.proposal, a.revision)));
                }
                let rec = AttestationRec {
                    created_ms: created,
                    key: FinalKey {
                        revision: a.revision,
                        votes_root: a.votes_root,
                        outcome: a.outcome,
                        winner: a.winner,
                    },
                };
                let p = self.proposals.get_mut(&a.proposal).ok_or(Refusal::NotMember)?;
                p.attestations.entry(author).or_default().insert((msg.header().seq, id), rec);
                Ok(vec![])
            }
            Payload::Delegation(d) => {
                self.check_federation(&d.federation)?;
                if d.delegate == Some(author) {
                    return Err(Refusal::SelfReference);
                }
                self.delegations
                    .entry((author, d.scope))
                    .or_default()
                    .insert((msg.header().seq, id), (created, d.delegate));
                Ok(vec![])
            }
            other => Err(Refusal::NotGovernance(other.message_type())),
        }
    }

    /// The status of proposal `id` at `now_ms`.
    pub fn status(&self, id: &ProposalId, now_ms: u64) -> Option<Status> {
        let p = self.proposals.get(id)?;
        Some(self.status_of(p, now_ms))
    }

    fn status_of(&self, p: &ProposalState, now_ms: u64) -> Status {
        if p.withdrawn.is_some() {
            return Status::Withdrawn;
        }
        let sponsored = p.sponsors.len() >= usize::from(p.config.sponsors);
        if now_ms < p.voting_start() {
            return if sponsored { Status::Discussion } else { Status::SeekingSponsors };
        }
        if !sponsored {
            return Status::Expired;
        }
        let close = self.effective_close(p);
        if now_ms < p.voting_end().min(close) {
            return Status::Voting;
        } else if now_ms < close {
            return Status::Reveal;
        }
        let Some(fin) = self.finality_of(p) else { return Status::Closed };
        match fin.key.outcome {
            Outcome::Rejected => Status::Rejected,
            Outcome::FailedQuorum => Status::FailedQuorum,
            Outcome::Vetoed => Status::Vetoed,
            Outcome::Approved => {
                let (_, executions) = self.registry_chain(now_ms);
                match executions.iter().find(|e| e.proposal == p.id) {
                    Some(e) if e.result.is_ok() => Status::Executed,
                    Some(_) => Status::ExecutionFailed,
                    None => Status::Approved,
                }
            }
        }
    }

    /// The final result of proposal `id`, if attestations from members holding at least 2/3 of
    /// the eligible weight agree on one (revision, votes root, outcome, winner). Each member's
    /// latest attestation (by sequence number, then id) is the one that counts.
    pub fn finality(&self, id: &ProposalId) -> Option<Final> {
        self.finality_of(self.proposals.get(id)?)
    }

    fn finality_of(&self, p: &ProposalState) -> Option<Final> {
        if p.attestations.is_empty() {
            return None;
        }
        let weighting = p.config.weighting;
        let eligible: u64 = p
            .registry
            .members
            .values()
            .fold(0u64, |acc, m| acc.saturating_add(p.registry.weight(m, weighting)));
        if eligible == 0 {
            return None;
        }
        let mut groups: BTreeMap<FinalKey, Vec<(u64, u64)>> = BTreeMap::new();
        for (who, history) in &p.attestations {
            let (Some(m), Some((_, latest))) = (p.registry.member(who), history.iter().next_back())
            else {
                continue;
            };
            groups
                .entry(latest.key)
                .or_default()
                .push((latest.created_ms, p.registry.weight(m, weighting)));
        }
        groups.into_iter().find_map(|(key, mut entries)| {
            let total = entries.iter().fold(0u64, |a, (_, w)| a.saturating_add(*w));
            if u128::from(total) * 3 < u128::from(eligible) * 2 {
                return None;
            }
            entries.sort();
            let mut acc = 0u64;
            let final_at_ms = entries.iter().find_map(|(at, w)| {
                acc = acc.saturating_add(*w);
                (u128::from(acc) * 3 >= u128::from(eligible) * 2).then_some(*at)
            })?;
            Some(Final { key, final_at_ms, weight: total })
        })
    }

    /// Each member's latest attestation of proposal `id`: who, what it names, and when.
    pub fn attestations(&self, id: &ProposalId) -> Vec<(PublicKey, FinalKey, u64)> {
        self.proposals.get(id).map_or_else(Vec::new, |p| {
            p.attestations
                .iter()
                .filter_map(|(who, h)| h.values().next_back().map(|a| (*who, a.key, a.created_ms)))
                .collect()
        })
    }

    /// Executions due by `now_ms`, in deterministic order (voting end, then proposal id), with
    /// the registry version each produced.
    pub fn executions(&self, now_ms: u64) -> Vec<Execution> {
        self.registry_chain(now_ms).1
    }

    /// The registry epochs (index = epoch) and executions due by `now_ms`. An approved final
    /// proposal executes at `max(final_at, close + grace) + execution_delay`.
    fn registry_chain(&self, now_ms: u64) -> (Vec<Registry>, Vec<Execution>) {
        let Some(base) = &self.base else { return (Vec::new(), Vec::new()) };
        let grace = self.charter.as_ref().map_or(0, |c| c.timing.grace_ms);
        let mut due: Vec<(u64, ProposalId, u64)> = self
            .proposals
            .values()
            .filter(|p| p.withdrawn.is_none() && p.sponsors.len() >= usize::from(p.config.sponsors))
            .filter_map(|p| {
                let fin = self.finality_of(p)?;
                if fin.key.outcome != Outcome::Approved {
                    return None;
                }
                let at = fin
                    .final_at_ms
                    .max(self.effective_close(p).saturating_add(grace))
                    .saturating_add(p.body.timeline.execution_delay_ms);
                (at <= now_ms).then_some((p.voting_end(), p.id, at))
            })
            .collect();
        due.sort();
        let mut chain = vec![base.clone()];
        let mut executions: Vec<Execution> = Vec::new();
        for (_, id, at) in due {
            let Some(p) = self.proposals.get(&id) else { continue };
            let action =
                p.revisions.get(&p.current_revision()).map_or(&p.body.action, |r| &r.body.action);
            let mut next = chain[chain.len() - 1].clone();
            let result = execute(&mut next, action, &executions);
            let (result, inverse, epoch) = match result {
                Ok(Some(inverse)) => {
                    next.epoch = chain.len() as u64;
                    let epoch = next.epoch;
                    chain.push(next);
                    (Ok(()), Some(inverse), Some(epoch))
                }
                Ok(None) => (Ok(()), None, None),
                Err(e) => (Err(e.to_owned()), None, None),
            };
            executions.push(Execution { proposal: id, at_ms: at, epoch, result, inverse });
        }
        (chain, executions)
    }

    /// The effective delegate of `member` for proposal `p`: its latest delegation signed before
    /// voting ends, the most specific scope first (type, then scope, then all).
    fn delegate_of(&self, p: &ProposalState, member: &PublicKey) -> Option<PublicKey> {
        let end = p.voting_end();
        let scopes = [
            DelegationScope::Kind(p.body.kind),
            DelegationScope::Scope(p.body.scope),
            DelegationScope::All,
        ];
        for scope in scopes {
            if let Some(history) = self.delegations.get(&(*member, scope))
                && let Some((_, (_, delegate))) =
                    history.iter().rev().find(|(_, (created, _))| *created < end)
            {
                match delegate {
                    Some(d) => return Some(*d),
                    // Revoked for this scope: fall back to a broader one.
                    None => continue,
                }
            }
        }
        None
    }

    /// The direct ballots of proposal `p`: voter → (counted message id, choice).
    fn direct_ballots(
        &self,
        p: &ProposalState,
        revision: u32,
    ) -> BTreeMap<PublicKey, (MessageId, Choice)> {
        let cutoff = self.early_close_at(p).unwrap_or(u64::MAX);
        let mut out = BTreeMap::new();
        if p.config.secret {
            for (voter, commits) in &p.commits {
                // The latest commitment on the counted revision counts, if revealed.
                if let Some(c) = commits.values().rev().find(|c| c.revision == revision)
                    && let Some(choice) = p.reveals.get(&(*voter, c.commitment))
                {
                    out.insert(*voter, (c.id, choice.clone()));
                }
            }
        } else {
            for (voter, votes) in &p.votes {
                if let Some(v) =
                    votes.values().rev().find(|v| v.revision == revision && v.created_ms <= cutoff)
                {
                    out.insert(*voter, (v.id, v.choice.clone()));
                }
            }
        }
        out
    }

    /// When voting closes for good: the early-close time if the outcome was decided early
    /// (just after the deciding vote's signed time), else the end of voting (or of the reveal).
    fn effective_close(&self, p: &ProposalState) -> u64 {
        self.early_close_at(p).map_or(p.closes_at(), |t| t.saturating_add(1))
    }

    /// Early close (SPEC 4.3): the signed time of the first vote after which no use of the
    /// weight not yet cast could change the outcome. Weight "cast" is the direct voters' own
    /// weight only, since a delegator can still vote directly. Never for secret ballots or
    /// instant runoff. Votes signed after that time are kept but not counted.
    fn early_close_at(&self, p: &ProposalState) -> Option<u64> {
        if !p.config.early_close || p.config.secret || p.config.rule == DecisionRule::InstantRunoff
        {
            return None;
        }
        let reg = &p.registry;
        let weighting = p.config.weighting;
        let revision = p.current_revision();
        let options = p.options(revision).map_or(0, <[String]>::len);
        let eligible =
            reg.members.values().fold(0u64, |a, m| a.saturating_add(reg.weight(m, weighting)));
        let mut events: Vec<(u64, Order, &PublicKey, &Choice)> = p
            .votes
            .iter()
            .flat_map(|(voter, votes)| {
                votes
                    .iter()
                    .filter(|(_, v)| v.revision == revision && v.created_ms < p.voting_end())
                    .map(move |(order, v)| (v.created_ms, *order, voter, &v.choice))
            })
            .collect();
        events.sort_by_key(|e| (e.0, e.1));
        let mut best: BTreeMap<&PublicKey, (Order, &Choice)> = BTreeMap::new();
        let mut i = 0;
        while i < events.len() {
            let t = events[i].0;
            while i < events.len() && events[i].0 == t {
                let (_, order, voter, choice) = events[i];
                if best.get(voter).is_none_or(|(o, _)| *o < order) {
                    best.insert(voter, (order, choice));
                }
                i += 1;
            }
            let ballots: Vec<(&Choice, u64)> = best
                .iter()
                .filter_map(|(voter, (_, c))| {
                    reg.member(voter).map(|m| (*c, reg.weight(m, weighting)))
                })
                .collect();
            let cast = ballots.iter().fold(0u64, |a, (_, w)| a.saturating_add(*w));
            let free = eligible.saturating_sub(cast);
            // The free weight's extreme uses: not voting, or all of it on one choice.
            let extremes: Vec<Choice> = if p.config.rule.is_binary() {
                vec![Choice::Yes, Choice::No, Choice::Abstain, Choice::Veto]
            } else {
                (0..options)
                    .filter_map(|o| u16::try_from(o).ok())
                    .map(|o| Choice::Approve(vec![o]))
                    .collect()
            };
            let outcome_with = |extra: Option<&Choice>| {
                let mut all = ballots.clone();
                if let Some(c) = extra {
                    all.push((c, free));
                }
                let c = tally::count(
                    p.config.rule,
                    p.config.quorum,
                    p.config.veto,
                    eligible,
                    options,
                    &all,
                );
                (c.outcome, c.winner)
            };
            let now = outcome_with(None);
            if extremes.iter().all(|c| outcome_with(Some(c)) == now) {
                return Some(t);
            }
        }
        None
    }

    /// Counts proposal `id` as this node sees it: every counted ballot so far (a running tally
    /// while voting is open). `None` before voting opens or for an unknown proposal.
    pub fn tally(&self, id: &ProposalId, now_ms: u64) -> Option<Tally> {
        let p = self.proposals.get(id)?;
        if now_ms < p.voting_start() {
            return None;
        }
        Some(self.tally_of(p))
    }

    fn tally_of(&self, p: &ProposalState) -> Tally {
        let reg = &p.registry;
        let weighting = p.config.weighting;
        let revision = p.current_revision();
        let direct = self.direct_ballots(p, revision);
        let max_depth = self.charter.as_ref().map_or(0, |c| c.max_delegation_depth);
        let mut weight_of: BTreeMap<PublicKey, u64> = BTreeMap::new();
        let mut eligible = 0u64;
        for (key, m) in &reg.members {
            let w = reg.weight(m, weighting);
            eligible = eligible.saturating_add(w);
            if w == 0 {
                continue;
            }
            // Direct votes override delegation; otherwise follow the chain to a direct voter.
            let mut at = *key;
            let mut seen = BTreeSet::from([at]);
            let mut target = direct.contains_key(&at).then_some(at);
            let mut depth = 0u8;
            while target.is_none() && depth < max_depth {
                let Some(next) = self.delegate_of(p, &at) else { break };
                if !seen.insert(next) || !reg.members.contains_key(&next) {
                    break; // a cycle, or a delegate who is not a member: ignored
                }
                depth += 1;
                at = next;
                if direct.contains_key(&at) {
                    target = Some(at);
                }
            }
            if let Some(t) = target {
                let slot = weight_of.entry(t).or_insert(0);
                *slot = slot.saturating_add(w);
            }
        }
        let ballots: Vec<(&Choice, u64)> = direct
            .iter()
            .filter_map(|(voter, (_, choice))| weight_of.get(voter).map(|w| (choice, *w)))
            .collect();
        let options = p.options(revision).map_or(0, <[String]>::len);
        let count = tally::count(
            p.config.rule,
            p.config.quorum,
            p.config.veto,
            eligible,
            options,
            &ballots,
        );
        let counted: Vec<MessageId> = {
            let mut ids: Vec<MessageId> = direct.values().map(|(id, _)| *id).collect();
            ids.sort();
            ids
        };
        Tally { proposal: p.id, revision, votes_root: merkle_root(&counted), counted, count }
    }

    /// The attestations this node's identity `me` should sign now: for each closed proposal past
    /// its grace period, not yet final, on which `me` is an eligible member whose latest
    /// attestation differs from its current tally.
    pub fn attestations_due(&self, me: &PublicKey, now_ms: u64) -> Vec<TallyAttestation> {
        let grace = self.charter.as_ref().map_or(0, |c| c.timing.grace_ms);
        self.proposals
            .values()
            .filter(|p| now_ms >= self.effective_close(p).saturating_add(grace))
            .filter(|p| matches!(self.status_of(p, now_ms), Status::Closed))
            .filter(|p| self.eligible_voter(p, me).is_ok())
            .filter_map(|p| {
                let t = self.tally_of(p);
                let key = FinalKey {
                    revision: t.revision,
                    votes_root: t.votes_root,
                    outcome: t.count.outcome,
                    winner: t.count.winner,
                };
                let mine = p.attestations.get(me).and_then(|h| h.values().next_back());
                if mine.is_some_and(|a| a.key == key) {
                    return None;
                }
                Some(TallyAttestation {
                    totals: t.count.totals.clone(),
                    winner: t.count.winner,
                    counted: u32::try_from(t.counted.len()).unwrap_or(u32::MAX),
                    outcome: t.count.outcome,
                    eligible: t.count.eligible,
                    proposal: p.id,
                    revision: t.revision,
                    federation: self.federation,
                    votes_root: t.votes_root,
                    participation: t.count.participation,
                })
            })
            .collect()
    }

    /// A known proposal: its author, its body, the revision in force and its voting
    /// configuration.
    pub fn proposal(&self, id: &ProposalId) -> Option<(PublicKey, &Proposal, u32, &VotingConfig)> {
        let p = self.proposals.get(id)?;
        Some((p.author, &p.body, p.current_revision(), &p.config))
    }

    /// Ids of known proposals.
    pub fn proposals(&self) -> impl Iterator<Item = &ProposalId> {
        self.proposals.keys()
    }

    /// Number of messages held for missing dependencies.
    pub fn pending_len(&self) -> usize {
        self.pending_len
    }

    /// A hash of the derived governance state at `now_ms`: registries, and for each proposal its
    /// revision in force, sponsors, withdrawal, comments, status, counted ballots and count; and
    /// the effective delegations. Equal for any two engines given the same set of valid messages.
    pub fn state_hash(&self, now_ms: u64) -> Digest {
        #[derive(Serialize)]
        struct ProposalSummary<'a> {
            id: &'a ProposalId,
            status: Status,
            revision_ids: Vec<&'a MessageId>,
            sponsors: Vec<&'a MessageId>,
            withdrawn: Option<&'a MessageId>,
            comments: Vec<&'a MessageId>,
            counted: Vec<MessageId>,
            totals: Vec<u64>,
            outcome: Option<Outcome>,
            winner: Option<u16>,
            finality: Option<Final>,
        }
        #[derive(Serialize)]
        struct Summary<'a> {
            executions: Vec<Execution>,
            federation: &'a FederationId,
            registries: Vec<Digest>,
            proposals: Vec<ProposalSummary<'a>>,
            delegations: Vec<(&'a PublicKey, &'a DelegationScope, &'a MessageId)>,
        }
        let proposals = self
            .proposals
            .values()
            .map(|p| {
                let status = self.status_of(p, now_ms);
                let tally = (now_ms >= p.voting_start()).then(|| self.tally_of(p));
                ProposalSummary {
                    id: &p.id,
                    status,
                    revision_ids: p.revisions.values().map(|r| &r.id).collect(),
                    sponsors: p.sponsors.values().collect(),
                    withdrawn: p.withdrawn.as_ref(),
                    comments: p.comments.keys().collect(),
                    counted: tally.as_ref().map(|t| t.counted.clone()).unwrap_or_default(),
                    totals: tally.as_ref().map(|t| t.count.totals.clone()).unwrap_or_default(),
                    outcome: tally.as_ref().map(|t| t.count.outcome),
                    winner: tally.as_ref().and_then(|t| t.count.winner),
                    finality: self.finality_of(p),
                }
            })
            .collect();
        let delegations = self
            .delegations
            .iter()
            .filter_map(|((who, scope), h)| h.keys().next_back().map(|(_, id)| (who, scope, id)))
            .collect();
        let (chain, executions) = self.registry_chain(now_ms);
        let summary = Summary {
            executions,
            federation: &self.federation,
            registries: chain.iter().map(Registry::hash).collect(),
            proposals,
            delegations,
        };
        let mut h = Sha256::new();
        h.update(STATE_DOMAIN);
        h.update(cbor::to_vec(&summary));
        Digest(h.finalize().into())
    }
}

/// Applies `action` to `reg`. `Ok(Some(inverse))` if the registry changed, `Ok(None)` if the
/// action changes nothing, `Err` (registry untouched) if it cannot be applied.
fn execute(
    reg: &mut Registry,
    action: &Action,
    earlier: &[Execution],
) -> Result<Option<Inverse>, &'static str> {
    Ok(Some(match action {
        Action::None => return Ok(None),
        Action::Configuration { key, new, old } => {
            let current = reg.config.get(key).cloned();
            if old.is_some() && current != *old {
                return Err("configuration value is not the expected old value");
            }
            reg.config.insert(key.clone(), new.clone());
            Inverse::Config { key: key.clone(), value: current }
        }
        Action::TrustAdjustment { level, member } => {
            let m = reg.members.get_mut(member).ok_or("not a member")?;
            let before = m.clone();
            m.trust = *level;
            Inverse::Member { key: *member, record: Some(Box::new(before)) }
        }
        Action::Quarantine(member) => {
            let m = reg.members.get_mut(member).ok_or("not a member")?;
            let before = m.clone();
            m.trust = TrustLevel::Quarantine;
            Inverse::Member { key: *member, record: Some(Box::new(before)) }
        }
        Action::AddMember(m) => {
            if reg.members.contains_key(&m.key) {
                return Err("already a member");
            }
            reg.members.insert(m.key, m.clone());
            Inverse::Member { key: m.key, record: None }
        }
        Action::RemoveMember(key) => {
            let before = reg.members.remove(key).ok_or("not a member")?;
            for body in reg.bodies.values_mut() {
                body.remove(key);
            }
            Inverse::Member { key: *key, record: Some(Box::new(before)) }
        }
        Action::PolicyUpdate(policy) => {
            let before = reg.policy.replace(policy.clone());
            Inverse::Policy(before)
        }
        Action::ProtocolUpgrade(v) => {
            if *v <= reg.min_protocol_version {
                return Err("protocol version is not higher than the current minimum");
            }
            let before = reg.min_protocol_version;
            reg.min_protocol_version = *v;
            Inverse::MinProtocolVersion(before)
        }
        Action::Rollback(target) => {
            let inverse = earlier
                .iter()
                .find(|e| e.proposal == *target)
                .and_then(|e| e.inverse.clone())
                .ok_or("nothing to roll back: the target did not execute a change")?;
            match inverse {
                Inverse::Config { key, value } => {
                    let current = match value {
                        Some(v) => reg.config.insert(key.clone(), v),
                        None => reg.config.remove(&key),
                    };
                    Inverse::Config { key, value: current }
                }
                Inverse::Member { key, record } => {
                    let current = match record {
                        Some(m) => reg.members.insert(key, *m),
                        None => reg.members.remove(&key),
                    };
                    Inverse::Member { key, record: current.map(Box::new) }
                }
                Inverse::Policy(p) => {
                    let current = std::mem::replace(&mut reg.policy, p);
                    Inverse::Policy(current)
                }
                Inverse::MinProtocolVersion(v) => {
                    let current = std::mem::replace(&mut reg.min_protocol_version, v);
                    Inverse::MinProtocolVersion(current)
                }
            }
        }
    }))
}
