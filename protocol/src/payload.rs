//! Typed message bodies, one per [`MessageType`](crate::MessageType).
//!
//! Every body is a CBOR map with text keys in RFC 8949 deterministic order (shorter keys first,
//! then bytewise); optional fields are omitted when absent, never `null`. Struct fields below are
//! declared in that order, which is what the encoder emits. Weights are integers in thousandths
//! (milli-weights), thresholds are exact fractions, times are milliseconds since the Unix epoch:
//! the wire carries no floating point.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::identity::PublicKey;

/// Longest proposal title, in characters.
pub const MAX_TITLE_CHARS: usize = 200;
/// Longest proposal description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 10_000;
/// Longest vote reasoning, in characters.
pub const MAX_REASON_CHARS: usize = 2_000;
/// Longest comment text, in characters.
pub const MAX_COMMENT_CHARS: usize = 10_000;
/// Longest short text (names, keys, option labels, task ids, topics), in characters.
pub const MAX_SHORT_CHARS: usize = 200;
/// Most options on an approval or ranked-choice proposal.
pub const MAX_OPTIONS: usize = 64;
/// Most founding members in a charter (the envelope size limit bounds it first).
pub const MAX_MEMBERS: usize = 512;
/// Most entries in any other list.
pub const MAX_LIST: usize = 256;

macro_rules! bytes32 {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name(#[serde(with = "crate::cbor::fixed_bytes")] pub [u8; 32]);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                for b in &self.0 {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self)
            }
        }

        impl std::str::FromStr for $name {
            type Err = ValidationError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let bad = ValidationError::BadHex { field: stringify!($name) };
                if s.len() != 64 || !s.is_ascii() {
                    return Err(bad);
                }
                let mut out = [0u8; 32];
                for (i, byte) in out.iter_mut().enumerate() {
                    *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad.clone())?;
                }
                Ok($name(out))
            }
        }
    };
}

bytes32!(
    /// SHA-256 of a message's encoded envelope. Proposals, charters (the federation id) and
    /// comments are named by their message id.
    MessageId
);
bytes32!(
    /// A SHA-256 digest that is not a message id: Merkle roots, commitments, registry hashes.
    Digest
);

/// The federation id: the message id of its charter.
pub type FederationId = MessageId;
/// A proposal id: the message id of its PROPOSAL.
pub type ProposalId = MessageId;

/// Why a decoded body was refused by its type's validation rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// A required text field is empty.
    #[error("{field} must not be empty")]
    Empty {
        /// The field.
        field: &'static str,
    },
    /// A text field is longer than its limit.
    #[error("{field} is {len} characters long, at most {max} are allowed")]
    TooLong {
        /// The field.
        field: &'static str,
        /// Its length in characters (bytes for binary data).
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A list holds more entries than its limit.
    #[error("{field} has {len} entries, at most {max} are allowed")]
    TooMany {
        /// The field.
        field: &'static str,
        /// Its number of entries.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A list that must not repeat an entry repeats one.
    #[error("{field} repeats an entry")]
    Duplicate {
        /// The field.
        field: &'static str,
    },
    /// A value is outside its allowed range, or fields contradict each other.
    #[error("{field}: {reason}")]
    OutOfRange {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// A hexadecimal digest could not be parsed.
    #[error("{field}: expected 64 hexadecimal characters")]
    BadHex {
        /// The kind of value.
        field: &'static str,
    },
}

fn check_text(
    field: &'static str,
    s: &str,
    max: usize,
    allow_empty: bool,
) -> Result<(), ValidationError> {
    if s.is_empty() && !allow_empty {
        return Err(ValidationError::Empty { field });
    }
    // Cheap upper bound first: a string of at most `max` bytes has at most `max` characters.
    if s.len() > max {
        let len = s.chars().count();
        if len > max {
            return Err(ValidationError::TooLong { field, len, max });
        }
    }
    Ok(())
}

fn check_len<T>(field: &'static str, v: &[T], max: usize) -> Result<(), ValidationError> {
    if v.len() > max {
        return Err(ValidationError::TooMany { field, len: v.len(), max });
    }
    Ok(())
}

fn check_unique<T: Ord>(field: &'static str, v: &[T]) -> Result<(), ValidationError> {
    let mut refs: Vec<&T> = v.iter().collect();
    refs.sort();
    if refs.windows(2).any(|w| w[0] == w[1]) {
        return Err(ValidationError::Duplicate { field });
    }
    Ok(())
}

macro_rules! string_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vdoc])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The wire (and command-line) name.
            pub fn as_str(&self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = UnknownName;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownName { kind: stringify!($name), name: s.to_owned() }),
                }
            }
        }
    };
}

/// A name that is not one of an enumeration's values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} `{name}`")]
pub struct UnknownName {
    /// The enumeration.
    pub kind: &'static str,
    /// The name given.
    pub name: String,
}

string_enum!(
    /// A member's trust level. Vote weight under trust weighting: see [`TrustLevel::milli_weight`].
    TrustLevel {
        /// Weight 5.
        Core = "core",
        /// Weight 3.
        Trusted = "trusted",
        /// Weight 1.
        Standard = "standard",
        /// Weight 0.5.
        Sandbox = "sandbox",
        /// Weight 0: cannot vote.
        Quarantine = "quarantine",
    }
);

impl TrustLevel {
    /// The trust weight in thousandths: 5000, 3000, 1000, 500, 0.
    pub fn milli_weight(self) -> u64 {
        match self {
            TrustLevel::Core => 5000,
            TrustLevel::Trusted => 3000,
            TrustLevel::Standard => 1000,
            TrustLevel::Sandbox => 500,
            TrustLevel::Quarantine => 0,
        }
    }
}

string_enum!(
    /// A member's role. The first five are standing roles; the rest are BIP-06 process roles a
    /// charter can require for an action.
    Role {
        /// Any member.
        Citizen = "citizen",
        /// Receives delegations.
        Delegate = "delegate",
        /// Validates messages and attests tallies.
        Validator = "validator",
        /// Sits on a governing body.
        CouncilMember = "council_member",
        /// May act in emergencies.
        EmergencyResponder = "emergency_responder",
        /// BIP-06: may propose.
        Proposer = "proposer",
        /// BIP-06: may discuss.
        Discussant = "discussant",
        /// BIP-06: reviews.
        Reviewer = "reviewer",
        /// BIP-06: mediates discussion, may summarise.
        Mediator = "mediator",
        /// BIP-06: votes.
        Voter = "voter",
        /// BIP-06: executes.
        Executor = "executor",
        /// BIP-06: summarises.
        Summarizer = "summarizer",
        /// BIP-06: arbitrates.
        Arbiter = "arbiter",
    }
);

string_enum!(
    /// A governing body named in the charter.
    BodyKind {
        /// Scope: the protocol layer.
        ProtocolCouncil = "protocol_council",
        /// Scope: system services.
        TechnicalCommittee = "technical_committee",
        /// Scope: agent policies.
        AgentCouncil = "agent_council",
        /// Scope: security events.
        SecurityBoard = "security_board",
    }
);

string_enum!(
    /// What a proposal is about.
    ProposalType {
        /// Raise the minimum protocol version.
        ProtocolUpgrade = "protocol_upgrade",
        /// Policy of a system service.
        ServicePolicy = "service_policy",
        /// Policy for agents.
        AgentBehavior = "agent_behavior",
        /// Security policy.
        SecurityPolicy = "security_policy",
        /// Allocation of shared resources.
        ResourceAllocation = "resource_allocation",
        /// A configuration change.
        Configuration = "configuration",
        /// Change a member's trust level.
        TrustAdjustment = "trust_adjustment",
        /// Admit or remove a member.
        Membership = "membership",
        /// Emergency action (quarantine).
        EmergencyAction = "emergency_action",
        /// Change of the charter's rules.
        ConstitutionalChange = "constitutional_change",
    }
);

string_enum!(
    /// Reach of a proposal.
    Scope {
        /// The whole federation.
        Global = "global",
        /// A region.
        Regional = "regional",
        /// Local.
        Local = "local",
        /// An emergency.
        Emergency = "emergency",
    }
);

string_enum!(
    /// Kind of a discussion comment (BIP-06).
    CommentKind {
        /// A remark.
        Comment = "comment",
        /// A suggested change.
        Suggestion = "suggestion",
        /// An objection.
        Objection = "objection",
        /// Support.
        Support = "support",
        /// A summary of the discussion (by the proposer or a mediator).
        Summary = "summary",
    }
);

string_enum!(
    /// How a voter's weight is computed.
    Weighting {
        /// Every eligible member weighs 1.
        OnePersonOneVote = "one_person_one_vote",
        /// The trust level's weight.
        Trust = "trust",
        /// The member's stake.
        Stake = "stake",
        /// The charter's weight for the member's highest-weighted role.
        Role = "role",
        /// The charter's combination of trust, stake and role weights.
        Hybrid = "hybrid",
    }
);

string_enum!(
    /// The result of a tally.
    Outcome {
        /// Approved.
        Approved = "approved",
        /// Rejected by vote.
        Rejected = "rejected",
        /// Participation below quorum.
        FailedQuorum = "failed_quorum",
        /// Vetoed.
        Vetoed = "vetoed",
    }
);

/// An exact fraction `num / den`, encoded as the array `[num, den]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Ratio(pub u32, pub u32);

impl Ratio {
    /// Numerator.
    pub fn num(self) -> u32 {
        self.0
    }
    /// Denominator.
    pub fn den(self) -> u32 {
        self.1
    }
    fn validate(self, field: &'static str) -> Result<(), ValidationError> {
        if self.1 == 0 {
            return Err(ValidationError::OutOfRange { field, reason: "denominator is zero" });
        }
        if self.0 > self.1 {
            return Err(ValidationError::OutOfRange { field, reason: "fraction above 1" });
        }
        Ok(())
    }
}

/// How votes decide a proposal. The rule also fixes the ballot form: binary rules take
/// yes/no/abstain/veto, `plurality` takes a set of approved options, `instant_runoff` a ranking.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DecisionRule {
    /// Approval strictly above one half.
    #[serde(rename = "simple_majority")]
    SimpleMajority,
    /// Approval at or above the given fraction.
    #[serde(rename = "supermajority")]
    Supermajority(Ratio),
    /// No `no` and no `veto`.
    #[serde(rename = "consensus")]
    Consensus,
    /// Approval voting: the option with the most weighted approvals wins.
    #[serde(rename = "plurality")]
    Plurality,
    /// Ranked choice, decided by instant runoff.
    #[serde(rename = "instant_runoff")]
    InstantRunoff,
}

impl DecisionRule {
    /// Whether ballots under this rule are yes/no/abstain/veto.
    pub fn is_binary(self) -> bool {
        matches!(self, Self::SimpleMajority | Self::Supermajority(_) | Self::Consensus)
    }
}

/// The voting configuration of a proposal (a charter default per type, or the proposal's own).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VotingConfig {
    /// The decision rule.
    pub rule: DecisionRule,
    /// Veto threshold: veto / participation above this rejects as vetoed.
    pub veto: Ratio,
    /// The quorum: participation / eligible weight at or above this.
    pub quorum: Ratio,
    /// Secret ballot (commit–reveal).
    pub secret: bool,
    /// Sponsors needed before discussion opens.
    pub sponsors: u16,
    /// Whether each vote must carry reasoning.
    pub reasoning: bool,
    /// Vote weighting.
    pub weighting: Weighting,
    /// Close early once the remaining weight cannot change the outcome (never for secret
    /// ballots).
    pub early_close: bool,
}

impl VotingConfig {
    /// Checks the thresholds.
    pub fn validate(&self) -> Result<(), ValidationError> {
        self.veto.validate("voting.veto")?;
        self.quorum.validate("voting.quorum")?;
        if let DecisionRule::Supermajority(r) = self.rule {
            r.validate("voting.rule")?;
        }
        if self.secret && self.early_close {
            return Err(ValidationError::OutOfRange {
                field: "voting.early_close",
                reason: "secret ballots never close early",
            });
        }
        Ok(())
    }
}

/// A member of the federation's registry.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    /// The member's identity.
    pub key: PublicKey,
    /// Roles held.
    pub roles: Vec<Role>,
    /// Stake (for stake weighting), in whole units.
    pub stake: u64,
    /// Trust level.
    pub trust: TrustLevel,
}

impl Member {
    fn validate(&self) -> Result<(), ValidationError> {
        check_len("member.roles", &self.roles, Role::ALL.len())?;
        check_unique("member.roles", &self.roles)
    }
}

/// A governing body and its members.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Body {
    /// Which body.
    pub kind: BodyKind,
    /// Its members.
    pub members: Vec<PublicKey>,
}

/// Time bounds of the federation, in milliseconds.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timing {
    /// Grace period after voting ends before nodes attest.
    pub grace_ms: u64,
    /// Length of the reveal window of secret ballots.
    pub reveal_ms: u64,
    /// Allowed clock skew for live gossip.
    pub clock_skew_ms: u64,
    /// Longest voting window.
    pub max_voting_ms: u64,
    /// Shortest voting window.
    pub min_voting_ms: u64,
    /// Voting window used when a proposal does not choose one.
    pub default_voting_ms: u64,
    /// Shortest discussion.
    pub min_discussion_ms: u64,
}

impl Timing {
    /// The production defaults of SPEC 4.1: voting 1–168 h (72 h default), 24 h discussion,
    /// 10 min grace, 24 h reveal, 5 min clock skew.
    pub fn standard() -> Self {
        const H: u64 = 3_600_000;
        Timing {
            grace_ms: 10 * 60_000,
            reveal_ms: 24 * H,
            clock_skew_ms: 5 * 60_000,
            max_voting_ms: 168 * H,
            min_voting_ms: H,
            default_voting_ms: 72 * H,
            min_discussion_ms: 24 * H,
        }
    }

    fn validate(&self) -> Result<(), ValidationError> {
        if self.min_voting_ms == 0 || self.min_voting_ms > self.max_voting_ms {
            return Err(ValidationError::OutOfRange {
                field: "timing",
                reason: "need 0 < min_voting_ms <= max_voting_ms",
            });
        }
        if !(self.min_voting_ms..=self.max_voting_ms).contains(&self.default_voting_ms) {
            return Err(ValidationError::OutOfRange {
                field: "timing.default_voting_ms",
                reason: "outside min_voting_ms..=max_voting_ms",
            });
        }
        Ok(())
    }
}

/// A default voting configuration for one proposal type.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TypeDefault {
    /// The proposal type.
    pub kind: ProposalType,
    /// Its voting configuration.
    pub config: VotingConfig,
    /// Settings a proposal of this type may change in any direction. Any other setting may only
    /// be made stricter (see `kos_engine::check_voting`). Absent when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<VotingField>,
}

string_enum!(
    /// One setting of a [`VotingConfig`], as a charter names it in [`TypeDefault::overrides`].
    VotingField {
        /// The decision rule.
        Rule = "rule",
        /// The veto threshold.
        Veto = "veto",
        /// The quorum.
        Quorum = "quorum",
        /// Secret ballot.
        Secret = "secret",
        /// Sponsors needed.
        Sponsors = "sponsors",
        /// Reasoning required.
        Reasoning = "reasoning",
        /// Vote weighting.
        Weighting = "weighting",
        /// Early close.
        EarlyClose = "early_close",
    }
);

/// A role's weight under role weighting, in thousandths.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleWeight {
    /// The role.
    pub role: Role,
    /// Its weight in thousandths.
    pub weight: u64,
}

/// Coefficients (thousandths) of hybrid weighting:
/// `weight = (role·role_weight + stake·stake·1000 + trust·trust_weight) / 1000`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HybridWeights {
    /// Coefficient of the role weight.
    pub role: u32,
    /// Coefficient of the stake.
    pub stake: u32,
    /// Coefficient of the trust weight.
    pub trust: u32,
}

/// CHARTER: founds a federation. Its message id is the federation id.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Charter {
    /// Human-readable name.
    pub name: String,
    /// Distinguishes charters that are otherwise equal.
    pub nonce: u64,
    /// Governing bodies.
    pub bodies: Vec<Body>,
    /// Hybrid weighting coefficients.
    pub hybrid: HybridWeights,
    /// Time bounds.
    pub timing: Timing,
    /// Founding members.
    pub members: Vec<Member>,
    /// Default voting configuration per proposal type (types not listed use the built-in
    /// default).
    pub defaults: Vec<TypeDefault>,
    /// Role weights for role weighting (roles not listed weigh 0).
    pub role_weights: Vec<RoleWeight>,
    /// Longest delegation chain followed.
    pub max_delegation_depth: u8,
    /// Lowest protocol version members must speak.
    pub min_protocol_version: u16,
}

impl Charter {
    fn validate(&self) -> Result<(), ValidationError> {
        check_text("charter.name", &self.name, MAX_SHORT_CHARS, false)?;
        check_len("charter.members", &self.members, MAX_MEMBERS)?;
        if self.members.is_empty() {
            return Err(ValidationError::Empty { field: "charter.members" });
        }
        let keys: Vec<_> = self.members.iter().map(|m| m.key).collect();
        check_unique("charter.members", &keys)?;
        self.members.iter().try_for_each(Member::validate)?;
        check_len("charter.bodies", &self.bodies, BodyKind::ALL.len())?;
        let kinds: Vec<_> = self.bodies.iter().map(|b| b.kind).collect();
        check_unique("charter.bodies", &kinds)?;
        for b in &self.bodies {
            check_len("body.members", &b.members, MAX_MEMBERS)?;
            check_unique("body.members", &b.members)?;
        }
        self.timing.validate()?;
        check_len("charter.defaults", &self.defaults, ProposalType::ALL.len())?;
        let kinds: Vec<_> = self.defaults.iter().map(|d| d.kind).collect();
        check_unique("charter.defaults", &kinds)?;
        self.defaults.iter().try_for_each(|d| d.config.validate())?;
        for d in &self.defaults {
            check_len("default.overrides", &d.overrides, VotingField::ALL.len())?;
            check_unique("default.overrides", &d.overrides)?;
        }
        check_len("charter.role_weights", &self.role_weights, Role::ALL.len())?;
        let roles: Vec<_> = self.role_weights.iter().map(|r| r.role).collect();
        check_unique("charter.role_weights", &roles)
    }
}

/// The registry version a proposal is weighed against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryVersion {
    /// Hash of the registry at that epoch.
    pub hash: Digest,
    /// Registry epoch (0 = the charter's).
    pub epoch: u64,
}

/// A proposal's signed timeline. Voting opens when discussion ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeline {
    /// End of the reveal window (secret ballots only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reveal_end_ms: Option<u64>,
    /// End of voting.
    pub voting_end_ms: u64,
    /// End of discussion, start of voting.
    pub discussion_end_ms: u64,
    /// Delay between finality and execution.
    pub execution_delay_ms: u64,
}

impl Timeline {
    fn validate(&self) -> Result<(), ValidationError> {
        if self.voting_end_ms <= self.discussion_end_ms {
            return Err(ValidationError::OutOfRange {
                field: "timeline",
                reason: "voting must end after discussion ends",
            });
        }
        if let Some(r) = self.reveal_end_ms
            && r <= self.voting_end_ms
        {
            return Err(ValidationError::OutOfRange {
                field: "timeline.reveal_end_ms",
                reason: "reveal must end after voting ends",
            });
        }
        Ok(())
    }

    /// Length of the voting window.
    pub fn voting_ms(&self) -> u64 {
        self.voting_end_ms - self.discussion_end_ms
    }
}

/// What an approved proposal does when executed.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Action {
    /// Nothing machine-executable (the proposal's text is the decision).
    #[serde(rename = "none")]
    None,
    /// Set configuration `key` from `old` (absent: unset) to `new`.
    #[serde(rename = "configuration")]
    Configuration {
        /// Configuration key.
        key: String,
        /// New value.
        new: String,
        /// Expected current value; execution fails if it differs.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        old: Option<String>,
    },
    /// Set a member's trust level.
    #[serde(rename = "trust_adjustment")]
    TrustAdjustment {
        /// New level.
        level: TrustLevel,
        /// The member.
        member: PublicKey,
    },
    /// Admit a member.
    #[serde(rename = "add_member")]
    AddMember(Member),
    /// Remove a member.
    #[serde(rename = "remove_member")]
    RemoveMember(PublicKey),
    /// Replace the federation policy (a `.klp-policy` TOML document).
    #[serde(rename = "policy_update")]
    PolicyUpdate(String),
    /// Raise the minimum protocol version.
    #[serde(rename = "protocol_upgrade")]
    ProtocolUpgrade(u16),
    /// Quarantine a member (trust level QUARANTINE).
    #[serde(rename = "quarantine")]
    Quarantine(PublicKey),
    /// Roll back the execution of an earlier proposal.
    #[serde(rename = "rollback")]
    Rollback(ProposalId),
}

/// Longest policy document in a policy update, in characters.
pub const MAX_POLICY_CHARS: usize = 16_384;

impl Action {
    fn validate(&self) -> Result<(), ValidationError> {
        match self {
            Action::Configuration { key, new, old } => {
                check_text("action.key", key, MAX_SHORT_CHARS, false)?;
                check_text("action.new", new, MAX_SHORT_CHARS, true)?;
                if let Some(old) = old {
                    check_text("action.old", old, MAX_SHORT_CHARS, true)?;
                }
                Ok(())
            }
            Action::AddMember(m) => m.validate(),
            Action::PolicyUpdate(p) => check_text("action.policy", p, MAX_POLICY_CHARS, false),
            _ => Ok(()),
        }
    }
}

fn check_options(options: &[String]) -> Result<(), ValidationError> {
    check_len("options", options, MAX_OPTIONS)?;
    options.iter().try_for_each(|o| check_text("options", o, MAX_SHORT_CHARS, false))?;
    check_unique("options", options)
}

/// PROPOSAL: opens a proposal. Its message id is the proposal id; it is revision 0.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Proposal {
    /// Proposal type.
    pub kind: ProposalType,
    /// Scope.
    pub scope: Scope,
    /// Title, 1–200 characters.
    pub title: String,
    /// What executes if approved.
    pub action: Action,
    /// Voting configuration; absent: the charter's default for `kind`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voting: Option<VotingConfig>,
    /// Options for approval or ranked-choice voting (empty for binary questions).
    pub options: Vec<String>,
    /// The registry version the proposal is weighed against.
    pub registry: RegistryVersion,
    /// The signed timeline.
    pub timeline: Timeline,
    /// The federation.
    pub federation: FederationId,
    /// Description, 1–10 000 characters.
    pub description: String,
}

impl Proposal {
    fn validate(&self) -> Result<(), ValidationError> {
        check_text("title", &self.title, MAX_TITLE_CHARS, false)?;
        check_text("description", &self.description, MAX_DESCRIPTION_CHARS, false)?;
        self.action.validate()?;
        check_options(&self.options)?;
        if let Some(v) = &self.voting {
            v.validate()?;
            if v.rule.is_binary() != self.options.is_empty() {
                return Err(ValidationError::OutOfRange {
                    field: "options",
                    reason: "binary rules take no options; plurality and instant_runoff need them",
                });
            }
        }
        self.timeline.validate()
    }
}

/// REVISION: the proposer's revision `revision` (≥ 1) of a proposal, during discussion.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revision {
    /// New title.
    pub title: String,
    /// New action.
    pub action: Action,
    /// New options.
    pub options: Vec<String>,
    /// The proposal revised.
    pub proposal: ProposalId,
    /// Revision number, one more than the previous.
    pub revision: u32,
    /// The federation.
    pub federation: FederationId,
    /// New description.
    pub description: String,
}

impl Revision {
    fn validate(&self) -> Result<(), ValidationError> {
        check_text("title", &self.title, MAX_TITLE_CHARS, false)?;
        check_text("description", &self.description, MAX_DESCRIPTION_CHARS, false)?;
        self.action.validate()?;
        check_options(&self.options)?;
        if self.revision == 0 {
            return Err(ValidationError::OutOfRange {
                field: "revision",
                reason: "revision 0 is the proposal itself",
            });
        }
        Ok(())
    }
}

/// SPONSOR: the author sponsors a proposal.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sponsor {
    /// The proposal.
    pub proposal: ProposalId,
    /// The federation.
    pub federation: FederationId,
}

/// WITHDRAW: the proposer withdraws a proposal before voting.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Withdraw {
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The proposal.
    pub proposal: ProposalId,
    /// The federation.
    pub federation: FederationId,
}

/// COMMENT: a discussion comment, threaded by `parent`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Comment {
    /// Kind of comment.
    pub kind: CommentKind,
    /// Text, 1–10 000 characters.
    pub text: String,
    /// The comment replied to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<MessageId>,
    /// The proposal.
    pub proposal: ProposalId,
    /// The revision commented on.
    pub revision: u32,
    /// The federation.
    pub federation: FederationId,
}

/// A ballot.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Choice {
    /// Yes.
    #[serde(rename = "yes")]
    Yes,
    /// No.
    #[serde(rename = "no")]
    No,
    /// Abstain: counts toward quorum only.
    #[serde(rename = "abstain")]
    Abstain,
    /// Veto.
    #[serde(rename = "veto")]
    Veto,
    /// Approval voting: the indices of the approved options, ascending.
    #[serde(rename = "approve")]
    Approve(Vec<u16>),
    /// Ranked choice: option indices, most preferred first.
    #[serde(rename = "rank")]
    Rank(Vec<u16>),
}

impl Choice {
    fn validate(&self) -> Result<(), ValidationError> {
        match self {
            Choice::Approve(v) => {
                check_len("choice", v, MAX_OPTIONS)?;
                if v.windows(2).any(|w| w[0] >= w[1]) {
                    return Err(ValidationError::OutOfRange {
                        field: "choice",
                        reason: "approved options must be strictly ascending",
                    });
                }
                Ok(())
            }
            Choice::Rank(v) => {
                check_len("choice", v, MAX_OPTIONS)?;
                if v.is_empty() {
                    return Err(ValidationError::Empty { field: "choice" });
                }
                check_unique("choice", v)
            }
            _ => Ok(()),
        }
    }
}

fn check_reason(reason: &Option<String>) -> Result<(), ValidationError> {
    match reason {
        Some(r) => check_text("reason", r, MAX_REASON_CHARS, false),
        None => Ok(()),
    }
}

/// VOTE: a public ballot on one revision of a proposal.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vote {
    /// The ballot.
    pub choice: Choice,
    /// Reasoning, up to 2 000 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The proposal.
    pub proposal: ProposalId,
    /// The revision voted on.
    pub revision: u32,
    /// The federation.
    pub federation: FederationId,
}

/// VOTE_COMMIT: the commitment of a secret ballot; see [`crate::vote_commitment`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoteCommit {
    /// The proposal.
    pub proposal: ProposalId,
    /// The revision voted on.
    pub revision: u32,
    /// SHA-256 commitment to choice, salt, proposal, revision and voter.
    pub commitment: Digest,
    /// The federation.
    pub federation: FederationId,
}

/// VOTE_REVEAL: opens a VOTE_COMMIT during the reveal window.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoteReveal {
    /// The 32-byte salt of the commitment.
    #[serde(with = "crate::cbor::fixed_bytes")]
    pub salt: [u8; 32],
    /// The ballot.
    pub choice: Choice,
    /// Reasoning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The proposal.
    pub proposal: ProposalId,
    /// The revision voted on.
    pub revision: u32,
    /// The federation.
    pub federation: FederationId,
}

/// What a delegation covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum DelegationScope {
    /// Every proposal.
    #[serde(rename = "all")]
    All,
    /// Proposals of one type.
    #[serde(rename = "kind")]
    Kind(ProposalType),
    /// Proposals of one scope.
    #[serde(rename = "scope")]
    Scope(Scope),
}

/// DELEGATION: delegate the author's vote (or, without `delegate`, revoke a delegation).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delegation {
    /// What is delegated.
    pub scope: DelegationScope,
    /// To whom; absent revokes the delegation for `scope`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegate: Option<PublicKey>,
    /// The federation.
    pub federation: FederationId,
}

/// The phase of a TALLY_ATTESTATION in its round (`docs/governance.md` §6).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum AttestationPhase {
    /// A member's candidate result for the round: its lock (the result of the highest-round
    /// prepare quorum it has seen), else its own tally.
    Prepare,
    /// The member saw more than 2/3 of the weight prepare this result in this round. More than
    /// 2/3 of the weight committing one result in one round is a certificate. The encoding
    /// omits it (an attestation without `phase` is a commit).
    #[default]
    Commit,
}

impl AttestationPhase {
    /// Whether this is [`AttestationPhase::Commit`] (the encoding omits it).
    pub fn is_commit(&self) -> bool {
        *self == AttestationPhase::Commit
    }
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

/// TALLY_ATTESTATION: a member node's signed tally of a closed proposal, as a prepare or a
/// commit of one attestation round.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TallyAttestation {
    /// Prepare or commit (omitted: commit).
    #[serde(default, skip_serializing_if = "AttestationPhase::is_commit")]
    pub phase: AttestationPhase,
    /// The attestation round, from 0 (omitted when 0).
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub round: u32,
    /// Counted milli-weight per choice: `[yes, no, abstain, veto]` for binary rules, per option
    /// otherwise (first-round counts for ranked choice).
    pub totals: Vec<u64>,
    /// Winning option (approval and ranked choice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub winner: Option<u16>,
    /// Number of votes counted.
    pub counted: u32,
    /// The result.
    pub outcome: Outcome,
    /// Total eligible milli-weight.
    pub eligible: u64,
    /// The proposal.
    pub proposal: ProposalId,
    /// The revision tallied.
    pub revision: u32,
    /// The federation.
    pub federation: FederationId,
    /// Merkle root over the ids of the counted votes.
    pub votes_root: Digest,
    /// Participating milli-weight.
    pub participation: u64,
}

/// KEY_ROTATION: signed by the old key, names the new key; `proof` is the new key's signature
/// over the rotation statement (see [`crate::rotation_statement`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRotation {
    /// The new key's signature over the rotation statement.
    #[serde(with = "crate::cbor::fixed_bytes")]
    pub proof: [u8; 64],
    /// The new key.
    pub new_key: PublicKey,
}

/// REVOCATION: revokes `key` (the author's own key or one it rotated away from); messages by
/// `key` created after this one are rejected.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revocation {
    /// The revoked key.
    pub key: PublicKey,
    /// Why.
    pub reason: String,
}

/// TASK_REQUEST: assign or delegate work to another agent.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskRequest {
    /// Inputs.
    pub inputs: Vec<String>,
    /// Task identifier chosen by the requester.
    pub task_id: String,
    /// Minimum trust the executing node must have.
    pub min_trust: TrustLevel,
    /// Deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
}

/// TASK_RESULT: the result of a TASK_REQUEST.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskResult {
    /// Whether the task succeeded.
    pub ok: bool,
    /// Error text when it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Outputs.
    pub outputs: Vec<String>,
    /// The id of the SEALED message that carried the TASK_REQUEST answered, binding the result
    /// to that request (absent for results sent without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<MessageId>,
    /// The task.
    pub task_id: String,
}

/// AGENT_MIGRATION: moves a signed agent snapshot to another instance.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentMigration {
    /// The agent's name.
    pub name: String,
    /// The agent's identity.
    pub agent: PublicKey,
    /// Opaque serialized snapshot (config, behavioural fingerprint).
    pub snapshot: ByteBuf,
    /// Root of the agent's audit trail.
    pub audit_root: Digest,
}

/// REPUTATION_DELTA: an advisory change of reputation.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReputationDelta {
    /// Change in thousandths.
    pub delta: i32,
    /// Why.
    pub reason: String,
    /// Whose reputation.
    pub subject: PublicKey,
}

/// BROADCAST_ANNOUNCE: system status or an event.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BroadcastAnnounce {
    /// Text.
    pub text: String,
    /// Topic.
    pub topic: String,
}

/// VECTOR_SYNC: one chunk of vector data (little-endian `f32`, `dims` per vector).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VectorSync {
    /// The vectors.
    pub data: ByteBuf,
    /// Dimensions per vector.
    pub dims: u16,
    /// Index of this chunk.
    pub chunk: u32,
    /// Number of chunks.
    pub chunks: u32,
    /// The transfer: SHA-256 of the whole data (every chunk's `data`, in order). Present on
    /// chunked transfers between nodes (`docs/protocol.md` §8.5); omitted otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<Digest>,
    /// Collection name.
    pub collection: String,
}

/// Longest lifetime of a directory record: a day.
pub const MAX_RECORD_LIFETIME_MS: u64 = 24 * 3600 * 1000;
/// Most addresses in a directory record.
pub const MAX_RECORD_ADDRESSES: usize = 16;
/// Longest address in a directory record, in bytes.
pub const MAX_RECORD_ADDRESS_LEN: usize = 256;

/// DIRECTORY_RECORD: how to reach the author — published in the Kademlia DHT under its KLP-ID
/// (and its name, if any), signed by the identity it describes, valid until `expires_ms`.
/// The Ed25519 key, the KLP-ID and the peer id are the envelope author's.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryRecord {
    /// A human name (a directory name: lower-case DNS-style labels, not a KLP-ID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Message type codes the identity accepts as direct messages (inside SEALED).
    pub types: Vec<u16>,
    /// The X25519 public key messages are sealed to.
    #[serde(with = "crate::cbor::fixed_bytes")]
    pub x25519: [u8; 32],
    /// libp2p multiaddrs (text form) the identity listens on.
    pub addresses: Vec<String>,
    /// Expiry (ms since the epoch): after the envelope's `created_ms`, at most a day later.
    pub expires_ms: u64,
}

/// SEALED: a direct message sealed to its target's X25519 key (see [`crate::seal`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sealed {
    /// AES-256-GCM ciphertext and tag.
    pub ct: ByteBuf,
    /// The HPKE encapsulated (ephemeral X25519 public) key.
    #[serde(with = "crate::cbor::fixed_bytes")]
    pub enc: [u8; 32],
}

fn check_strings(
    field: &'static str,
    v: &[String],
    max_chars: usize,
) -> Result<(), ValidationError> {
    check_len(field, v, MAX_LIST)?;
    v.iter().try_for_each(|s| check_text(field, s, max_chars, true))
}

/// Body validation rules, applied after decoding.
pub(crate) trait Validate {
    fn validate(&self) -> Result<(), ValidationError>;
}

macro_rules! validate_with {
    ($($ty:ty => |$v:ident| $body:expr;)+) => {
        $(impl Validate for $ty {
            fn validate(&self) -> Result<(), ValidationError> {
                let $v = self;
                $body
            }
        })+
    };
}

validate_with! {
    Charter => |c| c.validate();
    Proposal => |p| p.validate();
    Revision => |r| r.validate();
    Sponsor => |_s| Ok(());
    Withdraw => |w| check_reason(&w.reason);
    Comment => |c| check_text("comment.text", &c.text, MAX_COMMENT_CHARS, false);
    Vote => |v| { v.choice.validate()?; check_reason(&v.reason) };
    VoteCommit => |_v| Ok(());
    VoteReveal => |v| { v.choice.validate()?; check_reason(&v.reason) };
    Delegation => |_d| Ok(());
    TallyAttestation => |t| {
        check_len("totals", &t.totals, MAX_OPTIONS)?;
        if t.participation > t.eligible {
            return Err(ValidationError::OutOfRange {
                field: "participation",
                reason: "exceeds eligible weight",
            });
        }
        Ok(())
    };
    KeyRotation => |_k| Ok(());
    Revocation => |r| check_text("reason", &r.reason, MAX_REASON_CHARS, true);
    TaskRequest => |t| {
        check_text("task_id", &t.task_id, MAX_SHORT_CHARS, false)?;
        check_strings("inputs", &t.inputs, MAX_DESCRIPTION_CHARS)
    };
    TaskResult => |t| {
        check_text("task_id", &t.task_id, MAX_SHORT_CHARS, false)?;
        check_strings("outputs", &t.outputs, MAX_DESCRIPTION_CHARS)?;
        match &t.error {
            Some(e) => check_text("error", e, MAX_REASON_CHARS, false),
            None => Ok(()),
        }
    };
    AgentMigration => |a| check_text("name", &a.name, MAX_SHORT_CHARS, false);
    ReputationDelta => |r| check_text("reason", &r.reason, MAX_REASON_CHARS, true);
    BroadcastAnnounce => |b| {
        check_text("topic", &b.topic, MAX_SHORT_CHARS, false)?;
        check_text("text", &b.text, MAX_DESCRIPTION_CHARS, false)
    };
    VectorSync => |v| {
        check_text("collection", &v.collection, MAX_SHORT_CHARS, false)?;
        if v.dims == 0 {
            return Err(ValidationError::OutOfRange { field: "dims", reason: "must be at least 1" });
        }
        if !v.data.len().is_multiple_of(4 * usize::from(v.dims)) {
            return Err(ValidationError::OutOfRange {
                field: "data",
                reason: "length is not a whole number of vectors",
            });
        }
        if v.chunk >= v.chunks {
            return Err(ValidationError::OutOfRange { field: "chunk", reason: "must be below chunks" });
        }
        Ok(())
    };
    Sealed => |_s| Ok(());
    DirectoryRecord => |d| {
        if let Some(name) = &d.name {
            match name.parse::<crate::address::Host>() {
                Ok(crate::address::Host::Name(n)) if n == *name => {}
                _ => {
                    return Err(ValidationError::OutOfRange {
                        field: "name",
                        reason: "not a lower-case directory name (and not a KLP-ID)",
                    });
                }
            }
        }
        check_len("types", &d.types, 64)?;
        check_unique("types", &d.types)?;
        check_len("addresses", &d.addresses, MAX_RECORD_ADDRESSES)?;
        d.addresses.iter().try_for_each(|a| check_text("addresses", a, MAX_RECORD_ADDRESS_LEN, false))
    };
}
