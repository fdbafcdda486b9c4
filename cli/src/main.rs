//! `kosctl`: command-line control of a kOS node.
//!
//! This build provides the offline protocol tools (`kosctl decode`); the node commands land with
//! the control API (issue #4).

use std::{io::Read, process::ExitCode};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use kos_protocol::{MAX_ENVELOPE_LEN, Message, diagnostic};

#[derive(Parser, Debug)]
#[command(name = "kosctl", version, about = "Control a kOS node")]
struct Cli {
    /// Print JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Decode and verify a KLP envelope (hex, or raw bytes with --raw) from a file or stdin.
    Decode {
        /// File to read; `-` or absent for standard input.
        file: Option<String>,
        /// The input is raw bytes, not hex.
        #[arg(long)]
        raw: bool,
    },
}

fn read_input(file: Option<&str>) -> anyhow::Result<Vec<u8>> {
    // Read at most twice the hex length of the largest envelope, plus slack for whitespace.
    let limit = (2 * MAX_ENVELOPE_LEN + 4096) as u64;
    let mut buf = Vec::new();
    match file {
        None | Some("-") => std::io::stdin().take(limit + 1).read_to_end(&mut buf),
        Some(path) => std::fs::File::open(path)
            .with_context(|| format!("cannot open {path}"))?
            .take(limit + 1)
            .read_to_end(&mut buf),
    }
    .context("cannot read input")?;
    if buf.len() as u64 > limit {
        bail!("input is larger than any KLP envelope ({MAX_ENVELOPE_LEN} bytes)");
    }
    Ok(buf)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Decode { file, raw } => {
            let input = read_input(file.as_deref())?;
            let bytes = if raw {
                input
            } else {
                let text: String = String::from_utf8_lossy(&input)
                    .chars()
                    .filter(|c| !c.is_whitespace())
                    .collect();
                hex::decode(&text).context("input is not hexadecimal (use --raw for binary)")?
            };
            let msg = Message::decode(&bytes).context("invalid envelope")?;
            let h = msg.header();
            let body = diagnostic(&msg.payload().encode()).context("body")?;
            if cli.json {
                let out = serde_json::json!({
                    "id": msg.id().to_string(),
                    "type": h.kind.name(),
                    "version": h.version,
                    "author": h.author.to_did(),
                    "seq": h.seq,
                    "created_ms": h.created_ms,
                    "target": h.target.as_ref().map(|t| t.to_string()),
                    "body": body,
                    "size": bytes.len(),
                });
                println!("{out}");
            } else {
                println!("id:         {}", msg.id());
                println!("type:       {} (version {})", h.kind, h.version);
                println!("author:     {}", h.author);
                println!("seq:        {}", h.seq);
                println!("created_ms: {}", h.created_ms);
                if let Some(t) = &h.target {
                    println!("target:     {t}");
                }
                println!("body:       {body}");
                println!("signature:  valid");
            }
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kosctl: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
