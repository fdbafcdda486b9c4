//! The local control API: HTTP/JSON on a loopback address, bearer-token authenticated.
//!
//! The token is 32 random bytes (hex) in `<data-dir>/api.token` (mode 0600); the bound address
//! is written to `<data-dir>/api.addr`. `kosctl` reads both.
//!
//! Every handler reaches the engine and the store through the core's queue
//! ([`CoreHandle::call`]); nothing here holds a lock the network or the core could wait on.
//! Requests are bounded (headers within [`HEADER_TIMEOUT`], the whole request within
//! [`REQUEST_TIMEOUT`], bodies up to [`BODY_LIMIT`], at most [`MAX_CONNECTIONS`] at once), only
//! loopback names are accepted in `Host` and `Origin` (a DNS-rebinding page cannot reach it), and
//! every error is `{"error": "one line"}` with its status, never an echo of the input.

use std::{net::SocketAddr, path::Path, str::FromStr, sync::Arc, time::Duration};

use anyhow::Context;
use axum::{
    Json, Router,
    extract::{
        DefaultBodyLimit, FromRequest, Path as UrlPath, RawQuery, Request, State as AxState,
    },
    http::{StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use kos_engine::{CertificateBundle, Engine, ReceiptBundle, Status};
use kos_protocol::{Message, MessageId, Payload, PublicKey, payload::*};
use kos_storage::Store;
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use crate::{
    core::{CallError, Core, CoreHandle, IngestError, Submitted, ToCore},
    dashboard::{self, Grant},
    metrics::Metrics,
    node::{Command, NetView, now_ms},
    views::{
        delegations_json, proposal_detail, proposal_summary, rule_name, status_name, tally_json,
    },
};

/// Time allowed for a client to send its request headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for a whole request (body and answer).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest life of one connection.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);
/// Largest request body (a submitted envelope in hex fits).
pub const BODY_LIMIT: usize = 256 * 1024;
/// Connections served at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 128;
/// Longest error message.
const MAX_ERROR_LEN: usize = 300;

/// An API error: status and one-line message.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut line: String =
            self.1.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
        if line.len() > MAX_ERROR_LEN {
            let mut cut = MAX_ERROR_LEN;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
            line.push('…');
        }
        (self.0, Json(json!({ "error": line }))).into_response()
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

impl From<CallError> for ApiError {
    fn from(e: CallError) -> Self {
        ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
}

impl From<kos_storage::StoreError> for ApiError {
    fn from(e: kos_storage::StoreError) -> Self {
        ApiError::from(anyhow::Error::from(e))
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

fn not_found(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, msg.into())
}

fn no_federation() -> ApiError {
    ApiError(StatusCode::CONFLICT, "this node follows no federation".into())
}

/// At most 64 characters of something the client sent, for an error message.
fn clip(s: &str) -> String {
    let mut out: String = s.chars().take(64).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

/// A serde error without the values it quotes (they come from the request): a `name` in
/// backticks that looks like a field name or an expected variant (letters, digits, `_`, at most
/// 32) stays; the variant the client sent, and anything else quoted, becomes `…`.
fn scrub(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(i) = rest.find(['"', '`']) {
        let quote = rest[i..].chars().next().unwrap_or('"');
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let Some(j) = after.find(quote) else {
            // An unterminated quote: drop what follows it.
            out.push(quote);
            out.push('…');
            return out;
        };
        let inner = &after[..j];
        // `unknown variant `X`` quotes a value the client sent; field names are keys.
        let name = quote == '`'
            && !out.ends_with("variant ")
            && (1..=32).contains(&inner.len())
            && inner.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        out.push(quote);
        out.push_str(if name { inner } else { "…" });
        out.push(quote);
        rest = &after[j + 1..];
    }
    out.push_str(rest);
    out
}

/// A JSON body whose rejections are API errors.
struct Body<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        use axum::extract::rejection::JsonRejection;
        match Json::<Value>::from_request(req, state).await {
            // Every request body is an object: serde would otherwise fill a struct from an
            // array field by field, and `[]` would pass for a body whose fields are optional.
            Ok(Json(v)) if !v.is_object() => Err(bad("the request body must be a JSON object")),
            Ok(Json(v)) => serde_json::from_value::<T>(v)
                .map(Body)
                .map_err(|e| bad(format!("invalid request: {}", scrub(&e.to_string())))),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "send a JSON body with Content-Type: application/json".into(),
            )),
            Err(JsonRejection::JsonSyntaxError(_)) => {
                Err(bad("the request body is not valid JSON"))
            }
            Err(JsonRejection::JsonDataError(e)) => {
                let inner = std::error::Error::source(&e)
                    .map(ToString::to_string)
                    .unwrap_or_else(|| e.body_text());
                Err(bad(format!("invalid request: {}", scrub(&inner))))
            }
            Err(JsonRejection::BytesRejection(_)) => Err(ApiError(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is larger than {BODY_LIMIT} bytes or could not be read"),
            )),
            Err(e) => Err(ApiError(e.status(), "invalid request body".into())),
        }
    }
}

type ApiResult = Result<Json<Value>, ApiError>;

#[derive(Clone)]
struct Ctx {
    core: CoreHandle,
    net: mpsc::Sender<Command>,
    view: watch::Receiver<NetView>,
    metrics: Arc<Metrics>,
    /// Read-only use: the peer address book.
    store: Store,
    token: String,
    /// Direct messages at rest (outbox, inbox, directory cache).
    mail: kos_storage::mail::MailStore,
    /// The `.klp-policy` in force.
    policy: Arc<std::sync::Mutex<crate::policy::Policy>>,
    /// The data directory (the policy file).
    data_dir: std::path::PathBuf,
    /// The name this node claims in the directory.
    name: Option<String>,
    /// Dashboard sessions and one-time codes.
    sessions: crate::dashboard::Sessions,
    /// Long tasks' progress (read without the core).
    progress: crate::progress::Progress,
    /// The address the API is bound to (for dashboard links).
    bound: SocketAddr,
}

impl Ctx {
    /// Runs `f` on the core.
    async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Core) -> Result<R, ApiError> + Send + 'static,
    ) -> Result<R, ApiError> {
        self.core.call(f).await?
    }
}

/// What the API needs.
#[derive(Debug)]
pub struct ApiParts {
    /// The core.
    pub core: CoreHandle,
    /// Commands to the network task.
    pub net: mpsc::Sender<Command>,
    /// The network's state.
    pub view: watch::Receiver<NetView>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The store (read-only use).
    pub store: Store,
    /// The `.klp-policy` in force.
    pub policy: Arc<std::sync::Mutex<crate::policy::Policy>>,
    /// The name this node claims in the directory.
    pub name: Option<String>,
    /// Long tasks' progress.
    pub progress: crate::progress::Progress,
}

/// The API's routes.
fn router(ctx: Ctx) -> Router {
    Router::new()
        .route("/", get(|| async { axum::response::Redirect::to("/dashboard/") }))
        .route("/dashboard/", get(dashboard_index))
        .route("/dashboard/{file}", get(dashboard_asset))
        .route("/v1/session", post(session_open).delete(session_close))
        .route("/v1/dashboard/link", post(dashboard_link))
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
        .route("/v1/messages", post(submit))
        .route("/v1/messages/{id}", get(message))
        .route("/v1/proposals", get(proposals).post(propose))
        .route("/v1/proposals/{id}", get(show))
        .route("/v1/proposals/{id}/vote", post(vote))
        .route("/v1/proposals/{id}/reveal", post(reveal))
        .route("/v1/proposals/{id}/comment", post(comment))
        .route("/v1/proposals/{id}/sponsor", post(sponsor))
        .route("/v1/proposals/{id}/withdraw", post(withdraw))
        .route("/v1/proposals/{id}/revise", post(revise))
        .route("/v1/proposals/{id}/tally", get(tally))
        .route("/v1/proposals/{id}/certificate", get(certificate))
        .route("/v1/proposals/{id}/receipt", get(receipt))
        .route("/v1/delegate", post(delegate))
        .route("/v1/delegations", get(delegations))
        .route("/v1/audit", get(audit_show))
        .route("/v1/audit/verify", get(audit_verify))
        .route("/v1/resolve", get(resolve))
        .route("/v1/send", post(send_direct))
        .route("/v1/inbox", get(inbox))
        .route("/v1/inbox/{id}", get(inbox_show).delete(inbox_delete))
        .route("/v1/inbox/{id}/reply", post(reply))
        .route("/v1/outbox", get(outbox))
        .route("/v1/announce", post(announce))
        .route("/v1/export", get(export))
        .route("/v1/reputation", post(reputation))
        .route("/v1/id/rotate", post(id_rotate))
        .route("/v1/vectors", get(vectors_list))
        .route("/v1/vectors/send", post(vectors_send))
        .route("/v1/id/revoke", post(id_revoke))
        .route("/v1/policy", get(policy_show).post(policy_apply))
        .fallback(|| async { not_found("no such API route") })
        .method_not_allowed_fallback(|| async {
            ApiError(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this route".into())
        })
        .layer(middleware::from_fn_with_state(ctx.clone(), auth))
        .layer(middleware::from_fn(guard))
        .layer(middleware::from_fn(json_errors))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(ctx)
}

/// Writes a fresh token, binds the API on `addr` (which must be a loopback address) and serves it.
pub async fn serve(
    parts: ApiParts,
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
    let ApiParts { core, net, view, metrics, store, policy, name, progress } = parts;
    let mail = store.mail()?;
    let sessions = dashboard::Sessions::new(
        std::env::var_os("KOS_DASHBOARD_DIR").map(std::path::PathBuf::from),
    );
    let app = router(Ctx {
        core,
        net,
        view,
        metrics,
        store,
        token,
        mail,
        policy,
        data_dir,
        name,
        sessions,
        bound,
        progress,
    });
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("API accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream); // over the connection bound: closed at once
            continue;
        };
        let app = app.clone();
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let service = hyper_util::service::TowerToHyperService::new(app);
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
            let conn = builder.serve_connection(io, service);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
            drop(slot);
        });
    }
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

/// Whether `host` (a Host header value, or the authority of an Origin) names a loopback host.
fn loopback_name(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) { h } else { host }
        })
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Every error is `{"error": "one line"}`: an error response another layer made in plain text
/// (axum's rejection of a path that is not UTF-8, say) is replaced by that form, with its status.
async fn json_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if status.as_u16() < 400 || is_json {
        return resp;
    }
    let what = match status {
        StatusCode::BAD_REQUEST => "invalid request: the path or query is not valid".to_owned(),
        other => other.canonical_reason().unwrap_or("request failed").to_lowercase(),
    };
    ApiError(status, what).into_response()
}

/// Host and Origin checks, and the request timeout.
async fn guard(req: Request, next: Next) -> Response {
    let host = req.headers().get(header::HOST).and_then(|v| v.to_str().ok());
    if !host.is_some_and(loopback_name) {
        return ApiError(
            StatusCode::FORBIDDEN,
            "the Host header must name a loopback address (127.0.0.1, [::1] or localhost)".into(),
        )
        .into_response();
    }
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let ok = origin
            .to_str()
            .ok()
            .and_then(|o| o.strip_prefix("http://").or_else(|| o.strip_prefix("https://")))
            .is_some_and(loopback_name);
        if !ok {
            return ApiError(
                StatusCode::FORBIDDEN,
                "requests from web pages other than the node's own are refused".into(),
            )
            .into_response();
        }
    }
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError(StatusCode::REQUEST_TIMEOUT, "the request took too long".into())
            .into_response(),
    }
}

/// The request's bearer token.
fn bearer(req: &Request) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// The bearer token's grant: the API token, a dashboard session, or nothing.
fn grant(ctx: &Ctx, req: &Request) -> Option<Grant> {
    let t = bearer(req)?;
    if constant_time_eq(t.as_bytes(), ctx.token.as_bytes()) {
        Some(Grant::Full)
    } else if ctx.sessions.is_live(t, now_ms()) {
        Some(Grant::Session)
    } else {
        None
    }
}

async fn auth(AxState(ctx): AxState<Ctx>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if dashboard::is_public(req.method(), path) {
        return next.run(req).await;
    }
    match grant(&ctx, &req) {
        Some(Grant::Full) => {}
        Some(Grant::Session) if dashboard::session_may(req.method(), path) => {}
        Some(Grant::Session) => {
            return ApiError(
                StatusCode::FORBIDDEN,
                "a dashboard session reads, votes and comments only: use kosctl for this".into(),
            )
            .into_response();
        }
        None => {
            return ApiError(StatusCode::UNAUTHORIZED, "missing or wrong bearer token".into())
                .into_response();
        }
    }
    next.run(req).await
}

/// Compares two secrets in time independent of where they differ.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn parse_id(s: &str) -> Result<MessageId, ApiError> {
    s.parse().map_err(|_| bad(format!("not a message id: {}", clip(s))))
}

fn parse_key(s: &str) -> Result<PublicKey, ApiError> {
    PublicKey::from_did(s).map_err(|e| bad(format!("{}: {e}", clip(s))))
}

fn engine(core: &Core) -> Result<&Engine, ApiError> {
    core.engine.as_ref().ok_or_else(no_federation)
}

/// How long `status` waits for the core; a core busy with long work (a rebuild) gets a partial
/// answer: identity, network and progress, with `"core": "busy"`.
const STATUS_CORE_WAIT: Duration = Duration::from_secs(2);

async fn status(AxState(ctx): AxState<Ctx>) -> ApiResult {
    let view = ctx.view.borrow().clone();
    let from_core = tokio::time::timeout(
        STATUS_CORE_WAIT,
        ctx.call(|core| {
            let now = now_ms();
            let pk = core.key.public();
            let e = core.engine.as_ref();
            let (member, generation) = e
                .and_then(|e| e.check_signer(&pk, now).ok())
                .map_or((pk, 0), |s| (s.member, s.generation));
            let retired = e
                .and_then(|e| e.keys().get(&pk))
                .and_then(|r| r.end)
                .map(|end| json!({"at_ms": end.at_ms, "by": end.by.to_string(), "how": end.how}));
            Ok(json!({
                "did": pk.to_did(),
                "member": member.to_did(),
                "key_generation": generation,
                "key_retired": retired,
                "peer_id": pk.to_peer_id().to_string(),
                "klp_id": pk.klp_id().to_string(),
                "federation": e.map(|e| e.federation().to_string()),
                "messages": core.store.len(),
                "pending": e.map_or(0, Engine::pending_len),
                "state_hash": e.map(|e| e.state_hash(now).to_string()),
                "registry_epoch": e.and_then(|e| e.registry(now)).map(|r| r.epoch),
                "config": e.and_then(|e| e.registry(now)).map(|r| r.config),
            }))
        }),
    )
    .await;
    let mut v = match from_core {
        Ok(answer) => {
            let mut v = answer?;
            v["core"] = json!("ready");
            v
        }
        Err(_) => json!({ "core": "busy" }),
    };
    v["progress"] = ctx.progress.json(now_ms());
    v["peers"] = json!(view.peers.iter().map(|p| p.to_string()).collect::<Vec<_>>());
    if let Some(local) = view.local {
        v["peer_id"] = json!(local.to_string());
    }
    v["listen"] = json!(view.listen.iter().map(|a| a.to_string()).collect::<Vec<_>>());
    v["sync"] = json!({"peers": view.syncing.0, "requests_in_flight": view.syncing.1});
    Ok(Json(v))
}

async fn dashboard_index(AxState(ctx): AxState<Ctx>) -> Response {
    ctx.sessions.asset("index.html")
}

async fn dashboard_asset(AxState(ctx): AxState<Ctx>, UrlPath(file): UrlPath<String>) -> Response {
    ctx.sessions.asset(&file)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionReq {
    /// A one-time code from `kosctl dashboard`.
    code: Option<String>,
    /// Or the API token itself (the login form).
    token: Option<String>,
}

async fn session_open(AxState(ctx): AxState<Ctx>, Body(req): Body<SessionReq>) -> ApiResult {
    let now = now_ms();
    let session = random_token()?;
    let expires = match (req.code, req.token) {
        (Some(code), None) => {
            ctx.sessions.redeem(&code, session.clone(), now).ok_or_else(|| {
                ApiError(
                    StatusCode::UNAUTHORIZED,
                    "this sign-in link is unknown, used or expired: run kosctl dashboard again"
                        .into(),
                )
            })?
        }
        (None, Some(t)) if constant_time_eq(t.trim().as_bytes(), ctx.token.as_bytes()) => {
            ctx.sessions.open(session.clone(), now)
        }
        (None, Some(_)) => {
            return Err(ApiError(
                StatusCode::UNAUTHORIZED,
                "wrong token: it is in <data-dir>/api.token".into(),
            ));
        }
        _ => return Err(bad("give either code or token")),
    };
    Ok(Json(json!({ "token": session, "expires_ms": expires })))
}

async fn session_close(AxState(ctx): AxState<Ctx>, req: Request) -> ApiResult {
    Ok(Json(json!({ "closed": ctx.sessions.close(bearer(&req).unwrap_or_default()) })))
}

async fn dashboard_link(AxState(ctx): AxState<Ctx>) -> ApiResult {
    let code = random_token()?;
    let expires = ctx.sessions.new_code(code.clone(), now_ms());
    Ok(Json(json!({
        "url": format!("http://{}/dashboard/#code={code}", ctx.bound),
        "expires_ms": expires,
    })))
}

async fn metrics(AxState(ctx): AxState<Ctx>) -> Response {
    // Read when scraped (the store's summary cache counts it): never a round behind.
    ctx.metrics.stored_messages.set(ctx.store.len() as i64);
    let text = ctx.metrics.encode();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn peers(AxState(ctx): AxState<Ctx>) -> ApiResult {
    let view = ctx.view.borrow().clone();
    let known = ctx.store.peers()?;
    Ok(Json(json!({
        "connected": view.peers.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        "scores": view.scores.iter().map(|(p, s)| json!({"peer_id": p.to_string(), "score": s})).collect::<Vec<_>>(),
        "blocked": view.blocked.iter().map(|(p, _, _)| p.to_string()).collect::<Vec<_>>(),
        "blocks": view.blocked.iter().map(|(p, until, why)| json!({"peer_id": p.to_string(), "until_ms": until, "reason": why})).collect::<Vec<_>>(),
        "known": known.into_iter().map(|(p, a)| json!({"peer_id": p, "addrs": a})).collect::<Vec<_>>(),
        "trust": ctx.store.trust()?.into_iter().map(|(t, l)| json!({"target": t, "level": l})).collect::<Vec<_>>(),
        "reputation": crate::mail::reputation_json(&ctx.mail.reputation()),
    })))
}

#[derive(Deserialize)]
struct ConnectReq {
    addr: String,
}

async fn connect(AxState(ctx): AxState<Ctx>, Body(req): Body<ConnectReq>) -> ApiResult {
    let addr = if let Some(peer) = req.addr.strip_prefix("peer://") {
        let peer: libp2p::PeerId = peer.parse().map_err(|_| bad("invalid peer id"))?;
        let known = ctx.store.peers()?;
        let addr = known
            .into_iter()
            .find(|(p, _)| *p == peer.to_string())
            .and_then(|(_, a)| a.into_iter().next())
            .ok_or_else(|| not_found(format!("no known address for peer://{peer}")))?;
        libp2p::Multiaddr::from_str(&addr).map_err(|e| bad(e.to_string()))?
    } else {
        parse_multiaddr(&req.addr)?
    };
    send(&ctx, Command::Dial(addr.clone())).await?;
    Ok(Json(json!({ "dialing": addr.to_string() })))
}

fn parse_multiaddr(s: &str) -> Result<libp2p::Multiaddr, ApiError> {
    libp2p::Multiaddr::from_str(s).map_err(|e| bad(format!("invalid multiaddr {}: {e}", clip(s))))
}

#[derive(Deserialize)]
struct PeerReq {
    peer: String,
}

async fn disconnect(AxState(ctx): AxState<Ctx>, Body(req): Body<PeerReq>) -> ApiResult {
    let peer = peer_of(&req.peer)?;
    send(&ctx, Command::Disconnect(peer)).await?;
    Ok(Json(json!({ "disconnected": peer.to_string() })))
}

/// Hands a command to the network task.
async fn send(ctx: &Ctx, cmd: Command) -> Result<(), ApiError> {
    ctx.net.send(cmd).await.map_err(|_| ApiError::from(CallError::Gone))
}

fn peer_of(s: &str) -> Result<libp2p::PeerId, ApiError> {
    s.trim_start_matches("peer://")
        .parse()
        .map_err(|_| bad(format!("invalid peer id: {}", clip(s))))
}

async fn block(AxState(ctx): AxState<Ctx>, Body(req): Body<PeerReq>) -> ApiResult {
    let peer = peer_of(&req.peer)?;
    send(&ctx, Command::Block(peer)).await?;
    Ok(Json(json!({ "blocked": peer.to_string() })))
}

async fn unblock(AxState(ctx): AxState<Ctx>, Body(req): Body<PeerReq>) -> ApiResult {
    let peer = peer_of(&req.peer)?;
    send(&ctx, Command::Unblock(peer)).await?;
    Ok(Json(json!({ "unblocked": peer.to_string() })))
}

#[derive(Deserialize)]
struct TrustReq {
    target: String,
    level: String,
}

async fn trust(AxState(ctx): AxState<Ctx>, Body(req): Body<TrustReq>) -> ApiResult {
    let level: TrustLevel = req.level.parse().map_err(|e: UnknownName| bad(e.to_string()))?;
    kos_protocol::Address::from_str(&req.target)
        .map_err(|e| bad(format!("{}: {e}", clip(&req.target))))?;
    let target = req.target.clone();
    ctx.call(move |core| {
        core.store.set_trust(&target, level.as_str())?;
        core.store.audit(now_ms(), &format!("local trust {target} = {level}"))?;
        core.refresh_policy(); // the policy judges senders by it: at once
        Ok(())
    })
    .await?;
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
    /// A whole charter (what `kosctl federation create --charter FILE` sends); `members` and
    /// `dev_timing` then add to it.
    #[serde(default)]
    charter: Option<CharterSpec>,
}

/// A charter as people write it (`docs/charter.example.toml`): identities as did:key (or
/// `self` for this node), times in seconds, voting defaults that name only what differs from
/// the built-in default of their proposal type.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CharterSpec {
    #[serde(default)]
    timing: Option<TimingSpec>,
    #[serde(default)]
    hybrid: Option<HybridWeights>,
    #[serde(default)]
    members: Vec<MemberSpec>,
    #[serde(default)]
    bodies: Vec<BodySpec>,
    #[serde(default)]
    defaults: Vec<DefaultSpec>,
    #[serde(default)]
    role_weights: Vec<RoleWeight>,
    #[serde(default)]
    max_delegation_depth: Option<u8>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TimingSpec {
    grace_secs: u64,
    reveal_secs: u64,
    clock_skew_secs: u64,
    max_voting_secs: u64,
    min_voting_secs: u64,
    default_voting_secs: u64,
    min_discussion_secs: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberSpec {
    did: String,
    #[serde(default)]
    trust: Option<TrustLevel>,
    #[serde(default)]
    roles: Option<Vec<Role>>,
    #[serde(default)]
    stake: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BodySpec {
    kind: BodyKind,
    members: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DefaultSpec {
    kind: ProposalType,
    #[serde(default)]
    rule: Option<DecisionRule>,
    #[serde(default)]
    quorum: Option<Ratio>,
    #[serde(default)]
    veto: Option<Ratio>,
    #[serde(default)]
    secret: Option<bool>,
    #[serde(default)]
    sponsors: Option<u16>,
    #[serde(default)]
    reasoning: Option<bool>,
    #[serde(default)]
    weighting: Option<Weighting>,
    #[serde(default)]
    early_close: Option<bool>,
    /// Settings a proposal of this type may change in any direction (others only stricter).
    #[serde(default)]
    overrides: Vec<VotingField>,
}

fn secs_ms(name: &str, secs: u64) -> Result<u64, ApiError> {
    secs.checked_mul(1000).ok_or_else(|| bad(format!("timing.{name} is too large")))
}

async fn federation_create(AxState(ctx): AxState<Ctx>, Body(req): Body<CreateReq>) -> ApiResult {
    let fed = ctx
        .call(move |core| {
            if core.engine.is_some() {
                return Err(ApiError(
                    StatusCode::CONFLICT,
                    "this node already follows a federation".into(),
                ));
            }
            let charter = charter_message(core, req)?;
            Ok(core.found(charter)?)
        })
        .await?;
    Ok(Json(json!({ "federation": fed.to_string() })))
}

fn charter_message(core: &Core, req: CreateReq) -> Result<Message, ApiError> {
    let me = core.key.public();
    let spec = req.charter.unwrap_or_default();
    let did_or_self = |d: &str| if d == "self" { Ok(me) } else { parse_key(d) };
    let mut members: Vec<Member> = Vec::new();
    let mut add = |m: Member| -> Result<(), ApiError> {
        if members.iter().any(|x| x.key == m.key) {
            return Err(bad(format!("{} is listed twice", clip(&m.key.to_did()))));
        }
        members.push(m);
        Ok(())
    };
    // This node founds the federation: a core member unless the charter lists it otherwise.
    if !spec.members.iter().any(|m| m.did == "self" || m.did == me.to_did()) {
        add(Member {
            key: me,
            roles: vec![Role::Citizen, Role::Validator],
            stake: 1,
            trust: TrustLevel::Core,
        })?;
    }
    for m in &spec.members {
        add(Member {
            key: did_or_self(&m.did)?,
            roles: m.roles.clone().unwrap_or_else(|| vec![Role::Citizen, Role::Validator]),
            stake: m.stake.unwrap_or(1),
            trust: m.trust.unwrap_or(TrustLevel::Standard),
        })?;
    }
    for m in &req.members {
        let (did, level) = m.split_once('=').unwrap_or((m, "standard"));
        let trust: TrustLevel = level.parse().map_err(|e: UnknownName| bad(e.to_string()))?;
        add(Member {
            key: parse_key(did)?,
            roles: vec![Role::Citizen, Role::Validator],
            stake: 1,
            trust,
        })?;
    }
    let timing = match (&spec.timing, req.dev_timing) {
        (Some(t), _) => Timing {
            grace_ms: secs_ms("grace_secs", t.grace_secs)?,
            reveal_ms: secs_ms("reveal_secs", t.reveal_secs)?,
            clock_skew_ms: secs_ms("clock_skew_secs", t.clock_skew_secs)?,
            max_voting_ms: secs_ms("max_voting_secs", t.max_voting_secs)?,
            min_voting_ms: secs_ms("min_voting_secs", t.min_voting_secs)?,
            default_voting_ms: secs_ms("default_voting_secs", t.default_voting_secs)?,
            min_discussion_ms: secs_ms("min_discussion_secs", t.min_discussion_secs)?,
        },
        (None, true) => Timing {
            grace_ms: 2_000,
            reveal_ms: 5_000,
            clock_skew_ms: 60_000,
            max_voting_ms: 3_600_000,
            min_voting_ms: 1_000,
            default_voting_ms: 10_000,
            min_discussion_ms: 0,
        },
        (None, false) => Timing::standard(),
    };
    let bodies = spec
        .bodies
        .iter()
        .map(|b| {
            Ok(kos_protocol::payload::Body {
                kind: b.kind,
                members: b
                    .members
                    .iter()
                    .map(|d| did_or_self(d))
                    .collect::<Result<_, ApiError>>()?,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let defaults = spec
        .defaults
        .iter()
        .map(|d| {
            let base = kos_engine::default_config(d.kind);
            TypeDefault {
                kind: d.kind,
                config: VotingConfig {
                    rule: d.rule.unwrap_or(base.rule),
                    veto: d.veto.unwrap_or(base.veto),
                    quorum: d.quorum.unwrap_or(base.quorum),
                    secret: d.secret.unwrap_or(base.secret),
                    sponsors: d.sponsors.unwrap_or(base.sponsors),
                    reasoning: d.reasoning.unwrap_or(base.reasoning),
                    weighting: d.weighting.unwrap_or(base.weighting),
                    early_close: d.early_close.unwrap_or(base.early_close),
                },
                overrides: d.overrides.clone(),
            }
        })
        .collect();
    let charter = Charter {
        name: req.name,
        nonce: now_ms(),
        bodies,
        hybrid: spec.hybrid.unwrap_or(HybridWeights { role: 0, stake: 0, trust: 1000 }),
        timing,
        members,
        defaults,
        role_weights: spec.role_weights,
        max_delegation_depth: spec.max_delegation_depth.unwrap_or(4),
        min_protocol_version: 1,
    };
    // The charter's own rules (sizes, ratios, bounds) are checked when it is signed.
    Message::sign(&core.key, 0, now_ms(), None, Payload::Charter(charter))
        .map_err(|e| bad(format!("invalid charter: {e}")))
}

#[derive(Deserialize)]
struct JoinReq {
    federation: String,
    #[serde(default)]
    bootstrap: Option<String>,
}

async fn federation_join(AxState(ctx): AxState<Ctx>, Body(req): Body<JoinReq>) -> ApiResult {
    let fed = parse_id(&req.federation)?;
    // Every argument is checked before anything changes.
    let bootstrap = req.bootstrap.as_deref().map(parse_multiaddr).transpose()?;
    ctx.call(move |core| match core.follow(fed) {
        Ok(_) => Ok(()),
        Err(e) => Err(ApiError(StatusCode::CONFLICT, format!("{e:#}"))),
    })
    .await?;
    if let Some(addr) = bootstrap {
        send(&ctx, Command::Dial(addr)).await?;
    }
    Ok(Json(json!({ "federation": fed.to_string() })))
}

async fn federation_show(AxState(ctx): AxState<Ctx>) -> ApiResult {
    ctx.call(|core| {
        let engine = engine(core)?;
        let now = now_ms();
        let charter = engine.charter();
        let reg = engine.registry(now);
        let did = |k: &PublicKey| k.to_did();
        Ok(Json(json!({
            "federation": engine.federation().to_string(),
            "name": charter.map(|c| c.name.clone()),
            "members": reg.as_ref().map(|r| r.members.values().map(|m| json!({
                "did": did(&m.key),
                // The member's key in use now (its did stays its identity), after rotations.
                "key": did(&engine.keys().current(&m.key).0),
                "key_generation": engine.keys().chain(&m.key).len().saturating_sub(1),
                "revoked": engine.keys().current(&m.key).1,
                "trust": m.trust.as_str(),
                "roles": m.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
                "stake": m.stake,
            })).collect::<Vec<_>>()),
            "registry_epoch": reg.as_ref().map(|r| r.epoch),
            "config": reg.as_ref().map(|r| json!(r.config)),
            "policy": reg.as_ref().and_then(|r| r.policy.clone()),
            "min_protocol_version": reg.as_ref().map(|r| r.min_protocol_version),
            "bodies": charter.map(|c| c.bodies.iter().map(|b| json!({
                "kind": b.kind.as_str(),
                "members": b.members.iter().map(did).collect::<Vec<_>>(),
            })).collect::<Vec<_>>()),
            "defaults": charter.map(|c| c.defaults.iter().map(|d| json!({
                "kind": d.kind.as_str(),
                "config": d.config,
                "overrides": d.overrides.iter().map(|f| f.as_str()).collect::<Vec<_>>(),
            })).collect::<Vec<_>>()),
            // Every proposal type's rules in force, from the charter or built in.
            "voting": charter.map(|c| ProposalType::ALL.iter().map(|&kind| {
                let mut v = crate::views::voting_json(&kos_engine::type_config(c, kind));
                v["kind"] = kind.as_str().into();
                v["source"] = if c.defaults.iter().any(|d| d.kind == kind) {
                    "charter"
                } else {
                    "built_in"
                }.into();
                v["overrides"] = json!(kos_engine::overridable(c, kind)
                    .iter().map(|f| f.as_str()).collect::<Vec<_>>());
                v["proposer_trust"] = kos_engine::required_trust(kind).as_str().into();
                v
            }).collect::<Vec<_>>()),
            "hybrid": charter.map(|c| json!(c.hybrid)),
            "timing": charter.map(|c| json!(c.timing)),
            "role_weights": charter.map(|c| json!(c.role_weights)),
            "max_delegation_depth": charter.map(|c| c.max_delegation_depth),
            "synced": charter.is_some(),
        })))
    })
    .await
}

/// `GET /v1/messages/{id}`: a stored message's envelope, exactly the bytes that travelled (hex).
async fn message(AxState(ctx): AxState<Ctx>, UrlPath(id): UrlPath<String>) -> ApiResult {
    let id = parse_id(&id)?;
    ctx.call(move |core| match core.store.get_bytes(&id)? {
        Some(bytes) => Ok(Json(json!({ "id": id.to_string(), "envelope": hex::encode(bytes) }))),
        None => Err(not_found(format!("no message {id} in this node's store"))),
    })
    .await
}

/// Most envelopes in one `POST /v1/messages`.
pub const SUBMIT_BATCH: usize = 512;

#[derive(Deserialize)]
struct SubmitReq {
    /// One envelope, hex.
    #[serde(default)]
    envelope: Option<String>,
    /// Several envelopes, hex (at most [`SUBMIT_BATCH`]).
    #[serde(default)]
    envelopes: Vec<String>,
}

/// Signed envelopes from an outside signer (an agent, another tool): verified off the async
/// workers, then ingested like any message — judged, stored durably (one commit for the batch),
/// published. Each gets its own answer; a bad one does not stop the others.
async fn submit(AxState(ctx): AxState<Ctx>, Body(req): Body<SubmitReq>) -> ApiResult {
    let single = req.envelope.is_some();
    let hexes: Vec<String> = req.envelope.into_iter().chain(req.envelopes).collect();
    if hexes.is_empty() {
        return Err(bad("give envelope (hex) or envelopes (a list of hex)"));
    }
    if hexes.len() > SUBMIT_BATCH {
        return Err(bad(format!("at most {SUBMIT_BATCH} envelopes per call")));
    }
    let decoded = tokio::task::spawn_blocking(move || {
        hexes
            .iter()
            .map(|h| {
                let bytes =
                    hex::decode(h.trim()).map_err(|_| "envelope is not hexadecimal".to_owned())?;
                Message::decode(&bytes).map_err(|e| format!("invalid envelope: {e}"))
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|_| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "verification failed".into()))?;
    let good: Vec<Message> = decoded.iter().filter_map(|d| d.as_ref().ok().cloned()).collect();
    let mut outcomes = if good.is_empty() {
        Vec::new()
    } else {
        let (tx, rx) = tokio::sync::oneshot::channel();
        ctx.core.try_send(ToCore::Submit(good, tx))?;
        rx.await.map_err(|_| ApiError::from(CallError::Gone))?
    }
    .into_iter();
    let mut results = Vec::with_capacity(decoded.len());
    for d in decoded {
        let r = match d {
            Err(e) => Err((StatusCode::BAD_REQUEST, e)),
            Ok(msg) => match outcomes.next() {
                Some(Ok(s)) => Ok((msg.id(), s)),
                Some(Err(IngestError::NoFederation)) => {
                    Err((StatusCode::CONFLICT, IngestError::NoFederation.to_string()))
                }
                Some(Err(IngestError::Store(e))) => {
                    Err((ApiError::from(e).0, "the store could not take it".to_owned()))
                }
                Some(Err(e)) => Err((StatusCode::BAD_REQUEST, e.to_string())),
                None => Err((StatusCode::SERVICE_UNAVAILABLE, "no answer".to_owned())),
            },
        };
        results.push(r);
    }
    let name = |s: Submitted| match s {
        Submitted::Accepted => "accepted",
        Submitted::Held => "held",
        Submitted::Duplicate => "duplicate",
    };
    if single {
        return match results.pop() {
            Some(Ok((id, s))) => Ok(Json(json!({ "id": id.to_string(), "status": name(s) }))),
            Some(Err((code, e))) => Err(ApiError(code, e)),
            None => Err(bad("nothing submitted")),
        };
    }
    let list: Vec<Value> = results
        .into_iter()
        .map(|r| match r {
            Ok((id, s)) => json!({ "id": id.to_string(), "status": name(s) }),
            Err((_, e)) => json!({ "error": e }),
        })
        .collect();
    Ok(Json(json!({ "results": list })))
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
    /// Roll back the execution of this proposal (its id) instead of any other action.
    #[serde(default)]
    rollback: Option<String>,
    #[serde(default)]
    options: Vec<String>,
    #[serde(default)]
    discussion_secs: Option<u64>,
    #[serde(default)]
    voting_secs: Option<u64>,
    /// Overrides of the type's voting configuration (proposals only).
    #[serde(default)]
    rule: Option<String>,
    #[serde(default)]
    weighting: Option<String>,
    #[serde(default)]
    secret: Option<bool>,
    #[serde(default)]
    quorum: Option<String>,
    #[serde(default)]
    veto: Option<String>,
    #[serde(default)]
    sponsors: Option<u16>,
    #[serde(default)]
    early_close: Option<bool>,
}

fn parse_ratio(name: &str, s: &str) -> Result<Ratio, ApiError> {
    let (n, d) = s
        .split_once('/')
        .and_then(|(n, d)| Some((n.trim().parse::<u32>().ok()?, d.trim().parse::<u32>().ok()?)))
        .ok_or_else(|| bad(format!("{name} is N/D, e.g. 2/3 — not {}", clip(s))))?;
    if d == 0 || n > d {
        return Err(bad(format!("{name} must be a fraction between 0 and 1")));
    }
    Ok(Ratio(n, d))
}

fn parse_rule(s: &str) -> Result<DecisionRule, ApiError> {
    Ok(match s {
        "simple_majority" => DecisionRule::SimpleMajority,
        "consensus" => DecisionRule::Consensus,
        "plurality" | "approval" => DecisionRule::Plurality,
        "instant_runoff" | "ranked" => DecisionRule::InstantRunoff,
        _ => match s.strip_prefix("supermajority:") {
            Some(r) => DecisionRule::Supermajority(parse_ratio("supermajority", r)?),
            None => {
                return Err(bad(format!(
                    "rule is simple_majority, supermajority:N/D, consensus, plurality or instant_runoff — not {}",
                    clip(s)
                )));
            }
        },
    })
}

impl ProposeReq {
    /// The proposal's own voting configuration: `None` when it overrides nothing (the charter's
    /// default for its type applies), else that default with the overrides.
    fn voting(&self, base: VotingConfig) -> Result<Option<VotingConfig>, ApiError> {
        let any = self.rule.is_some()
            || self.weighting.is_some()
            || self.secret.is_some()
            || self.quorum.is_some()
            || self.veto.is_some()
            || self.sponsors.is_some()
            || self.early_close.is_some();
        let mut c = base;
        if let Some(r) = &self.rule {
            c.rule = parse_rule(r)?;
        }
        if let Some(w) = &self.weighting {
            c.weighting = w.parse().map_err(|e: UnknownName| bad(e.to_string()))?;
        }
        if let Some(q) = &self.quorum {
            c.quorum = parse_ratio("quorum", q)?;
        }
        if let Some(v) = &self.veto {
            c.veto = parse_ratio("veto", v)?;
        }
        c.secret = self.secret.unwrap_or(c.secret);
        if c.secret && self.early_close.is_none() {
            c.early_close = false; // secret ballots never close early
        }
        c.sponsors = self.sponsors.unwrap_or(c.sponsors);
        c.early_close = self.early_close.unwrap_or(c.early_close);
        if c.rule.is_binary() && !self.options.is_empty() {
            return Err(bad(format!(
                "options need a ballot over options: --rule plurality (approval) or --rule instant_runoff (ranked); the rule here is {}",
                rule_name(c.rule)
            )));
        }
        if !c.rule.is_binary() && self.options.len() < 2 {
            return Err(bad(format!("the rule {} needs at least two --option", rule_name(c.rule))));
        }
        Ok(any.then_some(c))
    }
}

/// Refuses a rollback of a proposal that has not executed a change this node knows of (the
/// engine would accept the proposal, and its execution would fail).
fn check_rollback(engine: &Engine, action: &Action) -> Result<(), ApiError> {
    let Action::Rollback(target) = action else { return Ok(()) };
    match engine.execution(target) {
        Some(e) if e.inverse.is_some() => Ok(()),
        Some(e) if e.result.is_err() => {
            Err(bad(format!("proposal {target} failed to execute: there is nothing to roll back")))
        }
        Some(_) => {
            Err(bad(format!("proposal {target} changed nothing: there is nothing to roll back")))
        }
        None if engine.proposal(target).is_some() => Err(bad(format!(
            "proposal {target} has not executed: there is nothing to roll back yet"
        ))),
        None => Err(not_found(format!("unknown proposal {target}"))),
    }
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
    if let Some(target) = &req.rollback {
        if kind == ProposalType::EmergencyAction {
            return Err(bad(
                "a rollback is proposed with the kind of the proposal it undoes, not emergency_action",
            ));
        }
        return Ok(Action::Rollback(parse_id(target)?));
    }
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

/// `secs` seconds in ms, refused if it overflows or exceeds `max_ms`.
fn duration_ms(name: &str, secs: u64, max_ms: u64) -> Result<u64, ApiError> {
    secs.checked_mul(1000).filter(|ms| *ms <= max_ms).ok_or_else(|| {
        bad(format!("{name} is larger than the charter allows ({} s)", max_ms / 1000))
    })
}

fn parse_choice(s: &str) -> Result<Choice, ApiError> {
    let list = |v: &str| -> Result<Vec<u16>, ApiError> {
        v.split(',')
            .filter(|x| !x.is_empty())
            .map(|x| x.trim().parse().map_err(|_| bad(format!("not an option index: {}", clip(x)))))
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
                "choice is yes, no, abstain, veto, approve:I,J or rank:I,J — not {}",
                clip(s)
            )));
        }
    })
}

async fn propose(AxState(ctx): AxState<Ctx>, Body(req): Body<ProposeReq>) -> ApiResult {
    let kind: ProposalType = req.kind.parse().map_err(|e: UnknownName| bad(e.to_string()))?;
    let scope: Scope = req
        .scope
        .as_deref()
        .unwrap_or("global")
        .parse()
        .map_err(|e: UnknownName| bad(e.to_string()))?;
    let action = action_for(kind, &req)?;
    let id = ctx
        .call(move |core| {
            let now = now_ms();
            let engine = engine(core)?;
            check_rollback(engine, &action)?;
            let charter = engine.charter().ok_or_else(|| {
                ApiError(
                    StatusCode::CONFLICT,
                    "the federation's charter has not arrived yet".into(),
                )
            })?;
            let reg = engine.registry(now).ok_or_else(|| bad("no registry yet"))?;
            let t = &charter.timing;
            let discussion = match req.discussion_secs {
                Some(s) => duration_ms("discussion_secs", s, t.max_voting_ms.max(30 * 86_400_000))?,
                None => t.min_discussion_ms,
            };
            let voting = match req.voting_secs {
                Some(s) => duration_ms("voting_secs", s, t.max_voting_ms)?,
                None => t.default_voting_ms,
            };
            // Leave a second for the proposal to be signed before discussion ends.
            let discussion_end = now
                .checked_add(discussion.max(1000))
                .ok_or_else(|| bad("discussion_secs is too large"))?;
            let voting_end = discussion_end
                .checked_add(voting)
                .ok_or_else(|| bad("voting_secs is too large"))?;
            let mut body = Proposal {
                kind,
                scope,
                title: req.title.clone(),
                action,
                voting: None,
                options: req.options.clone(),
                registry: RegistryVersion { hash: reg.hash(), epoch: reg.epoch },
                timeline: Timeline {
                    reveal_end_ms: None,
                    voting_end_ms: voting_end,
                    discussion_end_ms: discussion_end,
                    execution_delay_ms: 0,
                },
                federation: engine.federation(),
                description: req.description.clone(),
            };
            body.voting = req.voting(kos_engine::voting_config(charter, &body))?;
            if kos_engine::voting_config(charter, &body).secret {
                // Ballots are committed until voting ends, then revealed in this window.
                body.timeline.reveal_end_ms = Some(
                    voting_end
                        .checked_add(t.reveal_ms)
                        .ok_or_else(|| bad("voting_secs is too large"))?,
                );
            }
            Ok(core.create(Payload::Proposal(body), None)?.id())
        })
        .await?;
    Ok(Json(json!({ "id": id.to_string() })))
}

async fn proposals(AxState(ctx): AxState<Ctx>) -> ApiResult {
    ctx.call(|core| {
        let engine = engine(core)?;
        let now = now_ms();
        let list: Vec<Value> =
            engine.proposals().filter_map(|id| proposal_summary(engine, id, now)).collect();
        Ok(Json(json!({ "proposals": list })))
    })
    .await
}

async fn show(AxState(ctx): AxState<Ctx>, UrlPath(id): UrlPath<String>) -> ApiResult {
    let id = parse_id(&id)?;
    ctx.call(move |core| {
        proposal_detail(engine(core)?, &core.store, &id, now_ms())
            .map(Json)
            .ok_or_else(|| not_found(format!("unknown proposal {id}")))
    })
    .await
}

async fn tally(AxState(ctx): AxState<Ctx>, UrlPath(id): UrlPath<String>) -> ApiResult {
    let id = parse_id(&id)?;
    ctx.call(move |core| {
        let engine = engine(core)?;
        let now = now_ms();
        if engine.proposal(&id).is_none() {
            return Err(not_found(format!("unknown proposal {id}")));
        }
        let fin = engine.finality(&id);
        let execution = engine.executions(now).into_iter().find(|e| e.proposal == id);
        Ok(Json(json!({
            "status": engine.status(&id, now).map(status_name),
            "tally": engine.tally(&id, now).as_ref().map(tally_json),
            "attestations": engine.attestations(&id).into_iter().map(|a| json!({
                "member": a.member.to_did(),
                "phase": match a.phase {
                    AttestationPhase::Prepare => "prepare",
                    AttestationPhase::Commit => "commit",
                },
                "round": a.round,
                "outcome": a.key.outcome.as_str(),
                "votes_root": a.key.votes_root.to_string(),
                "revision": a.key.revision,
                "at_ms": a.at_ms,
            })).collect::<Vec<_>>(),
            "prepare_quorum": engine.prepare_quorum(&id).map(|(round, k)| json!({
                "round": round,
                "outcome": k.outcome.as_str(),
                "votes_root": k.votes_root.to_string(),
                "revision": k.revision,
            })),
            "final": fin.map(|f| json!({
                "round": f.round,
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
    })
    .await
}

/// The certificate bundle of a final proposal: the signed charter, proposal and the commits of
/// the certificate's round (and the pinned registry version when it is not the charter's: its
/// deterministic CBOR, the very bytes whose hash is the pin), verifiable offline.
fn certificate_bundle(core: &Core, id: &MessageId) -> Result<CertificateBundle, ApiError> {
    let engine = engine(core)?;
    if engine.proposal(id).is_none() {
        return Err(not_found(format!("unknown proposal {id}")));
    }
    let cert = engine.certificate(id).ok_or_else(|| {
        ApiError(StatusCode::CONFLICT, format!("proposal {id} is not final: no certificate yet"))
    })?;
    let bytes = |mid: &MessageId| -> Result<String, ApiError> {
        match core.store.get_bytes(mid)? {
            Some(b) => Ok(hex::encode(b)),
            None => {
                Err(ApiError(StatusCode::CONFLICT, format!("message {mid} is not in the store")))
            }
        }
    };
    let (registry, _) = engine.electorate(id).ok_or_else(|| bad("no electorate"))?;
    let charter = engine.charter().ok_or_else(|| bad("no charter"))?;
    let own = kos_engine::Registry::from_charter(charter).hash() == registry.hash();
    Ok(CertificateBundle {
        kind: kos_engine::CERTIFICATE_KIND.to_owned(),
        charter: bytes(&engine.federation())?,
        proposal: bytes(id)?,
        registry: (!own).then(|| hex::encode(registry.encode())),
        attestations: cert
            .attesters
            .iter()
            .map(|(_, mid, _, _)| bytes(mid))
            .collect::<Result<_, _>>()?,
    })
}

async fn certificate(AxState(ctx): AxState<Ctx>, UrlPath(id): UrlPath<String>) -> ApiResult {
    let id = parse_id(&id)?;
    ctx.call(move |core| {
        let bundle = certificate_bundle(core, &id)?;
        Ok(Json(serde_json::to_value(bundle).map_err(|e| bad(e.to_string()))?))
    })
    .await
}

async fn receipt(
    AxState(ctx): AxState<Ctx>,
    UrlPath(id): UrlPath<String>,
    RawQuery(query): RawQuery,
) -> ApiResult {
    let id = parse_id(&id)?;
    // The voter's did:key (`?voter=`); the node's own identity if absent.
    let voter = query_key(query.as_deref(), "voter")?;
    ctx.call(move |core| {
        let voter = voter.unwrap_or_else(|| core.key.public());
        let certificate = certificate_bundle(core, &id)?;
        let engine = engine(core)?;
        let r = engine.receipt(&id, &voter).map_err(|e| {
            let code = match e {
                kos_engine::ReceiptError::NotCounted => StatusCode::NOT_FOUND,
                _ => StatusCode::CONFLICT,
            };
            ApiError(code, format!("{e}"))
        })?;
        let ballot = match core.store.get_bytes(&r.ballot)? {
            Some(b) => hex::encode(b),
            None => {
                return Err(ApiError(
                    StatusCode::CONFLICT,
                    format!("ballot {} is not in the store", r.ballot),
                ));
            }
        };
        let bundle = ReceiptBundle {
            kind: kos_engine::RECEIPT_KIND.to_owned(),
            certificate,
            ballot,
            proof: r.proof,
        };
        Ok(Json(serde_json::to_value(bundle).map_err(|e| bad(e.to_string()))?))
    })
    .await
}

#[derive(Deserialize)]
struct VoteReq {
    choice: String,
    #[serde(default)]
    reason: Option<String>,
}

/// Signs and ingests a message about `proposal`, which must be known here (404 otherwise);
/// `build` gets the federation and the revision in force.
async fn about_proposal(
    ctx: &Ctx,
    proposal: MessageId,
    build: impl FnOnce(FederationId, u32, &Engine) -> Result<Payload, ApiError> + Send + 'static,
) -> ApiResult {
    let id = ctx
        .call(move |core| {
            let engine = engine(core)?;
            let (_, _, revision, _) = engine
                .proposal(&proposal)
                .ok_or_else(|| not_found(format!("unknown proposal {proposal}")))?;
            let payload = build(engine.federation(), revision, engine)?;
            Ok(core.create(payload, None)?.id())
        })
        .await?;
    Ok(Json(json!({ "id": id.to_string() })))
}

async fn vote(
    AxState(ctx): AxState<Ctx>,
    UrlPath(id): UrlPath<String>,
    Body(req): Body<VoteReq>,
) -> ApiResult {
    let proposal = parse_id(&id)?;
    let choice = parse_choice(&req.choice)?;
    let v = ctx
        .call(move |core| {
            let engine = engine(core)?;
            let federation = engine.federation();
            let (_, body, revision, config) = engine
                .proposal(&proposal)
                .ok_or_else(|| not_found(format!("unknown proposal {proposal}")))?;
            // Refused before anything is signed, with reasons a person can act on.
            let now = now_ms();
            voting_open(engine.status(&proposal, now), &body.timeline, now)?;
            let options = engine.options(&proposal, revision).unwrap_or_default();
            ballot_fits(config.rule, options, &choice)?;
            if config.secret {
                // Commit now; the node reveals by itself when voting ends.
                let m = core.commit_vote(proposal, revision, choice, req.reason)?;
                return Ok(json!({ "id": m.id().to_string(), "committed": true }));
            }
            let vote = Vote { choice, reason: req.reason, proposal, revision, federation };
            let m = core.create(Payload::Vote(vote), None)?;
            Ok(json!({ "id": m.id().to_string() }))
        })
        .await?;
    Ok(Json(v))
}

/// A ballot outside the voting window, in words: when voting opens, or when it closed (the
/// engine judges the signed ballot by its signed time; this answers before signing).
fn voting_open(status: Option<Status>, t: &Timeline, now: u64) -> Result<(), ApiError> {
    use kos_protocol::time::when;
    let why = match status {
        Some(Status::Voting) | None => return Ok(()),
        Some(Status::SeekingSponsors | Status::Discussion) => {
            format!("voting has not opened: it opens {}", when(t.discussion_end_ms, now))
        }
        Some(Status::Reveal) => format!(
            "voting closed {}; this is the reveal window (`kosctl reveal` reveals a committed ballot)",
            when(t.voting_end_ms, now)
        ),
        Some(s @ (Status::Expired | Status::Withdrawn)) => {
            format!("the proposal is {}: there is nothing to vote on", status_name(s))
        }
        Some(s) => {
            format!("voting closed {} (status {})", when(t.voting_end_ms, now), status_name(s))
        }
    };
    Err(ApiError(StatusCode::CONFLICT, why))
}

/// The engine's ballot-form check ([`kos_engine::ballot_form`]), its refusal put in terms of
/// the proposal: the form that fits, and the options by number and name.
fn ballot_fits(rule: DecisionRule, options: &[String], choice: &Choice) -> Result<(), ApiError> {
    let listed =
        || options.iter().enumerate().map(|(i, o)| format!("{i}: {o}")).collect::<Vec<_>>();
    match kos_engine::ballot_form(rule, options, choice) {
        Ok(()) => Ok(()),
        Err(kos_engine::Refusal::NoSuchOption(i)) => {
            Err(bad(format!("there is no option {i}: the options are {}", listed().join(", "))))
        }
        Err(_) => {
            let form = match rule {
                DecisionRule::Plurality => "approve:I,J,… (approval ballot)",
                DecisionRule::InstantRunoff => "rank:I,J,… (ranked ballot, most preferred first)",
                _ => "yes, no, abstain or veto",
            };
            let over = if options.is_empty() {
                String::new()
            } else {
                format!(" over {}", listed().join(", "))
            };
            Err(bad(format!("this proposal is decided by {}: vote {form}{over}", rule_name(rule))))
        }
    }
}

/// Reveals this node's committed secret ballot on a proposal (the node also does it by itself
/// in the reveal window).
async fn reveal(AxState(ctx): AxState<Ctx>, UrlPath(id): UrlPath<String>) -> ApiResult {
    let proposal = parse_id(&id)?;
    let ids = ctx
        .call(move |core| {
            engine(core)?
                .proposal(&proposal)
                .ok_or_else(|| not_found(format!("unknown proposal {proposal}")))?;
            core.reveal(Some(proposal))
                .map_err(|e| ApiError(StatusCode::CONFLICT, format!("{e:#}")))
        })
        .await?;
    Ok(Json(json!({ "revealed": ids.iter().map(|m| m.id().to_string()).collect::<Vec<_>>() })))
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
    Body(req): Body<CommentReq>,
) -> ApiResult {
    let proposal = parse_id(&id)?;
    let kind: CommentKind = req
        .kind
        .as_deref()
        .unwrap_or("comment")
        .parse()
        .map_err(|e: UnknownName| bad(e.to_string()))?;
    let parent = req.parent.as_deref().map(parse_id).transpose()?;
    let store = ctx.store.clone();
    if let Some(p) = parent
        && !store.contains(&p)?
    {
        return Err(not_found(format!("unknown parent comment {p}")));
    }
    about_proposal(&ctx, proposal, move |federation, revision, _| {
        Ok(Payload::Comment(Comment {
            kind,
            text: req.text,
            parent,
            proposal,
            revision,
            federation,
        }))
    })
    .await
}

async fn sponsor(AxState(ctx): AxState<Ctx>, UrlPath(id): UrlPath<String>) -> ApiResult {
    let proposal = parse_id(&id)?;
    about_proposal(&ctx, proposal, move |federation, _, _| {
        Ok(Payload::Sponsor(Sponsor { proposal, federation }))
    })
    .await
}

#[derive(Deserialize)]
struct WithdrawReq {
    #[serde(default)]
    reason: Option<String>,
}

async fn withdraw(
    AxState(ctx): AxState<Ctx>,
    UrlPath(id): UrlPath<String>,
    Body(req): Body<WithdrawReq>,
) -> ApiResult {
    let proposal = parse_id(&id)?;
    about_proposal(&ctx, proposal, move |federation, _, _| {
        Ok(Payload::Withdraw(Withdraw { reason: req.reason, proposal, federation }))
    })
    .await
}

async fn revise(
    AxState(ctx): AxState<Ctx>,
    UrlPath(id): UrlPath<String>,
    Body(req): Body<ProposeReq>,
) -> ApiResult {
    let proposal = parse_id(&id)?;
    about_proposal(&ctx, proposal, move |federation, revision, engine| {
        let kind = engine
            .proposal(&proposal)
            .map(|p| p.1.kind)
            .ok_or_else(|| not_found("unknown proposal"))?;
        let action = action_for(kind, &req)?;
        check_rollback(engine, &action)?;
        Ok(Payload::Revision(Revision {
            title: req.title,
            action,
            options: req.options,
            proposal,
            revision: revision + 1,
            federation,
            description: req.description,
        }))
    })
    .await
}

/// The value of the query's only parameter `name` (`?name=…`), if given; any other parameter
/// is refused, naming the one accepted (`what` describes its value).
fn query_param(query: Option<&str>, name: &str, what: &str) -> Result<Option<String>, ApiError> {
    let mut value = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=').map(|(n, v)| (percent_decode(n), percent_decode(v))) {
            Some((Some(n), Some(v))) if n == name => value = Some(v),
            Some((Some(n), None)) if n == name => {
                return Err(bad(format!("{name} is not valid percent-encoded UTF-8")));
            }
            _ => return Err(bad(format!("the only query parameter is {name}={what}"))),
        }
    }
    Ok(value)
}

/// A query component with its `%XX` escapes (and `+` for a space) decoded; `None` if an escape is
/// malformed or the result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The did:key in the query's only parameter `name` (`?name=did:key:…`), if given.
fn query_key(query: Option<&str>, name: &str) -> Result<Option<PublicKey>, ApiError> {
    query_param(query, name, "DID")?.map(|v| parse_key(&v)).transpose()
}

/// `GET /v1/delegations[?member=DID]`: whom the member (default: this node) delegates to, and
/// who delegates to it, directly or through a chain, per scope.
async fn delegations(AxState(ctx): AxState<Ctx>, RawQuery(query): RawQuery) -> ApiResult {
    let member = query_key(query.as_deref(), "member")?;
    ctx.call(move |core| {
        let member = member.unwrap_or_else(|| core.key.public());
        Ok(Json(delegations_json(engine(core)?, &member)))
    })
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

async fn delegate(AxState(ctx): AxState<Ctx>, Body(req): Body<DelegateReq>) -> ApiResult {
    let scope = match req.scope.as_deref().unwrap_or("all") {
        "all" => DelegationScope::All,
        s if s.starts_with("kind:") => {
            DelegationScope::Kind(s[5..].parse().map_err(|e: UnknownName| bad(e.to_string()))?)
        }
        s if s.starts_with("scope:") => {
            DelegationScope::Scope(s[6..].parse().map_err(|e: UnknownName| bad(e.to_string()))?)
        }
        s => return Err(bad(format!("scope is all, kind:TYPE or scope:SCOPE — not {}", clip(s)))),
    };
    let delegate = req.to.as_deref().map(parse_key).transpose()?;
    let id = ctx
        .call(move |core| {
            let federation = engine(core)?.federation();
            Ok(core
                .create(Payload::Delegation(Delegation { scope, delegate, federation }), None)?
                .id())
        })
        .await?;
    Ok(Json(json!({ "id": id.to_string() })))
}

/// Most audit entries in one answer.
const MAX_AUDIT_SHOWN: usize = 1000;

/// `GET /v1/audit[?last=N]`: the last N entries of the audit log (default 50), oldest first.
async fn audit_show(AxState(ctx): AxState<Ctx>, RawQuery(query): RawQuery) -> ApiResult {
    let last = match query_param(query.as_deref(), "last", "N")? {
        Some(v) => v.parse::<usize>().map_err(|_| bad("last is a number"))?,
        None => 50,
    }
    .min(MAX_AUDIT_SHOWN);
    ctx.call(move |core| match core.store.verify_audit()? {
        Ok(entries) => {
            let skip = entries.len().saturating_sub(last);
            Ok(Json(json!({
                "entries": entries.iter().skip(skip).map(|e| json!({
                    "index": e.index, "at_ms": e.at_ms, "event": e.event,
                })).collect::<Vec<_>>(),
            })))
        }
        Err(first_bad) => Err(ApiError(
            StatusCode::CONFLICT,
            format!("the audit log is broken at entry {first_bad}: kosctl audit verify"),
        )),
    })
    .await
}

async fn audit_verify(AxState(ctx): AxState<Ctx>) -> ApiResult {
    ctx.call(|core| match core.store.verify_audit()? {
        Ok(entries) => Ok(Json(
            json!({ "ok": true, "entries": entries.len(), "head": entries.last().map(|e| hex::encode(e.hash)) }),
        )),
        Err(first_bad) => Ok(Json(json!({ "ok": false, "first_bad_entry": first_bad }))),
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_decoded() {
        let q = Some("member=did%3Akey%3Az6Mk");
        assert_eq!(query_param(q, "member", "DID").ok().flatten().as_deref(), Some("did:key:z6Mk"));
        let raw = Some("address=klp://worker/tasks");
        assert_eq!(
            query_param(raw, "address", "A").ok().flatten().as_deref(),
            Some("klp://worker/tasks")
        );
        for bad in ["member=%zz", "member=%4", "member=%ff%fe", "other=1"] {
            assert!(query_param(Some(bad), "member", "DID").is_err(), "{bad}");
        }
        assert_eq!(percent_decode("a+b%20c").as_deref(), Some("a b c"));
    }

    #[test]
    fn loopback_names() {
        for ok in [
            "127.0.0.1",
            "127.0.0.1:7700",
            "localhost:80",
            "LOCALHOST",
            "[::1]:7700",
            "[::1]",
            "127.1.2.3:1",
        ] {
            assert!(loopback_name(ok), "{ok}");
        }
        for no in [
            "evil.example",
            "evil.example:7700",
            "10.0.0.1:7700",
            "localhost.evil.example",
            "[::2]:1",
            "",
        ] {
            assert!(!loopback_name(no), "{no}");
        }
    }

    #[test]
    fn serde_errors_lose_the_values_they_quote() {
        let e = r#"invalid type: string "AAAAAAAA", expected u64 at line 1 column 20"#;
        assert!(!scrub(e).contains("AAAA"), "{}", scrub(e));
        let e = "missing field `title` at line 1 column 2";
        assert!(scrub(e).contains("`title`"), "{}", scrub(e));
        let e = "unknown field `colour`, expected one of `timing`, `hybrid` at line 1 column 9";
        assert_eq!(
            scrub(e),
            "unknown field `colour`, expected one of `timing`, `hybrid` at line 1 column 9"
        );
        let e = "unknown variant `se cret!`, expected `a` at line 1 column 9";
        assert_eq!(scrub(e), "unknown variant `…`, expected `a` at line 1 column 9");
        assert_eq!(scrub("a \"b"), "a \"…");
        let e = "unknown variant `SECRET`, expected one of `core`, `trusted`";
        assert_eq!(scrub(e), "unknown variant `…`, expected one of `core`, `trusted`");
    }
}

// Direct messages, the directory and the policy.

/// Longest wait for a directory lookup.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(15);

fn record_json(r: &kos_protocol::directory::CheckedRecord) -> Value {
    json!({
        "klp_id": r.klp_id.to_string(),
        "did": r.key.to_did(),
        "peer_id": r.key.to_peer_id().to_string(),
        "name": r.record.name,
        "x25519": hex::encode(r.record.x25519),
        "addresses": r.record.addresses,
        "types": r.record.types.iter().map(|c| {
            kos_protocol::MessageType::from_code(u64::from(*c)).map_or_else(|| c.to_string(), |t| t.name().to_owned())
        }).collect::<Vec<_>>(),
        "created_ms": r.created_ms,
        "expires_ms": r.record.expires_ms,
    })
}

/// The host of a `klp://` or `agent://` address.
fn address_host(address: &str) -> Result<(kos_protocol::Address, kos_protocol::Host), ApiError> {
    let a: kos_protocol::Address =
        address.parse().map_err(|e| bad(format!("invalid address: {e}")))?;
    let host = match &a {
        kos_protocol::Address::Klp { host, .. } | kos_protocol::Address::Agent(host) => {
            host.clone()
        }
        kos_protocol::Address::Peer(_) => {
            return Err(bad(
                "a peer:// address names a node, not a KLP identity: use klp:// or agent://",
            ));
        }
    };
    Ok((a, host))
}

async fn lookup(
    ctx: &Ctx,
    host: kos_protocol::Host,
) -> Result<kos_protocol::directory::CheckedRecord, ApiError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    ctx.net.try_send(Command::Resolve { host, reply: tx }).map_err(|_| {
        ApiError(StatusCode::SERVICE_UNAVAILABLE, "the network task is busy".into())
    })?;
    let answer = tokio::time::timeout(RESOLVE_TIMEOUT, rx)
        .await
        .map_err(|_| {
            ApiError(StatusCode::GATEWAY_TIMEOUT, "the directory lookup timed out".into())
        })?
        .map_err(|_| {
            ApiError(StatusCode::SERVICE_UNAVAILABLE, "the network task stopped".into())
        })?;
    match answer {
        Ok(mut records) if !records.is_empty() => Ok(records.remove(0)),
        Ok(_) => Err(not_found("no directory record")),
        Err(e) if e.starts_with("conflict") => Err(ApiError(StatusCode::CONFLICT, e)),
        Err(e) => Err(not_found(e)),
    }
}

/// `GET /v1/resolve?address=klp://…`: the directory record an address resolves to.
async fn resolve(AxState(ctx): AxState<Ctx>, RawQuery(query): RawQuery) -> ApiResult {
    let address = query_param(query.as_deref(), "address", "klp://…")?
        .ok_or_else(|| bad("give address=klp://NAME-OR-KLP-ID/…"))?;
    let (_, host) = address_host(&address)?;
    Ok(Json(record_json(&lookup(&ctx, host).await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendReq {
    /// `klp://NAME-OR-KLP-ID/PATH` or `agent://…`.
    address: String,
    /// `TASK_REQUEST`, `TASK_RESULT` or `BROADCAST_ANNOUNCE`.
    #[serde(rename = "type")]
    kind: String,
    /// The body, as JSON (the fields of `docs/protocol.md` §4).
    payload: Value,
}

/// The inner message of a direct message, from its type name and JSON body.
fn inner_payload(kind: &str, body: Value) -> Result<Payload, ApiError> {
    let t = kos_protocol::MessageType::from_name(kind)
        .ok_or_else(|| bad(format!("unknown message type {}", clip(kind))))?;
    // Serde quotes the offending value: never echo it.
    let bad_body =
        |e: serde_json::Error| bad(format!("invalid {kind} payload: {}", scrub(&e.to_string())));
    let p = match t {
        kos_protocol::MessageType::TaskRequest => {
            Payload::TaskRequest(serde_json::from_value(body).map_err(bad_body)?)
        }
        kos_protocol::MessageType::TaskResult => {
            Payload::TaskResult(serde_json::from_value(body).map_err(bad_body)?)
        }
        kos_protocol::MessageType::BroadcastAnnounce => {
            Payload::BroadcastAnnounce(serde_json::from_value(body).map_err(bad_body)?)
        }
        kos_protocol::MessageType::AgentMigration => Payload::AgentMigration(agent_bundle(&body)?),
        other => {
            return Err(bad(format!(
                "{other} cannot be sent as a direct message here (TASK_REQUEST, TASK_RESULT, AGENT_MIGRATION, BROADCAST_ANNOUNCE)"
            )));
        }
    };
    // Validated like any body before anything is signed.
    Message::sign(&kos_protocol::SecretKey::from_seed(&[1; 32]), 1, 1, None, p.clone())
        .map_err(|e| bad(format!("invalid {kind}: {e}")))?;
    Ok(p)
}

/// An AGENT_MIGRATION from JSON: `{name, agent (did:key), config, audit: [{at_ms, event}]}` —
/// the snapshot and the audit root are computed — or, already built,
/// `{name, agent, snapshot (hex), audit_root (hex)}`.
fn agent_bundle(body: &Value) -> Result<AgentMigration, ApiError> {
    let name = body["name"].as_str().ok_or_else(|| bad("AGENT_MIGRATION needs a name"))?.to_owned();
    let agent = parse_key(
        body["agent"].as_str().ok_or_else(|| bad("AGENT_MIGRATION needs an agent (did:key)"))?,
    )?;
    if let (Some(snapshot), Some(root)) = (body["snapshot"].as_str(), body["audit_root"].as_str()) {
        return Ok(AgentMigration {
            name,
            agent,
            snapshot: serde_bytes::ByteBuf::from(
                hex::decode(snapshot).map_err(|_| bad("snapshot is hex"))?,
            ),
            audit_root: root.parse().map_err(|_| bad("audit_root is 32 bytes of hex"))?,
        });
    }
    let audit: Vec<kos_protocol::agent::AuditRecord> =
        serde_json::from_value(body["audit"].clone())
            .map_err(|e| bad(format!("audit is a list of {{at_ms, event}}: {e}")))?;
    let audit_root = kos_protocol::agent::audit_root(&audit);
    let snapshot = kos_protocol::agent::AgentSnapshot {
        audit,
        config: body["config"].as_str().unwrap_or("").to_owned(),
    };
    Ok(AgentMigration {
        name,
        agent,
        snapshot: serde_bytes::ByteBuf::from(kos_protocol::agent::encode_snapshot(&snapshot)),
        audit_root,
    })
}

/// Seals `inner` to the identity `host` resolves to and puts it in the outbox (durably).
async fn seal_and_queue(
    ctx: &Ctx,
    address: kos_protocol::Address,
    host: kos_protocol::Host,
    inner: Payload,
) -> ApiResult {
    let record = lookup(ctx, host).await?;
    let to = record.klp_id;
    if record.key == ctx.call(|core| Ok(core.key.public())).await? {
        return Err(bad("the address names this node: a node does not send to itself"));
    }
    // The envelope names the recipient by KLP-ID (relays route by it), keeping the path.
    let target = match address {
        kos_protocol::Address::Klp { path, .. } => {
            kos_protocol::Address::Klp { host: kos_protocol::Host::Id(to), path }
        }
        _ => kos_protocol::Address::Agent(kos_protocol::Host::Id(to)),
    };
    let recipient = kos_protocol::seal::EncryptionKey(record.record.x25519);
    let msg = ctx
        .call(move |core| {
            core.sign_detached(|key, seq, now| {
                Ok(kos_protocol::seal::seal(key, &recipient, seq, now, target, &inner)?)
            })
            .map_err(|e| bad(format!("cannot seal: {e:#}")))
        })
        .await?;
    let id = msg.id();
    let entry = kos_storage::mail::OutboxEntry {
        target: to.to_string(),
        from: None,
        attempts: 0,
        next_ms: now_ms(),
        queued_ms: now_ms(),
        last_error: None,
    };
    let mail = ctx.mail.clone();
    let bytes = msg.bytes().to_vec();
    tokio::task::spawn_blocking(move || mail.enqueue(&id.0, &entry, &bytes))
        .await
        .map_err(|_| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "outbox write failed".into()))?
        .map_err(|e| match e {
            kos_storage::mail::MailError::Full(w) => {
                ApiError(StatusCode::SERVICE_UNAVAILABLE, format!("the {w} is full"))
            }
            kos_storage::mail::MailError::Store(e) => ApiError::from(anyhow::Error::from(e)),
        })?;
    let _ = ctx.net.try_send(Command::Pump);
    Ok(Json(json!({ "id": id.to_string(), "to": to.to_string(), "status": "queued" })))
}

/// `POST /v1/send`: seal a message to an address and deliver it (acknowledged hop by hop).
async fn send_direct(AxState(ctx): AxState<Ctx>, Body(req): Body<SendReq>) -> ApiResult {
    let (address, host) = address_host(&req.address)?;
    let inner = inner_payload(&req.kind, req.payload)?;
    seal_and_queue(&ctx, address, host, inner).await
}

fn inbox_json(id: &[u8; 32], e: &kos_storage::mail::InboxEntry, full: bool) -> Value {
    let mut v = json!({
        "id": MessageId(*id).to_string(),
        "type": e.kind,
        "sender": e.sender,
        "sender_klp_id": e.sender_klp_id,
        "target": e.target,
        "created_ms": e.created_ms,
        "received_ms": e.received_ms,
        "body": serde_json::from_str::<Value>(&e.body).unwrap_or(Value::Null),
    });
    if full {
        v["envelope"] = json!(e.envelope);
        v["from_peer"] = json!(e.from_peer);
    }
    v
}

/// `GET /v1/inbox`: messages sealed to this node, oldest first.
async fn inbox(AxState(ctx): AxState<Ctx>) -> ApiResult {
    let mail = ctx.mail.clone();
    let list = tokio::task::spawn_blocking(move || mail.inbox())
        .await
        .map_err(|_| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "inbox read failed".into()))?;
    Ok(Json(
        json!({ "messages": list.iter().map(|(id, e)| inbox_json(id, e, false)).collect::<Vec<_>>() }),
    ))
}

fn inbox_get(ctx: &Ctx, id: &MessageId) -> Result<kos_storage::mail::InboxEntry, ApiError> {
    ctx.mail
        .inbox_entry(&id.0)
        .map_err(|e| ApiError::from(anyhow::Error::from(e)))?
        .ok_or_else(|| not_found(format!("no message {id} in the inbox")))
}

/// `GET /v1/inbox/{id}`: one message, with its envelope.
async fn inbox_show(AxState(ctx): AxState<Ctx>, UrlPath(id): UrlPath<String>) -> ApiResult {
    let id = parse_id(&id)?;
    Ok(Json(inbox_json(&id.0, &inbox_get(&ctx, &id)?, true)))
}

/// `DELETE /v1/inbox/{id}`.
async fn inbox_delete(AxState(ctx): AxState<Ctx>, UrlPath(id): UrlPath<String>) -> ApiResult {
    let id = parse_id(&id)?;
    inbox_get(&ctx, &id)?;
    ctx.mail.delete(&id.0).map_err(|e| ApiError::from(anyhow::Error::from(e)))?;
    Ok(Json(json!({ "deleted": id.to_string() })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplyReq {
    #[serde(default = "yes")]
    ok: bool,
    #[serde(default)]
    outputs: Vec<String>,
    #[serde(default)]
    error: Option<String>,
}

fn yes() -> bool {
    true
}

/// `POST /v1/inbox/{id}/reply`: answers a TASK_REQUEST with a TASK_RESULT bound to it (its
/// `request` is the request's id), sealed to the requester.
async fn reply(
    AxState(ctx): AxState<Ctx>,
    UrlPath(id): UrlPath<String>,
    Body(req): Body<ReplyReq>,
) -> ApiResult {
    let id = parse_id(&id)?;
    let entry = inbox_get(&ctx, &id)?;
    if entry.kind != "TASK_REQUEST" {
        return Err(bad(format!("message {id} is a {}, not a TASK_REQUEST", entry.kind)));
    }
    let body: Value = serde_json::from_str(&entry.body).unwrap_or(Value::Null);
    let task_id = body["task_id"].as_str().unwrap_or_default().to_owned();
    let inner = Payload::TaskResult(TaskResult {
        ok: req.ok,
        error: req.error,
        outputs: req.outputs,
        request: Some(id),
        task_id,
    });
    let klp: kos_protocol::KlpId =
        entry.sender_klp_id.parse().map_err(|_| bad("the request's sender has no KLP-ID"))?;
    let host = kos_protocol::Host::Id(klp);
    let address = kos_protocol::Address::Klp { host: host.clone(), path: "tasks".into() };
    seal_and_queue(&ctx, address, host, inner).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AnnounceReq {
    topic: String,
    text: String,
}

/// Signs `payload` (not governance state) and publishes it on the announcement topic.
fn announce_signed(core: &mut Core, payload: Payload) -> Result<MessageId, ApiError> {
    let msg = core
        .sign_detached(|key, seq, now| Ok(Message::sign(key, seq, now, None, payload)?))
        .map_err(|e| bad(format!("{e:#}")))?;
    core.to_net(crate::core::ToNet::Announce(msg.bytes().to_vec()));
    Ok(msg.id())
}

/// `POST /v1/announce`: a signed BROADCAST_ANNOUNCE on the federation's announcement topic.
async fn announce(AxState(ctx): AxState<Ctx>, Body(req): Body<AnnounceReq>) -> ApiResult {
    let payload =
        Payload::BroadcastAnnounce(BroadcastAnnounce { text: req.text, topic: req.topic });
    let id = ctx
        .call(move |core| {
            engine(core)?;
            announce_signed(core, payload)
        })
        .await?;
    Ok(Json(json!({ "id": id.to_string(), "status": "published" })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReputationReq {
    /// did:key of the subject.
    subject: String,
    /// The change in thousandths (−1000 … 1000).
    delta: i32,
    #[serde(default)]
    reason: String,
}

/// `POST /v1/reputation`: a signed, advisory REPUTATION_DELTA on the announcement topic.
async fn reputation(AxState(ctx): AxState<Ctx>, Body(req): Body<ReputationReq>) -> ApiResult {
    let subject = parse_key(&req.subject)?;
    if req.delta.unsigned_abs() > crate::mail::MAX_REPUTATION_DELTA.unsigned_abs() || req.delta == 0
    {
        return Err(bad("delta is a change in thousandths, from -1000 to 1000, not 0"));
    }
    let payload =
        Payload::ReputationDelta(ReputationDelta { delta: req.delta, reason: req.reason, subject });
    let id = ctx
        .call(move |core| {
            engine(core)?;
            if subject == core.key.public() {
                return Err(bad("a node does not rate itself"));
            }
            announce_signed(core, payload)
        })
        .await?;
    Ok(Json(json!({ "id": id.to_string(), "status": "published" })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VectorSendReq {
    /// A file on this node's machine: little-endian f32 values, `dims` per vector.
    path: String,
    /// The recipient's address (`klp://…`, `agent://…`).
    to: String,
    collection: String,
    dims: u16,
}

/// `POST /v1/vectors/send`: copies the file into the data directory as a transfer (its id is
/// SHA-256 of the data) and sends the recipient its chunk 0 as a sealed direct message; the
/// recipient pulls the rest over `/kos/vector/1.0.0`, resuming after any break.
async fn vectors_send(AxState(ctx): AxState<Ctx>, Body(req): Body<VectorSendReq>) -> ApiResult {
    let (address, host) = address_host(&req.to)?;
    if req.collection.is_empty() || req.collection.chars().count() > 200 {
        return Err(bad("collection: 1 to 200 characters"));
    }
    let record = lookup(&ctx, host.clone()).await?;
    let path = std::path::PathBuf::from(&req.path);
    let meta = crate::vectors::Outgoing {
        transfer: String::new(),
        recipient: record.key.to_did(),
        to: record.klp_id.to_string(),
        x25519: hex::encode(record.record.x25519),
        collection: req.collection,
        dims: req.dims,
        chunks: 0,
        size: 0,
        created_ms: now_ms(),
    };
    let vectors = crate::vectors::Vectors::new(&ctx.data_dir);
    let (meta, chunk0) = tokio::task::spawn_blocking(move || {
        let size = std::fs::metadata(&path)
            .map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?
            .len();
        if size > crate::vectors::MAX_TRANSFER_BYTES {
            return Err(bad(format!("{} is larger than 1 GiB", path.display())));
        }
        let data = std::fs::read(&path)
            .map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?;
        let (meta, _) = vectors.start_outgoing(&data, meta).map_err(|e| bad(e.to_string()))?;
        let chunk0 = vectors.chunk_payload(&meta, 0).map_err(|e| bad(e.to_string()))?;
        Ok((meta, chunk0))
    })
    .await
    .map_err(|_| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "vector send failed".into()))??;
    let Json(queued) = seal_and_queue(&ctx, address, host, Payload::VectorSync(chunk0)).await?;
    Ok(Json(json!({
        "transfer": meta.transfer,
        "to": meta.to,
        "chunks": meta.chunks,
        "size": meta.size,
        "offer": queued["id"],
        "status": "offered",
    })))
}

/// `GET /v1/vectors`: transfers sent and received, with progress.
async fn vectors_list(AxState(ctx): AxState<Ctx>) -> ApiResult {
    let vectors = crate::vectors::Vectors::new(&ctx.data_dir);
    let (outgoing, incoming) = tokio::task::spawn_blocking(move || {
        let incoming: Vec<Value> = vectors
            .incoming()
            .into_iter()
            .map(|m| {
                let held =
                    if m.state == "complete" { m.chunks as usize } else { vectors.held(&m).len() };
                let mut v = json!(m);
                v["held"] = json!(held);
                v
            })
            .collect();
        (vectors.outgoing_all(), incoming)
    })
    .await
    .map_err(|_| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "vector list failed".into()))?;
    Ok(Json(json!({ "outgoing": outgoing, "incoming": incoming })))
}

/// `POST /v1/id/rotate`: a new node key (KEY_ROTATION signed by the old key, proved by the new);
/// the vault holds the new key before anything is signed.
async fn id_rotate(AxState(ctx): AxState<Ctx>) -> ApiResult {
    let (msg, new) = ctx
        .call(|core| {
            engine(core)?;
            let old = core.key.public();
            core.rotate_key().map(|(m, n)| (m, (old, n))).map_err(|e| bad(format!("{e:#}")))
        })
        .await?;
    let (old, new) = new;
    Ok(Json(json!({
        "id": msg.id().to_string(),
        "old_did": old.to_did(),
        "did": new.to_did(),
        "klp_id": new.klp_id().to_string(),
        "at_ms": msg.header().created_ms,
        "note": "the peer id moves to the new key when kosd restarts",
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeReq {
    /// The key to revoke (default: the node key itself).
    #[serde(default)]
    key: Option<String>,
    reason: String,
}

/// `POST /v1/id/revoke`: a REVOCATION of the node key (from then on it signs nothing that
/// counts), or of a key the node rotated away from.
async fn id_revoke(AxState(ctx): AxState<Ctx>, Body(req): Body<RevokeReq>) -> ApiResult {
    let key = req.key.as_deref().map(parse_key).transpose()?;
    if req.reason.chars().count() > kos_protocol::payload::MAX_REASON_CHARS {
        return Err(bad("reason: at most 2000 characters"));
    }
    let msg = ctx
        .call(move |core| {
            engine(core)?;
            let key = key.unwrap_or_else(|| core.key.public());
            let payload =
                Payload::Revocation(kos_protocol::payload::Revocation { key, reason: req.reason });
            core.create(payload, None).map_err(|e| bad(format!("{e:#}")))
        })
        .await?;
    let Payload::Revocation(r) = msg.payload() else { return Err(bad("not a revocation")) };
    Ok(Json(json!({
        "id": msg.id().to_string(),
        "revoked": r.key.to_did(),
        "at_ms": msg.header().created_ms,
    })))
}

/// `GET /v1/outbox`: messages waiting for a next hop, and those given up.
async fn outbox(AxState(ctx): AxState<Ctx>) -> ApiResult {
    let mail = ctx.mail.clone();
    let (pending, failed) = tokio::task::spawn_blocking(move || (mail.outbox(), mail.failed()))
        .await
        .map_err(|_| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "outbox read failed".into()))?;
    let item = |(id, e): &([u8; 32], kos_storage::mail::OutboxEntry)| {
        json!({
            "id": MessageId(*id).to_string(),
            "to": e.target,
            "relayed_for": e.from,
            "attempts": e.attempts,
            "next_ms": e.next_ms,
            "queued_ms": e.queued_ms,
            "last_error": e.last_error,
        })
    };
    Ok(Json(json!({
        "pending": pending.iter().map(item).collect::<Vec<_>>(),
        "failed": failed.iter().map(item).collect::<Vec<_>>(),
    })))
}

/// `GET /v1/policy`: the node's policy document and the federation's, as in force.
async fn policy_show(AxState(ctx): AxState<Ctx>) -> ApiResult {
    let p = ctx.policy.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let (local, federation) = p.texts();
    let (local_rules, federation_rules) = p.rules_json();
    Ok(Json(json!({
        "file": ctx.data_dir.join(crate::policy::POLICY_FILE).display().to_string(),
        "local": local,
        "federation": federation,
        "local_rules": local_rules,
        "federation_rules": federation_rules,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyReq {
    /// The new `.klp-policy` document (TOML).
    text: String,
}

/// `POST /v1/policy`: checks, writes and applies a new node policy at once (no restart).
async fn policy_apply(AxState(ctx): AxState<Ctx>, Body(req): Body<PolicyReq>) -> ApiResult {
    crate::policy::check(&req.text).map_err(|e| bad(e.to_string()))?;
    let path = ctx.data_dir.join(crate::policy::POLICY_FILE);
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, &req.text).and_then(|()| std::fs::rename(&tmp, &path)).map_err(|e| {
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot write the policy: {e}"))
    })?;
    ctx.policy
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .set_local(&req.text)
        .map_err(|e| bad(e.to_string()))?;
    let text = format!("policy applied from the API ({} bytes)", req.text.len());
    let _ = ctx.core.try_send(ToCore::Call(Box::new(move |core| {
        let _ = core.store.audit(now_ms(), &text);
    })));
    Ok(Json(json!({ "applied": path.display().to_string() })))
}

/// `GET /v1/export`: everything a fresh node needs to continue as this one — the identity as
/// sealed in the vault (under the node's passphrase), local trust, the node's policy, known
/// peers, the directory name and the federation followed — signed by the identity
/// (`docs/operator.md`, "Moving a node"). `kosctl export` writes it; `kosctl import` checks it.
async fn export(AxState(ctx): AxState<Ctx>) -> ApiResult {
    let vault = std::fs::read(ctx.data_dir.join("vault.bin")).map_err(|e| {
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot read the vault: {e}"))
    })?;
    let policy =
        ctx.policy.lock().unwrap_or_else(std::sync::PoisonError::into_inner).texts().0.to_owned();
    let name = ctx.name.clone();
    ctx.call(move |core| {
        let body = json!({
            "kind": kos_protocol::EXPORT_KIND,
            "did": core.key.public().to_did(),
            "vault": hex::encode(&vault),
            "trust": core.store.trust()?,
            "policy": policy,
            "peers": core.store.peers()?,
            "name": name,
            "federation": core.engine.as_ref().map(|e| e.federation().to_string()),
            "exported_ms": now_ms(),
        })
        .to_string();
        let signature = core.key.sign(&kos_protocol::export_statement(body.as_bytes()));
        core.store.audit(now_ms(), "identity exported")?;
        Ok(Json(json!({ "export": body, "signature": hex::encode(signature) })))
    })
    .await
}
