//! Colour for people at a terminal: only when standard output is a terminal, `NO_COLOR` is unset
//! or empty and `TERM` is not `dumb` (<https://no-color.org>). Pipes, files and `--json` get plain
//! text. Colour never carries meaning alone: the words are always there.

use std::sync::OnceLock;

fn allowed(stream_is_tty: bool) -> bool {
    stream_is_tty
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        && std::env::var("TERM").map_or(true, |t| t != "dumb")
}

/// Whether standard output gets colour.
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| allowed(std::io::IsTerminal::is_terminal(&std::io::stdout())))
}

/// Whether standard error gets colour.
pub fn enabled_stderr() -> bool {
    allowed(std::io::IsTerminal::is_terminal(&std::io::stderr()))
}

fn paint(code: &str, text: &str, on: bool) -> String {
    if on { format!("\x1b[{code}m{text}\x1b[0m") } else { text.to_owned() }
}

/// Bold (headings).
pub fn bold(text: &str) -> String {
    paint("1", text, enabled())
}

/// Dim (secondary details).
pub fn dim(text: &str) -> String {
    paint("2", text, enabled())
}

/// Green: something went well.
pub fn good(text: &str) -> String {
    paint("32", text, enabled())
}

/// Red: something failed or is refused.
pub fn bad(text: &str) -> String {
    paint("31", text, enabled())
}

/// Yellow: needs attention or is under way.
pub fn warn(text: &str) -> String {
    paint("33", text, enabled())
}

/// `error:` in red on a terminal's standard error.
pub fn error_label() -> String {
    paint("1;31", "error:", enabled_stderr())
}

/// A proposal status in its colour; `text` may carry padding (coloured as it is).
pub fn status(name: &str, text: &str) -> String {
    let code = match name {
        "approved" | "executed" | "final" => "32",
        "rejected" | "expired" | "withdrawn" | "vetoed" | "failed" | "rolled_back" => "31",
        "voting" | "reveal" => "33",
        "discussion" | "seeking_sponsors" => "36",
        _ => return text.to_owned(),
    };
    paint(code, text, enabled())
}

#[cfg(test)]
mod tests {
    #[test]
    fn plain_unless_a_terminal() {
        // Tests run with standard output captured: never coloured.
        assert_eq!(super::status("approved", "approved"), "approved");
        assert_eq!(super::bold("x"), "x");
        assert!(!super::allowed(false));
    }
}
