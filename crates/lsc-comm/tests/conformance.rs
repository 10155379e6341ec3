//! Conformance suite for every `Communicator` engine in this crate.
//!
//! The cases live in `suite/mod.rs`, written once against `&dyn Communicator`; here they run on
//! `LocalComm` (world 1) and on `ThreadComm` groups of 1 to 4 ranks, whose sums must be
//! bit-identical to the fold in rank order. `tests/mpi.rs` runs the same cases on `MpiComm`
//! under `mpirun`. The misuse and failure tests below are specific to the thread engine.

mod suite;

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use lsc_comm::{CommError, Communicator, LocalComm, ReduceOp, ThreadComm, run_ranks, run_ranks_with_timeout};
use suite::{Order, inputs, mix, reduce_in_rank_order};

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
        e.run(|c| suite::all_reduce_cases(c, Order::RankOrder));
    }
}

#[test]
fn all_reduce_follows_rank_order() {
    // The data makes the order visible: summing in reverse gives different bits somewhere.
    let n = 4;
    let inputs = inputs(1, n, 4096);
    let want = reduce_in_rank_order(&inputs, ReduceOp::Sum);
    let reversed: Vec<Vec<f32>> = inputs.iter().rev().cloned().collect();
    let reversed = reduce_in_rank_order(&reversed, ReduceOp::Sum);
    assert!(want.iter().zip(&reversed).any(|(a, b)| a.to_bits() != b.to_bits()));
    // Bit-identical on every rank and from run to run.
    for _ in 0..5 {
        Engine::Threads(n).run(|c| suite::check_all_reduce(c, 1, 4096, ReduceOp::Sum, Order::RankOrder));
    }
}

#[test]
fn all_reduce_scalar() {
    for e in ENGINES {
        e.run(suite::check_scalar);
    }
}

#[test]
fn all_gather() {
    for e in ENGINES {
        e.run(suite::all_gather_cases);
    }
}

#[test]
fn all_gather_varied() {
    for e in ENGINES {
        e.run(suite::all_gather_varied_cases);
    }
}

#[test]
fn all_gather_varied_default_pads() {
    // The trait's default (padding to the largest count), used by engines without a native
    // variable-size gather, checked through a wrapper that hides ThreadComm's override.
    struct Plain<C>(C);
    impl<C: Communicator> Communicator for Plain<C> {
        fn rank(&self) -> usize {
            self.0.rank()
        }
        fn world_size(&self) -> usize {
            self.0.world_size()
        }
        fn backend(&self) -> &'static str {
            "plain"
        }
        fn all_reduce(&self, buf: &mut [f32], op: ReduceOp) -> Result<(), CommError> {
            self.0.all_reduce(buf, op)
        }
        fn all_gather(&self, send: &[f32], recv: &mut [f32]) -> Result<(), CommError> {
            self.0.all_gather(send, recv)
        }
        fn reduce_scatter(&self, send: &[f32], recv: &mut [f32], op: ReduceOp) -> Result<(), CommError> {
            self.0.reduce_scatter(send, recv, op)
        }
        fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<(), CommError> {
            self.0.broadcast(buf, root)
        }
        fn barrier(&self) -> Result<(), CommError> {
            self.0.barrier()
        }
    }
    suite::all_gather_varied_cases(&Plain(LocalComm));
    for n in 1..=4 {
        run_ranks(n, |c| suite::all_gather_varied_cases(&Plain(c)));
    }
}

#[test]
fn all_gather_u32_is_exact() {
    for e in ENGINES {
        e.run(suite::u32_cases);
    }
}

#[test]
fn reduce_scatter_sum_and_max() {
    for e in ENGINES {
        e.run(|c| suite::reduce_scatter_cases(c, Order::RankOrder));
    }
}

#[test]
fn broadcast_from_every_root() {
    for e in ENGINES {
        e.run(suite::broadcast_cases);
    }
}

#[test]
fn bf16_and_f16_collectives() {
    for e in ENGINES {
        e.run(|c| suite::half_cases(c, Order::RankOrder));
    }
}

/// The whole suite in one sequence, as the MPI and NCCL runs execute it.
#[test]
fn whole_suite_in_sequence() {
    for e in [Engine::Local, Engine::Threads(3)] {
        e.run(|c| suite::run_all(c, Order::RankOrder));
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
        // all_gather_varied: the last rank sends one element more than the counts say; then
        // rank 0 passes other counts than the rest. Every rank fails, naming itself.
        let counts: Vec<usize> = (0..n).collect();
        let errs = run_prompt(n, |c| {
            let extra = usize::from(c.rank() == n - 1);
            let send = vec![1.0; counts[c.rank()] + extra];
            let mut recv = vec![0.0; counts.iter().sum()];
            c.all_gather_varied(&send, &counts, &mut recv).unwrap_err()
        });
        for (r, e) in errs.into_iter().enumerate() {
            assert!(
                matches!(&e, CommError::Invalid { rank, op: "all_gather_varied", why } if *rank == r && why.contains("counts disagree")),
                "{e}"
            );
        }
        let errs = run_prompt(n, |c| {
            let mut mine = counts.clone();
            if c.rank() == 0 {
                mine.swap(0, n - 1);
            }
            let send = vec![1.0; mine[c.rank()]];
            let mut recv = vec![0.0; mine.iter().sum()];
            c.all_gather_varied(&send, &mine, &mut recv).unwrap_err()
        });
        assert!(
            errs.iter().all(|e| matches!(
                e,
                CommError::Invalid {
                    op: "all_gather_varied",
                    ..
                }
            )),
            "{errs:?}"
        );
        // A recv of the wrong length.
        let errs = run_prompt(n, |c| {
            let total: usize = counts.iter().sum();
            let recv_len = if c.rank() == 0 { total + 1 } else { total };
            c.all_gather_varied(&vec![1.0; counts[c.rank()]], &counts, &mut vec![0.0; recv_len])
                .unwrap_err()
        });
        for (r, e) in errs.into_iter().enumerate() {
            assert_eq!(
                e,
                CommError::Size {
                    rank: r,
                    op: "all_gather_varied",
                    expected: counts.iter().sum(),
                    got: counts.iter().sum::<usize>() + 1
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
                let kind = pick % 7;
                match kind {
                    0 | 1 => {
                        let op = if kind == 0 { ReduceOp::Sum } else { ReduceOp::Max };
                        suite::check_all_reduce(c, seed, len, op, Order::RankOrder);
                    }
                    2 => suite::check_all_gather(c, seed, len),
                    3 => suite::check_reduce_scatter(c, seed, len, ReduceOp::Sum, Order::RankOrder),
                    4 => suite::check_broadcast(c, seed, len, (pick >> 20) as usize % n),
                    5 => {
                        let counts: Vec<usize> = (0..n).map(|q| (mix(seed ^ q as u64) % 9) as usize).collect();
                        suite::check_all_gather_varied(c, seed, &counts);
                    }
                    _ => c.barrier().unwrap(),
                }
            }
        });
    }
}
