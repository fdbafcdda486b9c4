//! `kosd devnet N`: a local federation of N `kosd` processes on loopback, for development.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command},
    time::Duration,
};

use anyhow::{Context, bail};
use serde_json::{Value, json};

struct Node {
    dir: PathBuf,
    child: Child,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for(path: &Path) -> anyhow::Result<String> {
    for _ in 0..200 {
        if let Ok(s) = std::fs::read_to_string(path)
            && !s.is_empty()
        {
            return Ok(s);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("timed out waiting for {}", path.display())
}

/// Calls the control API of the node in `dir`.
pub fn call(dir: &Path, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
    let addr = wait_for(&dir.join("api.addr"))?;
    let token = wait_for(&dir.join("api.token"))?;
    let url = format!("http://{}{path}", addr.trim());
    let auth = format!("Bearer {}", token.trim());
    let agent: ureq::Agent =
        ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut resp = if method == "GET" {
        agent.get(&url).header("Authorization", &auth).call()?
    } else {
        agent
            .post(&url)
            .header("Authorization", &auth)
            .send_json(body.unwrap_or_else(|| json!({})))?
    };
    let status = resp.status();
    let value: Value = resp.body_mut().read_json().context("invalid API response")?;
    if !status.is_success() {
        bail!("{}", value["error"].as_str().unwrap_or("request failed"));
    }
    Ok(value)
}

/// Runs N nodes until Ctrl-C.
pub fn run(dir: &Path, n: u16) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let root = dir.join("devnet");
    let mut nodes = Vec::new();
    for i in 0..n {
        let d = root.join(format!("node-{i}"));
        std::fs::create_dir_all(&d)?;
        let _ = std::fs::remove_file(d.join("api.addr"));
        let child = Command::new(&exe)
            .args(["--data-dir"])
            .arg(&d)
            .args([
                "run",
                "--insecure-plain-key",
                "--listen",
                "/ip4/127.0.0.1/tcp/0",
                "--api",
                "127.0.0.1:0",
                "--sync-interval-secs",
                "2",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(d.join("kosd.log"))?)
            .spawn()
            .context("cannot start kosd")?;
        nodes.push(Node { dir: d, child });
    }
    let statuses: Vec<Value> = nodes
        .iter()
        .map(|nd| call(&nd.dir, "GET", "/v1/status", None))
        .collect::<anyhow::Result<_>>()?;
    let first = &statuses[0];
    let federation = match first["federation"].as_str() {
        Some(f) => f.to_owned(),
        None => {
            let members: Vec<String> = statuses[1..]
                .iter()
                .map(|s| format!("{}=trusted", s["did"].as_str().unwrap_or_default()))
                .collect();
            let r = call(
                &nodes[0].dir,
                "POST",
                "/v1/federation/create",
                Some(json!({"name": "devnet", "members": members, "dev_timing": true})),
            )?;
            r["federation"].as_str().unwrap_or_default().to_owned()
        }
    };
    // Wait for node 0's listen address, then join the others through it.
    let mut bootstrap = None;
    for _ in 0..100 {
        let s = call(&nodes[0].dir, "GET", "/v1/status", None)?;
        bootstrap = s["listen"]
            .as_array()
            .and_then(|a| a.first())
            .and_then(|a| a.as_str())
            .map(|a| format!("{a}/p2p/{}", s["peer_id"].as_str().unwrap_or_default()));
        if bootstrap.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let bootstrap = bootstrap.context("node 0 has no listen address")?;
    for nd in &nodes[1..] {
        call(
            &nd.dir,
            "POST",
            "/v1/federation/join",
            Some(json!({"federation": federation, "bootstrap": bootstrap})),
        )?;
    }
    println!("devnet: {n} nodes, federation {federation}");
    for (i, nd) in nodes.iter().enumerate() {
        println!("  node {i}: kosctl --data-dir {} status", nd.dir.display());
    }
    println!("Ctrl-C (or SIGTERM) stops them.");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    })?;
    // Dropping `nodes` stops every node.
    Ok(())
}
