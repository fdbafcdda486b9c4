//! Misuse of the control API: every case gets the right status, a one-line JSON error that does
//! not echo the input, and changes nothing.

use std::io::{Read, Write};

use kos_tests::{Node, run};
use serde_json::{Value, json};

struct Api {
    addr: String,
    token: String,
}

impl Api {
    fn of(node: &Node) -> Api {
        let read = |f: &str| std::fs::read_to_string(node.dir.join(f)).expect(f).trim().to_owned();
        Api { addr: read("api.addr"), token: read("api.token") }
    }

    /// One raw HTTP/1.1 request; returns (status, body).
    fn raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, String) {
        let mut s = std::net::TcpStream::connect(&self.addr).expect("connect");
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.token,
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).expect("write");
        // The server may answer (413) before reading all of a large body.
        let _ = s.write_all(body);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|x| x.1.to_owned()).unwrap_or_default();
        (status, body)
    }

    fn post(&self, path: &str, body: &Value) -> (u16, String) {
        self.raw("POST", path, &[("Content-Type", "application/json")], body.to_string().as_bytes())
    }

    fn get(&self, path: &str) -> (u16, String) {
        self.raw("GET", path, &[], b"")
    }
}

/// The body is `{"error": "one line"}` and short.
fn one_line_error(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    let obj = v.as_object().expect("object");
    assert_eq!(obj.len(), 1, "{body}");
    let e = v["error"].as_str().expect("error string").to_owned();
    assert!(!e.contains('\n') && e.len() < 400, "{e}");
    e
}

fn expect(got: (u16, String), status: u16) -> String {
    assert_eq!(got.0, status, "{}", got.1);
    one_line_error(&got.1)
}

#[test]
fn api_misuse_is_refused_cleanly_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Node::start(dir.path().join("a"));
    let api = Api::of(&a);

    // A failed join (bad multiaddr) leaves the node following nothing.
    let fake_fed = "ab".repeat(32);
    let e = expect(
        api.post(
            "/v1/federation/join",
            &json!({"federation": fake_fed, "bootstrap": "not/a/multiaddr"}),
        ),
        400,
    );
    assert!(e.contains("multiaddr"), "{e}");
    assert_eq!(a.status()["federation"], Value::Null, "a failed join changed the node");
    expect(api.get("/v1/proposals"), 409);

    let fed = a.json(&["federation", "create", "misuse", "--dev-timing"])["federation"]
        .as_str()
        .expect("federation")
        .to_owned();
    let p = a.propose_open("Stable");
    let before = a.status();

    // Durations that overflow (or exceed the charter) are refused, not wrapped.
    for secs in [2_305_843_009_213_693_962u64, u64::MAX, 10 * 3600] {
        let e = expect(
            api.post(
                "/v1/proposals",
                &json!({"kind": "resource_allocation", "title": "t", "description": "d", "voting_secs": secs}),
            ),
            400,
        );
        assert!(e.contains("voting_secs"), "{e}");
    }
    // References to unknown ids: 404.
    let unknown = "cd".repeat(32);
    for path in ["vote", "comment", "sponsor", "withdraw", "revise"] {
        let body = match path {
            "vote" => json!({"choice": "yes"}),
            "comment" => json!({"text": "hello"}),
            "revise" => json!({"kind": "resource_allocation", "title": "t", "description": "d"}),
            _ => json!({}),
        };
        let e = expect(api.post(&format!("/v1/proposals/{unknown}/{path}"), &body), 404);
        assert!(e.contains("unknown proposal"), "{path}: {e}");
    }
    let e = expect(
        api.post(&format!("/v1/proposals/{p}/comment"), &json!({"text": "x", "parent": unknown})),
        404,
    );
    assert!(e.contains("parent"), "{e}");
    expect(api.get(&format!("/v1/proposals/{unknown}")), 404);
    expect(api.get(&format!("/v1/proposals/{unknown}/tally")), 404);
    // A path that is not UTF-8 is an error in the API's one form too.
    expect(api.get("/v1/messages/%FF"), 400);

    // Bodies: not JSON, not declared JSON, the wrong shape, too large.
    expect(api.raw("POST", "/v1/connect", &[("Content-Type", "application/json")], b"{nope"), 400);
    expect(api.raw("POST", "/v1/connect", &[], br#"{"addr": "x"}"#), 415);
    let e = expect(api.post("/v1/connect", &json!({"addr": 7})), 400);
    assert!(e.contains("invalid"), "{e}");
    // An array is not a body, even where every field is optional (it would withdraw).
    let e = expect(api.post(&format!("/v1/proposals/{p}/withdraw"), &json!([])), 400);
    assert!(e.contains("JSON object"), "{e}");
    expect(api.post("/v1/delegate", &json!([null, null])), 400);
    let huge = "A".repeat(1 << 20);
    let (code, body) = api.post("/v1/connect", &json!({ "addr": huge }));
    assert_eq!(code, 413, "{body}");
    one_line_error(&body);
    // Under the limit but long: the error does not echo it.
    let long = "B".repeat(200_000);
    let (code, body) = api.post("/v1/connect", &json!({ "addr": long }));
    assert_eq!(code, 400);
    assert!(body.len() < 500 && !body.contains(&"B".repeat(100)), "echoed: {} bytes", body.len());
    let (code, body) = api.post(&format!("/v1/proposals/{long}/vote"), &json!({"choice": "yes"}));
    assert!(code == 400 || code == 404 || code == 431 || code == 414, "{code}");
    assert!(body.len() < 500, "echoed: {} bytes", body.len());
    let e = expect(api.post(&format!("/v1/proposals/{p}/vote"), &json!({"choice": long})), 400);
    assert!(!e.contains(&"B".repeat(100)), "{e}");

    // Routes and methods.
    expect(api.get("/v1/nothing-here"), 404);
    expect(api.raw("DELETE", "/v1/status", &[], b""), 405);
    // A web page elsewhere (Origin) is refused even with the token.
    expect(api.raw("GET", "/v1/status", &[("Origin", "http://evil.example")], b""), 403);
    assert_eq!(api.raw("GET", "/v1/status", &[("Origin", "http://127.0.0.1:7700")], b"").0, 200);
    // Submitted envelopes: garbage and forgeries are refused one by one.
    let e = expect(api.post("/v1/messages", &json!({"envelope": "zz"})), 400);
    assert!(e.contains("hexadecimal"), "{e}");
    let r = api.post("/v1/messages", &json!({"envelopes": ["00", "82"]}));
    assert_eq!(r.0, 200, "{}", r.1);
    let v: Value = serde_json::from_str(&r.1).expect("json");
    assert_eq!(v["results"].as_array().map(Vec::len), Some(2));
    assert!(v["results"][0]["error"].as_str().is_some_and(|e| e.contains("invalid envelope")));

    // Direct messages, the directory and the policy: bad input is refused by name.
    let e = expect(api.get("/v1/resolve?address=ftp://x"), 400);
    assert!(e.contains("invalid address"), "{e}");
    let e = expect(api.get(&format!("/v1/resolve?address=peer://{}", a.peer_id())), 400);
    assert!(e.contains("peer://"), "{e}");
    expect(api.get("/v1/resolve"), 400);
    // Query values are percent-decoded, as every HTTP client sends them.
    let e = expect(api.get("/v1/resolve?address=klp%3A%2F%2Fnobody-at-all%2Fx"), 404);
    assert!(e.contains("no directory record"), "{e}");
    expect(api.get("/v1/resolve?address=klp%3"), 400);
    let e = expect(api.get("/v1/resolve?address=klp://nobody-at-all/x"), 404);
    assert!(e.contains("no directory record"), "{e}");
    let e = expect(
        api.post("/v1/send", &json!({"address": "klp://x/y", "type": "NOT_A_TYPE", "payload": {}})),
        400,
    );
    assert!(e.contains("unknown message type"), "{e}");
    let e = expect(
        api.post("/v1/send", &json!({"address": "klp://x/y", "type": "VOTE", "payload": {}})),
        400,
    );
    assert!(e.contains("cannot be sent as a direct message"), "{e}");
    // A payload of the wrong shape is refused without quoting what was sent.
    let e = expect(
        api.post(
            "/v1/send",
            &json!({"address": "klp://x/y", "type": "TASK_REQUEST",
                    "payload": {"inputs": "SECRET-VALUE-123", "task_id": "t"}}),
        ),
        400,
    );
    assert!(e.contains("invalid TASK_REQUEST payload") && !e.contains("SECRET"), "{e}");
    let e = expect(
        api.post(
            "/v1/send",
            &json!({"address": "klp://x/y", "type": "TASK_REQUEST", "payload": {"task_id": 7}}),
        ),
        400,
    );
    assert!(e.contains("invalid TASK_REQUEST payload"), "{e}");
    let me = format!("klp://{}/x", a.status()["klp_id"].as_str().expect("klp id"));
    let e = expect(
        api.post(
            "/v1/send",
            &json!({"address": me, "type": "BROADCAST_ANNOUNCE", "payload": {"topic": "t", "text": "x"}}),
        ),
        400,
    );
    assert!(e.contains("does not send to itself"), "{e}");
    expect(api.get(&format!("/v1/inbox/{unknown}")), 404);
    expect(api.raw("DELETE", &format!("/v1/inbox/{unknown}"), &[], b""), 404);
    expect(api.post(&format!("/v1/inbox/{unknown}/reply"), &json!({})), 404);
    expect(api.get("/v1/inbox/not-an-id"), 400);
    let e = expect(api.post("/v1/policy", &json!({"text": "[types]\ndeny = [\"NOPE\"]"})), 400);
    assert!(e.contains("NOPE"), "{e}");
    let e = expect(
        api.post(
            "/v1/policy",
            &json!({"text": "[types]\nallow = [\"TASK_REQUEST\"]\ncolour = 1\n"}),
        ),
        400,
    );
    assert!(e.contains("line 3, column 1: unknown field `colour`"), "{e}");
    assert!(!api.get("/v1/policy").1.contains("NOPE"));
    let outbox: Value = serde_json::from_str(&api.get("/v1/outbox").1).expect("json");
    assert_eq!(outbox["pending"], json!([]), "nothing was queued: {outbox}");

    // Nothing of all that changed the node.
    let after = a.status();
    assert_eq!(after["messages"], before["messages"]);
    assert_eq!(after["state_hash"], before["state_hash"]);
    assert_eq!(after["federation"].as_str(), Some(fed.as_str()));

    // kosctl prints the server's own error.
    let r = run(
        "kosctl",
        &["--data-dir", a.dir.to_str().expect("utf-8"), "vote", &unknown, "yes"],
        &[],
    );
    let err = r.fails(1);
    assert!(err.contains(&format!("unknown proposal {unknown}")), "{err}");
}

#[test]
fn half_open_connections_are_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Node::start(dir.path().join("a"));
    let api = Api::of(&a);
    // A client that sends half a request line and then nothing.
    let mut conns: Vec<std::net::TcpStream> = (0..20)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(&api.addr).expect("connect");
            s.write_all(b"GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\n").expect("write");
            s.set_read_timeout(Some(std::time::Duration::from_secs(60))).expect("timeout");
            s
        })
        .collect();
    // The server closes each of them (after its header timeout) instead of waiting forever.
    for s in &mut conns {
        let mut buf = Vec::new();
        let r = s.read_to_end(&mut buf);
        assert!(r.is_ok(), "the connection was still open after 60 s: {r:?}");
    }
    // And it still serves everyone else.
    assert_eq!(api.get("/v1/status").0, 200);
}

/// Blocking a live peer, letting it try again, unblocking, and blocking it again leaves the node
/// running (the block list once ran after the request-response behaviours had registered the
/// connection it denied, and a debug assertion in request-response ended the process).
#[test]
fn blocking_again_a_peer_that_came_back_keeps_the_node_running() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Node::start(dir.path().join("a"));
    let b = Node::start(dir.path().join("b"));
    let (api_a, api_b) = (Api::of(&a), Api::of(&b));
    let addr = a.bootstrap_addr();
    let peer_b = b.peer_id();
    let connected = |n: &Node, p: &str| {
        n.status()["peers"].as_array().is_some_and(|l| l.iter().any(|x| x == p))
    };
    assert_eq!(api_b.post("/v1/connect", &json!({"addr": addr})).0, 200);
    kos_tests::wait_for(30, "a connection", || connected(&a, &peer_b).then_some(()));
    for round in 0..3 {
        assert_eq!(api_a.post("/v1/block", &json!({"peer": peer_b})).0, 200, "round {round}");
        // B dials again: refused while blocked.
        let _ = api_b.post("/v1/connect", &json!({"addr": addr}));
        std::thread::sleep(std::time::Duration::from_millis(500));
        assert_eq!(api_a.post("/v1/unblock", &json!({"peer": peer_b})).0, 200);
        assert_eq!(api_b.post("/v1/connect", &json!({"addr": addr})).0, 200);
        kos_tests::wait_for(30, "the connection back", || connected(&a, &peer_b).then_some(()));
    }
    assert_eq!(api_a.post("/v1/block", &json!({"peer": peer_b})).0, 200);
    std::thread::sleep(std::time::Duration::from_millis(500));
    // Still answering.
    assert_eq!(api_a.get("/v1/status").0, 200);
    assert!(!connected(&a, &peer_b));
}
