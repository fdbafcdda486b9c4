//! Measuring helpers shared by the engine benchmarks.
#![allow(clippy::disallowed_methods)] // a benchmark measures time
#![allow(dead_code)]

use std::time::{Duration, Instant};

/// The median time of `runs` runs of `f`.
pub fn median(runs: usize, mut f: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    times[runs / 2]
}

/// Resident set size of this process, from /proc (Linux); 0 elsewhere.
pub fn rss_bytes() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<usize>().ok()))
        .map_or(0, |pages| pages * 4096)
}
