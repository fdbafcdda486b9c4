//! The local control API: HTTP/JSON on a loopback address, bearer-token authenticated.
//!
//! The token is 32 random bytes (hex) in `<data-dir>/api.token` (mode 0600); the bound address
//! is written to `<data-dir>/api.addr`. `kosctl` reads both.

use std::{net::SocketAddr, path::Path, str::FromStr};

use anyhow::Context;
use axum::{
    Json, Router,
    extract::{Path as UrlPath, Request, State as AxState},
    http::{StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use kos_engine::{CertificateBundle, Engine, ReceiptBundle, Status, Tally};
use kos_protocol::{MessageId, Payload, PublicKey, payload::*};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::node::{Command, Handle, State, now_ms};

/// An API error: status and one-line message.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        // A full disk is the node's condition, not the request's fault: 507, and it says so.
        let full = e.chain().any(|c| {
            matches!(
                c.downcast_ref::<kos_storage::StoreError>(),
                Some(kos_storage::StoreError::NoSpace { .. })
            )
        });
        let code = if full { StatusCode::INSUFFICIENT_STORAGE } else { StatusCode::BAD_REQUEST };
        ApiError(code, format!("{e:#}"))
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

type ApiResult = Result<Json<Value>, ApiError>;

#[derive(Clone)]
struct Ctx {
    handle: Handle,
    token: String,
}

/// Writes a fresh token, binds the API on `addr` (which must be a loopback address) and serves it.
pub async fn serve(
    handle: Handle,
    addr: SocketAddr,
    data_dir: std::path::PathBuf,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        addr.ip().is_loopback(),
        "the control API only listens on loopback addresses, not {addr}"
    );
    let token = random_token()?;
    write_private(&data_dir.join("api.token"), token.as_bytes())?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot bind the API on {addr}"))?;
    let bound = listener.local_addr()?;
    write_private(&data_dir.join("api.addr"), bound.to_string().as_bytes())?;
    tracing::info!(%bound, "control API listening");
    let ctx = Ctx { handle, token };
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .route("/v1/peers", get(peers))
        .route("/v1/connect", post(connect))
        .route("/v1/disconnect", post(disconnect))
        .route("/v1/block", post(block))
        .route("/v1/unblock", post(unblock))
        .route("/v1/trust", post(trust))
        .route("/v1/federation", get(federation_show))
        .route("/v1/federation/create", post(federation_create))
        .route("/v1/federation/join", post(federation_join))
        .route("/v1/proposals", get(proposals).post(propose))
        .route("/v1/proposals/{id}", get(show))
        .route("/v1/proposals/{id}/vote", post(vote))
        .route("/v1/proposals/{id}/comment", post(comment))
        .route("/v1/proposals/{id}/sponsor", post(sponsor))
        .route("/v1/proposals/{id}/withdraw", post(withdraw))
        .route("/v1/proposals/{id}/revise", post(revise))
        .route("/v1/proposals/{id}/tally", get(tally))
        .route("/v1/proposals/{id}/certificate", get(certificate))
        .route("/v1/proposals/{id}/receipt", get(receipt))
        .route("/v1/delegate", post(delegate))
        .route("/v1/audit/verify", get(audit_verify))
        .layer(middleware::from_fn_with_state(ctx.clone(), auth))
        .with_state(ctx);
    axum::serve(listener, app).await?;
    Ok(())
}

fn random_token() -> anyhow::Result<String> {
    // A throwaway key's seed is 32 bytes from the OS generator.
    let seed = kos_protocol::SecretKey::generate().seed();
    Ok(hex::encode(seed.as_slice()))
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(bytes)?;
    Ok(())
}

async fn auth(AxState(ctx): AxState<Ctx>, req: Request, next: Next) -> Response {
    let ok = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| constant_time_eq(t.as_bytes(), ctx.token.as_bytes()));
    if !ok {
        return ApiError(StatusCode::UNAUTHORIZED, "missing or wrong bearer token".into())
            .into_response();
    }
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn parse_id(s: &str) -> Result<MessageId, ApiError> {
    s.parse().map_err(|_| bad(format!("not a message id: {s}")))
}

fn parse_key(s: &str) -> Result<PublicKey, ApiError> {
    PublicKey::from_did(s).map_err(|e| bad(format!("{s}: {e}")))
}

fn status_name(s: Status) -> String {
    serde_json::to_value(s).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

async fn status(AxState(ctx): AxState<Ctx>) -> ApiResult {
    let st = ctx.handle.lock();
    let now = now_ms();
    let pk = st.key.public();
    Ok(Json(json!({
        "did": pk.to_did(),
        "peer_id": pk.to_peer_id().to_string(),
        "klp_id": pk.klp_id().to_string(),
        "federation": st.engine.as_ref().map(|e| e.federation().to_string()),
        "peers": st.peers.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        "listen": st.listen.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "messages": st.store.len(),
        "pending": st.engine.as_ref().map_or(0, Engine::pending_len),
        "state_hash": st.engine.as_ref().map(|e| e.state_hash(now).to_string()),
        "registry_epoch": st.engine.as_ref().and_then(|e| e.registry(now)).map(|r| r.epoch),
        "config": st.engine.as_ref().and_then(|e| e.registry(now)).map(|r| r.config),
    })))
}

async fn metrics(AxState(ctx): AxState<Ctx>) -> Response {
    let text = ctx.handle.lock().metrics.encode();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn peers(AxState(ctx): AxState<Ctx>) -> ApiResult {
    let st = ctx.handle.lock();
    let known = st.store.peers().map_err(|e| bad(e.to_string()))?;
    Ok(Json(json!({
        "connected": st.peers.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        "scores": st.scores.iter().map(|(p, s)| json!({"peer_id": p.to_string(), "score": s})).collect::<Vec<_>>(),
        "blocked": st.blocked.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        "known": known.into_iter().map(|(p, a)| json!({"peer_id": p, "addrs": a})).collect::<Vec<_>>(),
    })))
}

#[derive(Deserialize)]
struct ConnectReq {
    addr: String,
}

async fn connect(AxState(ctx): AxState<Ctx>, Json(req): Json<ConnectReq>) -> ApiResult {
    let addr = if let Some(peer) = req.addr.strip_prefix("peer://") {
        let peer: libp2p::PeerId = peer.parse().map_err(|_| bad("invalid peer id"))?;
        let known = ctx.handle.lock().store.peers().map_err(|e| bad(e.to_string()))?;
        let addr = known
            .into_iter()
            .find(|(p, _)| *p == peer.to_string())
            .and_then(|(_, a)| a.into_iter().next())
            .ok_or_else(|| bad(format!("no known address for peer://{peer}")))?;
        libp2p::Multiaddr::from_str(&addr).map_err(|e| bad(e.to_string()))?
    } else {
        libp2p::Multiaddr::from_str(&req.addr)
            .map_err(|e| bad(format!("invalid multiaddr: {e}")))?
    };
    send(&ctx, Command::Dial(addr.clone())).await?;
    Ok(Json(json!({ "dialing": addr.to_string() })))
}

#[derive(Deserialize)]
struct PeerReq {
    peer: String,
}

async fn disconnect(AxState(ctx): AxState<Ctx>, Json(req): Json<PeerReq>) -> ApiResult {
    let peer: libp2p::PeerId =
        req.peer.trim_start_matches("peer://").parse().map_err(|_| bad("invalid peer id"))?;
    send(&ctx, Command::Disconnect(peer)).await?;
    Ok(Json(json!({ "disconnected": peer.to_string() })))
}

/// Hands a command to the event loop.
async fn send(ctx: &Ctx, cmd: Command) -> Result<(), ApiError> {
    ctx.handle.commands.send(cmd).await.map_err(|_| bad("node is shutting down"))
}

fn peer_of(s: &str) -> Result<libp2p::PeerId, ApiError> {
    s.trim_start_matches("peer://").parse().map_err(|_| bad(format!("invalid peer id: {s}")))
}

async fn block(AxState(ctx): AxState<Ctx>, Json(req): Json<PeerReq>) -> ApiResult {
    let peer = peer_of(&req.peer)?;
    send(&ctx, Command::Block(peer)).await?;
    send(&ctx, Command::Disconnect(peer)).await?;
    Ok(Json(json!({ "blocked": peer.to_string() })))
}

async fn unblock(AxState(ctx): AxState<Ctx>, Json(req): Json<PeerReq>) -> ApiResult {
    let peer = peer_of(&req.peer)?;
    send(&ctx, Command::Unblock(peer)).await?;
    Ok(Json(json!({ "unblocked": peer.to_string() })))
}

#[derive(Deserialize)]
struct TrustReq {
    target: String,
    level: String,
}

async fn trust(AxState(ctx): AxState<Ctx>, Json(req): Json<TrustReq>) -> ApiResult {
    let level: TrustLevel = req.level.parse().map_err(|e: UnknownName| bad(e.to_string()))?;
    kos_protocol::Address::from_str(&req.target)
        .map_err(|e| bad(format!("{}: {e}", req.target)))?;
    let st = ctx.handle.lock();
    st.store.set_trust(&req.target, level.as_str()).map_err(|e| bad(e.to_string()))?;
    st.store
        .audit(now_ms(), &format!("local trust {} = {level}", req.target))
        .map_err(|e| bad(e.to_string()))?;
    Ok(Json(json!({ "target": req.target, "level": level.as_str() })))
}

#[derive(Deserialize)]
struct CreateReq {
    name: String,
    #[serde(default)]
    members: Vec<String>,
    /// Timings in seconds for development and tests.
    #[serde(default)]
    dev_timing: bool,
}

async fn federation_create(AxState(ctx): AxState<Ctx>, Json(req): Json<CreateReq>) -> ApiResult {
    let (fed, msg) = create_charter(&ctx, req)?;
    send(&ctx, Command::Follow(fed)).await?;
    send(&ctx, Command::Publish(msg.bytes().to_vec())).await?;
    Ok(Json(json!({ "federation": fed.to_string() })))
}

fn create_charter(
    ctx: &Ctx,
    req: CreateReq,
) -> Result<(FederationId, kos_protocol::Message), ApiError> {
    let mut st = ctx.handle.lock();
    if st.engine.is_some() {
        return Err(bad("this node already follows a federation"));
    }
    let me = st.key.public();
    let mut members = vec![Member {
        key: me,
        roles: vec![Role::Citizen, Role::Validator],
        stake: 1,
        trust: TrustLevel::Core,
    }];
    for m in &req.members {
        let (did, level) = m.split_once('=').unwrap_or((m, "standard"));
        let trust: TrustLevel = level.parse().map_err(|e: UnknownName| bad(e.to_string()))?;
        let key = parse_key(did)?;
        if members.iter().any(|x| x.key == key) {
            return Err(bad(format!("{did} is listed twice")));
        }
        members.push(Member { key, roles: vec![Role::Citizen, Role::Validator], stake: 1, trust });
    }
    let timing = if req.dev_timing {
        Timing {
            grace_ms: 2_000,
            reveal_ms: 5_000,
            clock_skew_ms: 60_000,
            max_voting_ms: 3_600_000,
            min_voting_ms: 1_000,
            default_voting_ms: 10_000,
            min_discussion_ms: 0,
        }
    } else {
        Timing::standard()
    };
    let charter = Charter {
        name: req.name,
        nonce: now_ms(),
        bodies: vec![],
        hybrid: HybridWeights { role: 0, stake: 0, trust: 1000 },
        timing,
        members,
        defaults: vec![],
        role_weights: vec![],
        max_delegation_depth: 4,
        min_protocol_version: 1,
    };
    let msg = kos_protocol::Message::sign(&st.key, 0, now_ms(), None, Payload::Charter(charter))
        .map_err(|e| bad(e.to_string()))?;
    let fed = msg.id();
    st.engine = Some(Engine::new(fed));
    st.store.set_meta("federation", &fed.0).map_err(|e| bad(e.to_string()))?;
    let msg = {
        // Apply and persist like any local message.
        let now = now_ms();
        let engine = st.engine.as_mut().ok_or_else(|| bad("no engine"))?;
        engine.check(&msg, kos_engine::Origin::Local, now).map_err(|e| bad(e.to_string()))?;
        // Stored durably first; the engine changes only after.
        st.store.insert_durable(&msg).map_err(|e| ApiError::from(anyhow::Error::from(e)))?;
        let engine = st.engine.as_mut().ok_or_else(|| bad("no engine"))?;
        engine.apply(&msg, kos_engine::Origin::Local, now).map_err(|e| bad(e.to_string()))?;
        st.store
            .audit(now, &format!("created federation {fed}"))
            .map_err(|e| bad(e.to_string()))?;
        st.store.flush().map_err(|e| bad(e.to_string()))?;
        msg
    };
    Ok((fed, msg))
}

#[derive(Deserialize)]
struct JoinReq {
    federation: String,
    #[serde(default)]
    bootstrap: Option<String>,
}

async fn federation_join(AxState(ctx): AxState<Ctx>, Json(req): Json<JoinReq>) -> ApiResult {
    let fed = parse_id(&req.federation)?;
    {
        let mut st = ctx.handle.lock();
        match &st.engine {
            Some(e) if e.federation() == fed => {}
            Some(_) => return Err(bad("this node already follows another federation")),
            None => {
                st.engine = Some(Engine::new(fed));
                st.store.set_meta("federation", &fed.0).map_err(|e| bad(e.to_string()))?;
                st.store
                    .audit(now_ms(), &format!("joined federation {fed}"))
                    .map_err(|e| bad(e.to_string()))?;
                st.store.flush().map_err(|e| bad(e.to_string()))?;
            }
        }
    }
    if let Some(b) = req.bootstrap {
        let addr =
            libp2p::Multiaddr::from_str(&b).map_err(|e| bad(format!("invalid multiaddr: {e}")))?;
        send(&ctx, Command::Dial(addr)).await?;
    }
    send(&ctx, Command::Follow(fed)).await?;
    Ok(Json(json!({ "federation": fed.to_string() })))
}

async fn federation_show(AxState(ctx): AxState<Ctx>) -> ApiResult {
    let st = ctx.handle.lock();
    let engine = st.engine.as_ref().ok_or_else(|| bad("this node follows no federation"))?;
    let now = now_ms();
    let charter = engine.charter();
    let reg = engine.registry(now);
    Ok(Json(json!({
        "federation": engine.federation().to_string(),
        "name": charter.map(|c| c.name.clone()),
        "members": reg.as_ref().map(|r| r.members.values().map(|m| json!({"did": m.key.to_did(), "trust": m.trust.as_str()})).collect::<Vec<_>>()),
        "registry_epoch": reg.as_ref().map(|r| r.epoch),
        "synced": charter.is_some(),
    })))
}

#[derive(Deserialize)]
struct ProposeReq {
    kind: String,
    title: String,
    description: String,
    #[serde(default)]
    scope: Option<String>,
    /// Configuration key for `configuration` proposals.
    #[serde(default)]
    key: Option<String>,
    /// New configuration value.
    #[serde(default)]
    value: Option<String>,
    /// Expected old configuration value.
    #[serde(default)]
    old: Option<String>,
    /// Member (did:key) for trust, membership and quarantine actions.
    #[serde(default)]
    member: Option<String>,
    /// Trust level for trust adjustments and new members.
    #[serde(default)]
    level: Option<String>,
    /// `add` or `remove` for membership.
    #[serde(default)]
    membership: Option<String>,
    /// Policy document for policy updates.
    #[serde(default)]
    policy: Option<String>,
    #[serde(default)]
    options: Vec<String>,
    #[serde(default)]
    discussion_secs: Option<u64>,
    #[serde(default)]
    voting_secs: Option<u64>,
}

fn action_for(kind: ProposalType, req: &ProposeReq) -> Result<Action, ApiError> {
    let member =
        || req.member.as_deref().ok_or_else(|| bad("--member is required")).and_then(parse_key);
    let level = || {
        req.level
            .as_deref()
            .unwrap_or("standard")
            .parse::<TrustLevel>()
            .map_err(|e| bad(e.to_string()))
    };
    Ok(match kind {
        ProposalType::Configuration => Action::Configuration {
            key: req.key.clone().ok_or_else(|| bad("--key is required for configuration"))?,
            new: req.value.clone().ok_or_else(|| bad("--value is required for configuration"))?,
            old: req.old.clone(),
        },
        ProposalType::TrustAdjustment => {
            Action::TrustAdjustment { level: level()?, member: member()? }
        }
        ProposalType::Membership => match req.membership.as_deref().unwrap_or("add") {
            "add" => Action::AddMember(Member {
                key: member()?,
                roles: vec![Role::Citizen],
                stake: 1,
                trust: level()?,
            }),
            "remove" => Action::RemoveMember(member()?),
            other => return Err(bad(format!("membership is add or remove, not {other}"))),
        },
        ProposalType::EmergencyAction => Action::Quarantine(member()?),
        ProposalType::ProtocolUpgrade => Action::ProtocolUpgrade(
            req.value
                .as_deref()
                .ok_or_else(|| bad("--value VERSION is required"))?
                .parse()
                .map_err(|_| bad("version is a number"))?,
        ),
        _ => match &req.policy {
            Some(p) => Action::PolicyUpdate(p.clone()),
            None => Action::None,
        },
    })
}

async fn propose(AxState(ctx): AxState<Ctx>, Json(req): Json<ProposeReq>) -> ApiResult {
    let kind: ProposalType = req.kind.parse().map_err(|e: UnknownName| bad(e.to_string()))?;
    let scope: Scope = req
        .scope
        .as_deref()
        .unwrap_or("global")
        .parse()
        .map_err(|e: UnknownName| bad(e.to_string()))?;
    let action = action_for(kind, &req)?;
    let msg = {
        let mut st = ctx.handle.lock();
        let now = now_ms();
        let engine = st.engine.as_ref().ok_or_else(|| bad("this node follows no federation"))?;
        let charter =
            engine.charter().ok_or_else(|| bad("the federation's charter has not arrived yet"))?;
        let reg = engine.registry(now).ok_or_else(|| bad("no registry yet"))?;
        let discussion = req.discussion_secs.map_or(charter.timing.min_discussion_ms, |s| s * 1000);
        let voting = req.voting_secs.map_or(charter.timing.default_voting_ms, |s| s * 1000);
        // Leave a second for the proposal to be signed before discussion ends.
        let discussion_end = now + discussion.max(1000);
        let body = Proposal {
            kind,
            scope,
            title: req.title.clone(),
            action,
            voting: None,
            options: req.options.clone(),
            registry: RegistryVersion { hash: reg.hash(), epoch: reg.epoch },
            timeline: Timeline {
                reveal_end_ms: None,
                voting_end_ms: discussion_end + voting,
                discussion_end_ms: discussion_end,
                execution_delay_ms: 0,
            },
            federation: engine.federation(),
            description: req.description.clone(),
        };
        st.create(Payload::Proposal(body), None)?
    };
    send(&ctx, Command::Publish(msg.bytes().to_vec())).await?;
    Ok(Json(json!({ "id": msg.id().to_string() })))
}

fn proposal_json(engine: &Engine, id: &MessageId, now: u64) -> Option<Value> {
    let (author, body, revision, config) = engine.proposal(id)?;
    Some(json!({
        "id": id.to_string(),
        "kind": body.kind.as_str(),
        "scope": body.scope.as_str(),
        "title": body.title,
        "description": body.description,
        "author": author.to_did(),
        "status": engine.status(id, now).map(status_name),
        "revision": revision,
        "rule": format!("{:?}", config.rule),
        "discussion_end_ms": body.timeline.discussion_end_ms,
        "voting_end_ms": body.timeline.voting_end_ms,
    }))
}

async fn proposals(AxState(ctx): AxState<Ctx>) -> ApiResult {
    let st = ctx.handle.lock();
    let engine = st.engine.as_ref().ok_or_else(|| bad("this node follows no federation"))?;
    let now = now_ms();
    let list: Vec<Value> =
        engine.proposals().filter_map(|id| proposal_json(engine, id, now)).collect();
    Ok(Json(json!({ "proposals": list })))
}

async fn show(AxState(ctx): AxState<Ctx>, UrlPath(id): UrlPath<String>) -> ApiResult {
    let id = parse_id(&id)?;
    let st = ctx.handle.lock();
    let engine = st.engine.as_ref().ok_or_else(|| bad("this node follows no federation"))?;
    proposal_json(engine, &id, now_ms())
        .map(Json)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("unknown proposal {id}")))
}

fn tally_json(t: &Tally) -> Value {
    json!({
        "revision": t.revision,
        "totals": t.count.totals,
        "participation": t.count.participation,
        "eligible": t.count.eligible,
        "outcome": t.count.outcome.as_str(),
        "winner": t.count.winner,
        "counted": t.counted.len(),
        "votes_root": t.votes_root.to_string(),
    })
}

async fn tally(AxState(ctx): AxState<Ctx>, UrlPath(id): UrlPath<String>) -> ApiResult {
    let id = parse_id(&id)?;
    let st = ctx.handle.lock();
    let engine = st.engine.as_ref().ok_or_else(|| bad("this node follows no federation"))?;
    let now = now_ms();
    if engine.proposal(&id).is_none() {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("unknown proposal {id}")));
    }
    let fin = engine.finality(&id);
    let execution = engine.executions(now).into_iter().find(|e| e.proposal == id);
    Ok(Json(json!({
        "status": engine.status(&id, now).map(status_name),
        "tally": engine.tally(&id, now).as_ref().map(tally_json),
        "attestations": engine.attestations(&id).into_iter().map(|(who, k, at)| json!({
            "member": who.to_did(),
            "outcome": k.outcome.as_str(),
            "votes_root": k.votes_root.to_string(),
            "revision": k.revision,
            "at_ms": at,
        })).collect::<Vec<_>>(),
        "final": fin.map(|f| json!({
            "outcome": f.key.outcome.as_str(),
            "votes_root": f.key.votes_root.to_string(),
            "revision": f.key.revision,
            "winner": f.key.winner,
            "weight": f.weight,
            "final_at_ms": f.final_at_ms,
        })),
        "certificate": engine.certificate(&id).map(|c| json!({
            "attesters": c.attesters.len(),
            "weight": c.final_.weight,
            "eligible": c.eligible,
            "equivocators": c.equivocators.iter().map(|k| k.to_did()).collect::<Vec<_>>(),
        })),
        "execution": execution.map(|e| json!({
            "at_ms": e.at_ms,
            "epoch": e.epoch,
            "result": match e.result { Ok(()) => "ok".to_owned(), Err(s) => s },
        })),
    })))
}

/// The certificate bundle of a final proposal: the signed charter, proposal and attestations
/// (and the pinned registry version when it is not the charter's), verifiable offline.
fn certificate_bundle(st: &State, id: &MessageId) -> Result<CertificateBundle, ApiError> {
    let engine = st.engine.as_ref().ok_or_else(|| bad("this node follows no federation"))?;
    if engine.proposal(id).is_none() {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("unknown proposal {id}")));
    }
    let cert = engine.certificate(id).ok_or_else(|| {
        ApiError(StatusCode::CONFLICT, format!("proposal {id} is not final: no certificate yet"))
    })?;
    let bytes = |mid: &MessageId| -> Result<String, ApiError> {
        match st.store.get(mid) {
            Ok(Some(m)) => Ok(hex::encode(m.bytes())),
            Ok(None) => Err(bad(format!("message {mid} is not in the store"))),
            Err(e) => Err(bad(e.to_string())),
        }
    };
    let (registry, _) = engine.electorate(id).ok_or_else(|| bad("no electorate"))?;
    let charter = engine.charter().ok_or_else(|| bad("no charter"))?;
    let own = kos_engine::Registry::from_charter(charter).hash() == registry.hash();
    Ok(CertificateBundle {
        kind: kos_engine::CERTIFICATE_KIND.to_owned(),
        charter: bytes(&engine.federation())?,
        proposal: bytes(id)?,
        registry: (!own).then(|| hex::encode(kos_protocol::to_cbor(registry))),
        attestations: cert
            .attesters
            .iter()
            .map(|(_, mid, _, _)| bytes(mid))
            .collect::<Result<_, _>>()?,
    })
}

async fn certificate(AxState(ctx): AxState<Ctx>, UrlPath(id): UrlPath<String>) -> ApiResult {
    let id = parse_id(&id)?;
    let st = ctx.handle.lock();
    let bundle = certificate_bundle(&st, &id)?;
    Ok(Json(serde_json::to_value(bundle).map_err(|e| bad(e.to_string()))?))
}

#[derive(Deserialize)]
struct ReceiptQuery {
    /// The voter's did:key; the node's own identity if absent.
    voter: Option<String>,
}

async fn receipt(
    AxState(ctx): AxState<Ctx>,
    UrlPath(id): UrlPath<String>,
    axum::extract::Query(q): axum::extract::Query<ReceiptQuery>,
) -> ApiResult {
    let id = parse_id(&id)?;
    let st = ctx.handle.lock();
    let voter = match q.voter {
        Some(did) => {
            PublicKey::from_did(&did).map_err(|e| bad(format!("invalid voter {did}: {e}")))?
        }
        None => st.key.public(),
    };
    let certificate = certificate_bundle(&st, &id)?;
    let engine = st.engine.as_ref().ok_or_else(|| bad("this node follows no federation"))?;
    let r = engine.receipt(&id, &voter).map_err(|e| {
        let code = match e {
            kos_engine::ReceiptError::NotCounted => StatusCode::NOT_FOUND,
            _ => StatusCode::CONFLICT,
        };
        ApiError(code, format!("{e}"))
    })?;
    let ballot = match st.store.get(&r.ballot) {
        Ok(Some(m)) => hex::encode(m.bytes()),
        Ok(None) => return Err(bad(format!("ballot {} is not in the store", r.ballot))),
        Err(e) => return Err(bad(e.to_string())),
    };
    let bundle = ReceiptBundle {
        kind: kos_engine::RECEIPT_KIND.to_owned(),
        certificate,
        ballot,
        proof: r.proof,
    };
    Ok(Json(serde_json::to_value(bundle).map_err(|e| bad(e.to_string()))?))
}

#[derive(Deserialize)]
struct VoteReq {
    choice: String,
    #[serde(default)]
    reason: Option<String>,
}

fn parse_choice(s: &str) -> Result<Choice, ApiError> {
    let list = |v: &str| -> Result<Vec<u16>, ApiError> {
        v.split(',')
            .filter(|x| !x.is_empty())
            .map(|x| x.trim().parse().map_err(|_| bad(format!("not an option index: {x}"))))
            .collect()
    };
    Ok(match s {
        "yes" => Choice::Yes,
        "no" => Choice::No,
        "abstain" => Choice::Abstain,
        "veto" => Choice::Veto,
        _ if s.starts_with("approve:") => Choice::Approve(list(&s[8..])?),
        _ if s.starts_with("rank:") => Choice::Rank(list(&s[5..])?),
        _ => {
            return Err(bad(format!(
                "choice is yes, no, abstain, veto, approve:I,J or rank:I,J — not {s}"
            )));
        }
    })
}

async fn create_and_publish(ctx: &Ctx, payload: Payload) -> ApiResult {
    let msg = ctx.handle.lock().create(payload, None)?;
    send(ctx, Command::Publish(msg.bytes().to_vec())).await?;
    Ok(Json(json!({ "id": msg.id().to_string() })))
}

fn federation_of(ctx: &Ctx) -> Result<FederationId, ApiError> {
    ctx.handle
        .lock()
        .engine
        .as_ref()
        .map(Engine::federation)
        .ok_or_else(|| bad("this node follows no federation"))
}

/// The revision of `proposal` in force on this node (what new ballots and comments bind to).
fn revision_in_force(ctx: &Ctx, proposal: &MessageId) -> Result<u32, ApiError> {
    ctx.handle
        .lock()
        .engine
        .as_ref()
        .and_then(|e| e.proposal(proposal).map(|p| p.2))
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("unknown proposal {proposal}")))
}

async fn vote(
    AxState(ctx): AxState<Ctx>,
    UrlPath(id): UrlPath<String>,
    Json(req): Json<VoteReq>,
) -> ApiResult {
    let proposal = parse_id(&id)?;
    let choice = parse_choice(&req.choice)?;
    let federation = federation_of(&ctx)?;
    let revision = revision_in_force(&ctx, &proposal)?;
    create_and_publish(
        &ctx,
        Payload::Vote(Vote { choice, reason: req.reason, proposal, revision, federation }),
    )
    .await
}

#[derive(Deserialize)]
struct CommentReq {
    text: String,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    parent: Option<String>,
}

async fn comment(
    AxState(ctx): AxState<Ctx>,
    UrlPath(id): UrlPath<String>,
    Json(req): Json<CommentReq>,
) -> ApiResult {
    let proposal = parse_id(&id)?;
    let kind: CommentKind = req
        .kind
        .as_deref()
        .unwrap_or("comment")
        .parse()
        .map_err(|e: UnknownName| bad(e.to_string()))?;
    let parent = req.parent.as_deref().map(parse_id).transpose()?;
    let federation = federation_of(&ctx)?;
    let revision = revision_in_force(&ctx, &proposal)?;
    create_and_publish(
        &ctx,
        Payload::Comment(Comment { kind, text: req.text, parent, proposal, revision, federation }),
    )
    .await
}

async fn sponsor(AxState(ctx): AxState<Ctx>, UrlPath(id): UrlPath<String>) -> ApiResult {
    let proposal = parse_id(&id)?;
    let federation = federation_of(&ctx)?;
    create_and_publish(&ctx, Payload::Sponsor(Sponsor { proposal, federation })).await
}

#[derive(Deserialize)]
struct WithdrawReq {
    #[serde(default)]
    reason: Option<String>,
}

async fn withdraw(
    AxState(ctx): AxState<Ctx>,
    UrlPath(id): UrlPath<String>,
    Json(req): Json<WithdrawReq>,
) -> ApiResult {
    let proposal = parse_id(&id)?;
    let federation = federation_of(&ctx)?;
    create_and_publish(
        &ctx,
        Payload::Withdraw(Withdraw { reason: req.reason, proposal, federation }),
    )
    .await
}

async fn revise(
    AxState(ctx): AxState<Ctx>,
    UrlPath(id): UrlPath<String>,
    Json(req): Json<ProposeReq>,
) -> ApiResult {
    let proposal = parse_id(&id)?;
    let federation = federation_of(&ctx)?;
    let (kind, revision) = {
        let st = ctx.handle.lock();
        let engine = st.engine.as_ref().ok_or_else(|| bad("this node follows no federation"))?;
        let (_, body, revision, _) = engine.proposal(&proposal).ok_or_else(|| {
            ApiError(StatusCode::NOT_FOUND, format!("unknown proposal {proposal}"))
        })?;
        (body.kind, revision)
    };
    let action = action_for(kind, &req)?;
    create_and_publish(
        &ctx,
        Payload::Revision(Revision {
            title: req.title,
            action,
            options: req.options,
            proposal,
            revision: revision + 1,
            federation,
            description: req.description,
        }),
    )
    .await
}

#[derive(Deserialize)]
struct DelegateReq {
    /// did:key of the delegate; absent revokes.
    #[serde(default)]
    to: Option<String>,
    /// `all`, `kind:TYPE` or `scope:SCOPE`.
    #[serde(default)]
    scope: Option<String>,
}

async fn delegate(AxState(ctx): AxState<Ctx>, Json(req): Json<DelegateReq>) -> ApiResult {
    let scope = match req.scope.as_deref().unwrap_or("all") {
        "all" => DelegationScope::All,
        s if s.starts_with("kind:") => {
            DelegationScope::Kind(s[5..].parse().map_err(|e: UnknownName| bad(e.to_string()))?)
        }
        s if s.starts_with("scope:") => {
            DelegationScope::Scope(s[6..].parse().map_err(|e: UnknownName| bad(e.to_string()))?)
        }
        s => return Err(bad(format!("scope is all, kind:TYPE or scope:SCOPE — not {s}"))),
    };
    let delegate = req.to.as_deref().map(parse_key).transpose()?;
    let federation = federation_of(&ctx)?;
    create_and_publish(&ctx, Payload::Delegation(Delegation { scope, delegate, federation })).await
}

async fn audit_verify(AxState(ctx): AxState<Ctx>) -> ApiResult {
    let st = ctx.handle.lock();
    match st.store.verify_audit().map_err(|e| bad(e.to_string()))? {
        Ok(entries) => Ok(Json(
            json!({ "ok": true, "entries": entries.len(), "head": entries.last().map(|e| hex::encode(e.hash)) }),
        )),
        Err(first_bad) => Ok(Json(json!({ "ok": false, "first_bad_entry": first_bad }))),
    }
}
