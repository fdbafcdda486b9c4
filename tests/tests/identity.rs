//! `kosd init` / `kosd id`: a node identity in an encrypted vault, seen through the real binary.

use kos_protocol::PublicKey;
use kos_tests::run;

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).expect("json output")
}

#[test]
fn init_creates_an_encrypted_identity_whose_names_agree() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("node");
    let data = data.to_str().expect("utf8 path");
    let pass = [("KOS_PASSPHRASE", "a long passphrase")];
    let out = run("kosd", &["--data-dir", data, "init"], &pass).ok();
    assert!(out.contains("did:key:z6Mk"), "{out}");

    let id = json(&run("kosd", &["--data-dir", data, "id", "--json"], &pass).ok());
    let pk = PublicKey::from_did(id["did"].as_str().expect("did")).expect("valid did");
    assert_eq!(id["klp_id"], pk.klp_id().to_string());
    assert_eq!(id["peer_id"], pk.to_peer_id().to_string());
    assert!(out.contains(id["did"].as_str().expect("did")));

    // The vault is private to its owner and does not hold the key in the clear.
    let vault = std::path::Path::new(data).join("vault.bin");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&vault).expect("vault").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert!(std::fs::read(&vault).expect("vault").starts_with(b"KOSVAULT"));
    assert!(std::path::Path::new(data).join("store").is_dir(), "the sled store is created");

    // Same identity on every start.
    let again = json(&run("kosd", &["--data-dir", data, "id", "--json"], &pass).ok());
    assert_eq!(again, id);
}

#[test]
fn vault_and_usage_errors_are_one_clear_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("node");
    let data = data.to_str().expect("utf8 path");

    let err = run("kosd", &["--data-dir", data, "id"], &[]).fails(1);
    assert!(err.contains("run `kosd init` first"), "{err}");

    let err = run("kosd", &["--data-dir", data, "init"], &[]).fails(1);
    assert!(err.contains("no vault passphrase: set KOS_PASSPHRASE"), "{err}");
    assert!(!std::path::Path::new(data).join("vault.bin").exists(), "nothing was written");

    run("kosd", &["--data-dir", data, "init"], &[("KOS_PASSPHRASE", "right")]).ok();
    let err = run("kosd", &["--data-dir", data, "id"], &[("KOS_PASSPHRASE", "wrong")]).fails(1);
    assert!(err.contains("wrong passphrase"), "{err}");
    let err = run("kosd", &["--data-dir", data, "init"], &[("KOS_PASSPHRASE", "right")]).fails(1);
    assert!(err.contains("already holds a node identity"), "{err}");

    // clap's usage errors exit with 2.
    let r = run("kosd", &["--no-such-flag"], &[]);
    assert_eq!(r.code, Some(2), "{r:?}");
}

#[test]
fn development_identity_needs_no_passphrase() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("dev");
    let data = data.to_str().expect("utf8 path");
    run("kosd", &["--data-dir", data, "init", "--insecure-plain-key"], &[]).ok();
    let id = json(&run("kosd", &["--data-dir", data, "id", "--json"], &[]).ok());
    assert!(id["did"].as_str().expect("did").starts_with("did:key:z6Mk"));
}
