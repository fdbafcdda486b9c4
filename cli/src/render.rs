//! Output for people: aligned labels, option names beside their totals, weights in votes, times
//! as dates with "in 3 h 12 min", progress against what is needed. `--json` bypasses all of it.

use std::fmt::Write as _;

use serde_json::Value;

/// Width of the label column.
const LABEL: usize = 14;

/// A weight in thousandths as votes: `9 votes`, `4.5 votes`, `0.333 votes`.
pub fn weight(milli: u64) -> String {
    format!("{} {}", number(milli), if milli == 1000 { "vote" } else { "votes" })
}

/// A weight in thousandths as a number of votes: `9`, `4.5`.
fn number(milli: u64) -> String {
    let (whole, frac) = (milli / 1000, milli % 1000);
    if frac == 0 {
        whole.to_string()
    } else {
        format!("{whole}.{}", format!("{frac:03}").trim_end_matches('0'))
    }
}

/// A ratio `N/D` as a percentage: `30 %`, `33.4 %`.
fn percent(ratio: &str) -> String {
    let parsed = ratio.split_once('/').and_then(|(n, d)| {
        Some((n.parse::<u64>().ok()?, d.parse::<u64>().ok().filter(|d| *d > 0)?))
    });
    match parsed {
        Some((n, d)) => {
            let tenths = (n * 1000 + d / 2) / d;
            if tenths % 10 == 0 {
                format!("{} %", tenths / 10)
            } else {
                format!("{}.{} %", tenths / 10, tenths % 10)
            }
        }
        None => ratio.to_owned(),
    }
}

pub use kos_protocol::time::{date, duration, when};

#[allow(clippy::disallowed_methods)] // relative times ("in 3 h") are read against the local clock
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

fn line(out: &mut String, label: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "{label:<LABEL$}{value}");
}

/// Any JSON value as indented `label  value` lines (objects nest, lists are itemised).
pub fn generic(v: &Value) -> String {
    let mut out = String::new();
    generic_into(&mut out, v, 0);
    out
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(if *b { "yes" } else { "no" }.to_owned()),
        Value::Null => Some("—".to_owned()),
        Value::Array(a) if a.is_empty() => Some("none".to_owned()),
        Value::Object(o) if o.is_empty() => Some("none".to_owned()),
        Value::Array(a) if a.iter().all(|x| !x.is_object() && !x.is_array()) => {
            Some(a.iter().filter_map(scalar).collect::<Vec<_>>().join(", "))
        }
        _ => None,
    }
}

fn generic_into(out: &mut String, v: &Value, indent: usize) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(map) => {
            let width = map.keys().map(|k| k.len()).max().unwrap_or(0).clamp(8, 28) + 2;
            for (k, val) in map {
                let label = k.replace('_', " ");
                // Milliseconds: times since the epoch read as dates, durations as durations.
                if let (Some(t), Some(label)) = (val.as_u64(), label.strip_suffix(" ms")) {
                    let text = if t >= 1_000_000_000_000 { when(t, now_ms()) } else { duration(t) };
                    let _ = writeln!(out, "{pad}{label:<width$}{text}");
                    continue;
                }
                match scalar(val) {
                    Some(text) => {
                        let _ = writeln!(out, "{pad}{label:<width$}{text}");
                    }
                    None => {
                        let _ = writeln!(out, "{pad}{label}");
                        generic_into(out, val, indent + 2);
                    }
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                match scalar(item) {
                    Some(text) => {
                        let _ = writeln!(out, "{pad}- {text}");
                    }
                    None => {
                        if i > 0 {
                            out.push('\n');
                        }
                        generic_into(out, item, indent);
                    }
                }
            }
        }
        other => {
            let _ = writeln!(out, "{pad}{}", scalar(other).unwrap_or_default());
        }
    }
}

/// The names of a tally's totals: yes/no/abstain/veto, or the options.
fn choice_labels(p: &Value, totals: usize) -> Vec<String> {
    let options: Vec<String> =
        p["options"].as_array().into_iter().flatten().map(|o| s(o).to_owned()).collect();
    if options.len() == totals && totals > 0 && !p["rule"].as_str().is_some_and(binary) {
        options.iter().enumerate().map(|(i, o)| format!("{i}: {o}")).collect()
    } else {
        ["yes", "no", "abstain", "veto"].iter().map(|x| (*x).to_owned()).collect()
    }
}

fn binary(rule: &str) -> bool {
    !matches!(rule, "plurality" | "instant_runoff")
}

/// The tally block of `show`/`tally`: totals by name, participation against the quorum.
fn tally_block(out: &mut String, p: &Value, t: &Value, fin: Option<&Value>) {
    let totals: Vec<u64> =
        t["totals"].as_array().into_iter().flatten().filter_map(Value::as_u64).collect();
    let labels = choice_labels(p, totals.len());
    let width =
        labels.iter().map(|l| l.chars().count()).max().unwrap_or(0).max("participation".len()) + 2;
    let _ = writeln!(out, "Tally (revision {}, {} ballot(s) counted)", t["revision"], t["counted"]);
    for (label, total) in labels.iter().zip(&totals) {
        let mark = match t["winner"].as_u64() {
            Some(w) if label.starts_with(&format!("{w}:")) => "  ← winner",
            _ => "",
        };
        let _ = writeln!(out, "  {label:<width$}{}{mark}", weight(*total));
    }
    let participation = t["participation"].as_u64().unwrap_or(0);
    let eligible = t["eligible"].as_u64().unwrap_or(0);
    let quorum = t["quorum_weight"].as_u64();
    let q = match quorum {
        Some(q) if participation >= q => format!(" — quorum {} met", weight(q)),
        Some(q) => format!(" — quorum needs {}", weight(q)),
        None => String::new(),
    };
    let _ = writeln!(
        out,
        "  {:<width$}{} of {} eligible{q}",
        "participation",
        weight(participation),
        number(eligible)
    );
    // Binary rules: approval and veto share against their thresholds.
    let rule = s(&p["voting"]["rule"]);
    if totals.len() == 4 && binary(rule) {
        let (yes, no, veto) = (totals[0], totals[1], totals[3]);
        let decided = yes + no + veto;
        let share = |part: u64, whole: u64| {
            if whole == 0 { "—".to_owned() } else { percent(&format!("{part}/{whole}")) }
        };
        let needs = match rule {
            "simple_majority" => "needs more than 50 %".to_owned(),
            "consensus" => "needs no `no` and no veto".to_owned(),
            r => match r.strip_prefix("supermajority:") {
                Some(ratio) => format!("needs at least {}", percent(ratio)),
                None => r.to_owned(),
            },
        };
        let _ = writeln!(
            out,
            "  {:<width$}{} of yes + no + veto — {needs}",
            "approval",
            share(yes, decided)
        );
        let _ = writeln!(
            out,
            "  {:<width$}{} of participation — vetoed above {}",
            "veto",
            share(veto, participation),
            percent(s(&p["voting"]["veto"]))
        );
    }
    let rounds: Vec<Vec<u64>> = t["rounds"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| r.as_array().into_iter().flatten().filter_map(Value::as_u64).collect())
        .collect();
    if !rounds.is_empty() {
        for (i, text) in runoff_rounds(&labels, &rounds, t["winner"].as_u64()).iter().enumerate() {
            let label = if i == 0 { "rounds" } else { "" };
            let _ = writeln!(out, "  {label:<width$}{text}");
        }
    }
    let final_ = fin.is_some_and(|f| f["final"].as_bool() == Some(true));
    let _ = writeln!(
        out,
        "  {:<width$}{}{}",
        "outcome",
        s(&t["outcome"]),
        if final_ { " (final)" } else { " (so far)" }
    );
}

/// A secret ballot's progress: how many committed, how many revealed, and that nothing counts
/// before the reveal.
fn secret_line(out: &mut String, p: &Value) {
    let Some(b) = p["secret_ballot"].as_object() else { return };
    let n = |k: &str| b.get(k).and_then(Value::as_u64).unwrap_or(0);
    let text = match s(&p["status"]) {
        "seeking_sponsors" | "discussion" | "voting" => format!(
            "{} member(s) committed, sealed: nothing is counted before the reveal window{}",
            n("committed"),
            p["voting_end_ms"]
                .as_u64()
                .map_or(String::new(), |t| format!(", which opens {}", when(t, now_ms())))
        ),
        _ => format!("{} of {} committed member(s) revealed", n("revealed"), n("committed")),
    };
    line(out, "Secret", text);
}

/// Instant-runoff rounds in words: each round's weight per continuing option and who is
/// eliminated (the least weight, ties eliminating the highest index, as the engine does).
fn runoff_rounds(labels: &[String], rounds: &[Vec<u64>], winner: Option<u64>) -> Vec<String> {
    let name = |i: usize| {
        labels
            .get(i)
            .map_or(i.to_string(), |l| l.split_once(": ").map_or(l.clone(), |(_, n)| n.to_owned()))
    };
    let mut continuing: Vec<bool> = vec![true; rounds.first().map_or(0, Vec::len)];
    let mut out = Vec::new();
    for (r, totals) in rounds.iter().enumerate() {
        let parts: Vec<String> = (0..totals.len())
            .filter(|&i| continuing.get(i).copied().unwrap_or(false))
            .map(|i| format!("{} {}", name(i), number(totals[i])))
            .collect();
        let last = r + 1 == rounds.len();
        let end = if last {
            match winner {
                Some(w) => format!(" — {} wins", name(usize::try_from(w).unwrap_or(usize::MAX))),
                None => " — no winner".to_owned(),
            }
        } else {
            let loser = (0..totals.len())
                .filter(|&i| continuing[i])
                .min_by(|&a, &b| totals[a].cmp(&totals[b]).then(b.cmp(&a)));
            match loser {
                Some(i) => {
                    continuing[i] = false;
                    format!(" — {} eliminated", name(i))
                }
                None => String::new(),
            }
        };
        out.push(format!("{}: {}{end}", r + 1, parts.join(", ")));
    }
    out
}

fn finality_block(out: &mut String, f: &Value) {
    let eligible = f["eligible"].as_u64().unwrap_or(0);
    let attested = f["attested"].as_u64().unwrap_or(0);
    let needed = f["needed"].as_u64().unwrap_or(0);
    let text = if f["final"].as_bool() == Some(true) {
        format!(
            "final: attested {} of {} eligible (needs {}), since {}",
            weight(attested),
            number(eligible),
            weight(needed),
            f["final_at_ms"].as_u64().map_or("—".into(), date)
        )
    } else {
        format!(
            "attested {} of {} eligible; final at {}",
            weight(attested),
            number(eligible),
            weight(needed)
        )
    };
    line(out, "Finality", text);
}

/// A line diff of two texts: lines only in `a` with `- `, only in `b` with `+ ` (LCS).
pub fn diff_lines(a: &str, b: &str) -> Vec<String> {
    let (a, b): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    let (n, m) = (a.len(), b.len());
    // lcs[i][j]: longest common subsequence of a[i..] and b[j..] (texts are bounded in size).
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] =
                if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            out.push(format!("  {}", a[i]));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push(format!("- {}", a[i]));
            i += 1;
        } else {
            out.push(format!("+ {}", b[j]));
            j += 1;
        }
    }
    out
}

fn action_line(a: &Value) -> String {
    let kind = s(&a["type"]);
    match kind {
        "none" => "none (a decision without an action)".into(),
        "configuration" => match a["old"].as_str() {
            Some(old) => format!("set {} = {} (expects {old})", s(&a["key"]), s(&a["new"])),
            None => format!("set {} = {}", s(&a["key"]), s(&a["new"])),
        },
        "trust_adjustment" => format!("trust of {} → {}", s(&a["member"]), s(&a["level"])),
        "add_member" => format!("admit {} as {}", s(&a["member"]), s(&a["trust"])),
        "remove_member" => format!("remove {}", s(&a["member"])),
        "quarantine" => format!("quarantine {}", s(&a["member"])),
        "protocol_upgrade" => format!("minimum protocol version {}", a["version"]),
        "policy_update" => {
            format!("replace the policy ({} characters)", s(&a["policy"]).chars().count())
        }
        "rollback" => format!("roll back the execution of {}", s(&a["proposal"])),
        other => other.to_owned(),
    }
}

/// `kosctl show`.
pub fn proposal(p: &Value) -> String {
    let now = p["timeline"]["now_ms"].as_u64().unwrap_or_else(now_ms);
    let mut out = String::new();
    let revisions = p["revisions"].as_array().map_or(1, Vec::len);
    line(&mut out, "Proposal", s(&p["id"]));
    line(
        &mut out,
        "Title",
        format!(
            "{}  (revision {} of {})",
            s(&p["title"]),
            p["revision"],
            revisions.saturating_sub(1)
        ),
    );
    line(&mut out, "Kind", format!("{} · scope {}", s(&p["kind"]), s(&p["scope"])));
    line(&mut out, "Author", s(&p["author"]));
    let next = &p["timeline"]["next"];
    let next_text = match next["at_ms"].as_u64() {
        Some(at) => format!(" — next: {} {}", s(&next["event"]), when(at, now)),
        None => format!(" — next: {}", s(&next["event"])),
    };
    line(
        &mut out,
        "Status",
        format!("{}{next_text}", crate::style::status(s(&p["status"]), s(&p["status"]))),
    );
    line(&mut out, "Action", action_line(&p["action"]));
    if let Some(opts) = p["options"].as_array().filter(|o| !o.is_empty()) {
        for (i, o) in opts.iter().enumerate() {
            line(&mut out, if i == 0 { "Options" } else { "" }, format!("{i}: {}", s(o)));
        }
    }
    let v = &p["voting"];
    line(
        &mut out,
        "Voting",
        format!(
            "{}, {} weighting, quorum {} of the eligible weight, veto above {}, {} ballot{}",
            s(&v["rule"]),
            s(&v["weighting"]),
            percent(s(&v["quorum"])),
            percent(s(&v["veto"])),
            if v["secret"].as_bool() == Some(true) { "secret" } else { "public" },
            if v["early_close"].as_bool() == Some(true) { ", closes early" } else { "" },
        ),
    );
    let sponsors: Vec<&str> =
        p["sponsors"].as_array().into_iter().flatten().map(|x| s(&x["member"])).collect();
    line(
        &mut out,
        "Sponsors",
        format!(
            "{} of {} needed{}{}",
            sponsors.len(),
            p["sponsors_needed"],
            if sponsors.is_empty() { "" } else { ": " },
            sponsors.join(", ")
        ),
    );
    if let Some(w) = p["withdrawn"].as_str() {
        line(&mut out, "Withdrawn", w);
    }
    let _ = writeln!(out, "Timeline");
    let t = &p["timeline"];
    for (label, key) in [
        ("created", "created_ms"),
        ("discussion ends", "discussion_end_ms"),
        ("voting ends", "voting_end_ms"),
        ("reveal ends", "reveal_end_ms"),
    ] {
        if let Some(ms) = t[key].as_u64() {
            let _ = writeln!(out, "  {label:<18}{}", when(ms, now));
        }
    }
    if let Some(e) = p["execution"].as_object() {
        let at = e.get("at_ms").and_then(Value::as_u64).unwrap_or(0);
        let result = e.get("result").map(s).unwrap_or("");
        let _ = writeln!(
            out,
            "  {:<18}{} — {}",
            if e.get("due").and_then(Value::as_bool) == Some(true) {
                "executed"
            } else {
                "executes"
            },
            when(at, now),
            if result == "ok" { "ok".to_owned() } else { format!("failed: {result}") },
        );
    }
    secret_line(&mut out, p);
    if let Some(tally) = p.get("tally").filter(|t| t.is_object()) {
        tally_block(&mut out, p, tally, p.get("finality"));
    }
    if let Some(f) = p.get("finality").filter(|f| f.is_object()) {
        finality_block(&mut out, f);
    }
    let _ = writeln!(out, "Revisions");
    for r in p["revisions"].as_array().into_iter().flatten() {
        let created = r["created_ms"].as_u64().map_or("—".into(), date);
        let force = if r["in_force"].as_bool() == Some(true) { "  (in force)" } else { "" };
        let n = r["revision"].as_u64().unwrap_or(0);
        let _ = writeln!(out, "  {n:<3}{created}  {}{force}", s(&r["title"]));
        for c in r["changes"].as_array().into_iter().flatten() {
            match s(&c["field"]) {
                "description" => {
                    let _ = writeln!(out, "       description:");
                    for l in diff_lines(s(&c["from"]), s(&c["to"])) {
                        let _ = writeln!(out, "         {l}");
                    }
                }
                field => {
                    let text = |v: &Value| match v {
                        Value::String(x) => format!("\"{x}\""),
                        other => other.to_string(),
                    };
                    let _ =
                        writeln!(out, "       {field}: {} → {}", text(&c["from"]), text(&c["to"]));
                }
            }
        }
    }
    let shown = p["discussion"].as_array().map_or(0, Vec::len);
    let _ = writeln!(out, "Discussion ({} comment(s))", p["comments_total"].as_u64().unwrap_or(0));
    for c in p["discussion"].as_array().into_iter().flatten() {
        let depth = c["depth"].as_u64().unwrap_or(0) as usize;
        let pad = "  ".repeat(depth + 1);
        let arrow = if depth > 0 { "↳ " } else { "" };
        let _ = writeln!(
            out,
            "{pad}{arrow}[{}] {} · {} · on revision {}",
            s(&c["kind"]),
            s(&c["author"]),
            c["created_ms"].as_u64().map_or("—".into(), date),
            c["revision"]
        );
        let body = c["text"].as_str().unwrap_or("(text not in this node's store)");
        for l in body.lines() {
            let _ = writeln!(out, "{pad}{}  {l}", if depth > 0 { "  " } else { "" });
        }
    }
    if (p["comments_total"].as_u64().unwrap_or(0) as usize) > shown {
        let _ = writeln!(
            out,
            "  … {} more (use --json)",
            p["comments_total"].as_u64().unwrap_or(0) as usize - shown
        );
    }
    out
}

/// `kosctl tally`.
pub fn tally(p: &Value, t: &Value) -> String {
    let mut out = String::new();
    line(&mut out, "Status", crate::style::status(s(&t["status"]), s(&t["status"])));
    secret_line(&mut out, p);
    let mut tally = t["tally"].clone();
    if let (Some(q), true) = (p["tally"]["quorum_weight"].as_u64(), tally.is_object()) {
        tally["quorum_weight"] = q.into();
    }
    if tally.is_object() {
        tally_block(&mut out, p, &tally, p.get("finality"));
    } else {
        let _ = writeln!(out, "Tally         voting has not opened");
    }
    if let Some(f) = p.get("finality").filter(|f| f.is_object()) {
        finality_block(&mut out, f);
    }
    let atts = t["attestations"].as_array().map_or(0, Vec::len);
    line(&mut out, "Attestations", format!("{atts} member(s)"));
    if let Some(e) = t["execution"].as_object() {
        line(
            &mut out,
            "Execution",
            format!(
                "{} — {}",
                e.get("at_ms").and_then(Value::as_u64).map_or("—".into(), date),
                e.get("result").map(s).unwrap_or("")
            ),
        );
    }
    out
}

/// `kosctl proposals`: one line per proposal.
pub fn proposals(v: &Value) -> String {
    let now = now_ms();
    let list = v["proposals"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        return "no proposals\n".into();
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|p| {
            let status = s(&p["status"]);
            let deadline = match status {
                "seeking_sponsors" | "discussion" => p["discussion_end_ms"].as_u64(),
                "voting" => p["voting_end_ms"].as_u64(),
                "reveal" => p["reveal_end_ms"].as_u64(),
                _ => None,
            };
            let deadline = deadline.map_or("—".to_owned(), |d| {
                if d >= now {
                    format!("in {}", duration(d - now))
                } else {
                    format!("{} ago", duration(now - d))
                }
            });
            vec![
                s(&p["id"]).to_owned(),
                crate::style::status(status, status),
                s(&p["kind"]).to_owned(),
                deadline,
                s(&p["title"]).to_owned(),
            ]
        })
        .collect();
    let mut out = String::new();
    table(&mut out, &["ID", "STATUS", "KIND", "NEXT DEADLINE", "TITLE"], &rows);
    out
}

/// `kosctl inbox`: one block per message.
pub fn inbox(v: &Value) -> String {
    let now = now_ms();
    let list = v["messages"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        return "the inbox is empty\n".into();
    }
    let mut out = String::new();
    for m in &list {
        line(&mut out, "Message", s(&m["id"]));
        line(&mut out, "Type", s(&m["type"]));
        line(&mut out, "From", format!("{} ({})", s(&m["sender"]), s(&m["sender_klp_id"])));
        line(&mut out, "Received", m["received_ms"].as_u64().map_or("—".into(), |t| when(t, now)));
        let body = &m["body"];
        match s(&m["type"]) {
            "TASK_REQUEST" => {
                line(&mut out, "Task", s(&body["task_id"]));
                for i in body["inputs"].as_array().into_iter().flatten() {
                    line(&mut out, "Input", s(i));
                }
            }
            "TASK_RESULT" => {
                line(
                    &mut out,
                    "Task",
                    format!(
                        "{} — {}",
                        s(&body["task_id"]),
                        if body["ok"] == true { "ok" } else { "failed" }
                    ),
                );
                line(&mut out, "Answers", s(&body["request"]));
                for o in body["outputs"].as_array().into_iter().flatten() {
                    line(&mut out, "Output", s(o));
                }
            }
            _ => line(&mut out, "Body", body.to_string()),
        }
        out.push('\n');
    }
    out
}

/// `kosctl inbox show ID`: the message as in the list, how it came, and the envelope's size.
pub fn inbox_message(v: &Value) -> String {
    let mut out = inbox(&serde_json::json!({ "messages": [v] }));
    out.pop(); // the list's blank line between messages
    if let Some(target) = v["target"].as_str() {
        line(&mut out, "Addressed to", target);
    }
    line(&mut out, "From peer", s(&v["from_peer"]));
    let bytes = v["envelope"].as_str().map_or(0, |h| h.len() / 2);
    line(&mut out, "Envelope", format!("{bytes} bytes, sealed to this node (--json gives it)"));
    out
}

/// `kosctl delegations`.
pub fn delegations(v: &Value) -> String {
    let mut out = String::new();
    line(&mut out, "Member", s(&v["member"]));
    let outgoing = v["delegates_to"].as_array().cloned().unwrap_or_default();
    if outgoing.is_empty() {
        line(&mut out, "Delegates to", "nobody (votes directly)");
    }
    for (i, d) in outgoing.iter().enumerate() {
        line(
            &mut out,
            if i == 0 { "Delegates to" } else { "" },
            format!(
                "{} for {} (since {})",
                s(&d["delegate"]),
                s(&d["scope"]),
                d["created_ms"].as_u64().map_or("—".into(), date)
            ),
        );
    }
    let incoming = v["delegated_to_me"].as_array().cloned().unwrap_or_default();
    if incoming.is_empty() {
        line(&mut out, "Delegated by", "nobody");
    }
    for scope in &incoming {
        let _ = writeln!(out, "Delegated by, for {}:", s(&scope["scope"]));
        for d in scope["delegators"].as_array().into_iter().flatten() {
            let how = if d["depth"].as_u64() == Some(1) {
                "directly".to_owned()
            } else {
                format!("{} steps, via {}", d["depth"], s(&d["via"]))
            };
            let _ = writeln!(out, "  {}  {how}", s(&d["member"]));
        }
    }
    if let Some(depth) = v["max_depth"].as_u64() {
        line(&mut out, "Chain limit", format!("{depth} step(s) (charter)"));
    }
    out
}

/// `kosctl outbox`: what waits for a next hop, and what was given up, with why.
pub fn outbox(v: &Value) -> String {
    let now = now_ms();
    let mut out = String::new();
    let short = |id: &str| id.chars().take(16).collect::<String>();
    for (key, title, empty) in [
        ("pending", "Waiting for a next hop", "nothing waits"),
        ("failed", "Given up", "nothing given up"),
    ] {
        let list = v[key].as_array().cloned().unwrap_or_default();
        heading(&mut out, &format!("{title} ({})", list.len()));
        if list.is_empty() {
            let _ = writeln!(out, "  {empty}");
        } else {
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|e| {
                    let to = match e["relayed_for"].as_str() {
                        Some(from) => {
                            format!("{} (relayed for peer {}…)", s(&e["to"]), short(from))
                        }
                        None => s(&e["to"]).to_owned(),
                    };
                    let next = match (key, e["next_ms"].as_u64()) {
                        ("pending", Some(t)) if t > now => format!("in {}", duration(t - now)),
                        ("pending", _) => "now".to_owned(),
                        _ => "—".to_owned(),
                    };
                    vec![
                        short(s(&e["id"])),
                        to,
                        e["attempts"].to_string(),
                        e["queued_ms"].as_u64().map_or("—".into(), |t| {
                            format!("{} ago", duration(now.saturating_sub(t)))
                        }),
                        next,
                        e["last_error"].as_str().unwrap_or("—").to_owned(),
                    ]
                })
                .collect();
            table(&mut out, &["ID", "TO", "TRIES", "QUEUED", "NEXT TRY", "LAST ERROR"], &rows);
        }
        out.push('\n');
    }
    out
}

/// `kosctl policy show`: the rules in force, this node's and the federation's.
pub fn policy(v: &Value) -> String {
    let mut out = String::new();
    let strs = |x: &Value| -> Vec<String> {
        x.as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_owned).collect()
    };
    let lists = |out: &mut String, label: &str, l: &Value, what: &str| {
        let (allow, deny) = (strs(&l["allow"]), strs(&l["deny"]));
        let mut parts = Vec::new();
        if allow.is_empty() {
            parts.push(format!("any {what}"));
        } else {
            parts.push(format!("only {}", allow.join(", ")));
        }
        if !deny.is_empty() {
            parts.push(format!("never {}", deny.join(", ")));
        }
        item(out, label, parts.join("; "));
    };
    let rules = |out: &mut String, r: &Value| {
        lists(out, "types", &r["types"], "type");
        lists(out, "peers", &r["peers"], "peer");
        lists(out, "senders", &r["senders"], "sender");
        let mut trust: Vec<String> = r["min_trust"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(t, l)| format!("{t} {}", s(l)))
            .collect();
        if let Some(l) = r["relay_min_trust"].as_str() {
            trust.push(format!("relaying {l}"));
        }
        item(out, "least trust", if trust.is_empty() { "none".into() } else { trust.join(", ") });
        let mut quotas: Vec<String> = Vec::new();
        if let Some(n) = r["per_peer_per_minute"].as_u64() {
            quotas.push(format!("{n} a minute per peer"));
        }
        for (t, n) in r["per_type_per_minute"].as_object().into_iter().flatten() {
            quotas.push(format!("{t} {n} a minute"));
        }
        item(out, "quotas", if quotas.is_empty() { "none".into() } else { quotas.join(", ") });
    };
    heading(&mut out, "This node's policy");
    item(&mut out, "file", s(&v["file"]));
    if v["local"].as_str().is_some_and(|t| !t.trim().is_empty()) {
        rules(&mut out, &v["local_rules"]);
    } else {
        item(&mut out, "rules", "none: everything is allowed");
    }
    out.push('\n');
    heading(&mut out, "The federation's policy");
    if v["federation_rules"].is_object() {
        rules(&mut out, &v["federation_rules"]);
    } else {
        item(&mut out, "rules", "none (a policy_update proposal sets one)");
    }
    let _ =
        writeln!(out, "\nA message must pass both; a deny in either wins. --json gives the texts.");
    out
}

/// A section heading.
fn heading(out: &mut String, title: &str) {
    let _ = writeln!(out, "{}", crate::style::bold(title));
}

/// A labelled line inside a section.
fn item(out: &mut String, label: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "  {label:<24}{value}");
}

/// A count with thousands separators: `12 345`.
fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// One long task's progress: `45 % (45 000 of 100 000 messages), 3 000/s, about 18 s left`.
fn progress_line(t: &Value) -> String {
    let (done, total) = (t["done"].as_u64().unwrap_or(0), t["total"].as_u64().unwrap_or(0));
    let unit = s(&t["unit"]);
    let rate = t["rate_per_sec"].as_f64().unwrap_or(0.0);
    if let (Some(end), Some(start)) = (t["finished_ms"].as_u64(), t["started_ms"].as_u64()) {
        let took = end.saturating_sub(start);
        let took = if took < 10_000 {
            format!("{}.{} s", took / 1000, took % 1000 / 100)
        } else {
            duration(took)
        };
        return format!(
            "done: {} {unit} in {took} ({} ago)",
            count(done),
            duration(now_ms().saturating_sub(end))
        );
    }
    let eta = t["eta_secs"]
        .as_u64()
        .map_or("time left unknown".into(), |e| format!("about {} left", duration(e * 1000)));
    format!(
        "{} % ({} of {} {unit}), {}/s, {eta}",
        t["percent"].as_f64().unwrap_or(0.0),
        count(done),
        count(total),
        count(rate.round() as u64)
    )
}

/// `kosctl status`.
pub fn status(v: &Value) -> String {
    let mut out = String::new();
    let busy = v["core"] == "busy";
    heading(&mut out, "Node");
    item(&mut out, "did", s(&v["did"]));
    if !busy && v["member"] != v["did"] {
        item(
            &mut out,
            "member identity",
            format!("{} (key generation {})", s(&v["member"]), v["key_generation"]),
        );
    }
    if let Some(r) = v["key_retired"].as_object() {
        item(
            &mut out,
            "key retired",
            crate::style::bad(&format!(
                "{} since {}",
                r.get("how").map(|h| h.to_string()).unwrap_or_default(),
                r.get("at_ms").and_then(Value::as_u64).map_or("—".into(), date)
            )),
        );
    }
    item(&mut out, "peer id", s(&v["peer_id"]));
    item(&mut out, "klp id", s(&v["klp_id"]));
    if busy {
        item(&mut out, "core", crate::style::warn("busy with long work (see progress below)"));
    }
    out.push('\n');
    heading(&mut out, "Federation");
    match v["federation"].as_str() {
        Some(f) => {
            item(&mut out, "id", f);
            item(&mut out, "registry epoch", &v["registry_epoch"]);
            item(&mut out, "state hash", s(&v["state_hash"]));
        }
        None if busy => item(&mut out, "id", "— (the core is busy)"),
        None => item(&mut out, "id", "none: `kosctl federation create` or `federation join`"),
    }
    out.push('\n');
    heading(&mut out, "Network");
    let listen: Vec<&str> =
        v["listen"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    item(
        &mut out,
        "listening on",
        if listen.is_empty() { "nothing yet".into() } else { listen.join(", ") },
    );
    let peers = v["peers"].as_array().map_or(0, Vec::len);
    let peers_text = format!("{peers} connected");
    item(&mut out, "peers", if peers == 0 { crate::style::warn(&peers_text) } else { peers_text });
    let syncing = v["sync"]["peers"].as_u64().unwrap_or(0);
    item(
        &mut out,
        "sync",
        if syncing == 0 {
            "idle".to_owned()
        } else {
            format!(
                "walking {syncing} peer(s), {} request(s) in flight",
                v["sync"]["requests_in_flight"]
            )
        },
    );
    if !busy {
        out.push('\n');
        heading(&mut out, "Store");
        item(&mut out, "messages", count(v["messages"].as_u64().unwrap_or(0)));
        item(&mut out, "held", format!("{} (waiting for what they depend on)", v["pending"]));
    }
    let tasks = v["progress"].as_array().cloned().unwrap_or_default();
    if !tasks.is_empty() {
        out.push('\n');
        heading(&mut out, "Long work");
        for t in &tasks {
            item(&mut out, s(&t["task"]), progress_line(t));
        }
    }
    out
}

/// The width a cell takes on a terminal: its characters, without colour escape codes.
fn width(cell: &str) -> usize {
    let mut n = 0;
    let mut escape = false;
    for c in cell.chars() {
        match (escape, c) {
            (false, '\x1b') => escape = true,
            (true, 'm') => escape = false,
            (true, _) => {}
            (false, _) => n += 1,
        }
    }
    n
}

/// A table: a bold header row, columns as wide as their widest cell (the last one free).
fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let n = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| width(h)).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate().take(n) {
            widths[i] = widths[i].max(width(c));
        }
    }
    let render = |cells: Vec<String>| {
        let mut line = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 < cells.len() {
                let pad = widths[i].saturating_sub(width(c)) + 2;
                line.push_str(c);
                line.push_str(&" ".repeat(pad));
            } else {
                line.push_str(c);
            }
        }
        line.trim_end().to_owned()
    };
    let head = render(header.iter().map(|h| h.to_string()).collect());
    let _ = writeln!(out, "{}", crate::style::bold(&head));
    for r in rows {
        let _ = writeln!(out, "{}", render(r.clone()));
    }
}

/// `kosctl peers`: one row per peer this node knows, connected first.
pub fn peers(v: &Value) -> String {
    use std::collections::BTreeMap;
    let now = now_ms();
    #[derive(Default)]
    struct Row {
        connected: bool,
        score: Option<f64>,
        trust: Option<String>,
        block: Option<String>,
        addrs: usize,
    }
    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    for p in v["connected"].as_array().into_iter().flatten().filter_map(Value::as_str) {
        rows.entry(p.to_owned()).or_default().connected = true;
    }
    for sc in v["scores"].as_array().into_iter().flatten() {
        rows.entry(s(&sc["peer_id"]).to_owned()).or_default().score = sc["score"].as_f64();
    }
    for k in v["known"].as_array().into_iter().flatten() {
        rows.entry(s(&k["peer_id"]).to_owned()).or_default().addrs =
            k["addrs"].as_array().map_or(0, Vec::len);
    }
    for b in v["blocks"].as_array().into_iter().flatten() {
        let until = b["until_ms"].as_u64().map_or("—".into(), |u| {
            if u > now { format!("for {}", duration(u - now)) } else { "expiring".into() }
        });
        rows.entry(s(&b["peer_id"]).to_owned()).or_default().block =
            Some(format!("{until}: {}", s(&b["reason"])));
    }
    for t in v["trust"].as_array().into_iter().flatten() {
        if let Some(p) = s(&t["target"]).strip_prefix("peer://") {
            rows.entry(p.to_owned()).or_default().trust = Some(s(&t["level"]).to_owned());
        }
    }
    let mut out = String::new();
    if rows.is_empty() {
        return "no peers known yet: `kosctl connect MULTIADDR` or `--bootstrap`\n".into();
    }
    let mut list: Vec<(String, Row)> = rows.into_iter().collect();
    list.sort_by_key(|(p, r)| (!r.connected, r.block.is_none(), p.clone()));
    let cells: Vec<Vec<String>> = list
        .iter()
        .map(|(p, r)| {
            let state = if r.block.is_some() {
                crate::style::bad("blocked")
            } else if r.connected {
                crate::style::good("connected")
            } else {
                "known".into()
            };
            vec![
                p.clone(),
                state,
                r.score.map_or("—".into(), |x| format!("{x:.1}")),
                r.trust.clone().unwrap_or_else(|| "—".into()),
                if r.addrs == 0 { "—".into() } else { r.addrs.to_string() },
                r.block.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(&mut out, &["PEER", "STATE", "SCORE", "TRUST", "ADDRS", "BLOCK"], &cells);
    let reputation = v["reputation"].as_array().map_or(0, Vec::len);
    if reputation > 0 {
        let _ = writeln!(out, "\n{reputation} advisory reputation record(s): --json shows them");
    }
    out
}

/// `kosctl federation show`.
pub fn federation(v: &Value) -> String {
    let mut out = String::new();
    line(
        &mut out,
        "Federation",
        format!("{}  {}", s(&v["name"]), crate::style::dim(s(&v["federation"]))),
    );
    line(&mut out, "Registry", format!("epoch {}", v["registry_epoch"]));
    line(&mut out, "Protocol", format!("version {} or newer", v["min_protocol_version"]));
    if let Some(t) = v["timing"].as_object() {
        let ms = |k: &str| t.get(k).and_then(Value::as_u64).map_or("—".into(), duration);
        line(
            &mut out,
            "Timing",
            format!(
                "discussion ≥ {}, voting {}–{} ({} unless the proposal says), reveal window {}",
                ms("min_discussion_ms"),
                ms("min_voting_ms"),
                ms("max_voting_ms"),
                ms("default_voting_ms"),
                ms("reveal_ms"),
            ),
        );
        line(
            &mut out,
            "",
            format!(
                "attestation grace {}, signed times within {} of the clock",
                ms("grace_ms"),
                ms("clock_skew_ms")
            ),
        );
    }
    if let Some(h) = v["hybrid"].as_object() {
        let part = |k: &str| h.get(k).and_then(Value::as_u64).unwrap_or(0);
        let share = |k: &str| percent(&format!("{}/1000", part(k)));
        line(
            &mut out,
            "Hybrid",
            format!(
                "weighting = trust {}, stake {}, role {}",
                share("trust"),
                share("stake"),
                share("role")
            ),
        );
    }
    let role_weights: Vec<String> = v["role_weights"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| format!("{} {}", s(&r["role"]), weight(r["weight"].as_u64().unwrap_or(0))))
        .collect();
    if !role_weights.is_empty() {
        line(&mut out, "Role weights", role_weights.join(", "));
    }
    if let Some(d) = v["max_delegation_depth"].as_u64() {
        line(&mut out, "Delegation", format!("chains of up to {d} step(s)"));
    }
    out.push('\n');
    let members = v["members"].as_array().cloned().unwrap_or_default();
    let rows: Vec<Vec<String>> = members
        .iter()
        .map(|m| {
            let roles: Vec<&str> =
                m["roles"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            let key = if m["revoked"] == true {
                crate::style::bad("revoked")
            } else if m["key"] != m["did"] {
                format!("rotated ×{}", m["key_generation"])
            } else {
                "original".into()
            };
            vec![
                s(&m["did"]).to_owned(),
                s(&m["trust"]).to_owned(),
                roles.join(", "),
                m["stake"].to_string(),
                key,
            ]
        })
        .collect();
    heading(&mut out, &format!("Members ({})", members.len()));
    table(&mut out, &["MEMBER", "TRUST", "ROLES", "STAKE", "KEY"], &rows);
    let bodies = v["bodies"].as_array().cloned().unwrap_or_default();
    if !bodies.is_empty() {
        out.push('\n');
        heading(&mut out, "Governance bodies");
        for b in &bodies {
            let members: Vec<&str> =
                b["members"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            item(&mut out, s(&b["kind"]), members.join(", "));
        }
    }
    let voting = v["voting"].as_array().cloned().unwrap_or_default();
    if !voting.is_empty() {
        out.push('\n');
        heading(&mut out, "Voting rules by proposal type");
        let rows: Vec<Vec<String>> = voting
            .iter()
            .map(|c| {
                let yes_no = |b: &Value| if b == true { "yes" } else { "no" }.to_owned();
                let overrides: Vec<&str> = c["overrides"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                let mut proposer = s(&c["proposer_trust"]).to_owned();
                if c["kind"] == "emergency_action" {
                    proposer.push_str(" or security_board");
                }
                vec![
                    s(&c["kind"]).to_owned(),
                    if c["source"] == "charter" { "charter" } else { "built-in" }.to_owned(),
                    s(&c["rule"]).to_owned(),
                    percent(s(&c["quorum"])),
                    percent(s(&c["veto"])),
                    s(&c["weighting"]).to_owned(),
                    c["sponsors"].to_string(),
                    yes_no(&c["secret"]),
                    yes_no(&c["early_close"]),
                    proposer,
                    if overrides.is_empty() { "—".into() } else { overrides.join(", ") },
                ]
            })
            .collect();
        table(
            &mut out,
            &[
                "TYPE",
                "FROM",
                "RULE",
                "QUORUM",
                "VETO",
                "WEIGHTING",
                "SPONSORS",
                "SECRET",
                "EARLY CLOSE",
                "PROPOSER",
                "MAY OVERRIDE",
            ],
            &rows,
        );
    }
    let config = v["config"].as_object().filter(|c| !c.is_empty());
    if let Some(c) = config {
        out.push('\n');
        heading(&mut out, "Configuration in force");
        for (k, val) in c {
            item(&mut out, k, val.as_str().map_or(val.to_string(), str::to_owned));
        }
    }
    out.push('\n');
    match v["policy"].as_str() {
        Some(p) => line(
            &mut out,
            "Policy",
            format!(
                "the federation's policy is in force ({} line(s); `kosctl policy show` prints it)",
                p.lines().count()
            ),
        ),
        None => line(&mut out, "Policy", "no federation policy (each node's own applies)"),
    }
    out
}

/// Progress of a long client-side job on standard error: a line at most every 2 s while it
/// lasts (percentage, rate, time left), and a summary at the end if it took that long.
pub struct Progress {
    what: &'static str,
    unit: &'static str,
    total: usize,
    done: usize,
    started: std::time::Instant,
    last: std::time::Instant,
}

#[allow(clippy::disallowed_methods)] // a client job's progress is read against the local clock
impl Progress {
    /// A job of `total` units.
    pub fn new(what: &'static str, total: usize, unit: &'static str) -> Self {
        let now = std::time::Instant::now();
        Progress { what, unit, total, done: 0, started: now, last: now }
    }

    /// `n` more units done.
    pub fn advance(&mut self, n: usize) {
        self.done += n;
        if self.last.elapsed() >= std::time::Duration::from_secs(2) && self.done < self.total {
            self.last = std::time::Instant::now();
            let secs = self.started.elapsed().as_secs_f64().max(0.001);
            let rate = self.done as f64 / secs;
            let left = (self.total - self.done) as f64 / rate.max(0.001);
            eprintln!(
                "{} {} of {} {} ({} %), {}/s, about {} left",
                self.what,
                count(self.done as u64),
                count(self.total as u64),
                self.unit,
                self.done * 100 / self.total.max(1),
                count(rate.round() as u64),
                duration((left * 1000.0) as u64)
            );
        }
    }

    /// The job is over.
    pub fn finish(&self) {
        let secs = self.started.elapsed().as_secs_f64();
        if secs >= 2.0 {
            eprintln!(
                "{} {} {} in {}, {}/s",
                self.what,
                count(self.done as u64),
                self.unit,
                duration((secs * 1000.0) as u64),
                count((self.done as f64 / secs).round() as u64)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_codes_take_no_width() {
        assert_eq!(width("\x1b[32mconnected\x1b[0m"), 9);
        assert_eq!(width("known"), 5);
    }

    #[test]
    fn runoff_rounds_name_who_is_eliminated() {
        let labels: Vec<String> = ["0: north", "1: south", "2: east"].map(String::from).to_vec();
        let rounds = vec![vec![5000, 3000, 3000], vec![8000, 3000, 0]];
        assert_eq!(
            runoff_rounds(&labels, &rounds, Some(0)),
            ["1: north 5, south 3, east 3 — east eliminated", "2: north 8, south 3 — north wins"]
        );
        let exhausted = vec![vec![0, 0, 0]];
        assert_eq!(
            runoff_rounds(&labels, &exhausted, None),
            ["1: north 0, south 0, east 0 — no winner"]
        );
    }

    #[test]
    fn weights_read_as_votes() {
        assert_eq!(weight(9000), "9 votes");
        assert_eq!(weight(1000), "1 vote");
        assert_eq!(weight(4500), "4.5 votes");
        assert_eq!(weight(333), "0.333 votes");
        assert_eq!(percent("3/10"), "30 %");
        assert_eq!(percent("334/1000"), "33.4 %");
        assert_eq!(percent("2/3"), "66.7 %");
    }

    #[test]
    fn line_diff_marks_changed_lines() {
        assert_eq!(diff_lines("a\nb\nc", "a\nx\nc"), ["  a", "- b", "+ x", "  c"]);
    }
}
