//! `cargo xtask bench-comm`: every collective of the `Communicator` trait over thread ranks
//! (`ThreadComm`), per rank count and buffer size, against a single-thread memcpy of the same
//! bytes measured in the same run. Prints a table and a final JSON line.
//!
//! Timing: before every timed call all ranks meet at a barrier; each rank times from leaving
//! that barrier to the collective returning. A rep's time is the slowest rank's (the maximum
//! over ranks), and the figure reported is the median over reps, after a warm-up.
//!
//! Sizes follow NCCL's tests: `bytes` is the whole buffer of f32 (the all-reduce and broadcast
//! buffer, all-gather's `recv`, reduce-scatter's `send`); algbw = bytes / time; busbw =
//! algbw·2(n−1)/n for all-reduce, algbw·(n−1)/n for all-gather and reduce-scatter, algbw for
//! broadcast.

use lsc_benches::{Flags, JsonLine, median, median_secs, peak_rss_mb};
use lsc_comm::{Communicator, ReduceOp, ThreadComm, run_ranks};
use std::time::Instant;

const USAGE: &str = "usage: bench-comm [--sizes 4KiB,1MiB,16MiB] [--ranks 2,4] [--reps N]";

struct Args {
    sizes: Vec<usize>,
    ranks: Vec<usize>,
    reps: Option<usize>,
}

/// `4096`, `4KiB`, `4K`, `1MiB`, `16M`, `1GiB` (binary units) as bytes.
fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num.parse().map_err(|e| format!("size {s:?}: {e}"))?;
    let mult = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => 1 << 10,
        "m" | "mib" | "mb" => 1 << 20,
        "g" | "gib" | "gb" => 1 << 30,
        u => return Err(format!("size {s:?}: unknown unit {u:?} (use B, KiB, MiB or GiB)")),
    };
    n.checked_mul(mult).ok_or(format!("size {s:?} is too large"))
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        sizes: vec![4 << 10, 1 << 20, 16 << 20],
        ranks: vec![2, 4],
        reps: None,
    };
    let mut f = Flags::from_env(USAGE);
    while let Some(flag) = f.next() {
        match flag.as_str() {
            "--sizes" => a.sizes = f.string()?.split(',').map(parse_size).collect::<Result<_, _>>()?,
            "--ranks" => {
                a.ranks = f
                    .string()?
                    .split(',')
                    .map(|v| v.trim().parse::<usize>().map_err(|e| format!("--ranks {v}: {e}")))
                    .collect::<Result<_, _>>()?
            }
            "--reps" => a.reps = Some(f.value()?),
            _ => return Err(f.unknown()),
        }
    }
    if a.sizes.is_empty() || a.ranks.is_empty() || a.ranks.contains(&0) || a.reps == Some(0) {
        return Err(format!(
            "--sizes and --ranks need positive values, --reps a positive count\n{USAGE}"
        ));
    }
    if let Some(&r) = a.ranks.iter().find(|&&r| r < 2) {
        return Err(format!("--ranks {r}: a collective needs at least 2 ranks"));
    }
    if let Some(&s) = a.sizes.iter().find(|&&s| s < 4 * a.ranks.iter().max().unwrap()) {
        return Err(format!("size {s} B: needs at least one f32 per rank"));
    }
    Ok(a)
}

/// Timed reps and warm-up calls for a buffer of `bytes`: about 256 MiB of buffer per
/// measurement, at least 10 and at most 1000 reps (16 MiB: 16, 1 MiB: 256, 4 KiB: 1000).
fn reps_for(bytes: usize, fixed: Option<usize>) -> (usize, usize) {
    let reps = fixed.unwrap_or_else(|| ((256 << 20) / bytes.max(1)).clamp(10, 1000));
    (reps, (reps / 10).max(2))
}

/// `4096` → `4KiB`, `16777216` → `16MiB`; other sizes in bytes.
fn size_label(bytes: usize) -> String {
    for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes}B")
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Coll {
    AllReduce,
    AllGather,
    ReduceScatter,
    Broadcast,
    Barrier,
}

const COLLS: [Coll; 5] = [
    Coll::AllReduce,
    Coll::AllGather,
    Coll::ReduceScatter,
    Coll::Broadcast,
    Coll::Barrier,
];

impl Coll {
    fn name(self) -> &'static str {
        match self {
            Coll::AllReduce => "all_reduce",
            Coll::AllGather => "all_gather",
            Coll::ReduceScatter => "reduce_scatter",
            Coll::Broadcast => "broadcast",
            Coll::Barrier => "barrier",
        }
    }

    /// What `ThreadComm` does (crates/lsc-comm/src/thread.rs), in a table cell.
    fn algorithm(self) -> &'static str {
        match self {
            Coll::AllReduce => "reduce-scatter + all-gather, own slice",
            Coll::AllGather => "direct copy from every peer",
            Coll::ReduceScatter => "each rank reduces its own block",
            Coll::Broadcast => "non-roots copy from the root",
            Coll::Barrier => "mutex + condvar generation barrier",
        }
    }

    /// The same, in full.
    fn algorithm_long(self) -> &'static str {
        match self {
            Coll::AllReduce => {
                "in place: rank r reduces slice r (1/n of the buffer) over every rank's buffer in rank order, \
                 inner barrier, then copies the other n-1 slices from their owners; exit barrier"
            }
            Coll::AllGather => "every rank copies every peer's send (and its own) into its recv; exit barrier",
            Coll::ReduceScatter => "rank r reduces block r over every rank's send, in rank order; exit barrier",
            Coll::Broadcast => "every non-root rank copies the root's whole buffer; exit barrier",
            Coll::Barrier => "the entry barrier alone (one Mutex, Condvar wait/notify_all)",
        }
    }

    /// NCCL's bus-bandwidth factor for `n` ranks.
    fn bus_factor(self, n: usize) -> f64 {
        let n = n as f64;
        match self {
            Coll::AllReduce => 2.0 * (n - 1.0) / n,
            Coll::AllGather | Coll::ReduceScatter => (n - 1.0) / n,
            Coll::Broadcast | Coll::Barrier => 1.0,
        }
    }
}

/// Runs `f` `warmup` times and then `reps` times, each after a barrier of all ranks; returns this
/// rank's seconds from leaving the barrier to `f` returning, per timed rep.
fn time_ranks(c: &ThreadComm, warmup: usize, reps: usize, mut f: impl FnMut()) -> Vec<f64> {
    for _ in 0..warmup {
        c.barrier().expect("barrier");
        f();
    }
    (0..reps)
        .map(|_| {
            c.barrier().expect("barrier");
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect()
}

/// One rank's timings: for every size, the collectives of [`COLLS`] (barrier only with the
/// first size), each a list of per-rep seconds.
fn run_rank(c: &ThreadComm, sizes: &[usize], fixed_reps: Option<usize>) -> Vec<Vec<f64>> {
    let (n, r) = (c.world_size(), c.rank());
    let mut out = Vec::new();
    for (si, &bytes) in sizes.iter().enumerate() {
        // Whole-buffer elements, rounded down to a multiple of the rank count.
        let per = bytes / 4 / n;
        let total = per * n;
        let (reps, warmup) = reps_for(total * 4, fixed_reps);
        // Values written before timing (so every page is real, not the shared zero page) that
        // sum to exactly zero over the ranks: repeated sums stay 0, never subnormal or infinite.
        let centred = r as f32 - (n - 1) as f32 / 2.0;
        for coll in COLLS {
            let t = match coll {
                Coll::AllReduce => {
                    let mut buf = vec![centred; total];
                    time_ranks(c, warmup, reps, || {
                        c.all_reduce(&mut buf, ReduceOp::Sum).expect("all_reduce")
                    })
                }
                Coll::AllGather => {
                    let send = vec![r as f32 + 0.5; per];
                    let mut recv = vec![1.0f32; total];
                    time_ranks(c, warmup, reps, || c.all_gather(&send, &mut recv).expect("all_gather"))
                }
                Coll::ReduceScatter => {
                    let send = vec![centred; total];
                    let mut recv = vec![1.0f32; per];
                    time_ranks(c, warmup, reps, || {
                        c.reduce_scatter(&send, &mut recv, ReduceOp::Sum)
                            .expect("reduce_scatter")
                    })
                }
                Coll::Broadcast => {
                    let mut buf = vec![r as f32 + 1.0; total];
                    time_ranks(c, warmup, reps, || c.broadcast(&mut buf, 0).expect("broadcast"))
                }
                Coll::Barrier if si == 0 => {
                    let (reps, warmup) = reps_for(4, fixed_reps);
                    time_ranks(c, warmup, reps, || c.barrier().expect("barrier"))
                }
                Coll::Barrier => continue,
            };
            out.push(t);
        }
    }
    out
}

/// Median over reps of the slowest rank's time: `per_rank[rank][rep]`.
fn slowest_median(per_rank: &[&Vec<f64>]) -> f64 {
    let reps = per_rank[0].len();
    let t: Vec<f64> = (0..reps)
        .map(|i| per_rank.iter().map(|v| v[i]).fold(0.0, f64::max))
        .collect();
    median(&t)
}

/// Single-thread `copy_from_slice` of `bytes`: median seconds.
fn memcpy_secs(bytes: usize, fixed_reps: Option<usize>) -> f64 {
    let len = bytes / 4;
    let (reps, warmup) = reps_for(len * 4, fixed_reps);
    let src: Vec<f32> = (0..len).map(|i| (i % 251) as f32).collect();
    let mut dst = vec![1.0f32; len];
    let s = median_secs(warmup, reps, || {
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&mut dst);
    });
    assert_eq!(dst[len - 1], ((len - 1) % 251) as f32);
    s
}

fn fmt_time(s: f64) -> String {
    if s < 1e-3 {
        format!("{:.1} us", s * 1e6)
    } else {
        format!("{:.3} ms", s * 1e3)
    }
}

fn main() {
    let a = lsc_benches::args_or_exit(parse());
    let mut j = JsonLine::default();
    j.str("bench", "comm");
    j.str("backend", "threads");
    j.str(
        "timing",
        "median over reps of the slowest rank, from a barrier to the collective's return",
    );
    j.num(
        "cores",
        std::thread::available_parallelism().map_or(0, |p| p.get()) as f64,
    );

    println!("single-thread memcpy (copy_from_slice), median:");
    let mut memcpy = Vec::new();
    for &bytes in &a.sizes {
        let s = memcpy_secs(bytes, a.reps);
        let gbps = (bytes / 4 * 4) as f64 / s / 1e9;
        println!("  {:>8} {:>12} {:>8.2} GB/s", size_label(bytes), fmt_time(s), gbps);
        j.num(&format!("memcpy_{}_gbps", size_label(bytes)), gbps);
        memcpy.push((bytes, s));
    }

    println!("\nalgorithms (ThreadComm):");
    for coll in COLLS {
        println!("  {:<15} {}", coll.name(), coll.algorithm_long());
    }
    println!(
        "\ntime: median over reps of the slowest rank's time from leaving a barrier to the collective returning \
         (warm-up first; reps: 256 MiB worth, 10..1000, unless --reps)"
    );
    println!(
        "bytes: the whole buffer (all_gather recv, reduce_scatter send); GB/s = 1e9 B/s; busbw as in nccl-tests\n"
    );
    println!(
        "{:<15} {:<38} {:>5} {:>10} {:>12} {:>11} {:>11}",
        "collective", "algorithm", "ranks", "bytes", "time", "algbw GB/s", "busbw GB/s"
    );
    let mut allreduce_16_2 = None;
    for &n in &a.ranks {
        let per_rank = run_ranks(n, |c| run_rank(&c, &a.sizes, a.reps));
        let mut k = 0;
        for (si, &bytes) in a.sizes.iter().enumerate() {
            let total = bytes / 4 / n * n * 4;
            for coll in COLLS {
                if coll == Coll::Barrier && si > 0 {
                    continue;
                }
                let med = slowest_median(&per_rank.iter().map(|v| &v[k]).collect::<Vec<_>>());
                k += 1;
                if coll == Coll::Barrier {
                    println!(
                        "{:<15} {:<38} {:>5} {:>10} {:>12} {:>11} {:>11}",
                        coll.name(),
                        coll.algorithm(),
                        n,
                        "-",
                        fmt_time(med),
                        "-",
                        "-"
                    );
                    j.num(&format!("barrier_{n}r_us"), med * 1e6);
                    continue;
                }
                let algbw = total as f64 / med / 1e9;
                let busbw = algbw * coll.bus_factor(n);
                println!(
                    "{:<15} {:<38} {:>5} {:>10} {:>12} {:>11.2} {:>11.2}",
                    coll.name(),
                    coll.algorithm(),
                    n,
                    size_label(total),
                    fmt_time(med),
                    algbw,
                    busbw
                );
                let key = format!("{}_{n}r_{}", coll.name(), size_label(total));
                j.num(&format!("{key}_busbw_gbps"), busbw);
                j.num(&format!("{key}_us"), med * 1e6);
                if coll == Coll::AllReduce && n == 2 && bytes == 16 << 20 {
                    allreduce_16_2 = Some(med);
                }
            }
        }
    }

    let memcpy_16 = memcpy.iter().find(|m| m.0 == 16 << 20).map(|m| m.1);
    println!();
    match (allreduce_16_2, memcpy_16) {
        (Some(ar), Some(mc)) => {
            let ratio = ar / mc;
            let ok = ratio <= 3.0;
            println!(
                "allreduce_16MiB_2ranks / memcpy_16MiB = {} / {} = {ratio:.2} (target <= 3: {})",
                fmt_time(ar),
                fmt_time(mc),
                if ok { "met" } else { "MISSED" }
            );
            j.num("allreduce16_over_memcpy", ratio);
            j.num("allreduce16_target_met", f64::from(u8::from(ok)));
        }
        _ => println!("allreduce_16MiB_2ranks / memcpy_16MiB: n/a (needs 16MiB in --sizes and 2 in --ranks)"),
    }
    j.num("peak_rss_mb", peak_rss_mb());
    println!("{}", j.finish());
}
