//! JSON views of governance state for the control API: a proposal in full (revisions with their
//! changes, the threaded discussion, sponsors, timeline, tally and finality progress) and the
//! delegation graph. Functions of the engine and the store; they change nothing.

use std::collections::{BTreeMap, BTreeSet};

use kos_engine::{Engine, ProposalRecord, Status, Tally};
use kos_protocol::{Message, MessageId, Payload, PublicKey, payload::*};
use kos_storage::Store;
use serde_json::{Value, json};

/// Most comments a proposal view carries (the earliest threads first); the total is given too.
pub const MAX_COMMENTS_SHOWN: usize = 500;

/// A status's wire name (`voting`, `approved`, …).
pub fn status_name(s: Status) -> String {
    serde_json::to_value(s).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

/// A decision rule's command-line name (`simple_majority`, `supermajority:2/3`, …).
pub fn rule_name(r: DecisionRule) -> String {
    match r {
        DecisionRule::Supermajority(Ratio(n, d)) => format!("supermajority:{n}/{d}"),
        other => serde_json::to_value(other)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
    }
}

fn ratio(r: Ratio) -> String {
    format!("{}/{}", r.0, r.1)
}

/// A voting configuration, with names as the command line takes them.
pub fn voting_json(c: &VotingConfig) -> Value {
    json!({
        "rule": rule_name(c.rule),
        "weighting": c.weighting.as_str(),
        "quorum": ratio(c.quorum),
        "veto": ratio(c.veto),
        "secret": c.secret,
        "sponsors": c.sponsors,
        "reasoning": c.reasoning,
        "early_close": c.early_close,
    })
}

/// An action as JSON, members as did:key.
pub fn action_json(a: &Action) -> Value {
    match a {
        Action::None => json!({ "type": "none" }),
        Action::Configuration { key, new, old } => {
            json!({ "type": "configuration", "key": key, "new": new, "old": old })
        }
        Action::TrustAdjustment { level, member } => {
            json!({ "type": "trust_adjustment", "member": member.to_did(), "level": level.as_str() })
        }
        Action::AddMember(m) => json!({
            "type": "add_member",
            "member": m.key.to_did(),
            "trust": m.trust.as_str(),
            "roles": m.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
            "stake": m.stake,
        }),
        Action::RemoveMember(k) => json!({ "type": "remove_member", "member": k.to_did() }),
        Action::PolicyUpdate(p) => json!({ "type": "policy_update", "policy": p }),
        Action::ProtocolUpgrade(v) => json!({ "type": "protocol_upgrade", "version": v }),
        Action::Quarantine(k) => json!({ "type": "quarantine", "member": k.to_did() }),
        Action::Rollback(p) => json!({ "type": "rollback", "proposal": p.to_string() }),
    }
}

/// An action in one line, for revision diffs.
pub fn action_text(a: &Action) -> String {
    match a {
        Action::None => "none".into(),
        Action::Configuration { key, new, old: Some(old) } => {
            format!("configuration {key} = {new} (was {old})")
        }
        Action::Configuration { key, new, old: None } => format!("configuration {key} = {new}"),
        Action::TrustAdjustment { level, member } => format!("trust {member} → {level}"),
        Action::AddMember(m) => format!("add member {} ({})", m.key, m.trust),
        Action::RemoveMember(k) => format!("remove member {k}"),
        Action::PolicyUpdate(p) => format!("policy update ({} characters)", p.chars().count()),
        Action::ProtocolUpgrade(v) => format!("protocol upgrade to version {v}"),
        Action::Quarantine(k) => format!("quarantine {k}"),
        Action::Rollback(p) => format!("roll back {p}"),
    }
}

/// What comes next for a proposal in `status`, and when (if the clock decides it).
fn next_step(r: &ProposalRecord<'_>, status: Option<Status>, exec_at: Option<u64>) -> Value {
    let t = &r.body.timeline;
    let (event, at) = match status {
        Some(Status::SeekingSponsors) => (
            format!(
                "needs {} more sponsor(s) before discussion ends, else it expires",
                usize::from(r.config.sponsors).saturating_sub(r.sponsors.len())
            ),
            Some(t.discussion_end_ms),
        ),
        Some(Status::Discussion) => ("voting opens".to_owned(), Some(t.discussion_end_ms)),
        Some(Status::Voting) => match t.reveal_end_ms {
            Some(_) => ("voting closes, the reveal window opens".to_owned(), Some(t.voting_end_ms)),
            None => ("voting closes".to_owned(), Some(t.voting_end_ms)),
        },
        Some(Status::Reveal) => ("the reveal window closes".to_owned(), t.reveal_end_ms),
        Some(Status::Closed) => {
            ("final once members holding 2/3 of the weight attest".to_owned(), None)
        }
        Some(Status::Approved) => match exec_at {
            Some(at) => ("executes".to_owned(), Some(at)),
            None => ("nothing to execute".to_owned(), None),
        },
        _ => ("nothing: the proposal is settled".to_owned(), None),
    };
    json!({ "event": event, "at_ms": at })
}

/// The changes from one revision to the next: `[{field, from, to}]`.
fn changes(prev: &kos_engine::RevisionView<'_>, next: &kos_engine::RevisionView<'_>) -> Value {
    let mut out = Vec::new();
    if prev.title != next.title {
        out.push(json!({ "field": "title", "from": prev.title, "to": next.title }));
    }
    if prev.description != next.description {
        out.push(
            json!({ "field": "description", "from": prev.description, "to": next.description }),
        );
    }
    if prev.action != next.action {
        out.push(json!({
            "field": "action",
            "from": action_text(prev.action),
            "to": action_text(next.action),
        }));
    }
    if prev.options != next.options {
        out.push(json!({ "field": "options", "from": prev.options, "to": next.options }));
    }
    Value::Array(out)
}

/// A stored message (`None` if the store no longer has it: the view shows what it can).
fn stored(store: &Store, id: &MessageId) -> Option<Message> {
    store.get(id).ok().flatten()
}

/// The discussion as threads: each comment followed by its replies (depth-first, each level by
/// signed time), with its depth; a reply whose parent is unknown starts a thread of its own.
fn thread(store: &Store, r: &ProposalRecord<'_>) -> (Vec<Value>, usize) {
    let total = r.comments.len();
    let known: BTreeSet<MessageId> = r.comments.iter().map(|c| c.id).collect();
    let mut info = BTreeMap::new();
    for c in &r.comments {
        let msg = stored(store, &c.id);
        let created = msg.as_ref().map_or(0, |m| m.header().created_ms);
        let text = match msg.as_ref().map(Message::payload) {
            Some(Payload::Comment(body)) => Some(body.text.clone()),
            _ => None,
        };
        info.insert(c.id, (created, text, c));
    }
    let mut children: BTreeMap<Option<MessageId>, Vec<(u64, MessageId)>> = BTreeMap::new();
    for (id, (created, _, c)) in &info {
        let parent = c.parent.filter(|p| known.contains(p) && p != id);
        children.entry(parent).or_default().push((*created, *id));
    }
    for list in children.values_mut() {
        list.sort();
    }
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    // Depth-first from the roots; `seen` guards against cycles of parents.
    let mut stack: Vec<(MessageId, usize)> =
        children.get(&None).into_iter().flatten().rev().map(|(_, id)| (*id, 0)).collect();
    while let Some((id, depth)) = stack.pop() {
        if out.len() >= MAX_COMMENTS_SHOWN || !seen.insert(id) {
            continue;
        }
        if let Some((created, text, c)) = info.get(&id) {
            out.push(json!({
                "id": id.to_string(),
                "author": c.author.to_did(),
                "kind": c.kind.as_str(),
                "parent": c.parent.map(|p| p.to_string()),
                "revision": c.revision,
                "created_ms": created,
                "depth": depth,
                "text": text,
            }));
        }
        for (_, child) in children.get(&Some(id)).into_iter().flatten().rev() {
            stack.push((*child, depth + 1));
        }
    }
    (out, total)
}

/// A tally as JSON.
pub fn tally_json(t: &Tally) -> Value {
    json!({
        "revision": t.revision,
        "totals": t.count.totals,
        "participation": t.count.participation,
        "eligible": t.count.eligible,
        "outcome": t.count.outcome.as_str(),
        "winner": t.count.winner,
        "rounds": t.count.rounds,
        "counted": t.counted.len(),
        "votes_root": t.votes_root.to_string(),
    })
}

/// The short form of a proposal, for lists.
pub fn proposal_summary(engine: &Engine, id: &MessageId, now: u64) -> Option<Value> {
    let r = engine.record(id)?;
    let current = r.revisions.iter().find(|v| v.revision == r.current_revision)?;
    Some(json!({
        "id": id.to_string(),
        "kind": r.body.kind.as_str(),
        "scope": r.body.scope.as_str(),
        "title": current.title,
        "description": current.description,
        "author": r.author.to_did(),
        "status": engine.status(id, now).map(status_name),
        "revision": r.current_revision,
        "rule": rule_name(r.config.rule),
        "created_ms": r.created_ms,
        "discussion_end_ms": r.body.timeline.discussion_end_ms,
        "voting_end_ms": r.body.timeline.voting_end_ms,
        "reveal_end_ms": r.body.timeline.reveal_end_ms,
    }))
}

/// A proposal in full: the summary plus the action and options in force, the voting
/// configuration, sponsors, every revision with what it changed, the threaded discussion, the
/// timeline with what comes next, the running tally, finality progress and the execution.
pub fn proposal_detail(engine: &Engine, store: &Store, id: &MessageId, now: u64) -> Option<Value> {
    let r = engine.record(id)?;
    let mut v = proposal_summary(engine, id, now)?;
    let status = engine.status(id, now);
    let current = r.revisions.iter().find(|x| x.revision == r.current_revision)?;
    let revisions: Vec<Value> = r
        .revisions
        .iter()
        .enumerate()
        .map(|(i, rev)| {
            let created = stored(store, &rev.id).map(|m| m.header().created_ms);
            json!({
                "revision": rev.revision,
                "id": rev.id.to_string(),
                "created_ms": created,
                "title": rev.title,
                "action": action_json(rev.action),
                "options": rev.options,
                "in_force": rev.revision == r.current_revision,
                "changes": match i.checked_sub(1).and_then(|p| r.revisions.get(p)) {
                    Some(prev) => changes(prev, rev),
                    None => json!([]),
                },
            })
        })
        .collect();
    let (discussion, comments_total) = thread(store, &r);
    let execution = engine.execution(id);
    let tally = engine.tally(id, now);
    let fin = engine.finality(id);
    let quorum_weight = |eligible: u64| {
        // The participation the quorum needs, rounded up.
        let (n, d) = (u128::from(r.config.quorum.0), u128::from(r.config.quorum.1.max(1)));
        u64::try_from((u128::from(eligible) * n).div_ceil(d)).unwrap_or(u64::MAX)
    };
    let extra = json!({
        "action": action_json(current.action),
        "options": current.options,
        "voting": voting_json(r.config),
        "sponsors": r.sponsors.iter().map(|(k, m)| json!({
            "member": k.to_did(), "id": m.to_string(),
        })).collect::<Vec<_>>(),
        "sponsors_needed": r.config.sponsors,
        "secret_ballot": r.config.secret.then(|| json!({
            "committed": r.committed,
            "revealed": r.revealed,
        })),
        "withdrawn": r.withdrawn.map(|w| w.to_string()),
        "revisions": revisions,
        "discussion": discussion,
        "comments_total": comments_total,
        "timeline": {
            "now_ms": now,
            "created_ms": r.created_ms,
            "discussion_end_ms": r.body.timeline.discussion_end_ms,
            "voting_end_ms": r.body.timeline.voting_end_ms,
            "reveal_end_ms": r.body.timeline.reveal_end_ms,
            "execution_delay_ms": r.body.timeline.execution_delay_ms,
            "next": next_step(&r, status, execution.map(|e| e.at_ms)),
        },
        "tally": tally.as_ref().map(|t| {
            let mut j = tally_json(t);
            j["quorum_weight"] = json!(quorum_weight(t.count.eligible));
            j
        }),
        "finality": {
            "eligible": r.eligible,
            // More than 2/3 (governance.md §6).
            "needed": u64::try_from(u128::from(r.eligible) * 2 / 3 + 1).unwrap_or(u64::MAX),
            "attested": r.leading_attestation.map_or(0, |(_, w)| w),
            "final": fin.is_some(),
            "final_at_ms": fin.map(|f| f.final_at_ms),
        },
        "execution": execution.map(|e| json!({
            "at_ms": e.at_ms,
            "epoch": e.epoch,
            "result": match &e.result { Ok(()) => "ok".to_owned(), Err(s) => s.clone() },
            "due": e.at_ms <= now,
        })),
    });
    if let (Value::Object(base), Value::Object(more)) = (&mut v, extra) {
        base.extend(more);
    }
    Some(v)
}

fn scope_name(s: &DelegationScope) -> String {
    match s {
        DelegationScope::All => "all".into(),
        DelegationScope::Kind(k) => format!("kind:{k}"),
        DelegationScope::Scope(s) => format!("scope:{s}"),
    }
}

/// The delegations around `member`: whom it delegates to (per scope), and who delegates to it,
/// directly or through a chain, for every scope some delegation names.
pub fn delegations_json(engine: &Engine, member: &PublicKey) -> Value {
    let all = engine.delegations();
    let outgoing: Vec<Value> = all
        .iter()
        .filter(|e| e.delegator == *member)
        .map(|e| {
            json!({
                "scope": scope_name(&e.scope),
                "delegate": e.delegate.to_did(),
                "id": e.id.to_string(),
                "created_ms": e.created_ms,
            })
        })
        .collect();
    let mut scopes: BTreeSet<DelegationScope> = all.iter().map(|e| e.scope).collect();
    scopes.insert(DelegationScope::All);
    let incoming: Vec<Value> = scopes
        .iter()
        .filter_map(|scope| {
            let list = engine.delegators_of(member, *scope);
            (!list.is_empty()).then(|| {
                json!({
                    "scope": scope_name(scope),
                    "delegators": list.iter().map(|d| json!({
                        "member": d.member.to_did(),
                        "depth": d.depth,
                        "via": d.via.to_did(),
                    })).collect::<Vec<_>>(),
                })
            })
        })
        .collect();
    json!({
        "member": member.to_did(),
        "delegates_to": outgoing,
        "delegated_to_me": incoming,
        "max_depth": engine.charter().map(|c| c.max_delegation_depth),
    })
}
