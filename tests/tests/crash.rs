//! SIGKILL cycles on a 3-node federation: after an acknowledgement, during a request, and during
//! start-up. Zero acknowledged messages lost, zero failed restarts, identical state hashes at the
//! end. CI runs a short configuration (12 cycles, 20 prefilled messages);
//! `KOS_CRASH_CYCLES=1000 KOS_CRASH_PREFILL=2000 cargo test --release -p kos-tests --test crash --
//! --nocapture` runs the full one (about 10 minutes in release; debug builds verify signatures
//! far more slowly).

use std::path::PathBuf;

use kos_tests::{Node, bin, wait_for};
use serde_json::Value;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

struct Member {
    dir: PathBuf,
    listen: String,
    node: Node,
}

impl Member {
    fn start(dir: PathBuf) -> Member {
        let listen = format!("/ip4/127.0.0.1/tcp/{}", free_port());
        let node = Node::start_on(dir.clone(), &listen);
        Member { dir, listen, node }
    }

    fn restart(&mut self) {
        self.node.kill();
        self.node = Node::start_on(self.dir.clone(), &self.listen);
    }
}

/// A small deterministic generator (the cycle plan replays from its seed).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

fn comment(n: &Node, p: &str, text: &str) -> Option<String> {
    let r = n.ctl(&["comment", p, text]);
    (r.code == Some(0))
        .then(|| serde_json::from_str::<Value>(&r.stdout).ok())
        .flatten()
        .and_then(|v| v["id"].as_str().map(str::to_owned))
}

#[test]
#[allow(clippy::disallowed_methods)] // a test knob and real sleeps
fn sigkill_cycles_lose_no_acknowledged_message() {
    let cycles: u64 =
        std::env::var("KOS_CRASH_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(12);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut nodes: Vec<Member> =
        ["a", "b", "c"].iter().map(|n| Member::start(dir.path().join(n))).collect();
    // A federation of three; B and C join through A.
    let members: Vec<String> =
        nodes[1..].iter().map(|m| format!("{}=trusted", m.node.did())).collect();
    let mut args = vec!["federation", "create", "crash", "--dev-timing"];
    for m in &members {
        args.extend(["--member", m.as_str()]);
    }
    let fed = nodes[0].node.json(&args)["federation"].as_str().expect("fed").to_owned();
    let boot = nodes[0].node.bootstrap_addr();
    for m in &nodes[1..] {
        m.node.json(&["federation", "join", &fed, "--bootstrap", &boot]);
    }
    let p = nodes[0].node.propose_open("Crash");
    for m in &nodes {
        wait_for(60, "the proposal everywhere", || {
            (m.node.ctl(&["show", &p]).code == Some(0)).then_some(())
        });
    }

    // A larger store makes start-up (and kills during it) longer: KOS_CRASH_PREFILL messages.
    let prefill: u64 =
        std::env::var("KOS_CRASH_PREFILL").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    for k in 0..prefill {
        nodes[(k % 3) as usize].node.json(&["comment", &p, &format!("prefill {k}")]);
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut acked: Vec<String> = Vec::new();
    let mut restarts = 0u64;
    for cycle in 0..cycles {
        let i = (cycle % 3) as usize;
        match cycle % 3 {
            // Killed right after an acknowledged write.
            0 => {
                if let Some(id) = comment(&nodes[i].node, &p, &format!("acked {cycle}")) {
                    acked.push(id);
                }
                nodes[i].restart();
            }
            // Killed while a request is in flight: acknowledged or not, never half-done.
            1 => {
                let child = std::process::Command::new(bin("kosctl"))
                    .arg("--data-dir")
                    .arg(&nodes[i].dir)
                    .args(["comment", &p, &format!("racing {cycle}"), "--json"])
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .expect("kosctl");
                std::thread::sleep(std::time::Duration::from_millis(rng.below(40)));
                nodes[i].node.kill();
                let out = child.wait_with_output().expect("kosctl");
                if out.status.success()
                    && let Ok(v) = serde_json::from_slice::<Value>(&out.stdout)
                    && let Some(id) = v["id"].as_str()
                {
                    acked.push(id.to_owned());
                }
                nodes[i].restart();
            }
            // Killed during start-up, then started again.
            _ => {
                nodes[i].node.kill();
                let mut child = std::process::Command::new(bin("kosd"))
                    .arg("--data-dir")
                    .arg(&nodes[i].dir)
                    .args(["run", "--insecure-plain-key", "--listen", &nodes[i].listen])
                    .args(["--api", "127.0.0.1:0"])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .expect("kosd");
                std::thread::sleep(std::time::Duration::from_millis(20 + rng.below(300)));
                let _ = child.kill();
                let _ = child.wait();
                nodes[i].restart();
            }
        }
        restarts += 1;
    }
    assert!(!acked.is_empty());

    // Every node converges to one state that holds every acknowledged message.
    let hashes = |nodes: &[Member]| -> Vec<Value> {
        nodes.iter().map(|m| m.node.status()["state_hash"].clone()).collect()
    };
    wait_for(120, "identical state hashes", || {
        let h = hashes(&nodes);
        (h.iter().all(|x| *x == h[0])).then_some(())
    });
    let dids: Vec<String> = nodes.iter().map(|m| m.node.did()).collect();
    for m in &mut nodes {
        m.node.kill();
    }
    for (m, did) in nodes.iter().zip(&dids) {
        let opts = kos_storage::OpenOptions {
            node_key: did.clone(),
            existing_identity: true,
            ..Default::default()
        };
        let (store, _) = kos_storage::Store::open_node(&m.dir, &opts).expect("reopen");
        for id in &acked {
            let id: kos_protocol::MessageId = id.parse().expect("id");
            assert!(store.contains(&id).expect("store"), "{}: lost {id}", m.dir.display());
        }
    }
    println!(
        "{cycles} kill cycles: {restarts} restarts, {} acknowledged messages, none lost; state \
         hashes identical",
        acked.len()
    );
}
