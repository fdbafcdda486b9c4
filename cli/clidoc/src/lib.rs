//! Shell completions and manual pages for `kosd` and `kosctl`, generated from their command-line
//! definitions so that they always match the binaries; and TOML errors in one line, for the
//! files both read (configuration, charters, proposals, policies).

use std::{io::Write, path::Path};

pub use clap_complete::Shell;

/// Writes the completion script of `cmd` for `shell` to standard output. A closed pipe
/// (`kosctl completions bash | head`) ends it quietly.
pub fn print_completions(shell: Shell, mut cmd: clap::Command) -> std::io::Result<()> {
    // Into memory first: clap_complete panics on a write error.
    let name = cmd.get_name().to_owned();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut script);
    match std::io::stdout().write_all(&script) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e),
        _ => Ok(()),
    }
}

/// The manual page of `cmd` to standard output, or, with `dir`, the pages of `cmd` and of each
/// of its commands (`kosctl.1`, `kosctl-vote.1`, …) into `dir`; returns the files written.
pub fn write_man_pages(
    cmd: clap::Command,
    dir: Option<&Path>,
) -> std::io::Result<Vec<std::path::PathBuf>> {
    let Some(dir) = dir else {
        clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?;
        return Ok(Vec::new());
    };
    std::fs::create_dir_all(dir)?;
    let mut cmd = cmd;
    cmd.build();
    let name = cmd.get_name().to_owned();
    let mut pages = vec![(name.clone(), cmd.clone())];
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let full = format!("{name}-{}", sub.get_name());
        pages.push((full.clone(), sub.clone().name(full)));
    }
    let mut written = Vec::new();
    for (file, page) in pages {
        let path = dir.join(format!("{file}.1"));
        let mut bytes = Vec::new();
        clap_mangen::Man::new(page).render(&mut bytes)?;
        std::fs::write(&path, bytes)?;
        written.push(path);
    }
    Ok(written)
}

/// A TOML error in one line, where it is and what is wrong: `line 2, column 1: unknown field
/// `titel`, expected one of …` (the error's own text spans several lines, with a source excerpt).
pub fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

#[cfg(test)]
mod tests {
    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct File {
        title: String,
    }

    #[test]
    fn a_toml_error_is_one_line_that_says_where() {
        let text = "title = \"a\"\ntitel = \"b\"\n";
        let e = toml::from_str::<File>(text).expect_err("unknown field");
        let line = super::toml_error(text, &e);
        assert!(line.starts_with("line 2, column 1: unknown field `titel`"), "{line}");
        assert!(!line.contains('\n'));
    }
}
