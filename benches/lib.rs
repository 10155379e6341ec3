//! Shared timing for lsc's benchmarks: medians over repeated runs, printed as a table row and
//! collected into the one JSON line each bench ends with.

use std::time::Instant;

/// Runs `f` `warmup` times untimed, then `reps` times, and returns the median seconds.
pub fn median_secs(warmup: usize, reps: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..warmup {
        f();
    }
    let t: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    median(&t)
}

/// The median of `v` (the upper one of an even count).
///
/// # Panics
/// When `v` is empty.
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

/// Accumulates `"key":value` pairs for the closing JSON line.
#[derive(Default)]
pub struct JsonLine(Vec<String>);

impl JsonLine {
    pub fn num(&mut self, key: &str, v: f64) {
        self.0.push(format!("\"{key}\":{v:.3}"));
    }
    pub fn str(&mut self, key: &str, v: &str) {
        self.0.push(format!("\"{key}\":\"{v}\""));
    }
    pub fn finish(&self) -> String {
        format!("{{{}}}", self.0.join(","))
    }
}

/// Peak resident memory of this process in MiB (`VmHWM` from /proc; 0 where unavailable).
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// A bench's parsed flags, or its usage message on stderr and exit status 2.
pub fn args_or_exit<A>(parsed: Result<A, String>) -> A {
    parsed.unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2)
    })
}

/// A bench's flags: `--flag [value]` in any order; `--bench`, which `cargo bench` adds, is
/// skipped. Every error names the flag and ends with the usage.
pub struct Flags {
    args: std::vec::IntoIter<String>,
    usage: &'static str,
    flag: String,
}

impl Flags {
    /// This process's arguments.
    pub fn from_env(usage: &'static str) -> Flags {
        Flags {
            args: std::env::args().skip(1).collect::<Vec<_>>().into_iter(),
            usage,
            flag: String::new(),
        }
    }

    /// The next flag, if any.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Option<String> {
        let f = self.args.find(|a| a != "--bench")?;
        self.flag = f.clone();
        Some(f)
    }

    /// The current flag's value, as text.
    pub fn string(&mut self) -> Result<String, String> {
        self.args
            .find(|a| a != "--bench")
            .ok_or_else(|| format!("{} needs a value\n{}", self.flag, self.usage))
    }

    /// The current flag's value, parsed.
    pub fn value<T: std::str::FromStr>(&mut self) -> Result<T, String>
    where
        T::Err: std::fmt::Display,
    {
        let v = self.string()?;
        v.parse().map_err(|e| format!("{} {v}: {e}\n{}", self.flag, self.usage))
    }

    /// The error for the current flag when no bench knows it (or the usage, for `-h`).
    pub fn unknown(&self) -> String {
        match self.flag.as_str() {
            "-h" | "--help" => self.usage.to_string(),
            f => format!("unknown flag {f}\n{}", self.usage),
        }
    }
}
