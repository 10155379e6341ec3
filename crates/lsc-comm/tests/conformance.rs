//! Conformance suite for every `Communicator` engine in this crate.
//!
//! Each check is written once against `&dyn Communicator` and run on `LocalComm` (world 1) and
//! on `ThreadComm` groups of 1 to 4 ranks. Expected values are computed independently here: the
//! reductions fold the ranks' inputs in rank order, and results are compared bit for bit.

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use lsc_comm::{CommError, Communicator, LocalComm, ReduceOp, ThreadComm, run_ranks, run_ranks_with_timeout};

/// An engine and a world size: runs a closure once per rank of a fresh group.
#[derive(Clone, Copy, Debug)]
enum Engine {
    Local,
    Threads(usize),
}

const ENGINES: [Engine; 5] = [
    Engine::Local,
    Engine::Threads(1),
    Engine::Threads(2),
    Engine::Threads(3),
    Engine::Threads(4),
];

/// Buffer lengths: empty, fewer than the ranks, odd, and large.
const SIZES: [usize; 6] = [0, 1, 2, 7, 1001, 1 << 20];

impl Engine {
    fn world(self) -> usize {
        match self {
            Engine::Local => 1,
            Engine::Threads(n) => n,
        }
    }

    /// Runs `f` on every rank and returns the results in rank order.
    fn run<T: Send>(self, f: impl Fn(&dyn Communicator) -> T + Sync) -> Vec<T> {
        match self {
            Engine::Local => vec![f(&LocalComm)],
            Engine::Threads(n) => run_ranks(n, |c| f(&c)),
        }
    }
}

/// SplitMix64: a deterministic stream for test data.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A non-integer value with a varied exponent, so sums depend on their order.
fn value(seed: u64, rank: usize, i: usize) -> f32 {
    let h = mix(seed ^ mix((rank as u64) << 40 ^ i as u64));
    let unit = (h >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
    // Scaled by 2^-6 … 2^9 with exact operations only (no `powi`, which need not be exact).
    unit * (1u32 << (h & 15)) as f32 / 64.0
}

fn inputs(seed: u64, world: usize, len: usize) -> Vec<Vec<f32>> {
    (0..world)
        .map(|r| (0..len).map(|i| value(seed, r, i)).collect())
        .collect()
}

/// The elementwise reduction of `inputs` in rank order 0, 1, …
fn reduce_in_rank_order(inputs: &[Vec<f32>], op: ReduceOp) -> Vec<f32> {
    let mut acc = inputs[0].clone();
    for v in &inputs[1..] {
        for (a, &b) in acc.iter_mut().zip(v) {
            *a = match op {
                ReduceOp::Sum => *a + b,
                ReduceOp::Max => a.max(b),
            };
        }
    }
    acc
}

#[track_caller]
fn assert_bits_eq(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
        panic!("{what}: element {i}: got {} want {}", got[i], want[i]);
    }
}

// ---- the checks, written once over `&dyn Communicator` ----

fn check_all_reduce(c: &dyn Communicator, inputs: &[Vec<f32>], op: ReduceOp, want: &[f32]) {
    let mut buf = inputs[c.rank()].clone();
    c.all_reduce(&mut buf, op).unwrap();
    let what = format!(
        "all_reduce {op:?} len {} rank {}/{}",
        buf.len(),
        c.rank(),
        c.world_size()
    );
    assert_bits_eq(&buf, want, &what);
}

fn check_all_gather(c: &dyn Communicator, inputs: &[Vec<f32>], want: &[f32]) {
    let send = &inputs[c.rank()];
    let mut recv = vec![f32::NAN; send.len() * c.world_size()];
    c.all_gather(send, &mut recv).unwrap();
    assert_bits_eq(&recv, want, &format!("all_gather len {} rank {}", send.len(), c.rank()));
}

fn check_reduce_scatter(c: &dyn Communicator, inputs: &[Vec<f32>], op: ReduceOp, want: &[f32]) {
    let send = &inputs[c.rank()];
    let m = send.len() / c.world_size();
    let mut recv = vec![f32::NAN; m];
    c.reduce_scatter(send, &mut recv, op).unwrap();
    let r = c.rank();
    assert_bits_eq(
        &recv,
        &want[r * m..(r + 1) * m],
        &format!("reduce_scatter {op:?} m {m} rank {r}"),
    );
}

fn check_broadcast(c: &dyn Communicator, inputs: &[Vec<f32>], root: usize) {
    let mut buf = inputs[c.rank()].clone();
    c.broadcast(&mut buf, root).unwrap();
    assert_bits_eq(&buf, &inputs[root], &format!("broadcast root {root} rank {}", c.rank()));
}

#[test]
fn ranks_and_backends() {
    for e in ENGINES {
        let got = e.run(|c| (c.rank(), c.world_size(), c.backend()));
        let backend = if matches!(e, Engine::Local) { "local" } else { "threads" };
        let want: Vec<_> = (0..e.world()).map(|r| (r, e.world(), backend)).collect();
        assert_eq!(got, want, "{e:?}");
    }
    assert!(ThreadComm::group(0).is_empty());
    assert!(run_ranks(0, |_| 1).is_empty());
    fn is_send<T: Send>() {}
    is_send::<ThreadComm>();
}

#[test]
fn all_reduce_sum_and_max() {
    for e in ENGINES {
        for len in SIZES {
            let inputs = inputs(1, e.world(), len);
            for op in [ReduceOp::Sum, ReduceOp::Max] {
                let want = reduce_in_rank_order(&inputs, op);
                e.run(|c| check_all_reduce(c, &inputs, op, &want));
            }
        }
    }
}

#[test]
fn all_reduce_follows_rank_order() {
    // The data makes the order visible: summing in reverse gives different bits somewhere.
    let n = 4;
    let inputs = inputs(2, n, 4096);
    let want = reduce_in_rank_order(&inputs, ReduceOp::Sum);
    let reversed: Vec<Vec<f32>> = inputs.iter().rev().cloned().collect();
    let reversed = reduce_in_rank_order(&reversed, ReduceOp::Sum);
    assert!(want.iter().zip(&reversed).any(|(a, b)| a.to_bits() != b.to_bits()));
    // Bit-identical on every rank and from run to run.
    for _ in 0..5 {
        Engine::Threads(n).run(|c| check_all_reduce(c, &inputs, ReduceOp::Sum, &want));
    }
}

#[test]
fn all_reduce_scalar() {
    for e in ENGINES {
        let got = e.run(|c| c.all_reduce_scalar(c.rank() as f32 + 0.5, ReduceOp::Sum).unwrap());
        let want = (0..e.world()).fold(0.0f32, |a, r| a + r as f32 + 0.5);
        assert!(got.iter().all(|&v| v == want), "{e:?} {got:?}");
        let got = e.run(|c| c.all_reduce_scalar(-(c.rank() as f32), ReduceOp::Max).unwrap());
        assert!(got.iter().all(|&v| v == 0.0), "{e:?} {got:?}");
    }
}

#[test]
fn all_gather() {
    for e in ENGINES {
        for len in SIZES {
            let inputs = inputs(3, e.world(), len);
            let want: Vec<f32> = inputs.concat();
            e.run(|c| check_all_gather(c, &inputs, &want));
        }
    }
}

#[test]
fn all_gather_u32_is_exact() {
    let specials = [
        0u32,
        1,
        (1 << 24) + 1,
        (1 << 24) + 3,
        u32::MAX,
        0x7fc0_0001, // quiet NaN with payload
        0x8000_0000, // -0.0
        123_456_789,
    ];
    for e in ENGINES {
        for len in [0, 1, specials.len(), 1001] {
            let send_of = |r: usize| -> Vec<u32> {
                (0..len)
                    .map(|i| {
                        if i < specials.len() {
                            specials[(i + r) % specials.len()]
                        } else {
                            mix((r * len + i) as u64) as u32
                        }
                    })
                    .collect()
            };
            let want: Vec<u32> = (0..e.world()).flat_map(send_of).collect();
            e.run(|c| assert_eq!(c.all_gather_u32(&send_of(c.rank())).unwrap(), want, "{e:?} len {len}"));
        }
    }
}

#[test]
fn reduce_scatter_sum_and_max() {
    for e in ENGINES {
        for m in [0, 1, 2, 7, 1001, 1 << 18] {
            let inputs = inputs(4, e.world(), m * e.world());
            for op in [ReduceOp::Sum, ReduceOp::Max] {
                let want = reduce_in_rank_order(&inputs, op);
                e.run(|c| check_reduce_scatter(c, &inputs, op, &want));
            }
        }
    }
}

#[test]
fn broadcast_from_every_root() {
    for e in ENGINES {
        for len in SIZES {
            let inputs = inputs(5, e.world(), len);
            for root in 0..e.world() {
                e.run(|c| check_broadcast(c, &inputs, root));
            }
        }
    }
}

#[test]
fn barrier_waits_for_every_rank() {
    for e in ENGINES {
        let n = e.world();
        let arrived = AtomicUsize::new(0);
        e.run(|c| {
            for round in 0..50 {
                if (c.rank() + round) % n == 0 {
                    std::thread::sleep(Duration::from_micros(200));
                }
                arrived.fetch_add(1, Ordering::SeqCst);
                c.barrier().unwrap();
                assert!(arrived.load(Ordering::SeqCst) >= n * (round + 1), "{e:?} round {round}");
            }
        });
    }
}

// ---- misuse and failures ----

#[test]
fn local_size_and_root_errors() {
    let c = LocalComm;
    let mut recv = [0.0; 3];
    assert_eq!(
        c.all_gather(&[1.0, 2.0], &mut recv),
        Err(CommError::Size {
            rank: 0,
            op: "all_gather",
            expected: 2,
            got: 3
        })
    );
    assert!(matches!(
        c.reduce_scatter(&[1.0, 2.0], &mut recv, ReduceOp::Sum),
        Err(CommError::Size {
            rank: 0,
            op: "reduce_scatter",
            ..
        })
    ));
    assert!(matches!(
        c.broadcast(&mut [1.0], 1),
        Err(CommError::Invalid {
            rank: 0,
            op: "broadcast",
            ..
        })
    ));
}

/// Runs `f` on `n` thread ranks with a 60 s timeout and checks that it finished promptly.
fn run_prompt<T: Send>(n: usize, f: impl Fn(ThreadComm) -> T + Sync) -> Vec<T> {
    let t = Instant::now();
    let out = run_ranks_with_timeout(n, Duration::from_secs(60), f);
    assert!(t.elapsed() < Duration::from_secs(10), "took {:?}", t.elapsed());
    out
}

#[test]
fn size_mismatch_fails_on_every_rank() {
    for n in [2, 3, 4] {
        // all_reduce: the last rank's buffer is one longer.
        let errs = run_prompt(n, |c| {
            let len = if c.rank() == n - 1 { 6 } else { 5 };
            let err = c.all_reduce(&mut vec![1.0; len], ReduceOp::Sum).unwrap_err();
            // The group is now aborted: the next collective fails fast.
            let next = c.barrier().unwrap_err();
            assert!(matches!(next, CommError::Aborted { op: "barrier", .. }), "{next}");
            err
        });
        for (r, e) in errs.into_iter().enumerate() {
            match e {
                CommError::Size {
                    rank,
                    op: "all_reduce",
                    expected: 5,
                    got,
                } => {
                    assert_eq!(rank, r);
                    assert_eq!(got, 6);
                }
                e => panic!("rank {r}: {e}"),
            }
        }
        // all_gather: rank 0's recv is too short.
        let errs = run_prompt(n, |c| {
            let recv_len = if c.rank() == 0 { 2 * n - 1 } else { 2 * n };
            c.all_gather(&[1.0, 2.0], &mut vec![0.0; recv_len]).unwrap_err()
        });
        for (r, e) in errs.into_iter().enumerate() {
            assert_eq!(
                e,
                CommError::Size {
                    rank: r,
                    op: "all_gather",
                    expected: 2 * n,
                    got: 2 * n - 1
                }
            );
        }
        // reduce_scatter: rank 1's send is not world × recv.
        let errs = run_prompt(n, |c| {
            let send_len = if c.rank() == 1 { 3 * n + 1 } else { 3 * n };
            c.reduce_scatter(&vec![1.0; send_len], &mut [0.0; 3], ReduceOp::Max)
                .unwrap_err()
        });
        for (r, e) in errs.into_iter().enumerate() {
            assert_eq!(
                e,
                CommError::Size {
                    rank: r,
                    op: "reduce_scatter",
                    expected: 3 * n,
                    got: 3 * n + 1
                }
            );
        }
        // broadcast: lengths disagree.
        let errs = run_prompt(n, |c| c.broadcast(&mut vec![0.0; 4 + c.rank()], 0).unwrap_err());
        for (r, e) in errs.into_iter().enumerate() {
            assert!(
                matches!(e, CommError::Size { rank, op: "broadcast", .. } if rank == r),
                "{e}"
            );
        }
    }
}

#[test]
fn mismatched_calls_are_invalid() {
    for n in [1, 2, 3] {
        // A root outside the world.
        let errs = run_prompt(n, |c| c.broadcast(&mut [0.0; 2], n).unwrap_err());
        for (r, e) in errs.into_iter().enumerate() {
            assert!(
                matches!(e, CommError::Invalid { rank, op: "broadcast", .. } if rank == r),
                "{e}"
            );
        }
    }
    for n in [2, 3] {
        // Different roots.
        let errs = run_prompt(n, |c| c.broadcast(&mut [0.0; 2], c.rank()).unwrap_err());
        assert!(
            errs.iter()
                .all(|e| matches!(e, CommError::Invalid { op: "broadcast", .. }))
        );
        // Different collectives: each rank names its own.
        let errs = run_prompt(n, |c| {
            if c.rank() == 1 {
                c.barrier().unwrap_err()
            } else {
                c.all_reduce(&mut [1.0; 4], ReduceOp::Sum).unwrap_err()
            }
        });
        for (r, e) in errs.into_iter().enumerate() {
            let op = if r == 1 { "barrier" } else { "all_reduce" };
            assert!(
                matches!(&e, CommError::Invalid { rank, op: o, .. } if *rank == r && *o == op),
                "{e}"
            );
        }
        // Different reduce ops.
        let errs = run_prompt(n, |c| {
            let op = if c.rank() == 0 { ReduceOp::Sum } else { ReduceOp::Max };
            c.all_reduce(&mut [1.0; 4], op).unwrap_err()
        });
        assert!(
            errs.iter()
                .all(|e| matches!(e, CommError::Invalid { op: "all_reduce", .. }))
        );
    }
}

fn assert_left(e: &CommError, me: usize, op: &str, gone: usize) {
    match e {
        CommError::Aborted { rank, op: o, why } => {
            assert_eq!((*rank, *o), (me, op), "{e}");
            assert_eq!(why, &format!("rank {gone} left the group"), "{e}");
        }
        e => panic!("rank {me}: expected Aborted, got {e}"),
    }
}

#[test]
fn dropped_rank_aborts_waiting_peers() {
    for n in [2, 3, 4] {
        let gone = n - 1;
        let errs = run_prompt(n, |c| {
            if c.rank() == gone {
                std::thread::sleep(Duration::from_millis(100));
                return None; // drops the handle while the others wait
            }
            Some(c.all_reduce(&mut [1.0; 10], ReduceOp::Sum).unwrap_err())
        });
        for (r, e) in errs.iter().enumerate().filter(|(r, _)| *r != gone) {
            assert_left(e.as_ref().unwrap(), r, "all_reduce", gone);
        }
    }
}

#[test]
fn dropped_rank_fails_later_collectives_fast() {
    for n in [2, 3, 4] {
        let errs = run_prompt(n, |c| {
            if c.rank() == 0 {
                return vec![]; // leaves before anyone calls
            }
            std::thread::sleep(Duration::from_millis(30));
            let mut recv = vec![0.0; n];
            let t = Instant::now();
            let errs = vec![
                c.all_gather(&[1.0], &mut recv).unwrap_err(),
                c.broadcast(&mut [1.0], 1).unwrap_err(),
                c.barrier().unwrap_err(),
            ];
            assert!(t.elapsed() < Duration::from_secs(1));
            errs
        });
        for (r, es) in errs.iter().enumerate().skip(1) {
            for (e, op) in es.iter().zip(["all_gather", "broadcast", "barrier"]) {
                assert_left(e, r, op, 0);
            }
        }
    }
}

#[test]
fn panicking_rank_is_reraised_and_does_not_hang_peers() {
    for n in [2, 3, 4] {
        let seen = Mutex::new(Vec::new());
        let t = Instant::now();
        let caught = panic::catch_unwind(AssertUnwindSafe(|| {
            run_ranks_with_timeout(n, Duration::from_secs(60), |c| {
                if c.rank() == 1 {
                    std::thread::sleep(Duration::from_millis(50));
                    panic!("boom");
                }
                let e = c.all_reduce(&mut [1.0; 3], ReduceOp::Max).unwrap_err();
                seen.lock().unwrap().push(e.clone());
                // A secondary panic on the other ranks: run_ranks must re-raise the first.
                if c.rank() == 0 {
                    panic!("secondary: {e}");
                }
            })
        }));
        assert!(t.elapsed() < Duration::from_secs(10));
        let payload = caught.unwrap_err();
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"boom"));
        let seen = seen.into_inner().unwrap();
        assert_eq!(seen.len(), n - 1);
        for e in &seen {
            assert!(
                matches!(e, CommError::Aborted { why, .. } if why == "rank 1 left the group"),
                "{e}"
            );
        }
    }
}

#[test]
fn missing_rank_times_out() {
    let timeout = Duration::from_millis(200);
    for n in [2, 3, 4] {
        let late = n - 1;
        let others_done = Barrier::new(n);
        let t = Instant::now();
        let errs = run_ranks_with_timeout(n, timeout, |c| {
            if c.rank() == late {
                // Never calls until the others have given up, then finds the group aborted.
                others_done.wait();
                let e = c.all_reduce(&mut [0.0; 4], ReduceOp::Sum).unwrap_err();
                assert!(
                    matches!(&e, CommError::Aborted { rank, why, .. } if *rank == late && why.contains("timed out")),
                    "{e}"
                );
                return (e, Duration::ZERO);
            }
            let t = Instant::now();
            let e = c.all_reduce(&mut [0.0; 4], ReduceOp::Sum).unwrap_err();
            let waited = t.elapsed();
            others_done.wait();
            (e, waited)
        });
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert!(t.elapsed() >= timeout);
        for (r, (e, waited)) in errs.iter().enumerate().filter(|(r, _)| *r != late) {
            match e {
                CommError::Timeout {
                    rank,
                    op: "all_reduce",
                    secs,
                } => {
                    assert_eq!(*rank, r);
                    // What this rank waited: a rank that arrived late is released by the
                    // first rank's timeout, having waited less.
                    assert!(*secs <= waited.as_secs_f64() + 0.01 && *secs < 4.0, "{e}");
                }
                e => panic!("rank {r}: expected Timeout, got {e}"),
            }
        }
        // The first rank to give up waited the whole timeout.
        let longest = errs.iter().map(|(_, w)| *w).max().unwrap();
        assert!(longest >= timeout, "{longest:?}");
    }
}

#[test]
fn barrier_times_out_too() {
    let errs = run_ranks_with_timeout(3, Duration::from_millis(200), |c| {
        if c.rank() == 2 {
            std::thread::sleep(Duration::from_millis(600));
        }
        c.barrier()
    });
    assert!(
        matches!(
            errs[0],
            Err(CommError::Timeout {
                rank: 0,
                op: "barrier",
                ..
            })
        ),
        "{errs:?}"
    );
    assert!(
        matches!(
            errs[1],
            Err(CommError::Timeout {
                rank: 1,
                op: "barrier",
                ..
            })
        ),
        "{errs:?}"
    );
    assert!(
        matches!(
            errs[2],
            Err(CommError::Aborted {
                rank: 2,
                op: "barrier",
                ..
            })
        ),
        "{errs:?}"
    );
}

// ---- races ----

/// Many small collectives of random kinds and sizes (the same sequence on every rank), with
/// random sleeps and yields on each rank, every result checked exactly.
#[test]
fn interleaving_stress() {
    for n in [2, 3, 4] {
        run_prompt(n, |c| {
            let c: &dyn Communicator = &c;
            let me = c.rank();
            let mut jitter = mix(0xabc ^ me as u64);
            for it in 0..1500u64 {
                let pick = mix(it ^ (n as u64) << 32);
                let len = (pick >> 8) as usize % 40;
                jitter = mix(jitter);
                match jitter % 8 {
                    0 => std::thread::sleep(Duration::from_micros(jitter >> 59)),
                    1 | 2 => std::thread::yield_now(),
                    _ => {}
                }
                let seed = mix(it);
                let kind = pick % 6;
                match kind {
                    0 | 1 => {
                        let op = if kind == 0 { ReduceOp::Sum } else { ReduceOp::Max };
                        let inputs = inputs(seed, n, len);
                        check_all_reduce(c, &inputs, op, &reduce_in_rank_order(&inputs, op));
                    }
                    2 => {
                        let inputs = inputs(seed, n, len);
                        check_all_gather(c, &inputs, &inputs.concat());
                    }
                    3 => {
                        let inputs = inputs(seed, n, len * n);
                        check_reduce_scatter(c, &inputs, ReduceOp::Sum, &reduce_in_rank_order(&inputs, ReduceOp::Sum));
                    }
                    4 => check_broadcast(c, &inputs(seed, n, len), (pick >> 20) as usize % n),
                    _ => c.barrier().unwrap(),
                }
            }
        });
    }
}
