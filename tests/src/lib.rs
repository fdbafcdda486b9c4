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
