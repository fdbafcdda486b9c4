//! Running `kosd` as a service: the systemd unit in `docs/systemd/kosd.service` verifies, the
//! vault passphrase comes from a systemd credential, `kosd config show` names every value's
//! source, SIGHUP reloads what can change while running, and a first start warns of nothing.

use kos_tests::{Node, bin, run, wait_for};

fn repo(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// `systemd-analyze verify` accepts the unit (with ExecStart pointing at the built binary), and
/// its offline security analysis rates its exposure at most 2.0 of 10.
#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let unit = std::fs::read_to_string(repo("docs/systemd/kosd.service")).expect("unit file");
    for directive in [
        "DynamicUser=yes",
        "StateDirectory=kos",
        "ProtectSystem=strict",
        "Restart=on-failure",
        "LoadCredential=kos-passphrase:",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Environment=KOS_DATA_DIR=/var/lib/kos",
    ] {
        assert!(unit.contains(directive), "the unit lacks {directive}");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let kosd = bin("kosd");
    let path = dir.path().join("kosd.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/kosd", &kosd.display().to_string()))
        .expect("write unit");
    let verify = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian package systemd; .ci/run installs it)");
    let stderr = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success() && stderr.trim().is_empty(), "verify: {stderr}");
    // The same check fails on a unit that is wrong: it is a real check.
    let bad = dir.path().join("bad.service");
    std::fs::write(&bad, unit.replace("/usr/local/bin/kosd", "/nonexistent/kosd")).expect("bad");
    let refused = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&bad)
        .output()
        .expect("systemd-analyze");
    assert!(!refused.status.success(), "a unit whose binary is missing must not verify");
    let security = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--threshold=20"])
        .arg(&path)
        .output()
        .expect("systemd-analyze security");
    let text = String::from_utf8_lossy(&security.stdout);
    let level = text.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_default();
    assert!(security.status.success(), "exposure above 2.0: {level}");
    println!("{level}");
}

/// The passphrase from `$CREDENTIALS_DIRECTORY/kos-passphrase` (what `LoadCredential=` gives)
/// opens a vault sealed under a real passphrase; a wrong one does not; `kosd config show` says
/// where each value came from; SIGHUP applies a new quota and names what needs a restart.
#[test]
fn a_service_start_with_a_credential_config_sources_and_reload() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("node");
    let dir_s = dir.to_str().expect("utf-8 path");
    let out = run("kosd", &["--data-dir", dir_s, "init"], &[("KOS_PASSPHRASE", "correct horse")]);
    let did = out.ok().split_whitespace().last().expect("did").to_owned();

    // A wrong credential: a clear error, nothing opened.
    let wrong = tmp.path().join("wrong");
    std::fs::create_dir_all(&wrong).expect("dir");
    std::fs::write(wrong.join("kos-passphrase"), "battery staple\n").expect("write");
    let r = run(
        "kosd",
        &["--data-dir", dir_s, "run", "--api", "127.0.0.1:0", "--listen", "/ip4/127.0.0.1/tcp/0"],
        &[("CREDENTIALS_DIRECTORY", wrong.to_str().expect("utf-8"))],
    );
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("cannot open") && r.stderr.contains("vault.bin"), "{}", r.stderr);

    let creds = tmp.path().join("creds");
    std::fs::create_dir_all(&creds).expect("dir");
    // A trailing line break, as an editor leaves it, is not part of the passphrase.
    std::fs::write(creds.join("kos-passphrase"), "correct horse\n").expect("write");
    let cred_env = [("CREDENTIALS_DIRECTORY", creds.to_str().expect("utf-8"))];

    std::fs::write(dir.join("kosd.toml"), "author_burst = 500\nsync_interval_secs = 3\n")
        .expect("config");
    let shown = run(
        "kosd",
        &["--data-dir", dir_s, "config", "show", "--json", "--max-connections", "40"],
        &[cred_env[0], ("KOS_API", "127.0.0.1:7788")],
    )
    .ok();
    let shown: serde_json::Value = serde_json::from_str(&shown).expect("json");
    let source = |key: &str| {
        shown
            .as_array()
            .and_then(|a| a.iter().find(|s| s["key"] == key))
            .map(|s| (s["value"].clone(), s["source"].as_str().unwrap_or_default().to_owned()))
            .unwrap_or_else(|| panic!("{key} missing from {shown}"))
    };
    assert_eq!(source("max_connections"), (40.into(), "flag --max-connections".into()));
    assert_eq!(source("api"), ("127.0.0.1:7788".into(), "environment KOS_API".into()));
    let (burst, from) = source("author_burst");
    assert_eq!(burst, 500);
    assert!(from.starts_with("file ") && from.ends_with("kosd.toml"), "{from}");
    assert_eq!(source("author_per_minute").1, "default");
    let (value, from) = source("passphrase");
    assert_eq!(value, "(not shown)");
    assert!(from.ends_with("creds/kos-passphrase"), "{from}");
    // The human form: one aligned line per setting, the source last.
    let human = run("kosd", &["--data-dir", dir_s, "config", "show"], &[]).ok();
    let line = human.lines().find(|l| l.starts_with("author burst")).expect("a line");
    assert!(line.contains("500") && line.trim_end().ends_with("kosd.toml"), "{human}");

    let node = Node::start_env(dir.clone(), &[], &cred_env);
    assert_eq!(node.status()["did"], did.as_str(), "the vault opened with the credential");
    let log_path = dir.with_extension("log");
    let first_start = std::fs::read_to_string(&log_path).expect("log");
    assert!(!first_start.contains("WARN"), "a normal first start warns of nothing:\n{first_start}");

    std::fs::write(dir.join("kosd.toml"), "author_burst = 77\nmax_connections = 5\n")
        .expect("config");
    node.signal("HUP");
    let log = wait_for(30, "the reload in the log", || {
        let text = std::fs::read_to_string(&log_path).ok()?;
        (text.contains("per-author quota") && text.contains("next restart")).then_some(text)
    });
    let reload = log.lines().find(|l| l.contains("per-author quota")).expect("line");
    assert!(reload.contains("burst=77"), "{reload}");
    let restart = log.lines().find(|l| l.contains("next restart")).expect("line");
    assert!(restart.contains("max_connections"), "{restart}");
    // Still serving.
    assert_eq!(node.status()["did"], did.as_str());
}
