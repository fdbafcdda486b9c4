//! `kosctl decode`: the published test vectors through the real binary.

use kos_tests::{run, run_with_input};

fn vectors() -> serde_json::Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/vectors/klp-v1.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("vectors")).expect("json")
}

#[test]
fn decodes_every_published_envelope() {
    let v = vectors();
    for e in v["envelopes"].as_array().expect("envelopes") {
        let hex = e["envelope_hex"].as_str().expect("hex");
        let out = run_with_input("kosctl", &["decode", "--json"], hex.as_bytes()).ok();
        let got: serde_json::Value = serde_json::from_str(&out).expect("json");
        assert_eq!(got["id"], e["id_hex"]);
        assert_eq!(got["type"], e["type"]);
        assert_eq!(got["body"], e["body_diagnostic"]);
    }
}

#[test]
fn reads_raw_bytes_from_a_file() {
    let v = vectors();
    let hex = v["envelopes"][0]["envelope_hex"].as_str().expect("hex");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("vote.bin");
    std::fs::write(&path, hex::decode(hex).expect("hex")).expect("write");
    let out = run("kosctl", &["decode", "--raw", path.to_str().expect("path")], &[]).ok();
    assert!(out.contains("signature:  valid"), "{out}");
    assert!(out.contains(v["envelopes"][0]["id_hex"].as_str().expect("id")), "{out}");
}

#[test]
fn refuses_bad_envelopes_with_one_line() {
    let v = vectors();
    for r in v["rejections"].as_array().expect("rejections") {
        let hex = r["envelope_hex"].as_str().expect("hex");
        let err = run_with_input("kosctl", &["decode"], hex.as_bytes()).fails(1);
        assert!(err.starts_with("kosctl: error: invalid envelope"), "{err}");
    }
    let err = run_with_input("kosctl", &["decode"], b"zz").fails(1);
    assert!(err.contains("not hexadecimal"), "{err}");
    let err = run("kosctl", &["decode", "/no/such/file"], &[]).fails(1);
    assert!(err.contains("cannot open /no/such/file"), "{err}");
    assert_eq!(run("kosctl", &["frobnicate"], &[]).code, Some(2));
}
