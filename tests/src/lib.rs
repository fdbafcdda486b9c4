#![allow(clippy::disallowed_methods)] // liveness deadlines for polling real processes
//! Helpers for the end-to-end tests: they run the real `kosd` and `kosctl` binaries.
//!
//! The binaries are built once per test process with the same cargo and profile that runs the
//! tests, so `cargo test --workspace` is the only command needed.

use std::{
    path::PathBuf,
    process::{Command, Output},
    sync::OnceLock,
};

/// The directory that holds the workspace's built binaries (`target/<profile>`).
fn bin_dir() -> PathBuf {
    // Test executables live in target/<profile>/deps/.
    let exe = std::env::current_exe().expect("test executable path");
    let deps = exe.parent().expect("deps dir");
    deps.parent().expect("profile dir").to_path_buf()
}

/// Path of a workspace binary (`kosd`, `kosctl`), building the binaries on first use.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", "kos-node", "-p", "kos-cli", "--bins"]);
        if bin_dir().file_name().and_then(|n| n.to_str()) == Some("release") {
            cmd.arg("--release");
        }
        let status = cmd
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build for the binaries");
        assert!(status.success(), "building kosd and kosctl failed");
    });
    let path = bin_dir().join(name);
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Run {
    /// Exit code (`None` if killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    /// Asserts success and returns standard output.
    pub fn ok(self) -> String {
        assert_eq!(self.code, Some(0), "command failed: {self:?}");
        self.stdout
    }

    /// Asserts failure with exit code `code` and a single-line error; returns that line.
    pub fn fails(self, code: i32) -> String {
        assert_eq!(self.code, Some(code), "unexpected exit: {self:?}");
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "errors are one line: {self:?}");
        lines[0].to_owned()
    }
}

/// Runs a binary with arguments and environment, no standard input.
pub fn run(name: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(bin(name));
    cmd.args(args).env_remove("KOS_PASSPHRASE").env_remove("KOS_DATA_DIR");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(std::process::Stdio::null()).output().expect("spawn").into()
}

/// Runs a binary with `input` on standard input.
pub fn run_with_input(name: &str, args: &[&str], input: &[u8]) -> Run {
    use std::io::Write;
    let mut child = Command::new(bin(name))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    child.stdin.take().expect("stdin").write_all(input).expect("write stdin");
    child.wait_with_output().expect("wait").into()
}

/// A running `kosd` with its own data directory, on loopback with ephemeral ports.
#[derive(Debug)]
pub struct Node {
    /// Data directory.
    pub dir: PathBuf,
    child: Option<std::process::Child>,
}

/// Polls `f` every 200 ms until it returns `Some`, for at most `secs` seconds; panics with
/// `what` otherwise. A deadline for liveness, not a performance assertion.
pub fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

impl Node {
    /// Starts a node in `dir` (created with a development identity if new), on TCP.
    pub fn start(dir: PathBuf) -> Node {
        Self::start_on(dir, "/ip4/127.0.0.1/tcp/0")
    }

    /// Starts a node with extra `kosd run` flags.
    pub fn start_with(dir: PathBuf, extra: &[&str]) -> Node {
        Self::spawn(dir, "/ip4/127.0.0.1/tcp/0", extra)
    }

    /// Starts a node listening on `listen`.
    pub fn start_on(dir: PathBuf, listen: &str) -> Node {
        Self::spawn(dir, listen, &[])
    }

    /// Starts a node with extra `kosd run` flags and environment variables.
    pub fn start_env(dir: PathBuf, extra: &[&str], env: &[(&str, &str)]) -> Node {
        Self::spawn_env(dir, "/ip4/127.0.0.1/tcp/0", extra, env)
    }

    fn spawn(dir: PathBuf, listen: &str, extra: &[&str]) -> Node {
        Self::spawn_env(dir, listen, extra, &[])
    }

    fn spawn_env(dir: PathBuf, listen: &str, extra: &[&str], env: &[(&str, &str)]) -> Node {
        let _ = std::fs::remove_file(dir.join("api.addr"));
        std::fs::create_dir_all(&dir).expect("data dir");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.with_extension("log"))
            .expect("log file");
        let child = Command::new(bin("kosd"))
            .arg("--data-dir")
            .arg(&dir)
            .args([
                "run",
                "--insecure-plain-key",
                "--listen",
                listen,
                "--api",
                "127.0.0.1:0",
                "--sync-interval-secs",
                "1",
            ])
            .args(extra)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start kosd");
        let mut node = Node { dir, child: Some(child) };
        let log = node.dir.with_extension("log");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !node.dir.join("api.addr").exists() {
            let exited = node.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || std::time::Instant::now() > deadline {
                // Say why: the end of the node's log.
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                panic!(
                    "kosd in {} did not start ({exited:?}); its log ends:\n{}",
                    node.dir.display(),
                    tail.join("\n")
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        wait_for(30, "a listen address", || {
            node.status()["listen"].as_array().filter(|a| !a.is_empty()).map(|_| ())
        });
        node
    }

    /// Runs `kosctl --data-dir DIR ARGS… --json`.
    pub fn ctl(&self, args: &[&str]) -> Run {
        let mut cmd = Command::new(bin("kosctl"));
        cmd.arg("--data-dir").arg(&self.dir).args(args).arg("--json");
        cmd.stdin(std::process::Stdio::null()).output().expect("kosctl").into()
    }

    /// `kosctl --json` with `args`: the answer, or `None` if the command failed (a message that
    /// has not arrived yet, while polling).
    pub fn try_json(&self, args: &[&str]) -> Option<serde_json::Value> {
        let run = self.ctl(args);
        (run.code == Some(0)).then(|| serde_json::from_str(&run.stdout).ok()).flatten()
    }

    /// The node's Prometheus metrics (raw HTTP with its token).
    pub fn metrics(&self) -> String {
        use std::io::{Read, Write};
        let addr = std::fs::read_to_string(self.dir.join("api.addr")).expect("api.addr");
        let token = std::fs::read_to_string(self.dir.join("api.token")).expect("api.token");
        let mut s = std::net::TcpStream::connect(addr.trim()).expect("connect");
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            token.trim()
        )
        .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        out
    }

    /// `kosctl` with `args`, human output (no `--json`); asserts success, returns the text.
    pub fn human(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(bin("kosctl"));
        cmd.arg("--data-dir").arg(&self.dir).args(args);
        Run::from(cmd.stdin(std::process::Stdio::null()).output().expect("kosctl")).ok()
    }

    /// Proposes a resource allocation whose discussion lasts an hour (so statuses, and the
    /// state hash, hold still for a test); returns its id.
    pub fn propose_open(&self, title: &str) -> String {
        self.json(&[
            "propose",
            "--kind",
            "resource_allocation",
            "--title",
            title,
            "--description",
            "Held open for the test.",
            "--discussion-secs",
            "3600",
        ])["id"]
            .as_str()
            .expect("proposal id")
            .to_owned()
    }

    /// `kosctl … --json` that must succeed, parsed.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.ctl(args).ok();
        serde_json::from_str(&out).expect("kosctl prints JSON")
    }

    /// `kosctl status`.
    pub fn status(&self) -> serde_json::Value {
        self.json(&["status"])
    }

    /// A multiaddr other nodes can bootstrap from.
    pub fn bootstrap_addr(&self) -> String {
        let s = self.status();
        format!(
            "{}/p2p/{}",
            s["listen"][0].as_str().expect("listen address"),
            s["peer_id"].as_str().expect("peer id")
        )
    }

    /// The node's did:key.
    pub fn did(&self) -> String {
        self.status()["did"].as_str().expect("did").to_owned()
    }

    /// The node's peer id.
    pub fn peer_id(&self) -> String {
        self.status()["peer_id"].as_str().expect("peer id").to_owned()
    }

    /// Sends the process a signal (`HUP`, `TERM`, …).
    pub fn signal(&self, name: &str) {
        if let Some(c) = &self.child {
            let status =
                Command::new("kill").arg(format!("-{name}")).arg(c.id().to_string()).status();
            assert!(status.is_ok_and(|s| s.success()), "kill -{name}");
        }
    }

    /// Kills the process with SIGKILL (no shutdown, no flush).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Milliseconds since the Unix epoch (for signing messages in tests).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Founds a federation at `founder` with development timing and the given `(node, trust level)`
/// members, has each of them join through the founder and waits until it holds the charter.
/// Returns the federation id.
pub fn found(founder: &Node, name: &str, members: &[(&Node, &str)]) -> String {
    let mut args =
        vec!["federation".to_owned(), "create".into(), name.into(), "--dev-timing".into()];
    for (n, level) in members {
        args.push("--member".into());
        args.push(format!("{}={level}", n.did()));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let fed = founder.json(&args)["federation"].as_str().expect("federation").to_owned();
    let nodes: Vec<&Node> = members.iter().map(|(n, _)| *n).collect();
    join(founder, &fed, &nodes);
    fed
}

/// Waits until proposal `p` has status `status` (`voting`, `executed`, …) on every one of `nodes`.
pub fn wait_status(nodes: &[&Node], p: &str, status: &str) {
    for n in nodes {
        wait_for(60, &format!("status {status}"), || {
            (n.try_json(&["show", p])?["status"] == status).then_some(())
        });
    }
}

/// Has each of `nodes` join federation `fed` through `founder`, and waits until it holds the
/// charter.
pub fn join(founder: &Node, fed: &str, nodes: &[&Node]) {
    let boot = founder.bootstrap_addr();
    for n in nodes {
        n.json(&["federation", "join", fed, "--bootstrap", &boot]);
        wait_for(60, "the charter", || {
            (n.json(&["federation", "show"])["synced"] == true).then_some(())
        });
    }
}

/// A running `kosd devnet` process, stopped with SIGTERM when dropped.
#[derive(Debug)]
pub struct Devnet(pub std::process::Child);

impl Drop for Devnet {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}
