//! Optional per-layer-type timing: `lsc train --profile` prints where a step's time goes.
//!
//! Disabled, a scope costs one relaxed atomic load. Enabled, each scope adds its wall time
//! and FLOPs to a process-wide table keyed by a static name (`conv.fwd`, `bn.bwd`, …).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

static ENABLED: AtomicBool = AtomicBool::new(false);
static TABLE: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

/// One row of the profile.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub name: &'static str,
    pub calls: u64,
    pub secs: f64,
    pub flops: f64,
}

/// Turns timing on or off for the whole process.
pub fn enable(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Times until dropped.
pub struct Scope {
    name: &'static str,
    flops: f64,
    start: Option<Instant>,
}

/// Starts timing `name`, which performs `flops` floating-point operations.
pub fn scope(name: &'static str, flops: f64) -> Scope {
    Scope {
        name,
        flops,
        start: enabled().then(Instant::now),
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        if let Some(t) = self.start {
            let secs = t.elapsed().as_secs_f64();
            let mut tab = TABLE.lock().unwrap_or_else(|e| e.into_inner());
            match tab.iter_mut().find(|e| e.name == self.name) {
                Some(e) => {
                    e.calls += 1;
                    e.secs += secs;
                    e.flops += self.flops;
                }
                None => tab.push(Entry {
                    name: self.name,
                    calls: 1,
                    secs,
                    flops: self.flops,
                }),
            }
        }
    }
}

/// The rows so far, slowest first.
pub fn snapshot() -> Vec<Entry> {
    let mut v = TABLE.lock().unwrap_or_else(|e| e.into_inner()).clone();
    v.sort_by(|a, b| b.secs.total_cmp(&a.secs));
    v
}

/// Clears the table.
pub fn reset() {
    TABLE.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

/// The table as text: time share and GFLOP/s of each layer type.
pub fn report() -> String {
    let rows = snapshot();
    let total: f64 = rows.iter().map(|e| e.secs).sum();
    let mut s = format!(
        "{:<14} {:>8} {:>10} {:>7} {:>9}\n",
        "layer", "calls", "seconds", "share", "GFLOP/s"
    );
    for e in &rows {
        let gf = if e.flops > 0.0 {
            format!("{:.1}", e.flops / e.secs.max(1e-12) / 1e9)
        } else {
            "-".into()
        };
        s += &format!(
            "{:<14} {:>8} {:>10.3} {:>6.1}% {:>9}\n",
            e.name,
            e.calls,
            e.secs,
            100.0 * e.secs / total.max(1e-12),
            gf
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_accumulate_only_when_enabled() {
        reset();
        drop(scope("test.off", 1.0));
        assert!(snapshot().iter().all(|e| e.name != "test.off"));
        enable(true);
        drop(scope("test.on", 2e9));
        drop(scope("test.on", 2e9));
        enable(false);
        let e = snapshot().into_iter().find(|e| e.name == "test.on").unwrap();
        assert_eq!((e.calls, e.flops), (2, 4e9));
        assert!(report().contains("test.on"));
    }
}
