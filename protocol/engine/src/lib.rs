//! # kos-engine
//!
//! The governance engine of kOS: a pure, deterministic state machine over verified KLP messages.
//!
//! Inputs are [`Engine::handle`] / [`Engine::apply`] (a verified [`Message`], where it came from,
//! and the current time) and [`Engine::tick`]; queries take `now`. The engine does no I/O, reads
//! no clock and draws no randomness: its only dependencies are the wire types, serde and SHA-256,
//! and `clippy.toml` beside this crate forbids clocks, hash-ordered collections and file or socket
//! access. Its derived state — proposals, statuses, tallies, certificates, registry versions and
//! the [`Engine::state_hash`] over them — is a function of the *set* of valid messages it has been
//! given and of `now`, never of their order, of duplicates, of who relayed what or of a restart.
//!
//! How that is achieved (normative text: `docs/governance.md`):
//! - a message's validity depends only on the message and on messages it names; one whose
//!   dependency is missing is *held* ([`Refusal::Pending`]) in a pool bounded in bytes per author
//!   that expires, is never served and never enters the state hash;
//! - registry versions are named by the hash of their content and looked up by hash: a proposal
//!   pinning a version this node does not know is held, never refused;
//! - the registry chain is a function of the message set: final, approved proposals execute at
//!   `max(final_at, close + grace) + execution delay` (signed times only), in `(time, proposal
//!   id)` order;
//! - finality is a two-phase round protocol (prepare, then commit, with prepare quorums as
//!   locks): a *certificate* is commits from members holding more than 2/3 of the eligible
//!   weight for one (revision, votes root, outcome, winner) in one round; it stays certified,
//!   and while less than 1/3 of the weight breaks the rules no other result can be certified;
//! - where several messages compete (vote changes, conflicting revisions, repeated sponsorship),
//!   the winner is chosen by a total order on `(sequence number, message id)`, never by arrival.
//!
//! Every message updates only what it touches; queries cost O(log n) or O(electorate) (the state
//! hash is O(proposals) over cached per-proposal digests). Every refusal has a typed reason and a
//! gossip [`Verdict`]; a refused message changes nothing.

mod ballots;
mod certificate;
mod chain;
mod finality;
mod hash;
mod judge;
mod keys;
mod registry;
mod tally;
mod view;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use kos_protocol::{Message, MessageType, PublicKey, payload::*};
use serde::{Deserialize, Serialize};

pub use certificate::{
    CERTIFICATE_KIND, CertificateBundle, CertificateError, RECEIPT_KIND, ReceiptBundle,
    VerifiedCertificate, VerifiedReceipt, verify_certificate, verify_receipt,
};
pub use chain::{Execution, Inverse};
pub use finality::{AttestationView, Certificate, Final, FinalKey, Weakening};
pub use hash::STATE_DOMAIN;
pub use judge::ballot_form;
pub use keys::{End as KeyEnd, KeyRecord, Keys, Retirement, Signer};
pub use registry::{REGISTRY_DOMAIN, Registry};
pub use tally::{Count, ProofStep, merkle_proof, merkle_root, verify_merkle_proof};
pub use view::{CommentView, DelegationEdge, Delegator, ProposalRecord, RevisionView};

use chain::Version;
use finality::Attestations;

/// Most messages held while waiting for a dependency, over all authors.
pub const MAX_PENDING: usize = 65_536;
/// Most bytes of held messages per author.
pub const MAX_HELD_BYTES_PER_AUTHOR: usize = 1 << 20;
/// How long a message is held before it is dropped (its peers will offer it again by sync).
pub const HOLD_TTL_MS: u64 = 60 * 60 * 1000;

/// Where a message came from. Only the clock-skew bound depends on it: live gossip and messages
/// created on this node are held to the charter's clock skew; messages fetched by sync or
/// replayed from the store are judged by their signed time alone. Every other rule is the same
/// for every origin.
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
    /// Persist (flush) this accepted message's bytes before acknowledging it: the message
    /// handled, or a held message it released.
    Persist(Box<Message>),
    /// The message is held in the engine's pool until this dependency arrives. The shell must
    /// not store it as accepted nor serve it to peers.
    Hold(MessageId, Dependency),
    /// Penalise the peer that relayed the message.
    Penalise(Refusal),
    /// Sign and publish this attestation with the node's identity.
    Attest(TallyAttestation),
    /// Call [`Engine::tick`] (or `handle` again) at this time: a status changes then.
    WakeAt(u64),
    /// A key rotation or revocation invalidated messages applied before it arrived: rebuild
    /// the engine from the stored messages ([`Engine::replay`] on a new engine), which judges
    /// each message by the keys valid at its signed time.
    Rebuild,
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
    /// A registry version, by content hash, in force when the message was signed.
    Registry(Digest),
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
    /// The pool of held messages is full, or this author's share of it is.
    #[error("too many bytes waiting for dependencies from this author")]
    PendingFull,
    /// The author is a member of no registry version this node knows: nothing is kept.
    #[error("author is a member of no known registry version")]
    UnknownAuthor,
    /// The message belongs to another federation.
    #[error("message is for another federation")]
    WrongFederation,
    /// Not a governance message.
    #[error("{0} is not a governance message")]
    NotGovernance(MessageType),
    /// Live gossip (or a local message) whose signed time is too far from this node's clock.
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
    #[error("{}", window_text(*created_ms, *start_ms, *end_ms))]
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
    /// A KEY_ROTATION whose proof is not the new key's signature over the rotation statement.
    #[error("key rotation proof is not the new key's signature")]
    BadRotationProof,
    /// A KEY_ROTATION to a key that is already a member's key or was rotated to before.
    #[error("the new key is already in use")]
    KeyInUse,
    /// Signed by a key at or after its rotation or revocation (signed time).
    #[error("signing key was retired at {since_ms} (signed at {created_ms})")]
    RetiredKey {
        /// Signed time of the message.
        created_ms: u64,
        /// Signed time of the rotation or revocation that retired the key.
        since_ms: u64,
    },
    /// Signed by a rotated-to key before its rotation (signed time).
    #[error("signing key is valid from {from_ms} (signed at {created_ms})")]
    KeyNotYetValid {
        /// Signed time of the message.
        created_ms: u64,
        /// Signed time of the rotation that introduced the key.
        from_ms: u64,
    },
    /// A REVOCATION of a key that is neither the author's nor an earlier key of its member.
    #[error("a key may revoke only itself or an earlier key of its member")]
    NotKeyHolder,
    /// The proposal relaxes a voting setting the charter does not let its type override.
    #[error(
        "a {kind} proposal may not relax its {field} (the charter's default for the type is stricter; only the settings it lists as overrides may change freely)"
    )]
    WeakerVoting {
        /// Proposal type.
        kind: ProposalType,
        /// The setting.
        field: VotingField,
    },
}

impl Refusal {
    /// The gossip verdict for this refusal.
    pub fn verdict(&self) -> Verdict {
        match self {
            Refusal::Duplicate
            | Refusal::Pending(_)
            | Refusal::PendingFull
            | Refusal::UnknownAuthor
            | Refusal::NotGovernance(_)
            | Refusal::ClockSkew { .. }
            | Refusal::WrongFederation
            | Refusal::ConflictingRevision(_)
            | Refusal::DoubleReveal
            // A relay cannot know every rotation: a retired key's message is dropped, not
            // held against the peer.
            | Refusal::RetiredKey { .. }
            | Refusal::KeyNotYetValid { .. } => Verdict::Ignore,
            _ => Verdict::Reject,
        }
    }
}

/// A proposal's lifecycle state at some `now`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
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

/// An [`Refusal::OutsideWindow`] in words, to the millisecond: how far outside, and where the
/// window opens or closed.
fn window_text(created: u64, start: u64, end: u64) -> String {
    use kos_protocol::time::{date_ms, duration_ms};
    if created < start {
        format!(
            "signed at {}, {} before its window opens at {}",
            date_ms(created),
            duration_ms(start - created),
            date_ms(start)
        )
    } else {
        format!(
            "signed at {}, {} after its window closed at {}",
            date_ms(created),
            duration_ms(created.saturating_sub(end)),
            date_ms(end)
        )
    }
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

pub(crate) fn trust_rank(t: TrustLevel) -> u8 {
    match t {
        TrustLevel::Quarantine => 0,
        TrustLevel::Sandbox => 1,
        TrustLevel::Standard => 2,
        TrustLevel::Trusted => 3,
        TrustLevel::Core => 4,
    }
}

/// The voting configuration of a proposal: its own, else the charter's default for its type,
/// else the built-in default.
pub fn voting_config(charter: &Charter, proposal: &Proposal) -> VotingConfig {
    proposal.voting.clone().unwrap_or_else(|| type_config(charter, proposal.kind))
}

/// The voting configuration of type `kind`: the charter's default, else the built-in one.
pub fn type_config(charter: &Charter, kind: ProposalType) -> VotingConfig {
    charter
        .defaults
        .iter()
        .find(|d| d.kind == kind)
        .map(|d| d.config.clone())
        .unwrap_or_else(|| default_config(kind))
}

/// The settings a proposal of type `kind` may change in any direction: the charter's list if it
/// configures the type, else the built-in one — resource allocations may put options to an
/// approval or ranked ballot and choose its weighting; other types may only be made stricter.
pub fn overridable(charter: &Charter, kind: ProposalType) -> Vec<VotingField> {
    match charter.defaults.iter().find(|d| d.kind == kind) {
        Some(d) => d.overrides.clone(),
        None if kind == ProposalType::ResourceAllocation => {
            vec![VotingField::Rule, VotingField::Weighting]
        }
        None => Vec::new(),
    }
}

/// The approval a binary rule requires: (fraction, whether it must be exceeded). `None` for
/// ballots over options.
fn approval_bar(rule: DecisionRule) -> Option<(u64, u64, bool)> {
    match rule {
        DecisionRule::SimpleMajority => Some((1, 2, true)),
        DecisionRule::Supermajority(r) => Some((u64::from(r.0), u64::from(r.1.max(1)), false)),
        DecisionRule::Consensus => Some((1, 1, false)),
        DecisionRule::Plurality | DecisionRule::InstantRunoff => None,
    }
}

/// `a/b` compared with `c/d`.
fn cmp_ratio(a: u64, b: u64, c: u64, d: u64) -> std::cmp::Ordering {
    (u128::from(a) * u128::from(d)).cmp(&(u128::from(c) * u128::from(b)))
}

/// Checks a proposal's own voting configuration against its type's default: each setting that
/// differs must be one the charter lets the type override, or stricter than the default — a
/// higher quorum, a lower veto threshold, a binary rule that requires more approval, more
/// sponsors, a secret ballot, required reasoning, no early close. A proposer can never lower
/// the bar the federation set.
pub fn check_voting(charter: &Charter, proposal: &Proposal) -> Result<(), Refusal> {
    use std::cmp::Ordering::*;
    let Some(own) = &proposal.voting else { return Ok(()) };
    let base = type_config(charter, proposal.kind);
    let free = overridable(charter, proposal.kind);
    let stricter = |field: VotingField| match field {
        VotingField::Rule => match (approval_bar(own.rule), approval_bar(base.rule)) {
            (Some((a, b, own_strict)), Some((c, d, base_strict))) => match cmp_ratio(a, b, c, d) {
                Greater => true,
                Equal => own_strict || !base_strict,
                Less => false,
            },
            _ => false,
        },
        VotingField::Quorum => {
            cmp_ratio(
                own.quorum.0.into(),
                own.quorum.1.into(),
                base.quorum.0.into(),
                base.quorum.1.into(),
            ) != Less
        }
        VotingField::Veto => {
            cmp_ratio(own.veto.0.into(), own.veto.1.into(), base.veto.0.into(), base.veto.1.into())
                != Greater
        }
        VotingField::Secret => own.secret,
        VotingField::Sponsors => own.sponsors >= base.sponsors,
        VotingField::Reasoning => own.reasoning,
        VotingField::Weighting => false,
        VotingField::EarlyClose => !own.early_close,
    };
    let changed = |field: VotingField| match field {
        VotingField::Rule => own.rule != base.rule,
        VotingField::Veto => own.veto != base.veto,
        VotingField::Quorum => own.quorum != base.quorum,
        VotingField::Secret => own.secret != base.secret,
        VotingField::Sponsors => own.sponsors != base.sponsors,
        VotingField::Reasoning => own.reasoning != base.reasoning,
        VotingField::Weighting => own.weighting != base.weighting,
        VotingField::EarlyClose => own.early_close != base.early_close,
    };
    match VotingField::ALL.iter().find(|f| changed(**f) && !free.contains(f) && !stricter(**f)) {
        Some(field) => Err(Refusal::WeakerVoting { kind: proposal.kind, field: *field }),
        None => Ok(()),
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

/// Key ordering "latest wins": higher key generation (a member's messages under a rotated-to
/// key come after those under the keys before it), then higher sequence number, then higher
/// message id.
pub(crate) type Order = (u32, u64, MessageId);

/// Every delegation message of one delegator and scope: signed time and delegate, by order.
type DelegationHistory = BTreeMap<Order, (u64, Option<PublicKey>)>;

/// The lowest message id, for range bounds.
const ZERO_ID: MessageId = MessageId([0; 32]);

#[derive(Clone, Debug)]
struct RevisionRec {
    id: MessageId,
    body: Revision,
}

/// One author's messages of one kind on one proposal, ordered "latest wins" (usually one or a
/// few, so a sorted vector: a B-tree node per voter would cost ~1 KB).
#[derive(Clone, Debug)]
struct History<V>(Vec<(Order, V)>);

impl<V> Default for History<V> {
    fn default() -> Self {
        History(Vec::new())
    }
}

impl<V> History<V> {
    fn insert(&mut self, order: Order, v: V) {
        match self.0.binary_search_by(|(o, _)| o.cmp(&order)) {
            Ok(i) => self.0[i].1 = v,
            Err(i) => self.0.insert(i, (order, v)),
        }
    }

    fn values(&self) -> impl DoubleEndedIterator<Item = &V> {
        self.0.iter().map(|(_, v)| v)
    }

    fn iter(&self) -> impl DoubleEndedIterator<Item = (&Order, &V)> {
        self.0.iter().map(|(o, v)| (o, v))
    }
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
    /// The key that signed the commit (the commitment binds it).
    key: PublicKey,
    revision: u32,
    commitment: Digest,
}

#[derive(Clone, Debug, Serialize)]
struct CommentRec {
    author: PublicKey,
    kind: CommentKind,
    parent: Option<MessageId>,
    revision: u32,
}

/// Values derived from a proposal's records, computed on first use and dropped when a record
/// they depend on changes.
#[derive(Clone, Debug, Default)]
struct Caches {
    tally: std::cell::OnceCell<Tally>,
    early_close: std::cell::OnceCell<Option<u64>>,
    digest: std::cell::OnceCell<Digest>,
}

impl Caches {
    fn clear(&mut self) {
        self.tally.take();
        self.early_close.take();
        self.digest.take();
    }
}

#[derive(Clone, Debug)]
struct ProposalState {
    id: ProposalId,
    author: PublicKey,
    created_ms: u64,
    body: Proposal,
    /// The registry version the proposal pinned (shared between proposals, by content hash).
    registry: Arc<Registry>,
    /// Total weight of the electorate under the proposal's weighting.
    eligible: u64,
    /// Whether the pinned version is valid for the proposal's signed time under the current
    /// registry chain. An inactive proposal keeps its records but counts for nothing.
    active: bool,
    attestations: Attestations,
    config: VotingConfig,
    revisions: BTreeMap<u32, RevisionRec>,
    sponsors: BTreeMap<PublicKey, MessageId>,
    withdrawn: Option<MessageId>,
    votes: BTreeMap<PublicKey, History<VoteRec>>,
    commits: BTreeMap<PublicKey, History<CommitRec>>,
    reveals: BTreeMap<(PublicKey, Digest), Choice>,
    comments: BTreeMap<MessageId, CommentRec>,
    /// The counted ballots under the certified root, once this node's own count matched it.
    certified_counted: Option<Vec<MessageId>>,
    /// The highest revision named by a ballot (VOTE or VOTE_COMMIT) of a member other than the
    /// proposer, if there is any such ballot.
    named_by_ballots: Option<u32>,
    /// Ids of the applied messages that name this proposal (duplicate detection stays
    /// proportional to the proposal, not to the federation's history).
    applied: BTreeSet<MessageId>,
    cache: Caches,
}

impl ProposalState {
    /// The highest `n` such that revisions `1..=n` are all known.
    fn latest_revision(&self) -> u32 {
        let mut n = 0;
        while self.revisions.contains_key(&(n + 1)) {
            n += 1;
        }
        n
    }

    /// The revision in force: the latest revision, except that once members other than the
    /// proposer have cast ballots, a revision none of them has named is not in force. A
    /// proposer's revision signed "before voting" but first shown after the ballots (backdated)
    /// therefore cannot void them; a revision voters saw and voted on is in force.
    fn current_revision(&self) -> u32 {
        let latest = self.latest_revision();
        self.named_by_ballots.map_or(latest, |named| named.min(latest))
    }

    /// Whether a withdrawal takes effect: only if no member other than the proposer has cast a
    /// ballot (a withdrawal first shown after voting began cannot void the ballots) and the
    /// proposal has no certificate (a withdrawal first shown after the result was final — or
    /// executed — cannot undo it). Both are functions of the message set.
    fn is_withdrawn(&self) -> bool {
        self.withdrawn.is_some()
            && self.named_by_ballots.is_none()
            && self.attestations.final_().is_none()
    }

    /// Records a ballot on `revision` by `voter`.
    fn note_ballot(&mut self, voter: &PublicKey, revision: u32) {
        if *voter != self.author {
            self.named_by_ballots =
                Some(self.named_by_ballots.map_or(revision, |n| n.max(revision)));
        }
    }

    fn options(&self, revision: u32) -> Option<&[String]> {
        if revision == 0 {
            Some(&self.body.options)
        } else {
            self.revisions.get(&revision).map(|r| r.body.options.as_slice())
        }
    }

    /// Whether `choice` names only options that the standing revision `revision` has (a ballot
    /// on revision `n ≥ 1` is accepted whatever its indices: competing REVISIONs may differ).
    fn fits(&self, revision: u32, choice: &Choice) -> bool {
        self.options(revision)
            .is_some_and(|o| judge::ballot_form(self.config.rule, o, choice).is_ok())
    }

    fn action(&self) -> &Action {
        self.revisions.get(&self.current_revision()).map_or(&self.body.action, |r| &r.body.action)
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

    fn sponsored(&self) -> bool {
        self.sponsors.len() >= usize::from(self.config.sponsors)
    }

    fn weight(&self, key: &PublicKey) -> u64 {
        self.registry.member(key).map_or(0, |m| self.registry.weight(m, self.config.weighting))
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

/// A voter's inclusion receipt: the counted ballot and its Merkle path to the certified root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// The proposal.
    pub proposal: ProposalId,
    /// The voter.
    pub voter: PublicKey,
    /// The counted ballot (VOTE, or VOTE_COMMIT for secret ballots).
    pub ballot: MessageId,
    /// The certified votes root.
    pub votes_root: Digest,
    /// The path from the ballot's leaf to the root.
    pub proof: Vec<ProofStep>,
}

/// Why no receipt can be given.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    /// No such (active) proposal.
    #[error("unknown proposal")]
    UnknownProposal,
    /// The proposal has no certificate yet.
    #[error("the proposal is not final: no certificate yet")]
    NotFinal,
    /// This node's counted ballots do not (yet) reproduce the certified root.
    #[error("this node's counted ballots do not reproduce the certified root; sync and retry")]
    RootUnknown,
    /// The voter has no ballot under the certified root (did not vote, or voted by delegation).
    #[error("the voter has no ballot under the certified root")]
    NotCounted,
}

/// What [`Engine::replay`] did with a batch of stored messages.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Messages applied (including released held ones).
    pub applied: usize,
    /// Duplicates in the batch.
    pub duplicates: usize,
    /// Messages still held for a dependency.
    pub held: usize,
    /// Messages refused, by reason.
    pub refused: BTreeMap<String, usize>,
}

#[derive(Clone, Debug)]
struct Held {
    msg: Message,
    since_ms: u64,
}

/// The hold pool: messages waiting for a dependency, bounded per author in bytes and in total,
/// expiring after [`HOLD_TTL_MS`].
#[derive(Clone, Debug, Default)]
struct HoldPool {
    by_dep: BTreeMap<Dependency, BTreeMap<MessageId, Held>>,
    index: BTreeMap<MessageId, Dependency>,
    by_time: BTreeSet<(u64, MessageId)>,
    bytes: BTreeMap<PublicKey, usize>,
}

impl HoldPool {
    fn len(&self) -> usize {
        self.index.len()
    }

    fn insert(&mut self, msg: &Message, dep: Dependency, now_ms: u64) -> Result<(), Refusal> {
        let id = msg.id();
        if self.index.contains_key(&id) {
            return Ok(());
        }
        let size = msg.bytes().len();
        let used = self.bytes.get(&msg.author()).copied().unwrap_or(0);
        if self.len() >= MAX_PENDING || used + size > MAX_HELD_BYTES_PER_AUTHOR {
            return Err(Refusal::PendingFull);
        }
        self.bytes.insert(msg.author(), used + size);
        self.by_time.insert((now_ms, id));
        self.index.insert(id, dep.clone());
        self.by_dep.entry(dep).or_default().insert(id, Held { msg: msg.clone(), since_ms: now_ms });
        Ok(())
    }

    fn forget(&mut self, held: &Held) {
        let id = held.msg.id();
        self.index.remove(&id);
        self.by_time.remove(&(held.since_ms, id));
        let author = held.msg.author();
        if let Some(b) = self.bytes.get_mut(&author) {
            *b = b.saturating_sub(held.msg.bytes().len());
            if *b == 0 {
                self.bytes.remove(&author);
            }
        }
    }

    fn take(&mut self, dep: &Dependency) -> Vec<Message> {
        let Some(waiting) = self.by_dep.remove(dep) else { return Vec::new() };
        waiting
            .into_values()
            .map(|h| {
                self.forget(&h);
                h.msg
            })
            .collect()
    }

    fn expire(&mut self, now_ms: u64) -> usize {
        let cutoff = now_ms.saturating_sub(HOLD_TTL_MS);
        let old: Vec<(u64, MessageId)> = self.by_time.range(..(cutoff, ZERO_ID)).copied().collect();
        for (_, id) in &old {
            if let Some(dep) = self.index.get(id).cloned()
                && let Some(list) = self.by_dep.get_mut(&dep)
                && let Some(h) = list.remove(id)
            {
                if list.is_empty() {
                    self.by_dep.remove(&dep);
                }
                self.forget(&h);
            }
        }
        old.len()
    }
}

/// Messages replayed between two progress reports of [`Engine::replay_with`].
pub const REPLAY_PROGRESS_EVERY: usize = 4096;

/// The governance engine of one federation.
#[derive(Clone, Debug)]
pub struct Engine {
    federation: FederationId,
    charter: Option<Charter>,
    /// The registry chain: version 0 is the charter's; each execution that changes the registry
    /// adds one, starting at the execution's time. A function of the message set.
    chain: Vec<Version>,
    /// Chain versions by content hash: index into `chain`.
    versions: BTreeMap<Digest, usize>,
    /// Every key that is a member of some registry version this node has computed.
    known_members: BTreeSet<PublicKey>,
    /// Executions in the current chain, by proposal.
    executions: BTreeMap<ProposalId, Execution>,
    /// Final, approved, sponsored, not withdrawn proposals: their execution time.
    exec_at: BTreeMap<ProposalId, u64>,
    /// The same, in execution order: (time, end of voting, proposal).
    exec_order: BTreeSet<(u64, u64, ProposalId)>,
    proposals: BTreeMap<ProposalId, ProposalState>,
    /// Proposals by signed time, and by end of voting.
    by_created: BTreeSet<(u64, ProposalId)>,
    by_voting_end: BTreeSet<(u64, ProposalId)>,
    /// Active proposals without a certificate: the only ones that can need an attestation.
    unsettled: BTreeSet<ProposalId>,
    /// Times at which some status can change by the clock alone.
    wake: BTreeSet<u64>,
    /// Which proposal each comment belongs to.
    comment_owner: BTreeMap<MessageId, ProposalId>,
    /// Every delegation message, by (delegator, scope), ordered "latest wins".
    delegations: BTreeMap<(PublicKey, DelegationScope), DelegationHistory>,
    delegations_digest: std::cell::OnceCell<Digest>,
    chain_digest: std::cell::OnceCell<Digest>,
    /// The state hash's incrementally maintained sum of proposal terms.
    hash_state: std::cell::RefCell<hash::HashState>,
    applied: BTreeSet<MessageId>,
    pending: HoldPool,
    /// Dependencies satisfied as a side effect (registry rebuilds), to release.
    released: Vec<Dependency>,
    /// While set, `judge` decides without recording ([`Engine::check`]).
    dry_run: bool,
    /// Key rotations and revocations.
    keys: keys::Keys,
    keys_digest: std::cell::OnceCell<Digest>,
    /// The latest signed time of an applied message, per signing key: a rotation or revocation
    /// at or before it invalidates messages already applied.
    last_signed: BTreeMap<PublicKey, u64>,
    /// Set when a rotation or revocation arrived after messages it invalidates.
    rebuild: bool,
    /// A deliberately broken attestation rule (model-checker tests only).
    weakening: finality::Weakening,
}

impl Engine {
    /// An engine for the federation whose charter has id `federation`.
    pub fn new(federation: FederationId) -> Self {
        Engine {
            federation,
            charter: None,
            chain: Vec::new(),
            versions: BTreeMap::new(),
            known_members: BTreeSet::new(),
            executions: BTreeMap::new(),
            exec_at: BTreeMap::new(),
            exec_order: BTreeSet::new(),
            proposals: BTreeMap::new(),
            by_created: BTreeSet::new(),
            by_voting_end: BTreeSet::new(),
            unsettled: BTreeSet::new(),
            wake: BTreeSet::new(),
            comment_owner: BTreeMap::new(),
            delegations: BTreeMap::new(),
            delegations_digest: std::cell::OnceCell::new(),
            chain_digest: std::cell::OnceCell::new(),
            hash_state: std::cell::RefCell::new(hash::HashState::default()),
            applied: BTreeSet::new(),
            pending: HoldPool::default(),
            released: Vec::new(),
            dry_run: false,
            keys: keys::Keys::default(),
            keys_digest: std::cell::OnceCell::new(),
            last_signed: BTreeMap::new(),
            rebuild: false,
            weakening: finality::Weakening::None,
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

    fn grace(&self) -> u64 {
        self.charter.as_ref().map_or(0, |c| c.timing.grace_ms)
    }

    /// Applies a verified message. On success returns the ids of every message applied, this one
    /// first, then any held messages it released (all of them to be persisted and relayed).
    pub fn apply(
        &mut self,
        msg: &Message,
        origin: Origin,
        now_ms: u64,
    ) -> Result<Vec<MessageId>, Refusal> {
        let released = self.apply_released(msg, origin, now_ms)?;
        let mut ids = Vec::with_capacity(1 + released.len());
        ids.push(msg.id());
        ids.extend(released.iter().map(Message::id));
        Ok(ids)
    }

    /// [`Engine::apply`], returning the held messages it released (applied after it).
    fn apply_released(
        &mut self,
        msg: &Message,
        origin: Origin,
        now_ms: u64,
    ) -> Result<Vec<Message>, Refusal> {
        self.check_clock(msg, origin, now_ms)?;
        let deps = self.apply_one(msg, now_ms)?;
        if deps.is_empty() && self.released.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self.release(deps, now_ms))
    }

    /// Decides what [`Engine::apply`] would do with `msg` without changing anything: `Ok` if it
    /// would be accepted. The shell calls this first, stores an acceptable message durably, and
    /// only then applies it — so a failed write leaves the engine as it was.
    pub fn check(&mut self, msg: &Message, origin: Origin, now_ms: u64) -> Result<(), Refusal> {
        self.check_clock(msg, origin, now_ms)?;
        self.check_known(msg)?;
        self.dry_run = true;
        let verdict = self.judge(msg);
        self.dry_run = false;
        verdict.map(|_| ())
    }

    /// Handles one verified message for the shell: applies it, and returns the gossip verdict
    /// with effects — what to persist, what is held, whom to penalise, which attestations `me`
    /// (the node's identity, if it is a member) must sign, and when to wake up next.
    pub fn handle(
        &mut self,
        msg: &Message,
        origin: Origin,
        now_ms: u64,
        me: Option<&PublicKey>,
    ) -> Step {
        let mut effects = Vec::new();
        let (verdict, refusal) = match self.apply_released(msg, origin, now_ms) {
            Ok(released) => {
                effects.push(Effect::Persist(Box::new(msg.clone())));
                effects.extend(released.into_iter().map(|m| Effect::Persist(Box::new(m))));
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
        if self.rebuild {
            effects.push(Effect::Rebuild);
        }
        Step { verdict, refusal, effects }
    }

    /// Applies a batch of stored messages in a dependency-friendly order (the charter, then by
    /// signed time, then id), so that a restart rebuilds the same state whatever order the store
    /// returns them in. Messages refused only for what this node did not know yet (an author
    /// admitted by an execution later in the batch) are retried until nothing more applies.
    /// Clock-skew rules do not apply (origin [`Origin::Sync`]).
    pub fn replay(&mut self, msgs: Vec<Message>, now_ms: u64) -> ReplayReport {
        self.replay_with(msgs, now_ms, &mut |_, _| {})
    }

    /// [`Engine::replay`], telling `progress(applied or refused, total)` every
    /// [`REPLAY_PROGRESS_EVERY`] messages of the first pass (the bulk of the work; retries of
    /// messages that arrived before their dependencies follow it).
    pub fn replay_with(
        &mut self,
        mut msgs: Vec<Message>,
        now_ms: u64,
        progress: &mut dyn FnMut(usize, usize),
    ) -> ReplayReport {
        let total = msgs.len();
        // Within one signed time, rotations and revocations first: they decide which keys
        // may sign at that time.
        msgs.sort_by_key(|m| {
            let t = m.payload().message_type();
            let key_msg = matches!(t, MessageType::KeyRotation | MessageType::Revocation);
            (t != MessageType::Charter, m.header().created_ms, !key_msg, m.id())
        });
        // A pass applies a key message after messages it invalidates when its author becomes
        // a member only by an execution later in the pass (a rotation signed before the
        // member's admission is retried after the rest). The pass is then run again from the
        // engine as it was, knowing from the start every member the previous pass met, until
        // no key message comes late: the state of a node that saw every message in signed-time
        // order. The flag is never cleared while a pass could still change the outcome.
        // The engine as it was: a new one when it held nothing (a restart, a rebuild — the
        // usual case, which then costs no copy), else a copy.
        let fresh = self.charter.is_none() && self.applied_len() == 0 && self.pending_len() == 0;
        let base = (!fresh).then(|| self.clone());
        let mut seeded = self.known_members.clone();
        let mut report = self.replay_pass(&msgs, now_ms, progress);
        // Members only accumulate, so this ends: a pass that met no one new would repeat.
        while self.rebuild && self.known_members != seeded {
            seeded = std::mem::take(&mut self.known_members);
            let weakening = self.weakening;
            *self = base.clone().unwrap_or_else(|| Engine::new(self.federation));
            self.weakening = weakening;
            self.known_members.clone_from(&seeded);
            report = self.replay_pass(&msgs, now_ms, &mut |_, _| {});
        }
        progress(total, total);
        report.held = self.pending.len();
        self.rebuild = false;
        report
    }

    /// One replay pass over `msgs` (sorted): each applied in turn, those refused for an author
    /// not known yet retried until nothing more applies.
    fn replay_pass(
        &mut self,
        msgs: &[Message],
        now_ms: u64,
        progress: &mut dyn FnMut(usize, usize),
    ) -> ReplayReport {
        let total = msgs.len();
        let mut report = ReplayReport::default();
        let mut todo: Vec<&Message> = msgs.iter().collect();
        let mut first = true;
        loop {
            let mut retry = Vec::new();
            let before = report.applied;
            for (i, m) in todo.into_iter().enumerate() {
                if first && i % REPLAY_PROGRESS_EVERY == 0 {
                    progress(i, total);
                }
                match self.apply(m, Origin::Sync, now_ms) {
                    Ok(ids) => report.applied += ids.len(),
                    Err(Refusal::Duplicate) => report.duplicates += 1,
                    Err(Refusal::Pending(_)) => {}
                    Err(Refusal::UnknownAuthor | Refusal::PendingFull) => retry.push(m),
                    Err(r) => *report.refused.entry(refusal_name(&r)).or_default() += 1,
                }
            }
            first = false;
            if retry.is_empty() || report.applied == before {
                for m in retry {
                    if let Err(r) = self.apply(m, Origin::Sync, now_ms) {
                        *report.refused.entry(refusal_name(&r)).or_default() += 1;
                    }
                }
                break;
            }
            todo = retry;
        }
        report
    }

    /// The next time after `now_ms` at which some proposal's status can change by the clock
    /// alone (voting opens or closes, a reveal ends, a grace period ends, an execution falls
    /// due) or a new attestation round of an unsettled proposal begins. O(log n + unsettled).
    pub fn next_wakeup(&self, now_ms: u64) -> Option<u64> {
        let fixed = self.wake.range(now_ms.saturating_add(1)..).next().copied();
        match (fixed, self.next_round_at(now_ms)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Advances time: drops held messages older than [`HOLD_TTL_MS`]. The registry chain and
    /// every status are functions of the message set and `now`, so nothing else needs doing.
    /// Returns the number of held messages dropped.
    pub fn tick(&mut self, now_ms: u64) -> usize {
        self.pending.expire(now_ms)
    }

    /// Re-applies the messages held for each satisfied dependency in `queue`, and for every
    /// dependency those satisfy in turn. Returns the messages applied.
    fn release(&mut self, mut queue: Vec<Dependency>, now_ms: u64) -> Vec<Message> {
        let mut applied = Vec::new();
        queue.append(&mut self.released);
        while let Some(dep) = queue.pop() {
            for m in self.pending.take(&dep) {
                if let Ok(more) = self.apply_one(&m, now_ms) {
                    queue.extend(more);
                    applied.push(m);
                }
                queue.append(&mut self.released);
            }
        }
        applied
    }

    /// Applies one message; on success returns the dependencies it satisfies.
    fn apply_one(&mut self, msg: &Message, now_ms: u64) -> Result<Vec<Dependency>, Refusal> {
        let id = msg.id();
        let bucket = named_proposal(msg.payload());
        self.check_known(msg)?;
        match self.judge(msg) {
            Ok(deps) => {
                if let Some(pid) = bucket {
                    self.mark(pid);
                } else if msg.payload().message_type() == MessageType::Proposal {
                    self.mark(id);
                }
                match bucket.and_then(|p| self.proposals.get_mut(&p)) {
                    Some(p) => p.applied.insert(id),
                    None => self.applied.insert(id),
                };
                let created = msg.header().created_ms;
                let last = self.last_signed.entry(msg.author()).or_insert(created);
                *last = (*last).max(created);
                Ok(deps)
            }
            Err(Refusal::Pending(dep)) => {
                self.pending.insert(msg, dep.clone(), now_ms)?;
                Err(Refusal::Pending(dep))
            }
            Err(e) => Err(e),
        }
    }

    /// The clock-skew bound: live gossip and the node's own messages only.
    fn check_clock(&self, msg: &Message, origin: Origin, now_ms: u64) -> Result<(), Refusal> {
        if matches!(origin, Origin::Gossip | Origin::Local)
            && let Some(c) = &self.charter
        {
            let skew = c.timing.clock_skew_ms;
            let created = msg.header().created_ms;
            if created.abs_diff(now_ms) > skew {
                return Err(Refusal::ClockSkew { created_ms: created, now_ms, skew_ms: skew });
            }
        }
        Ok(())
    }

    /// Already applied (`Duplicate`) or already held (`Pending`).
    fn check_known(&self, msg: &Message) -> Result<(), Refusal> {
        let id = msg.id();
        let applied = match named_proposal(msg.payload()).and_then(|p| self.proposals.get(&p)) {
            Some(p) => p.applied.contains(&id),
            None => self.applied.contains(&id),
        };
        if applied {
            return Err(Refusal::Duplicate);
        }
        match self.pending.index.get(&id) {
            Some(dep) => Err(Refusal::Pending(dep.clone())),
            None => Ok(()),
        }
    }

    /// Notes that proposal `pid`'s term in the state hash must be recomputed.
    fn mark(&mut self, pid: ProposalId) {
        self.hash_state.get_mut().dirty.insert(pid);
    }

    /// Whether a key rotation or revocation arrived after messages it invalidates: the state is
    /// then a function of the arrival order until the engine is rebuilt from the stored messages
    /// by [`Engine::replay`] on a new engine (which applies them in signed-time order).
    pub fn needs_rebuild(&self) -> bool {
        self.rebuild
    }

    /// Whether `key` may sign a governance message at `at_ms` (a member's valid key), and whose.
    pub fn check_signer(&self, key: &PublicKey, at_ms: u64) -> Result<Signer, Refusal> {
        self.signer(key, at_ms)
    }

    /// The key lifecycle records.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The member identity `key` belongs to (itself unless it was rotated to).
    pub fn identity(&self, key: &PublicKey) -> PublicKey {
        self.keys.identity(key)
    }

    /// Number of messages held for missing dependencies.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Bytes held for missing dependencies from `author`.
    pub fn held_bytes(&self, author: &PublicKey) -> usize {
        self.pending.bytes.get(author).copied().unwrap_or(0)
    }

    /// Whether message `id` has been applied (it is part of the state and may be served).
    /// O(proposals): for tests and diagnostics.
    pub fn is_applied(&self, id: &MessageId) -> bool {
        self.applied.contains(id) || self.proposals.values().any(|p| p.applied.contains(id))
    }

    /// Whether message `id` is in the hold pool.
    pub fn is_held(&self, id: &MessageId) -> bool {
        self.pending.index.contains_key(id)
    }

    /// Number of messages applied. O(proposals).
    pub fn applied_len(&self) -> usize {
        self.applied.len() + self.proposals.values().map(|p| p.applied.len()).sum::<usize>()
    }
}

/// The proposal a message names (votes, attestations, comments, revisions, ...), if any.
fn named_proposal(payload: &kos_protocol::Payload) -> Option<ProposalId> {
    use kos_protocol::Payload as P;
    Some(match payload {
        P::Revision(r) => r.proposal,
        P::Sponsor(s) => s.proposal,
        P::Withdraw(w) => w.proposal,
        P::Comment(c) => c.proposal,
        P::Vote(v) => v.proposal,
        P::VoteCommit(v) => v.proposal,
        P::VoteReveal(v) => v.proposal,
        P::TallyAttestation(a) => a.proposal,
        _ => return None,
    })
}

/// A short, stable name for a refusal (its variant), for logs and reports.
pub fn refusal_name(r: &Refusal) -> String {
    let s = format!("{r:?}");
    s.split(['(', ' ', '{']).next().unwrap_or_default().to_owned()
}
