//! One rank per GPU over NCCL: [`NcclComm`] (cargo feature `cuda`).
//!
//! NCCL and the CUDA driver are loaded at run time through cudarc's `dynamic-loading`
//! bindings, so this builds on machines without CUDA. cudarc panics when a library is missing,
//! so [`probe_nccl`] opens them with `dlopen` first and every constructor returns a clear
//! error instead. cudarc 0.19 looks for `libnccl.so` (and `libnccl.so.12`, `.so.11`, …) but not
//! for `libnccl.so.2`, NCCL's soname, which is all that pip's `nvidia-nccl-cu12` wheel ships
//! (in `site-packages/nvidia/nccl/lib`); the probe finds it there and says how to expose it.
//!
//! The collectives take host buffers like every [`Communicator`]: each call copies to the
//! device, runs the NCCL collective on this rank's stream, waits for it with the same deadline
//! policy as the other engines (polling a CUDA event with short sleeps; past the timeout the
//! NCCL communicator is aborted with `ncclCommAbort` and the call returns
//! [`CommError::Timeout`]; later calls return [`CommError::Aborted`]), and copies back. bf16
//! and f16 are reduced natively by NCCL (rounded after every step, unlike the widening
//! default). A variable-size all-gather uses the trait's padded default.
//!
//! Ranks are processes or threads, one GPU each. [`NcclComm::from_env`] reads the rank and
//! world size (`LSC_RANK`/`LSC_WORLD_SIZE`, else torchrun's `RANK`/`WORLD_SIZE`, else Open
//! MPI's), the device (`LSC_DEVICE`, else `LOCAL_RANK`, else 0, counted within
//! `CUDA_VISIBLE_DEVICES`) and exchanges NCCL's unique id over the TCP
//! [`rendezvous`](crate::rendezvous) at `LSC_RENDEZVOUS=host:port`.

use std::cell::RefCell;
use std::ffi::c_char;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits};
use cudarc::nccl::{Comm, Id, NcclType};
use half::{bf16, f16};

use crate::rendezvous::{self, RENDEZVOUS_ENV};
use crate::{CommError, Communicator, ReduceOp, check_len};

/// The library names tried, in cudarc's order, then NCCL's soname.
const CUDARC_NAMES: [&str; 2] = ["libnccl.so", "libnccl.so.12"];
const SONAME: &str = "libnccl.so.2";

/// Directories where a `libnccl.so*` may sit: `LD_LIBRARY_PATH`, the system and CUDA library
/// directories, and pip's `nvidia/nccl/lib` under the active virtualenv, conda prefix, the
/// system and user site-packages.
pub fn nccl_search_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("LD_LIBRARY_PATH")
        .map(|v| std::env::split_paths(&v).collect())
        .unwrap_or_default();
    for d in [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib64",
        "/usr/local/lib",
        "/usr/local/cuda/lib64",
        "/usr/local/nccl/lib",
    ] {
        dirs.push(d.into());
    }
    let mut prefixes: Vec<PathBuf> = ["VIRTUAL_ENV", "CONDA_PREFIX"]
        .iter()
        .filter_map(std::env::var_os)
        .map(PathBuf::from)
        .collect();
    prefixes.extend(["/usr", "/usr/local"].map(PathBuf::from));
    if let Some(home) = std::env::var_os("HOME") {
        prefixes.push(Path::new(&home).join(".local"));
    }
    for p in prefixes {
        for lib in ["lib", "lib64"] {
            let Ok(entries) = std::fs::read_dir(p.join(lib)) else {
                continue;
            };
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with("python3") {
                    for site in ["site-packages", "dist-packages"] {
                        dirs.push(e.path().join(site).join("nvidia/nccl/lib"));
                    }
                }
            }
        }
    }
    dirs.retain(|d| d.is_dir());
    dirs.dedup();
    dirs
}

/// Every `libnccl.so*` file in [`nccl_search_dirs`].
pub fn find_nccl_files() -> Vec<PathBuf> {
    find_nccl_files_in(&nccl_search_dirs())
}

fn find_nccl_files_in(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for d in dirs {
        let Ok(entries) = std::fs::read_dir(d) else { continue };
        let mut here: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("libnccl.so"))
            })
            .collect();
        here.sort();
        found.extend(here);
    }
    found
}

fn loads(name: &str) -> Result<(), String> {
    // SAFETY: loading NCCL or the CUDA driver runs their initialisers only, which any process
    // may run; the handle is dropped at once.
    unsafe { libloading::Library::new(name) }
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Checks, without cudarc (which panics), that the CUDA driver and an NCCL that cudarc can
/// load are present. Ok: a description of what was found; Err: what is missing and how to fix
/// it, naming any `libnccl.so*` found on disk.
pub fn probe_nccl() -> Result<String, String> {
    let driver = loads("libcuda.so.1")
        .or_else(|_| loads("libcuda.so"))
        .map_err(|e| format!("no CUDA driver (libcuda.so.1: {e})"));
    match (driver, probe_nccl_library()) {
        (Ok(()), Ok(lib)) => Ok(lib),
        (Ok(()), Err(why)) => Err(why),
        (Err(drv), Ok(lib)) => Err(format!("{drv}; {lib}")),
        (Err(drv), Err(why)) => Err(format!("{drv}; {why}")),
    }
}

/// The NCCL half of [`probe_nccl`]: can cudarc load NCCL, and if not, what is on disk.
pub fn probe_nccl_library() -> Result<String, String> {
    probe_library_in(&nccl_search_dirs())
}

fn probe_library_in(dirs: &[PathBuf]) -> Result<String, String> {
    let mut tried = Vec::new();
    for name in CUDARC_NAMES {
        match loads(name) {
            Ok(()) => return Ok(format!("NCCL loads as {name}")),
            Err(e) => tried.push(format!("{name}: {e}")),
        }
    }
    let files = find_nccl_files_in(dirs);
    let soname = loads(SONAME).is_ok();
    let fix = |lib: &Path| {
        format!(
            "; cudarc 0.19 looks for libnccl.so, not {SONAME}: make a link and put its directory on \
             LD_LIBRARY_PATH, e.g. `mkdir -p ~/.lsc-nccl && ln -sf {} ~/.lsc-nccl/libnccl.so && export \
             LD_LIBRARY_PATH=~/.lsc-nccl:$LD_LIBRARY_PATH` (or install libnccl-dev)",
            lib.display()
        )
    };
    let so2 = files
        .iter()
        .find(|f| f.file_name().is_some_and(|n| n == SONAME))
        .cloned();
    Err(match (so2, soname) {
        (Some(f), _) => format!(
            "NCCL not loadable by cudarc ({}); found {}{}",
            tried.join("; "),
            f.display(),
            fix(&f)
        ),
        (None, true) => format!(
            "NCCL not loadable by cudarc ({}); {SONAME} loads{}",
            tried.join("; "),
            fix(Path::new("/path/to/libnccl.so.2"))
        ),
        (None, false) => format!(
            "no NCCL ({}; no libnccl.so* in {:?}); install libnccl2 + libnccl-dev or `pip install nvidia-nccl-cu12`",
            tried.join("; "),
            dirs
        ),
    })
}

fn nccl_error(rank: usize, op: &'static str, e: cudarc::nccl::result::NcclError) -> CommError {
    CommError::Invalid {
        rank,
        op,
        why: format!("NCCL error {:?}", e.0),
    }
}

fn cuda_error(rank: usize, op: &'static str, e: cudarc::driver::DriverError) -> CommError {
    CommError::Invalid {
        rank,
        op,
        why: format!("CUDA error {e:?}"),
    }
}

/// Runs a cudarc call that may panic (a missing library or symbol) and turns the panic into an
/// error.
fn guarded<T>(rank: usize, op: &'static str, f: impl FnOnce() -> Result<T, CommError>) -> Result<T, CommError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let why = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "cudarc panicked".into());
        Err(CommError::Invalid { rank, op, why })
    })
}

/// A fresh NCCL unique id (rank 0 makes it and shares it), after probing the libraries.
pub fn new_id() -> Result<[c_char; 128], CommError> {
    probe_nccl().map_err(|why| CommError::Invalid {
        rank: 0,
        op: "init",
        why,
    })?;
    guarded(0, "init", || {
        Id::new().map(|id| *id.internal()).map_err(|e| nccl_error(0, "init", e))
    })
}

fn id_bytes(id: &[c_char; 128]) -> Vec<u8> {
    id.iter().map(|&c| c as u8).collect()
}

fn id_from_bytes(rank: usize, b: &[u8]) -> Result<[c_char; 128], CommError> {
    let b: [u8; 128] = b.try_into().map_err(|_| CommError::Invalid {
        rank,
        op: "init",
        why: format!("the NCCL id from the rendezvous has {} bytes, not 128", b.len()),
    })?;
    Ok(b.map(|v| v as c_char))
}

/// An NCCL rank on one GPU.
pub struct NcclComm {
    /// `None` once aborted after a timeout.
    comm: RefCell<Option<Comm>>,
    stream: Arc<CudaStream>,
    rank: usize,
    world: usize,
    device: usize,
    timeout: Duration,
}

impl std::fmt::Debug for NcclComm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NcclComm")
            .field("rank", &self.rank)
            .field("world_size", &self.world)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

// SAFETY: an NCCL communicator may be used from any thread as long as calls on it do not run
// concurrently. `NcclComm` is not `Sync` (the `RefCell`), so only the thread holding it calls
// through it, and cudarc binds the CUDA context to the calling thread in every stream call.
unsafe impl Send for NcclComm {}

fn env_usize(names: &[&str]) -> Result<Option<(String, usize)>, CommError> {
    for &n in names {
        if let Ok(v) = std::env::var(n) {
            let x = v.trim().parse().map_err(|e| CommError::Invalid {
                rank: 0,
                op: "init",
                why: format!("{n}={v:?}: {e}"),
            })?;
            return Ok(Some((n.to_string(), x)));
        }
    }
    Ok(None)
}

impl NcclComm {
    /// Joins an NCCL job as `rank` of `world` on CUDA device `device` (an ordinal among the
    /// visible devices) with the unique id rank 0 made ([`new_id`]). Every rank must call it;
    /// it returns when all have (NCCL's `ncclCommInitRank`).
    pub fn init(
        rank: usize,
        world: usize,
        device: usize,
        id: [c_char; 128],
        timeout: Duration,
    ) -> Result<NcclComm, CommError> {
        const OP: &str = "init";
        probe_nccl().map_err(|why| CommError::Invalid { rank, op: OP, why })?;
        guarded(rank, OP, || {
            let ctx = CudaContext::new(device).map_err(|e| cuda_error(rank, OP, e))?;
            let stream = ctx.new_stream().map_err(|e| cuda_error(rank, OP, e))?;
            let comm =
                Comm::from_rank(stream.clone(), rank, world, Id::uninit(id)).map_err(|e| nccl_error(rank, OP, e))?;
            Ok(NcclComm {
                comm: RefCell::new(Some(comm)),
                stream,
                rank,
                world,
                device,
                timeout,
            })
        })
    }

    /// Joins the job the environment describes (see the module docs), exchanging the NCCL id
    /// over the TCP rendezvous at `LSC_RENDEZVOUS`.
    pub fn from_env() -> Result<NcclComm, CommError> {
        let bad = |why: String| CommError::Invalid {
            rank: 0,
            op: "init",
            why,
        };
        let timeout = crate::timeout_from_env().map_err(bad)?;
        let (_, rank) = env_usize(&["LSC_RANK", "RANK", "OMPI_COMM_WORLD_RANK"])?
            .ok_or_else(|| bad("no rank: set LSC_RANK (or RANK)".into()))?;
        let (_, world) = env_usize(&["LSC_WORLD_SIZE", "WORLD_SIZE", "OMPI_COMM_WORLD_SIZE"])?
            .ok_or_else(|| bad("no world size: set LSC_WORLD_SIZE (or WORLD_SIZE)".into()))?;
        let device = env_usize(&["LSC_DEVICE", "LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK"])?.map_or(0, |d| d.1);
        let addr = std::env::var(RENDEZVOUS_ENV).map_err(|_| {
            bad(format!(
                "{RENDEZVOUS_ENV} is not set (host:port of rank 0's rendezvous)"
            ))
        })?;
        let blob = rendezvous::exchange(&addr, rank, world, || new_id().map(|id| id_bytes(&id)), timeout)?;
        Self::init(rank, world, device, id_from_bytes(rank, &blob)?, timeout)
    }

    /// `n` ranks as threads of this process on devices `0..n`, each joined through an id made
    /// here; returns the handles in rank order (move each to its own thread).
    pub fn group(n: usize, timeout: Duration) -> Result<Vec<NcclComm>, CommError> {
        let id = new_id()?;
        // ncclCommInitRank returns only when every rank has called it: one thread each.
        let results: Vec<Result<NcclComm, CommError>> = std::thread::scope(|s| {
            let h: Vec<_> = (0..n)
                .map(|r| s.spawn(move || NcclComm::init(r, n, r, id, timeout)))
                .collect();
            h.into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(CommError::Invalid {
                            rank: 0,
                            op: "init",
                            why: "a rank's thread panicked".into(),
                        })
                    })
                })
                .collect()
        });
        results.into_iter().collect()
    }

    /// The CUDA device ordinal this rank runs on.
    pub fn device(&self) -> usize {
        self.device
    }

    /// Queues `f`'s collective on the communicator, or fails if it was aborted.
    fn queue(
        &self,
        op: &'static str,
        f: impl FnOnce(&Comm) -> Result<cudarc::nccl::result::NcclStatus, cudarc::nccl::result::NcclError>,
    ) -> Result<(), CommError> {
        let comm = self.comm.borrow();
        let comm = comm.as_ref().ok_or_else(|| CommError::Aborted {
            rank: self.rank,
            op,
            why: "an earlier collective timed out and the NCCL communicator was aborted".into(),
        })?;
        f(comm).map(drop).map_err(|e| nccl_error(self.rank, op, e))
    }

    fn check_alive(&self, op: &'static str) -> Result<(), CommError> {
        self.queue(op, |_| Ok(cudarc::nccl::result::NcclStatus::Success))
    }

    fn upload<T: DeviceRepr>(&self, op: &'static str, host: &[T]) -> Result<CudaSlice<T>, CommError> {
        self.stream.clone_htod(host).map_err(|e| cuda_error(self.rank, op, e))
    }

    fn zeros<T: DeviceRepr + ValidAsZeroBits>(&self, op: &'static str, n: usize) -> Result<CudaSlice<T>, CommError> {
        self.stream.alloc_zeros(n).map_err(|e| cuda_error(self.rank, op, e))
    }

    /// Waits for the work queued on the stream, polling with short sleeps until the deadline;
    /// past it, aborts the communicator.
    fn wait(&self, op: &'static str, t0: Instant) -> Result<(), CommError> {
        let event = self
            .stream
            .record_event(None)
            .map_err(|e| cuda_error(self.rank, op, e))?;
        let mut pause = Duration::from_micros(10);
        loop {
            if event.try_is_complete().map_err(|e| cuda_error(self.rank, op, e))? {
                return Ok(());
            }
            if t0.elapsed() >= self.timeout {
                // Dropping cudarc's `Comm` calls ncclCommAbort, which ends the pending work.
                drop(self.comm.borrow_mut().take());
                return Err(CommError::Timeout {
                    rank: self.rank,
                    op,
                    secs: t0.elapsed().as_secs_f64(),
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_micros(500));
        }
    }

    fn download<T: DeviceRepr>(&self, op: &'static str, dev: &CudaSlice<T>, host: &mut [T]) -> Result<(), CommError> {
        self.stream
            .memcpy_dtoh(dev, host)
            .and_then(|_| self.stream.synchronize())
            .map_err(|e| cuda_error(self.rank, op, e))
    }

    fn op(op: ReduceOp) -> cudarc::nccl::ReduceOp {
        match op {
            ReduceOp::Sum => cudarc::nccl::ReduceOp::Sum,
            ReduceOp::Max => cudarc::nccl::ReduceOp::Max,
        }
    }

    fn all_reduce_t<T: NcclType + DeviceRepr>(&self, buf: &mut [T], op: ReduceOp) -> Result<(), CommError> {
        const OP: &str = "all_reduce";
        let t0 = Instant::now();
        self.check_alive(OP)?;
        if buf.is_empty() {
            return Ok(());
        }
        let mut d = self.upload(OP, buf)?;
        self.queue(OP, |c| c.all_reduce_in_place(&mut d, &Self::op(op)))?;
        self.wait(OP, t0)?;
        self.download(OP, &d, buf)
    }

    fn all_gather_t<T: NcclType + DeviceRepr + ValidAsZeroBits>(
        &self,
        send: &[T],
        recv: &mut [T],
    ) -> Result<(), CommError> {
        const OP: &str = "all_gather";
        let t0 = Instant::now();
        self.check_alive(OP)?;
        check_len(self.rank, OP, send.len() * self.world, recv.len())?;
        if send.is_empty() {
            return Ok(());
        }
        let s = self.upload(OP, send)?;
        let mut r = self.zeros::<T>(OP, recv.len())?;
        self.queue(OP, |c| c.all_gather(&s, &mut r))?;
        self.wait(OP, t0)?;
        self.download(OP, &r, recv)
    }

    fn reduce_scatter_t<T: NcclType + DeviceRepr + ValidAsZeroBits>(
        &self,
        send: &[T],
        recv: &mut [T],
        op: ReduceOp,
    ) -> Result<(), CommError> {
        const OP: &str = "reduce_scatter";
        let t0 = Instant::now();
        self.check_alive(OP)?;
        check_len(self.rank, OP, recv.len() * self.world, send.len())?;
        if recv.is_empty() {
            return Ok(());
        }
        let s = self.upload(OP, send)?;
        let mut r = self.zeros::<T>(OP, recv.len())?;
        self.queue(OP, |c| c.reduce_scatter(&s, &mut r, &Self::op(op)))?;
        self.wait(OP, t0)?;
        self.download(OP, &r, recv)
    }

    fn broadcast_t<T: NcclType + DeviceRepr>(&self, buf: &mut [T], root: usize) -> Result<(), CommError> {
        const OP: &str = "broadcast";
        let t0 = Instant::now();
        self.check_alive(OP)?;
        if root >= self.world {
            return Err(CommError::Invalid {
                rank: self.rank,
                op: OP,
                why: format!("root {root} outside world size {}", self.world),
            });
        }
        if buf.is_empty() {
            return Ok(());
        }
        let mut d = self.upload(OP, buf)?;
        self.queue(OP, |c| c.broadcast_in_place(&mut d, root as i32))?;
        self.wait(OP, t0)?;
        self.download(OP, &d, buf)
    }
}

impl Communicator for NcclComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.world
    }
    fn backend(&self) -> &'static str {
        "nccl"
    }
    fn all_reduce(&self, buf: &mut [f32], op: ReduceOp) -> Result<(), CommError> {
        self.all_reduce_t(buf, op)
    }
    fn all_gather(&self, send: &[f32], recv: &mut [f32]) -> Result<(), CommError> {
        self.all_gather_t(send, recv)
    }
    fn reduce_scatter(&self, send: &[f32], recv: &mut [f32], op: ReduceOp) -> Result<(), CommError> {
        self.reduce_scatter_t(send, recv, op)
    }
    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<(), CommError> {
        self.broadcast_t(buf, root)
    }
    fn barrier(&self) -> Result<(), CommError> {
        let mut one = [1.0f32];
        self.all_reduce_t(&mut one, ReduceOp::Sum).map_err(|e| match e {
            CommError::Timeout { rank, secs, .. } => CommError::Timeout {
                rank,
                op: "barrier",
                secs,
            },
            e => e,
        })
    }
    fn all_reduce_bf16(&self, buf: &mut [bf16], op: ReduceOp) -> Result<(), CommError> {
        self.all_reduce_t(buf, op)
    }
    fn all_reduce_f16(&self, buf: &mut [f16], op: ReduceOp) -> Result<(), CommError> {
        self.all_reduce_t(buf, op)
    }
    fn all_gather_bf16(&self, send: &[bf16], recv: &mut [bf16]) -> Result<(), CommError> {
        self.all_gather_t(send, recv)
    }
    fn all_gather_f16(&self, send: &[f16], recv: &mut [f16]) -> Result<(), CommError> {
        self.all_gather_t(send, recv)
    }
    fn reduce_scatter_bf16(&self, send: &[bf16], recv: &mut [bf16], op: ReduceOp) -> Result<(), CommError> {
        self.reduce_scatter_t(send, recv, op)
    }
    fn reduce_scatter_f16(&self, send: &[f16], recv: &mut [f16], op: ReduceOp) -> Result<(), CommError> {
        self.reduce_scatter_t(send, recv, op)
    }
    fn broadcast_bf16(&self, buf: &mut [bf16], root: usize) -> Result<(), CommError> {
        self.broadcast_t(buf, root)
    }
    fn broadcast_f16(&self, buf: &mut [f16], root: usize) -> Result<(), CommError> {
        self.broadcast_t(buf, root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without a driver or NCCL, the probe names what is missing instead of cudarc panicking.
    #[test]
    fn probe_reports_instead_of_panicking() {
        match probe_nccl() {
            Ok(found) => eprintln!("probe_nccl: {found}"),
            Err(why) => {
                eprintln!("probe_nccl: {why}");
                assert!(why.contains("CUDA driver") || why.contains("NCCL"), "{why}");
                assert!(probe_nccl_library().is_ok() || why.contains("NCCL"), "{why}");
                // The constructors return the same error.
                let e = NcclComm::init(0, 1, 0, [0; 128], Duration::from_secs(1)).unwrap_err();
                assert!(e.to_string().contains(&why), "{e}");
                assert!(new_id().is_err());
            }
        }
    }

    /// pip's wheel ships only libnccl.so.2, which cudarc does not look for: the probe finds it
    /// in `$VIRTUAL_ENV/lib/python3*/site-packages/nvidia/nccl/lib` and says how to expose it.
    #[test]
    fn probe_finds_the_pip_wheel_library() {
        let dir = std::env::temp_dir().join(format!("lsc-nccl-probe-{}", std::process::id()));
        let lib = dir.join("lib/python3.11/site-packages/nvidia/nccl/lib");
        std::fs::create_dir_all(&lib).unwrap();
        std::fs::write(lib.join("libnccl.so.2"), b"not a library").unwrap();
        let mut dirs = nccl_search_dirs();
        dirs.insert(0, lib.clone());
        assert!(find_nccl_files_in(&dirs).contains(&lib.join("libnccl.so.2")));
        if let Err(why) = probe_library_in(&dirs) {
            assert!(
                why.contains(&format!("found {}", lib.join("libnccl.so.2").display())),
                "{why}"
            );
            assert!(why.contains("ln -sf"), "{why}");
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn ids_round_trip_through_bytes() {
        let id: [c_char; 128] = std::array::from_fn(|i| (i as u8).wrapping_mul(37) as c_char);
        assert_eq!(id_from_bytes(0, &id_bytes(&id)).unwrap(), id);
        assert!(id_from_bytes(1, &[0; 7]).is_err());
    }
}
