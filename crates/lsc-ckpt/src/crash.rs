//! Fault injection for the crash tests: a process can be made to kill itself with SIGKILL at
//! the N-th I/O point of checkpoint writing, so a test can show that a save interrupted at any
//! of those points leaves the last good checkpoint loadable.
//!
//! * `LSC_CKPT_CRASH_AT=N`: at the N-th point (counted from 1 over the whole process) the
//!   process sends itself SIGKILL, as `kill -9` from outside would.
//! * `LSC_CKPT_CRASH_REPORT=1`: every point prints `lsc-ckpt crash point N: WHAT` on stderr,
//!   so a test can see how many points a save has and where they fall.
//!
//! Without either variable a point costs one relaxed atomic load.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

static COUNT: AtomicU64 = AtomicU64::new(0);

struct Plan {
    at: Option<u64>,
    report: bool,
}

fn plan() -> &'static Option<Plan> {
    static PLAN: OnceLock<Option<Plan>> = OnceLock::new();
    PLAN.get_or_init(|| {
        let at = std::env::var("LSC_CKPT_CRASH_AT").ok().and_then(|v| v.parse().ok());
        let report = std::env::var_os("LSC_CKPT_CRASH_REPORT").is_some_and(|v| v == "1");
        (at.is_some() || report).then_some(Plan { at, report })
    })
}

/// One I/O point of a save (`what` names it for the report).
pub fn point(what: &str) {
    let Some(p) = plan() else { return };
    let n = COUNT.fetch_add(1, Ordering::SeqCst) + 1;
    if p.report {
        eprintln!("lsc-ckpt crash point {n}: {what}");
    }
    if p.at == Some(n) {
        kill_self();
    }
}

#[cfg(unix)]
fn kill_self() -> ! {
    unsafe extern "C" {
        fn getpid() -> i32;
        fn kill(pid: i32, sig: i32) -> i32;
    }
    const SIGKILL: i32 = 9;
    // SAFETY: kill(2) on our own pid with SIGKILL; the process ends here.
    unsafe {
        kill(getpid(), SIGKILL);
    }
    std::process::abort()
}

#[cfg(not(unix))]
fn kill_self() -> ! {
    std::process::abort()
}
