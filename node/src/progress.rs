//! Progress of long work (start-up verification and replay, a rebuild, sync catch-up), for the
//! log and for `kosctl status`.
//!
//! A [`Progress`] is shared by whoever does the work and the API, which reads it without going
//! through the core (so `status` answers while the core is busy rebuilding). Each task keeps
//! its counts, start and end; the rate and the time left are derived when read. Log lines are
//! written at most every [`LOG_EVERY_MS`] per task, and a task's last line says how long it took.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use serde_json::{Value, json};

/// Least time between two progress lines of one task in the log.
pub const LOG_EVERY_MS: u64 = 2_000;
/// Tasks kept (finished ones stay visible in `status` until replaced).
const MAX_TASKS: usize = 16;

#[derive(Clone, Debug)]
struct Task {
    done: u64,
    total: u64,
    unit: &'static str,
    started_ms: u64,
    updated_ms: u64,
    finished_ms: Option<u64>,
    logged_ms: u64,
}

/// Shared progress of the node's long tasks.
#[derive(Clone, Debug, Default)]
pub struct Progress(Arc<Mutex<BTreeMap<&'static str, Task>>>);

impl Progress {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, Task>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts (or restarts) `task`: `total` units to do.
    pub fn start(&self, task: &'static str, total: u64, unit: &'static str, now: u64) {
        let mut tasks = self.lock();
        if tasks.len() >= MAX_TASKS && !tasks.contains_key(task) {
            // The oldest finished task goes.
            if let Some(old) = tasks
                .iter()
                .filter(|(_, t)| t.finished_ms.is_some())
                .min_by_key(|(_, t)| t.started_ms)
                .map(|(k, _)| *k)
            {
                tasks.remove(old);
            } else {
                return;
            }
        }
        tasks.insert(
            task,
            Task {
                done: 0,
                total,
                unit,
                started_ms: now,
                updated_ms: now,
                finished_ms: None,
                logged_ms: now,
            },
        );
    }

    /// Sets how much of `task` is done (and its total, which may grow as work is discovered);
    /// logs a progress line if the last one is [`LOG_EVERY_MS`] old.
    pub fn update(&self, task: &'static str, done: u64, total: u64, now: u64) {
        let line = {
            let mut tasks = self.lock();
            let Some(t) = tasks.get_mut(task) else { return };
            t.done = done;
            t.total = total.max(done);
            t.updated_ms = now;
            if now.saturating_sub(t.logged_ms) >= LOG_EVERY_MS {
                t.logged_ms = now;
                Some(describe(task, t, now))
            } else {
                None
            }
        };
        if let Some(line) = line {
            tracing::info!("{line}");
        }
    }

    /// Marks `task` finished; logs how long it took if it was long enough to be reported.
    pub fn finish(&self, task: &'static str, now: u64) {
        let line = {
            let mut tasks = self.lock();
            let Some(t) = tasks.get_mut(task) else { return };
            t.finished_ms = Some(now);
            t.updated_ms = now;
            t.total = t.total.max(t.done);
            (now.saturating_sub(t.started_ms) >= LOG_EVERY_MS).then(|| describe(task, t, now))
        };
        if let Some(line) = line {
            tracing::info!("{line}");
        }
    }

    /// Every task, as `status` shows it.
    pub fn json(&self, now: u64) -> Value {
        let tasks = self.lock();
        // In the order they started.
        let mut list: Vec<(&&str, &Task)> = tasks.iter().collect();
        list.sort_by_key(|(name, t)| (t.started_ms, **name));
        Value::Array(
            list.into_iter()
                .map(|(name, t)| {
                    let (rate, eta) = rate_eta(t, now);
                    json!({
                        "task": name,
                        "done": t.done,
                        "total": t.total,
                        "unit": t.unit,
                        "percent": percent(t),
                        "rate_per_sec": rate,
                        "eta_secs": eta,
                        "started_ms": t.started_ms,
                        "finished_ms": t.finished_ms,
                    })
                })
                .collect(),
        )
    }
}

fn percent(t: &Task) -> f64 {
    if t.total == 0 {
        return if t.finished_ms.is_some() { 100.0 } else { 0.0 };
    }
    (t.done as f64 * 1000.0 / t.total as f64).round() / 10.0
}

/// Units per second so far, and seconds left at that rate (none when finished or unknown).
fn rate_eta(t: &Task, now: u64) -> (f64, Option<u64>) {
    let end = t.finished_ms.unwrap_or(now);
    let secs = end.saturating_sub(t.started_ms) as f64 / 1000.0;
    let rate = if secs > 0.0 { (t.done as f64 / secs * 10.0).round() / 10.0 } else { 0.0 };
    let eta = (t.finished_ms.is_none() && rate > 0.0)
        .then(|| (t.total.saturating_sub(t.done) as f64 / rate).ceil() as u64);
    (rate, eta)
}

/// One log line: `start-up verification: 45.0 % (45000 of 100000 messages), 30000/s, 2 s left`.
fn describe(name: &str, t: &Task, now: u64) -> String {
    let (rate, eta) = rate_eta(t, now);
    match t.finished_ms {
        Some(end) => format!(
            "{name}: done, {} {} in {:.1} s ({rate}/s)",
            t.done,
            t.unit,
            end.saturating_sub(t.started_ms) as f64 / 1000.0
        ),
        None => format!(
            "{name}: {} % ({} of {} {}), {rate}/s, {} s left",
            percent(t),
            t.done,
            t.total,
            t.unit,
            eta.map_or("?".into(), |e| e.to_string())
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_percent_and_time_left() {
        let p = Progress::default();
        p.start("replay", 1_000, "messages", 10_000);
        p.update("replay", 250, 1_000, 12_500);
        let v = p.json(12_500);
        let t = &v[0];
        assert_eq!(t["task"], "replay");
        assert_eq!(t["percent"], 25.0);
        assert_eq!(t["rate_per_sec"], 100.0);
        assert_eq!(t["eta_secs"], 8);
        p.finish("replay", 20_000);
        let t = &p.json(30_000)[0];
        assert_eq!(t["finished_ms"], 20_000);
        assert!(t["eta_secs"].is_null());
        // A total that grows as work is found never falls below what is done.
        p.start("sync", 10, "messages", 0);
        p.update("sync", 40, 20, 1_000);
        let all = p.json(1_000);
        assert_eq!(all[0]["task"], "sync", "in the order they started");
        assert_eq!(all[0]["total"], 40);
    }
}
