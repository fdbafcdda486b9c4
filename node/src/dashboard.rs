//! The operator's web dashboard: static assets embedded in the binary, and the sessions a
//! browser signs in with.
//!
//! The page is served by the control API on its loopback address. It holds no secret: it asks for
//! a session first, either from a one-time code (`kosctl dashboard` prints a link carrying one in
//! the URL fragment, which never reaches a server log or a `Referer`) or from the API token typed
//! into its login form. A session token is a bearer token like the API token but narrower: it
//! reads (every `GET` but the identity export) and it votes and comments, nothing else. Sessions
//! and codes live in memory only, are bounded in number and expire; a restart ends them all.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use axum::{
    http::{HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
};

/// How long a one-time code printed by `kosctl dashboard` can be used.
pub const CODE_TTL_MS: u64 = 5 * 60 * 1000;
/// How long a browser session lasts.
pub const SESSION_TTL_MS: u64 = 12 * 60 * 60 * 1000;
/// Most one-time codes outstanding (the oldest is dropped beyond it).
pub const MAX_CODES: usize = 16;
/// Most sessions at once (the oldest is dropped beyond it).
pub const MAX_SESSIONS: usize = 64;

/// The embedded assets: (file name, content type, bytes).
const ASSETS: &[(&str, &str, &str)] = &[
    ("index.html", "text/html; charset=utf-8", include_str!("dashboard/index.html")),
    ("app.js", "text/javascript; charset=utf-8", include_str!("dashboard/app.js")),
    ("style.css", "text/css; charset=utf-8", include_str!("dashboard/style.css")),
];

/// The content security policy of every dashboard response: nothing but the node's own
/// scripts, styles and API; no inline script, no frames, no form posts elsewhere.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// What a bearer token grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grant {
    /// The API token: everything.
    Full,
    /// A dashboard session: reading, voting and commenting.
    Session,
}

/// One-time codes and sessions, in memory.
#[derive(Clone, Default)]
pub struct Sessions {
    inner: Arc<Mutex<Inner>>,
    /// Serve the assets from this directory instead of the embedded copies (`KOS_DASHBOARD_DIR`,
    /// for working on the page without rebuilding the node).
    pub asset_dir: Option<PathBuf>,
}

#[derive(Default)]
struct Inner {
    /// code → expiry (ms since the epoch).
    codes: HashMap<String, u64>,
    /// session token → expiry.
    sessions: HashMap<String, u64>,
}

fn insert_bounded(map: &mut HashMap<String, u64>, key: String, expires: u64, max: usize) {
    while map.len() >= max {
        // The entry that expires first goes.
        match map.iter().min_by_key(|(_, e)| **e).map(|(k, _)| k.clone()) {
            Some(oldest) => map.remove(&oldest),
            None => break,
        };
    }
    map.insert(key, expires);
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the tokens themselves.
        let inner = self.lock();
        f.debug_struct("Sessions")
            .field("codes", &inner.codes.len())
            .field("sessions", &inner.sessions.len())
            .field("asset_dir", &self.asset_dir)
            .finish()
    }
}

impl Sessions {
    /// No sessions yet; assets from `asset_dir` if given, else the embedded ones.
    pub fn new(asset_dir: Option<PathBuf>) -> Self {
        Sessions { inner: Arc::default(), asset_dir }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain maps behind: still usable.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new one-time code, valid for [`CODE_TTL_MS`].
    pub fn new_code(&self, token: String, now: u64) -> u64 {
        let mut inner = self.lock();
        inner.codes.retain(|_, e| *e > now);
        let expires = now + CODE_TTL_MS;
        insert_bounded(&mut inner.codes, token, expires, MAX_CODES);
        expires
    }

    /// Spends a one-time code: a new session token, or `None` if the code is unknown, used or
    /// expired.
    pub fn redeem(&self, code: &str, session: String, now: u64) -> Option<u64> {
        let mut inner = self.lock();
        inner.codes.retain(|_, e| *e > now);
        inner.codes.remove(code)?;
        Some(self.open_locked(&mut inner, session, now))
    }

    /// Opens a session (the caller proved it holds the API token).
    pub fn open(&self, session: String, now: u64) -> u64 {
        let mut inner = self.lock();
        self.open_locked(&mut inner, session, now)
    }

    fn open_locked(&self, inner: &mut Inner, session: String, now: u64) -> u64 {
        inner.sessions.retain(|_, e| *e > now);
        let expires = now + SESSION_TTL_MS;
        insert_bounded(&mut inner.sessions, session, expires, MAX_SESSIONS);
        expires
    }

    /// Ends a session.
    pub fn close(&self, session: &str) -> bool {
        self.lock().sessions.remove(session).is_some()
    }

    /// Whether `token` is a live session.
    pub fn is_live(&self, token: &str, now: u64) -> bool {
        let inner = self.lock();
        inner
            .sessions
            .iter()
            .any(|(t, e)| *e > now && crate::api::constant_time_eq(t.as_bytes(), token.as_bytes()))
    }

    /// Sessions open now.
    pub fn live(&self, now: u64) -> usize {
        self.lock().sessions.values().filter(|e| **e > now).count()
    }

    /// An asset by file name (`index.html` for the directory itself).
    pub fn asset(&self, name: &str) -> Response {
        let Some((file, mime, embedded)) = ASSETS.iter().find(|(f, _, _)| *f == name) else {
            // The API's one error form, like every other unknown path.
            return (
                StatusCode::NOT_FOUND,
                axum::Json(serde_json::json!({ "error": "no such dashboard file" })),
            )
                .into_response();
        };
        let body = match &self.asset_dir {
            Some(dir) => match std::fs::read_to_string(dir.join(file)) {
                Ok(text) => text,
                Err(_) => (*embedded).to_owned(),
            },
            None => (*embedded).to_owned(),
        };
        let mut resp = (StatusCode::OK, body).into_response();
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
        h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
        h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }
}

/// Routes that need no token: the page itself and the sign-in.
pub fn is_public(method: &Method, path: &str) -> bool {
    (method == Method::GET
        && (path == "/" || path == "/dashboard" || path.starts_with("/dashboard/")))
        || (method == Method::POST && path == "/v1/session")
}

/// Whether a dashboard session may make this request: reads (but the identity export), votes,
/// comments, and ending itself.
pub fn session_may(method: &Method, path: &str) -> bool {
    if method == Method::GET {
        return path != "/v1/export";
    }
    if method == Method::DELETE {
        return path == "/v1/session";
    }
    method == Method::POST
        && path.strip_prefix("/v1/proposals/").is_some_and(|rest| {
            rest.split_once('/')
                .is_some_and(|(id, verb)| !id.is_empty() && matches!(verb, "vote" | "comment"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_read_vote_and_comment_only() {
        assert!(session_may(&Method::GET, "/v1/proposals"));
        assert!(session_may(&Method::GET, "/metrics"));
        assert!(session_may(&Method::POST, "/v1/proposals/abc/vote"));
        assert!(session_may(&Method::POST, "/v1/proposals/abc/comment"));
        assert!(session_may(&Method::DELETE, "/v1/session"));
        for (m, p) in [
            (Method::GET, "/v1/export"),
            (Method::POST, "/v1/proposals"),
            (Method::POST, "/v1/proposals/abc/withdraw"),
            (Method::POST, "/v1/proposals//vote"),
            (Method::POST, "/v1/id/rotate"),
            (Method::POST, "/v1/dashboard/link"),
            (Method::POST, "/v1/trust"),
            (Method::DELETE, "/v1/inbox/abc"),
        ] {
            assert!(!session_may(&m, p), "{m} {p}");
        }
    }

    #[test]
    fn codes_are_spent_once_and_expire() {
        let s = Sessions::default();
        s.new_code("c1".into(), 1_000);
        assert!(s.redeem("nope", "s0".into(), 1_001).is_none());
        assert!(s.redeem("c1", "s1".into(), 1_001).is_some());
        assert!(s.is_live("s1", 1_002));
        assert!(s.redeem("c1", "s2".into(), 1_002).is_none(), "a code works once");
        s.new_code("c2".into(), 1_000);
        assert!(s.redeem("c2", "s3".into(), 1_000 + CODE_TTL_MS).is_none(), "expired");
        assert!(!s.is_live("s1", 1_001 + SESSION_TTL_MS), "sessions expire");
        assert!(s.close("s1"));
        assert!(!s.is_live("s1", 1_002));
    }

    #[test]
    fn bounded() {
        let s = Sessions::default();
        for i in 0..(MAX_SESSIONS as u64 + 10) {
            s.open(format!("s{i}"), i);
        }
        assert_eq!(s.live(0), MAX_SESSIONS);
        assert!(!s.is_live("s0", 100), "the oldest went first");
        for i in 0..(MAX_CODES as u64 + 5) {
            s.new_code(format!("c{i}"), i);
        }
        assert!(s.redeem("c0", "x".into(), 30).is_none());
        assert!(s.redeem(&format!("c{}", MAX_CODES + 4), "y".into(), 30).is_some());
    }
}
