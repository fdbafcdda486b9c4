//! proptest strategies for every KLP payload, within the validation limits.
#![allow(dead_code)]

use kos_protocol::{MessageId, Payload, PublicKey, SecretKey, payload::*};
use proptest::prelude::*;
use serde_bytes::ByteBuf;

pub fn key() -> impl Strategy<Value = PublicKey> {
    any::<[u8; 32]>().prop_map(|s| SecretKey::from_seed(&s).public())
}
pub fn id() -> impl Strategy<Value = MessageId> {
    any::<[u8; 32]>().prop_map(MessageId)
}
pub fn digest() -> impl Strategy<Value = Digest> {
    any::<[u8; 32]>().prop_map(Digest)
}
/// Text of 1..=max characters, including non-ASCII.
pub fn text(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[a-zA-Z0-9 éß→漢]{{1,{}}}", max.min(40)))
        .expect("regex")
}
fn pick<T: Copy + std::fmt::Debug + 'static>(all: &'static [T]) -> impl Strategy<Value = T> {
    proptest::sample::select(all)
}
fn ratio() -> impl Strategy<Value = Ratio> {
    (1u32..1000).prop_flat_map(|den| (0..=den, Just(den))).prop_map(|(n, d)| Ratio(n, d))
}
fn rule() -> impl Strategy<Value = DecisionRule> {
    prop_oneof![
        Just(DecisionRule::SimpleMajority),
        ratio().prop_map(DecisionRule::Supermajority),
        Just(DecisionRule::Consensus),
        Just(DecisionRule::Plurality),
        Just(DecisionRule::InstantRunoff),
    ]
}
pub fn voting() -> impl Strategy<Value = VotingConfig> {
    (
        rule(),
        ratio(),
        ratio(),
        any::<bool>(),
        any::<u16>(),
        any::<bool>(),
        pick(Weighting::ALL),
        any::<bool>(),
    )
        .prop_map(|(rule, veto, quorum, secret, sponsors, reasoning, weighting, early)| {
            VotingConfig {
                rule,
                veto,
                quorum,
                secret,
                sponsors,
                reasoning,
                weighting,
                early_close: early && !secret,
            }
        })
}
fn roles() -> impl Strategy<Value = Vec<Role>> {
    proptest::sample::subsequence(Role::ALL, 0..4)
}
pub fn member() -> impl Strategy<Value = Member> {
    (key(), roles(), any::<u64>(), pick(TrustLevel::ALL))
        .prop_map(|(key, roles, stake, trust)| Member { key, roles, stake, trust })
}
fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        Just(Action::None),
        (text(50), text(50), proptest::option::of(text(50)))
            .prop_map(|(key, new, old)| Action::Configuration { key, new, old }),
        (pick(TrustLevel::ALL), key())
            .prop_map(|(level, member)| Action::TrustAdjustment { level, member }),
        member().prop_map(Action::AddMember),
        key().prop_map(Action::RemoveMember),
        text(100).prop_map(Action::PolicyUpdate),
        any::<u16>().prop_map(Action::ProtocolUpgrade),
        key().prop_map(Action::Quarantine),
        id().prop_map(Action::Rollback),
    ]
}
fn options() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::btree_set(text(20), 0..5).prop_map(|s| s.into_iter().collect())
}
fn timeline() -> impl Strategy<Value = Timeline> {
    (0u64..1 << 50, 1u64..1 << 40, proptest::option::of(1u64..1 << 40), any::<u32>()).prop_map(
        |(d, v, r, e)| Timeline {
            discussion_end_ms: d,
            voting_end_ms: d + v,
            reveal_end_ms: r.map(|r| d + v + r),
            execution_delay_ms: u64::from(e),
        },
    )
}
fn choice() -> impl Strategy<Value = Choice> {
    prop_oneof![
        Just(Choice::Yes),
        Just(Choice::No),
        Just(Choice::Abstain),
        Just(Choice::Veto),
        proptest::collection::btree_set(any::<u16>(), 0..6)
            .prop_map(|s| Choice::Approve(s.into_iter().collect())),
        proptest::collection::btree_set(any::<u16>(), 1..6)
            .prop_map(|s| Choice::Rank(s.into_iter().collect())),
    ]
}
fn charter() -> impl Strategy<Value = Charter> {
    (
        text(50),
        any::<u64>(),
        proptest::collection::vec(member(), 1..4),
        proptest::sample::subsequence(BodyKind::ALL, 0..3),
        proptest::collection::vec(key(), 0..3),
        proptest::sample::subsequence(ProposalType::ALL, 0..3),
        voting(),
        (any::<u8>(), any::<u16>(), any::<[u32; 3]>()),
    )
        .prop_filter("unique members", |(_, _, m, ..)| {
            let mut k: Vec<_> = m.iter().map(|m| m.key).collect();
            k.sort();
            k.dedup();
            k.len() == m.len()
        })
        .prop_map(
            |(name, nonce, members, bodies, body_members, kinds, config, (depth, minv, h))| {
                let mut timing = Timing::standard();
                timing.grace_ms = u64::from(h[0]);
                Charter {
                    name,
                    nonce,
                    bodies: bodies
                        .into_iter()
                        .map(|kind| Body { kind, members: body_members.clone() })
                        .collect(),
                    hybrid: HybridWeights { role: h[0], stake: h[1], trust: h[2] },
                    timing,
                    members,
                    defaults: kinds
                        .into_iter()
                        .map(|kind| TypeDefault {
                            kind,
                            config: config.clone(),
                            overrides: Vec::new(),
                        })
                        .collect(),
                    role_weights: vec![RoleWeight {
                        role: Role::Validator,
                        weight: u64::from(h[1]),
                    }],
                    max_delegation_depth: depth,
                    min_protocol_version: minv,
                }
            },
        )
}
fn proposal() -> impl Strategy<Value = Proposal> {
    (
        pick(ProposalType::ALL),
        pick(Scope::ALL),
        text(200),
        action(),
        proptest::option::of(voting()),
        options(),
        (digest(), any::<u64>()),
        timeline(),
        id(),
        text(10_000),
    )
        .prop_map(
            |(kind, scope, title, action, voting, options, (h, e), timeline, fed, desc)| {
                // Keep the rule consistent with the options, as validation requires.
                let voting = voting.map(|mut v| {
                    if options.is_empty() && !v.rule.is_binary() {
                        v.rule = DecisionRule::SimpleMajority;
                    } else if !options.is_empty() && v.rule.is_binary() {
                        v.rule = DecisionRule::Plurality;
                    }
                    v
                });
                Proposal {
                    kind,
                    scope,
                    title,
                    action,
                    voting,
                    options,
                    registry: RegistryVersion { hash: h, epoch: e },
                    timeline,
                    federation: fed,
                    description: desc,
                }
            },
        )
}

/// Any valid payload of any message type (SEALED bodies are built by `seal`, not here).
pub fn payload() -> impl Strategy<Value = Payload> {
    let reason = || proptest::option::of(text(2000));
    prop_oneof![
        charter().prop_map(Payload::Charter),
        proposal().prop_map(Payload::Proposal),
        (text(200), action(), options(), id(), 1u32.., id(), text(10_000)).prop_map(
            |(title, action, options, proposal, revision, federation, description)| {
                Payload::Revision(Revision {
                    title,
                    action,
                    options,
                    proposal,
                    revision,
                    federation,
                    description,
                })
            }
        ),
        (id(), id())
            .prop_map(|(proposal, federation)| Payload::Sponsor(Sponsor { proposal, federation })),
        (reason(), id(), id()).prop_map(|(reason, proposal, federation)| {
            Payload::Withdraw(Withdraw { reason, proposal, federation })
        }),
        (
            pick(CommentKind::ALL),
            text(10_000),
            proptest::option::of(id()),
            id(),
            any::<u32>(),
            id()
        )
            .prop_map(|(kind, text, parent, proposal, revision, federation)| {
                Payload::Comment(Comment { kind, text, parent, proposal, revision, federation })
            }),
        (choice(), reason(), id(), any::<u32>(), id()).prop_map(
            |(choice, reason, proposal, revision, federation)| {
                Payload::Vote(Vote { choice, reason, proposal, revision, federation })
            }
        ),
        (id(), any::<u32>(), digest(), id()).prop_map(
            |(proposal, revision, commitment, federation)| {
                Payload::VoteCommit(VoteCommit { proposal, revision, commitment, federation })
            }
        ),
        (any::<[u8; 32]>(), choice(), reason(), id(), any::<u32>(), id()).prop_map(
            |(salt, choice, reason, proposal, revision, federation)| {
                Payload::VoteReveal(VoteReveal {
                    salt,
                    choice,
                    reason,
                    proposal,
                    revision,
                    federation,
                })
            }
        ),
        (
            prop_oneof![
                Just(DelegationScope::All),
                pick(ProposalType::ALL).prop_map(DelegationScope::Kind),
                pick(Scope::ALL).prop_map(DelegationScope::Scope),
            ],
            proptest::option::of(key()),
            id()
        )
            .prop_map(|(scope, delegate, federation)| {
                Payload::Delegation(Delegation { scope, delegate, federation })
            }),
        (
            proptest::collection::vec(any::<u64>(), 0..6),
            proptest::option::of(any::<u16>()),
            any::<u32>(),
            pick(Outcome::ALL),
            (any::<u64>(), any::<u64>()),
            (id(), any::<u32>(), id(), digest())
        )
            .prop_map(
                |(
                    totals,
                    winner,
                    counted,
                    outcome,
                    (a, b),
                    (proposal, revision, federation, root),
                )| {
                    Payload::TallyAttestation(TallyAttestation {
                        phase: if counted % 2 == 0 {
                            AttestationPhase::Commit
                        } else {
                            AttestationPhase::Prepare
                        },
                        round: counted % 3,
                        totals,
                        winner,
                        counted,
                        outcome,
                        eligible: a.max(b),
                        proposal,
                        revision,
                        federation,
                        votes_root: root,
                        participation: a.min(b),
                    })
                }
            ),
        (any::<[u8; 32]>()).prop_map(|seed| {
            let new = SecretKey::from_seed(&seed);
            Payload::KeyRotation(KeyRotation { proof: new.sign(b"x"), new_key: new.public() })
        }),
        (key(), text(100))
            .prop_map(|(key, reason)| Payload::Revocation(Revocation { key, reason })),
        (
            proptest::collection::vec(text(100), 0..4),
            text(100),
            pick(TrustLevel::ALL),
            proptest::option::of(any::<u64>())
        )
            .prop_map(|(inputs, task_id, min_trust, deadline_ms)| {
                Payload::TaskRequest(TaskRequest { inputs, task_id, min_trust, deadline_ms })
            }),
        (
            any::<bool>(),
            proptest::option::of(text(100)),
            proptest::collection::vec(text(100), 0..4),
            proptest::option::of(any::<[u8; 32]>().prop_map(MessageId)),
            text(100)
        )
            .prop_map(|(ok, error, outputs, request, task_id)| {
                Payload::TaskResult(TaskResult { ok, error, outputs, request, task_id })
            }),
        (
            proptest::option::of("[a-z][a-z0-9-]{0,20}[a-z0-9](\\.[a-z]{1,8}){0,2}"),
            proptest::collection::btree_set(any::<u16>(), 0..8),
            any::<[u8; 32]>(),
            proptest::collection::vec("/ip4/127\\.0\\.0\\.1/tcp/[0-9]{1,5}", 0..4),
            any::<u64>(),
        )
            .prop_map(|(name, types, x25519, addresses, expires_ms)| {
                Payload::DirectoryRecord(DirectoryRecord {
                    name,
                    types: types.into_iter().collect(),
                    x25519,
                    addresses,
                    expires_ms,
                })
            }),
        (text(50), key(), proptest::collection::vec(any::<u8>(), 0..200), digest()).prop_map(
            |(name, agent, snapshot, audit_root)| {
                Payload::AgentMigration(AgentMigration {
                    name,
                    agent,
                    snapshot: ByteBuf::from(snapshot),
                    audit_root,
                })
            }
        ),
        (any::<i32>(), text(100), key()).prop_map(|(delta, reason, subject)| {
            Payload::ReputationDelta(ReputationDelta { delta, reason, subject })
        }),
        (text(200), text(50)).prop_map(|(text, topic)| Payload::BroadcastAnnounce(
            BroadcastAnnounce { text, topic }
        )),
        (1u16..8, 0usize..6, text(20), (1u32..10))
            .prop_flat_map(|(dims, n, collection, chunks)| {
                (
                    proptest::collection::vec(any::<u8>(), 4 * usize::from(dims) * n),
                    Just(dims),
                    0..chunks,
                    Just(chunks),
                    Just(collection),
                )
            })
            .prop_map(|(data, dims, chunk, chunks, collection)| {
                Payload::VectorSync(VectorSync {
                    data: ByteBuf::from(data),
                    dims,
                    chunk,
                    chunks,
                    transfer: None,
                    collection,
                })
            }),
    ]
}
