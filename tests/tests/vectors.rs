//! VECTOR_SYNC with real `kosd` processes: a 50 MB transfer of f32 vectors, pulled by the
//! recipient in sealed, signed chunks, resumes after a SIGKILL of the recipient and of the
//! sender; a chunk damaged on the recipient's disk is caught and fetched again, and the file
//! that arrives is the file that was sent.

use kos_tests::{Node, wait_for};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

const DIMS: usize = 256;
/// 48 828 vectors of 256 f32: 49 999 872 bytes.
const VECTORS: usize = 48_828;

fn incoming(n: &Node, transfer: &str) -> Option<Value> {
    let v = n.try_json(&["vector"])?;
    v["incoming"].as_array()?.iter().find(|t| t["transfer"] == transfer).cloned()
}

fn held(n: &Node, transfer: &str) -> u64 {
    incoming(n, transfer).and_then(|t| t["held"].as_u64()).unwrap_or(0)
}

/// Deterministic vector data (xorshift), as little-endian f32 in [0, 1).
fn data() -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::with_capacity(VECTORS * DIMS * 4);
    for _ in 0..VECTORS * DIMS {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&((x >> 40) as f32 / (1u64 << 24) as f32).to_le_bytes());
    }
    out
}

fn start_receiver(dir: &std::path::Path) -> Node {
    // A cap on pulling, so that the kills land in the middle of the transfer.
    Node::start_with(dir.join("c"), &["--vector-kib-per-sec", "6144"])
}

#[test]
fn a_50_mb_transfer_resumes_after_sigkills_and_refetches_a_damaged_chunk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut a = Node::start(dir.path().join("a"));
    let mut c = start_receiver(dir.path());
    a.json(&["connect", &c.bootstrap_addr()]);
    let to = format!("klp://{}/vectors", c.status()["klp_id"].as_str().expect("klp id"));
    wait_for(60, "C's record at A", || a.try_json(&["resolve", &to]));

    let data = data();
    let file = dir.path().join("embeddings.f32");
    std::fs::write(&file, &data).expect("write data");
    let sent = a.json(&[
        "vector",
        "send",
        file.to_str().expect("utf-8"),
        "--to",
        &to,
        "--collection",
        "embeddings",
        "--dims",
        "256",
    ]);
    let transfer = sent["transfer"].as_str().expect("transfer").to_owned();
    assert_eq!(transfer, hex::encode(Sha256::digest(&data)), "{sent}");
    let chunks = sent["chunks"].as_u64().expect("chunks");
    assert!(chunks > 1000, "{sent}");

    // The recipient is SIGKILLed a quarter of the way, and one chunk it stored is damaged.
    wait_for(120, "a quarter of the chunks at C", || {
        (held(&c, &transfer) >= chunks / 4).then_some(())
    });
    c.kill();
    let chunk_dir = dir.path().join("c").join("vectors").join("in").join(&transfer);
    let damaged = chunk_dir.join("1.klp");
    let mut bytes = std::fs::read(&damaged).expect("a stored chunk");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&damaged, &bytes).expect("damage the chunk");
    let c = start_receiver(dir.path());
    c.json(&["connect", &a.bootstrap_addr()]);
    wait_for(60, "the damaged chunk caught at C", || {
        (incoming(&c, &transfer)?["refetched"].as_u64()? >= 1).then_some(())
    });
    let before = held(&c, &transfer);
    assert!(before < chunks, "the transfer finished before the sender could be killed");

    // The sender is SIGKILLed half way; it restarts and serves the rest.
    wait_for(120, "half of the chunks at C", || (held(&c, &transfer) >= chunks / 2).then_some(()));
    a.kill();
    assert!(held(&c, &transfer) < chunks, "the transfer finished before the sender was killed");
    let a = Node::start(dir.path().join("a"));
    a.json(&["connect", &c.bootstrap_addr()]);

    let done = wait_for(300, "the transfer complete at C", || {
        let t = incoming(&c, &transfer)?;
        (t["state"] == "complete").then_some(t)
    });
    let path = done["file"].as_str().expect("assembled file");
    let received = std::fs::read(path).expect("read the received file");
    assert!(received == data, "the received file differs from the sent one");
    assert!(done["refetched"].as_u64() >= Some(1), "{done}");
    // No chunk is left behind, and the sender lists what it sent.
    // (The chunks are removed just after the record says complete.)
    wait_for(30, "the chunks removed", || {
        (std::fs::read_dir(&chunk_dir).map_or(0, |d| d.count()) <= 1).then_some(())
    });
    let out = a.json(&["vector"]);
    assert_eq!(out["outgoing"][0]["transfer"], transfer.as_str(), "{out}");
}
