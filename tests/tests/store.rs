//! The store as an operator's disk treats it: damage to `store/` (bit flips, truncation, zeroed
//! pages, deletion), to the journal (torn tail, flipped bytes, deletion), to both, and a full
//! disk. Every case either recovers to exactly the state the node had, or refuses with a clear
//! error and `kosd repair` gets it back — never a silently smaller state.

use std::path::{Path, PathBuf};

use kos_tests::{Node, run, wait_for};
use serde_json::Value;

/// A node with a federation, a proposal whose discussion outlasts the test (so the state hash
/// holds still) and a few comments; killed with SIGKILL. Returns its data directory and what it
/// reported before the kill.
fn damaged_fixture(dir: &Path) -> (PathBuf, Value) {
    let data = dir.join("origin");
    let mut a = Node::start(data.clone());
    a.json(&["federation", "create", "disk", "--dev-timing"]);
    let p = a.propose_open("Disks");
    for i in 0..12 {
        a.json(&["comment", &p, &format!("comment {i}")]);
    }
    let before = a.status();
    a.kill();
    (data, before)
}

fn copy_dir(from: &Path, to: &Path) {
    let st = std::process::Command::new("cp").arg("-a").arg(from).arg(to).status().expect("cp");
    assert!(st.success());
}

fn flip(path: &Path, offset: u64) {
    let mut bytes = std::fs::read(path).expect("read");
    let i = (offset as usize) % bytes.len();
    bytes[i] ^= 0x10;
    std::fs::write(path, bytes).expect("write");
}

fn segment(data: &Path) -> PathBuf {
    data.join("journal/00000001.seg")
}

fn kosd(data: &Path, args: &[&str]) -> kos_tests::Run {
    let mut all = vec!["--data-dir", data.to_str().expect("path")];
    all.extend_from_slice(args);
    run("kosd", &all, &[])
}

fn run_args() -> Vec<&'static str> {
    vec!["run", "--insecure-plain-key", "--listen", "/ip4/127.0.0.1/tcp/0", "--api", "127.0.0.1:0"]
}

/// Starts a copy of the fixture damaged by `damage`, and checks it comes back with exactly the
/// messages and state it had.
fn recovers(dir: &Path, origin: &Path, before: &Value, case: &str, damage: impl FnOnce(&Path)) {
    let data = dir.join(case);
    copy_dir(origin, &data);
    damage(&data);
    let n = Node::start(data.clone());
    let after = n.status();
    assert_eq!(after["messages"], before["messages"], "{case}: messages");
    assert_eq!(after["state_hash"], before["state_hash"], "{case}: state");
}

#[test]
fn damage_to_the_store_or_the_journal_recovers_exactly_or_refuses_loudly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (origin, before) = damaged_fixture(dir.path());
    assert!(before["messages"].as_u64().expect("messages") >= 14, "{before}");
    let db = |d: &Path| d.join("store/db");

    // store/: single bit flips across the file, truncation, a zeroed page, deletion.
    let len = std::fs::metadata(db(&origin)).expect("db").len();
    for k in 1..=6u64 {
        recovers(dir.path(), &origin, &before, &format!("flip-{k}"), |d| flip(&db(d), len * k / 7));
    }
    recovers(dir.path(), &origin, &before, "truncated", |d| {
        let f = std::fs::OpenOptions::new().write(true).open(db(d)).expect("db");
        f.set_len(len / 2).expect("truncate");
    });
    recovers(dir.path(), &origin, &before, "zeroed-page", |d| {
        let mut bytes = std::fs::read(db(d)).expect("db");
        let start = (bytes.len() / 2) & !4095;
        let end = (start + 4096).min(bytes.len());
        bytes[start..end].fill(0);
        std::fs::write(db(d), bytes).expect("write");
    });
    recovers(dir.path(), &origin, &before, "store-deleted", |d| {
        std::fs::remove_dir_all(d.join("store")).expect("rm");
    });
    // sled's snapshot trap: an empty `snap.*.generating` left by a kill.
    recovers(dir.path(), &origin, &before, "snapshot-trap", |d| {
        std::fs::write(d.join("store/snap.0000000000AAAA.generating"), b"").expect("write");
    });

    // The journal: a torn tail, a flipped byte in the middle, deletion.
    recovers(dir.path(), &origin, &before, "torn-tail", |d| {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new().append(true).open(segment(d)).expect("segment");
        f.write_all(b"KOSJ\x00\x00\x10\x00partial").expect("append");
    });
    let seg_len = std::fs::metadata(segment(&origin)).expect("segment").len();
    recovers(dir.path(), &origin, &before, "journal-flip", |d| flip(&segment(d), seg_len / 2));
    recovers(dir.path(), &origin, &before, "journal-deleted", |d| {
        std::fs::remove_dir_all(d.join("journal")).expect("rm");
    });

    // Both gone: refused, unless the operator asks for a fresh store.
    let data = dir.path().join("both-deleted");
    copy_dir(&origin, &data);
    std::fs::remove_dir_all(data.join("store")).expect("rm");
    std::fs::remove_dir_all(data.join("journal")).expect("rm");
    let r = kosd(&data, &run_args());
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("are missing") && r.stderr.contains("--fresh-store"), "{r:?}");
    let n = Node::start_with(data.clone(), &["--fresh-store"]);
    assert_eq!(n.status()["messages"], 0);
    drop(n);

    // A message lost from both copies: refused with the numbers; `kosd repair` says what it
    // recovered, and the node starts again.
    let data = dir.path().join("lost");
    copy_dir(&origin, &data);
    flip(&segment(&data), seg_len / 2);
    std::fs::remove_dir_all(data.join("store")).expect("rm");
    let r = kosd(&data, &run_args());
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("store is corrupt") && r.stderr.contains("kosd repair"), "{r:?}");
    let expected = before["messages"].as_u64().expect("messages");
    assert!(r.stderr.contains(&format!("records {expected} messages")), "{r:?}");
    let repaired = kosd(&data, &["repair"]);
    assert_eq!(repaired.code, Some(0), "{repaired:?}");
    assert!(repaired.stdout.contains("lost: 1 messages"), "{repaired:?}");
    let n = Node::start(data.clone());
    assert_eq!(n.status()["messages"].as_u64(), Some(expected - 1));

    // Identity and data stay together.
    let data = dir.path().join("vault-deleted");
    copy_dir(&origin, &data);
    std::fs::remove_file(data.join("vault.bin")).expect("rm");
    let r = kosd(&data, &run_args());
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("no vault.bin") && r.stderr.contains("--new-identity"), "{r:?}");
    let data2 = dir.path().join("other-vault");
    copy_dir(&origin, &data2);
    std::fs::remove_file(data2.join("vault.bin")).expect("rm");
    let other = dir.path().join("other");
    kosd(&other, &["init", "--insecure-plain-key"]).ok();
    std::fs::copy(other.join("vault.bin"), data2.join("vault.bin")).expect("copy vault");
    let r = kosd(&data2, &run_args());
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("belongs to node"), "{r:?}");
}

/// A small tmpfs, when this machine lets us mount one (root); otherwise the test says so.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        let at = dir.join("tmpfs");
        std::fs::create_dir_all(&at).ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&at)
            .status()
            .ok()?
            .success();
        ok.then_some(Tmpfs(at))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_is_an_error_not_a_hang_and_the_node_recovers_by_itself() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(fs) = Tmpfs::mount(dir.path(), "48m") else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root)");
        return;
    };
    let data = fs.0.join("node");
    let a = Node::start(data.clone());
    a.json(&["federation", "create", "full", "--dev-timing"]);
    let p = a.propose_open("Full");
    let before = a.status();
    // Fill the disk until less than the node's safety margin is free.
    let filler = fs.0.join("filler");
    let mut size = 0u64;
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&filler).expect("filler");
        let chunk = vec![0xa5u8; 1 << 20];
        while f.write_all(&chunk).is_ok() {
            size += chunk.len() as u64;
            if size > (64 << 20) {
                break;
            }
        }
        let _ = f.sync_all();
    }
    // Leave 8 MiB: below the 16 MiB the node keeps free.
    let keep = 8u64 << 20;
    let f = std::fs::OpenOptions::new().write(true).open(&filler).expect("filler");
    f.set_len(size.saturating_sub(keep)).expect("shrink");
    drop(f);
    // The write fails fast with the reason (a hang would never return: kosctl has no retry).
    let r = a.ctl(&["comment", &p, "no room"]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("no space left"), "{r:?}");
    // Reads keep working, and nothing refused was counted.
    let during = a.status();
    assert_eq!(during["messages"], before["messages"]);
    assert_eq!(during["state_hash"], before["state_hash"]);
    // Space returns: the node writes again, by itself.
    std::fs::remove_file(&filler).expect("rm");
    wait_for(30, "writes to work again", || {
        (a.ctl(&["comment", &p, "room again"]).code == Some(0)).then_some(())
    });
    assert_ne!(a.status()["messages"], before["messages"]);
    drop(a);
}
