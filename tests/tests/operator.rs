//! What an operator sees: every command's `--help` ends with an example that parses, shell
//! completions and manual pages come from the command line's definition, human output is
//! aligned and labelled (never colour codes in a pipe), `--json` is unchanged, and `status`
//! shows the progress of long work.

use kos_tests::{Node, bin, found, run, wait_for};

/// The commands `--help` lists.
fn commands(binary: &str) -> Vec<String> {
    let help = run(binary, &["--help"], &[]).ok();
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_owned)
        .collect()
}

/// The example lines at the end of `BINARY COMMAND --help`.
fn examples(binary: &str, command: &str) -> Vec<String> {
    let help = run(binary, &[command, "--help"], &[]).ok();
    let lines: Vec<String> = help
        .lines()
        .skip_while(|l| !l.starts_with("Example"))
        .skip(1)
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect();
    assert!(!lines.is_empty(), "`{binary} {command} --help` has no example:\n{help}");
    lines
}

#[test]
fn every_command_has_an_example_that_parses() {
    let kosctl = commands("kosctl");
    assert!(kosctl.len() >= 40, "{kosctl:?}");
    for c in &kosctl {
        for ex in examples("kosctl", c) {
            // The command itself, without shell redirections or comments.
            let ex = ex.split(" #").next().unwrap_or_default();
            let ex = ex
                .split(['|', '&'])
                .find(|part| part.contains("kosctl "))
                .expect("an example runs kosctl");
            let ex = ex.split('>').next().unwrap_or_default();
            let words = shell_words(ex.trim());
            let start = words.iter().position(|w| w == "kosctl").expect("starts with kosctl");
            let args: Vec<&str> = words[start + 1..].iter().map(String::as_str).collect();
            // No node runs: anything but a usage error (exit status 2) means it parsed.
            let r = run("kosctl", &args, &[("KOS_DATA_DIR", "/nonexistent/kos")]);
            assert_ne!(r.code, Some(2), "the example `{ex}` does not parse: {}", r.stderr);
        }
    }
    for c in commands("kosd") {
        examples("kosd", &c);
    }
}

/// Splits a command line into words, honouring single and double quotes.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote = None;
    let mut started = false;
    for c in line.chars() {
        match (quote, c) {
            (None, '\'' | '"') => {
                quote = Some(c);
                started = true;
            }
            (Some(q), c) if c == q => quote = None,
            (None, ' ') => {
                if started {
                    words.push(std::mem::take(&mut word));
                    started = false;
                }
            }
            (_, c) => {
                word.push(c);
                started = true;
            }
        }
    }
    if started {
        words.push(word);
    }
    words
}

#[test]
fn completions_and_manual_pages_come_from_the_command_line() {
    let bash = run("kosctl", &["completions", "bash"], &[]).ok();
    // Valid bash that completes the commands.
    let mut check = std::process::Command::new("bash")
        .arg("-n")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("bash");
    std::io::Write::write_all(check.stdin.as_mut().expect("stdin"), bash.as_bytes()).expect("w");
    assert!(check.wait().expect("bash -n").success(), "bash completion is not valid bash");
    for c in ["vote", "propose", "dashboard", "federation"] {
        assert!(bash.contains(c), "bash completion lacks {c}");
    }
    let zsh = run("kosctl", &["completions", "zsh"], &[]).ok();
    assert!(zsh.starts_with("#compdef kosctl"), "{}", &zsh[..zsh.len().min(80)]);
    let fish = run("kosctl", &["completions", "fish"], &[]).ok();
    assert!(fish.contains("complete -c kosctl"));
    assert_eq!(run("kosctl", &["completions", "tcsh"], &[]).code, Some(2));
    assert!(run("kosd", &["completions", "bash"], &[]).ok().contains("_kosd()"));

    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().to_str().expect("utf-8");
    run("kosctl", &["man", "--out", out], &[]).ok();
    run("kosd", &["man", "--out", out], &[]).ok();
    let vote = std::fs::read_to_string(dir.path().join("kosctl-vote.1")).expect("kosctl-vote.1");
    assert!(vote.contains(".TH kosctl-vote 1"), "{}", &vote[..vote.len().min(200)]);
    assert!(vote.contains("rank:2,0,1"), "the page carries the example");
    for page in ["kosctl.1", "kosd.1", "kosd-run.1", "kosd-config.1", "kosctl-dashboard.1"] {
        assert!(dir.path().join(page).exists(), "{page} not written");
    }
    // `man` renders them (where man-db is installed).
    if let Ok(o) = std::process::Command::new("man")
        .arg("-l")
        .arg(dir.path().join("kosctl-vote.1"))
        .env("MANPAGER", "cat")
        .output()
        && o.status.success()
    {
        assert!(String::from_utf8_lossy(&o.stdout).contains("kosctl-vote"));
    }
}

#[test]
fn human_output_status_peers_and_federation() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = Node::start(tmp.path().join("a"));
    let b = Node::start(tmp.path().join("b"));
    let fed = found(&a, "people", &[(&b, "trusted")]);
    wait_for(60, "a connection", || (a.status()["peers"].as_array()?.len() == 1).then_some(()));

    // Colour is for terminals: none in a pipe, whatever NO_COLOR says.
    let human = |node: &Node, args: &[&str]| {
        let mut all = vec!["--data-dir", node.dir.to_str().expect("utf-8")];
        all.extend_from_slice(args);
        let out = run("kosctl", &all, &[]).ok();
        assert!(!out.contains('\x1b'), "escape codes in a pipe: {out:?}");
        out
    };
    let status = human(&a, &["status"]);
    for heading in ["Node", "Federation", "Network", "Store"] {
        assert!(status.lines().any(|l| l == heading), "no {heading} section:\n{status}");
    }
    let line = |text: &str, label: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("no `{label}` in:\n{text}"))
            .to_owned()
    };
    assert!(line(&status, "peers").ends_with("1 connected"), "{status}");
    assert!(line(&status, "id ").contains(&fed), "{status}");
    // A first start on an empty store has no long work to show (tests/tests/progress.rs has).
    assert!(!status.contains("Long work"), "{status}");
    // Labels line up: every item's value starts in column 26.
    for l in status.lines().filter(|l| l.starts_with("  ")) {
        let b = l.as_bytes();
        assert!(b.len() > 26 && b[25] == b' ' && b[26] != b' ', "misaligned: {l:?}\n{status}");
    }

    let peers = human(&a, &["peers"]);
    let header = peers.lines().next().expect("header");
    assert!(header.starts_with("PEER") && header.contains("STATE") && header.contains("SCORE"));
    let row = line(&peers, &b.peer_id());
    assert!(row.contains("connected"), "{peers}");

    let fed_text = human(&a, &["federation", "show"]);
    assert!(line(&fed_text, "Federation").contains("people"), "{fed_text}");
    assert!(fed_text.contains("Members (2)"), "{fed_text}");
    let member = line(&fed_text, &b.did());
    assert!(member.contains("trusted"), "{member}");

    // --json is the API's answer as it is.
    let json = a.json(&["status"]);
    assert_eq!(json["federation"], fed.as_str());
    assert!(json["progress"].as_array().is_some(), "{json}");
    assert_eq!(json["core"], "ready");

    // On a terminal (a pseudo-terminal from `script`), colour; under NO_COLOR, none.
    let on_tty = |no_color: bool| {
        let cmd = format!("{} --data-dir {} peers", bin("kosctl").display(), a.dir.display());
        let mut c = std::process::Command::new("script");
        c.args(["-qec", &cmd, "/dev/null"]).env_remove("NO_COLOR");
        if no_color {
            c.env("NO_COLOR", "1");
        }
        let o = c.output().expect("script (util-linux)");
        assert!(o.status.success(), "{o:?}");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let coloured = on_tty(false);
    assert!(coloured.contains("\x1b[32mconnected\x1b[0m"), "{coloured:?}");
    // Colour codes take no room: the columns after STATE line up with the header's.
    let head =
        coloured.lines().next().expect("header").replace("\x1b[1m", "").replace("\x1b[0m", "");
    let row = coloured.lines().nth(1).expect("row").replace("\x1b[32m", "").replace("\x1b[0m", "");
    let state_end = row.find("connected").expect("state") + "connected".len();
    let next = state_end + row[state_end..].find(|c: char| c != ' ').expect("a score column");
    assert_eq!(head.find("SCORE"), Some(next), "{head}\n{row}");
    let plain = on_tty(true);
    assert!(!plain.contains('\x1b') && plain.contains("connected"), "{plain:?}");

    // Errors stay one line, with no escape codes in a pipe.
    let err = run("kosctl", &["--data-dir", "/nonexistent/kos", "status"], &[]).fails(1);
    assert!(err.starts_with("kosctl: error: cannot read"), "{err}");
    let _ = bin("kosd");
}
