//! `NcclComm` on the GPUs of this machine (GPU column: the test names carry `gpu`).
//!
//! With `--features cuda`, a GPU and NCCL: the whole conformance suite (`suite/mod.rs`) on one
//! rank per visible GPU (threads of this process), and the same through the TCP rendezvous
//! (`NcclComm::from_env`'s path) on world size 1. Without a GPU or NCCL each test prints a
//! `SKIPPED (GPU column)` line with the probe's reason, or fails when `LSC_REQUIRE_GPU=1`.
//! Built without the feature, they print that they were not built.

mod suite;

fn gpu_required() -> bool {
    std::env::var("LSC_REQUIRE_GPU").is_ok_and(|v| v == "1")
}

#[cfg(not(feature = "cuda"))]
#[test]
fn nccl_gpu_conformance() {
    eprintln!("SKIPPED (GPU column) nccl_gpu_conformance: lsc-comm built without --features cuda");
    let _ = gpu_required;
}

#[cfg(feature = "cuda")]
mod with_cuda {
    use super::*;
    use lsc_comm::nccl::{NcclComm, probe_nccl};
    use lsc_comm::{Communicator, ReduceOp};
    use std::time::Duration;
    use suite::Order;

    /// The number of usable GPUs, or `None` after printing the skip line.
    fn gpus(test: &str) -> Option<usize> {
        let why = match probe_nccl() {
            Ok(found) => match std::panic::catch_unwind(cudarc::driver::CudaContext::device_count) {
                Ok(Ok(n)) if n > 0 => {
                    eprintln!("{test}: {found}, {n} GPU(s)");
                    return Some(n as usize);
                }
                Ok(Ok(_)) => "the driver reports 0 devices".to_string(),
                Ok(Err(e)) => format!("cuDeviceGetCount failed: {e:?}"),
                Err(_) => "cudarc panicked loading the driver".to_string(),
            },
            Err(why) => why,
        };
        assert!(!gpu_required(), "{test}: LSC_REQUIRE_GPU=1 but {why}");
        eprintln!("SKIPPED (GPU column) {test}: {why}");
        None
    }

    #[test]
    fn nccl_gpu_conformance() {
        let Some(n) = gpus("nccl_gpu_conformance") else { return };
        let comms = NcclComm::group(n, Duration::from_secs(120)).unwrap();
        std::thread::scope(|s| {
            for c in comms {
                s.spawn(move || {
                    // NCCL's ring and tree sums are not in rank order.
                    suite::run_all(
                        &c,
                        if c.world_size() == 1 {
                            Order::RankOrder
                        } else {
                            Order::Any
                        },
                    );
                    assert_eq!(c.backend(), "nccl");
                });
            }
        });
    }

    #[test]
    fn nccl_gpu_rendezvous_world_of_one() {
        if gpus("nccl_gpu_rendezvous_world_of_one").is_none() {
            return;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let blob = lsc_comm::rendezvous::exchange(
            &port.to_string(),
            0,
            1,
            || lsc_comm::nccl::new_id().map(|id| id.iter().map(|&c| c as u8).collect()),
            Duration::from_secs(30),
        )
        .unwrap();
        let id: [std::ffi::c_char; 128] = std::array::from_fn(|i| blob[i] as std::ffi::c_char);
        let c = NcclComm::init(0, 1, 0, id, Duration::from_secs(30)).unwrap();
        let mut v = [1.5f32, -2.0];
        c.all_reduce(&mut v, ReduceOp::Sum).unwrap();
        assert_eq!(v, [1.5, -2.0]);
        suite::run_all(&c, Order::RankOrder);
    }

    /// With two GPUs: a rank that never arrives makes the other time out and abort its
    /// communicator, and later collectives fail fast.
    #[test]
    fn nccl_gpu_missing_rank_times_out() {
        let Some(n) = gpus("nccl_gpu_missing_rank_times_out") else {
            return;
        };
        if n < 2 {
            eprintln!("SKIPPED (GPU column) nccl_gpu_missing_rank_times_out: needs 2 GPUs, found {n}");
            return;
        }
        let mut comms = NcclComm::group(2, Duration::from_secs(2)).unwrap();
        let late = comms.pop().unwrap();
        let c = comms.pop().unwrap();
        let t = std::time::Instant::now();
        let e = c.all_reduce(&mut [1.0; 8], ReduceOp::Sum).unwrap_err();
        assert!(
            matches!(
                e,
                lsc_comm::CommError::Timeout {
                    rank: 0,
                    op: "all_reduce",
                    ..
                }
            ),
            "{e}"
        );
        assert!(t.elapsed() < Duration::from_secs(30));
        assert!(matches!(c.barrier(), Err(lsc_comm::CommError::Aborted { .. })));
        drop(late);
    }
}
