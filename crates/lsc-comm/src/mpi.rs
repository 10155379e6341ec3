//! One rank per process over MPI: [`MpiComm`] (cargo feature `mpi`).
//!
//! Every collective is MPI's non-blocking form (`MPI_Iallreduce`, `MPI_Iallgather`,
//! `MPI_Iallgatherv`, `MPI_Ireduce_scatter_block`, `MPI_Ibcast`, `MPI_Ibarrier`), waited on by
//! testing for completion with short sleeps in between (10 µs doubling to 0.5 ms), so a rank
//! waiting for slower peers does not keep a core busy. The wait has a deadline (the timeout,
//! `LSC_COMM_TIMEOUT_S`, default 600 s): MPI cannot cancel a collective that has started, so
//! when the deadline passes the rank prints which rank and which collective timed out and
//! aborts the whole job with `MPI_Abort`, which makes `mpirun` end every process.
//!
//! Sizes are checked locally before the call (`all_gather` receives `world × send`, …) and
//! reported as a [`CommError`]; sizes that disagree *between* ranks are not checked (that
//! would cost another collective per call): MPI then fails the job with a truncation error or
//! the deadline aborts it. Sums over more than two ranks follow MPI's reduction order, not
//! rank order, so they agree with [`crate::ThreadComm`]'s to rounding; with two ranks, and
//! for max, gathers and broadcasts, they are bit-identical. bf16 and f16 gathers and
//! broadcasts move the 16-bit patterns (`MPI_UINT16_T`); their reductions widen to f32.
//!
//! MPI is initialised with `MPI_THREAD_SERIALIZED`: one `MpiComm` per process, made by
//! [`MpiComm::init`], which calls MPI from whichever thread holds it (it is `Send`, not
//! `Sync`). Dropping it frees its communicator and finalises MPI.

use std::cell::RefCell;
use std::ffi::{c_int, c_void};
use std::time::{Duration, Instant};

use ::mpi::ffi;
use half::{bf16, f16};

use crate::{CommError, Communicator, ReduceOp, check_len, narrow};

/// First pause between two completion tests of a pending collective.
const FIRST_PAUSE: Duration = Duration::from_micros(10);
/// Longest pause between two completion tests.
const MAX_PAUSE: Duration = Duration::from_micros(500);

/// An MPI rank: a duplicate of `MPI_COMM_WORLD` of an MPI job this process belongs to.
pub struct MpiComm {
    comm: ffi::MPI_Comm,
    rank: usize,
    world: usize,
    timeout: Duration,
    /// The send copy of an in-place all-reduce (MPI_IN_PLACE differs between MPI libraries).
    scratch: RefCell<Vec<f32>>,
    /// Finalises MPI when dropped, after `comm` is freed (see `Drop`).
    _universe: ::mpi::environment::Universe,
}

impl std::fmt::Debug for MpiComm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpiComm")
            .field("rank", &self.rank)
            .field("world_size", &self.world)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

// SAFETY: MPI is initialised with MPI_THREAD_SERIALIZED (checked in `init`), under which any
// thread may call MPI as long as no two calls run at the same time. `MpiComm` is not `Sync`
// (the `RefCell`), so only the one thread holding it can call through it, and it is the only
// handle to MPI this crate makes.
unsafe impl Send for MpiComm {}

/// MPI's `float` datatype.
fn float() -> ffi::MPI_Datatype {
    // SAFETY: reading a predefined handle of the MPI library (only called once MPI is
    // initialised, by an `MpiComm`).
    unsafe { ffi::RSMPI_FLOAT }
}

/// 16 plain bits (bf16 and f16 move as `MPI_UINT16_T`: gathers and broadcasts are copies).
fn bits16() -> ffi::MPI_Datatype {
    // SAFETY: as in `float`.
    unsafe { ffi::RSMPI_UINT16_T }
}

fn init_error(why: String) -> CommError {
    CommError::Invalid {
        rank: 0,
        op: "init",
        why,
    }
}

impl MpiComm {
    /// Initialises MPI and joins the job `mpirun` started, with the timeout from
    /// `LSC_COMM_TIMEOUT_S` (600 s when unset).
    pub fn init() -> Result<MpiComm, CommError> {
        let timeout = crate::timeout_from_env().map_err(init_error)?;
        Self::init_with_timeout(timeout)
    }

    /// [`MpiComm::init`] with the given collective timeout.
    pub fn init_with_timeout(timeout: Duration) -> Result<MpiComm, CommError> {
        let (universe, threading) = ::mpi::initialize_with_threading(::mpi::Threading::Serialized)
            .ok_or_else(|| init_error("MPI is already initialised in this process (one MpiComm per process)".into()))?;
        if !matches!(threading, ::mpi::Threading::Serialized | ::mpi::Threading::Multiple) {
            return Err(init_error(format!(
                "the MPI library provides only {threading:?} threading; MPI_THREAD_SERIALIZED is needed"
            )));
        }
        // SAFETY: a predefined handle, read after initialisation; MPI_Comm_dup overwrites it.
        let mut comm: ffi::MPI_Comm = unsafe { ffi::RSMPI_COMM_NULL };
        let (mut rank, mut world): (c_int, c_int) = (0, 0);
        // SAFETY: MPI is initialised; the out-pointers are valid for the calls. Errors abort
        // the job (MPI's default error handler, MPI_ERRORS_ARE_FATAL).
        unsafe {
            ffi::MPI_Comm_dup(ffi::RSMPI_COMM_WORLD, &mut comm);
            ffi::MPI_Comm_rank(comm, &mut rank);
            ffi::MPI_Comm_size(comm, &mut world);
        }
        Ok(MpiComm {
            comm,
            rank: rank as usize,
            world: world as usize,
            timeout,
            scratch: RefCell::new(Vec::new()),
            _universe: universe,
        })
    }

    /// How long a collective waits for the other ranks before aborting the job.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The MPI library's version string (`MPI_Get_library_version`).
    pub fn library_version() -> String {
        ::mpi::environment::library_version()
            .map(|v| v.trim_matches(char::from(0)).trim().to_string())
            .unwrap_or_else(|e| format!("unknown ({e})"))
    }

    /// Prints `message` (prefixed with this rank) to stderr and ends the whole MPI job with
    /// `code`: `mpirun` stops every process and exits non-zero.
    pub fn abort(&self, code: i32, message: &str) -> ! {
        eprintln!(
            "lsc: rank {} of {}: {message}; aborting the MPI job",
            self.rank, self.world
        );
        // SAFETY: MPI is initialised; MPI_Abort does not return.
        unsafe {
            ffi::MPI_Abort(ffi::RSMPI_COMM_WORLD, code);
        }
        // MPI_Abort is not declared `-> !`; it does not return in any MPI library.
        std::process::exit(code)
    }

    fn count(&self, op: &'static str, n: usize) -> Result<c_int, CommError> {
        c_int::try_from(n).map_err(|_| CommError::Invalid {
            rank: self.rank,
            op,
            why: format!("{n} elements are more than MPI's int count holds"),
        })
    }

    fn mpi_op(op: ReduceOp) -> ffi::MPI_Op {
        // SAFETY: reading the library's predefined handles after initialisation.
        unsafe {
            match op {
                ReduceOp::Sum => ffi::RSMPI_SUM,
                ReduceOp::Max => ffi::RSMPI_MAX,
            }
        }
    }

    /// Starts a non-blocking collective with `start` and waits for it until the deadline;
    /// past the deadline, aborts the job naming this rank and `op`.
    ///
    /// # Safety
    ///
    /// `start` must start one collective on `self.comm` whose buffers stay valid, and are not
    /// otherwise accessed, until this function returns.
    unsafe fn run(&self, op: &'static str, start: impl FnOnce(ffi::MPI_Comm, *mut ffi::MPI_Request) -> c_int) {
        let t0 = Instant::now();
        // SAFETY: RSMPI_REQUEST_NULL is a predefined handle; `start` fills `req` (errors abort
        // the job under MPI_ERRORS_ARE_FATAL).
        let mut req = unsafe { ffi::RSMPI_REQUEST_NULL };
        start(self.comm, &mut req);
        let deadline = t0.checked_add(self.timeout);
        let mut pause = FIRST_PAUSE;
        loop {
            let mut done: c_int = 0;
            // SAFETY: `req` is the active request started above (MPI_Test sets it to null
            // when complete, after which we stop testing).
            unsafe {
                ffi::MPI_Test(&mut req, &mut done, ffi::RSMPI_STATUS_IGNORE);
            }
            if done != 0 {
                return;
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                self.abort(
                    124,
                    &format!(
                        "{op}: timed out after {:.1} s waiting for the other ranks ({} = {} s)",
                        now.duration_since(t0).as_secs_f64(),
                        crate::TIMEOUT_ENV,
                        self.timeout.as_secs_f64()
                    ),
                );
            }
            let left = deadline.map_or(pause, |d| d - now);
            std::thread::sleep(pause.min(left));
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }

    fn gather_raw(
        &self,
        op: &'static str,
        send: *const c_void,
        n: usize,
        recv: *mut c_void,
        dtype: ffi::MPI_Datatype,
    ) -> Result<(), CommError> {
        let count = self.count(op, n)?;
        self.count(op, n * self.world)?;
        // SAFETY: the callers pass `send` of `n` and `recv` of `world × n` elements of `dtype`,
        // borrowed for this call.
        unsafe {
            self.run(op, |comm, req| {
                ffi::MPI_Iallgather(send, count, dtype, recv, count, dtype, comm, req)
            })
        };
        Ok(())
    }

    fn broadcast_raw(
        &self,
        buf: *mut c_void,
        n: usize,
        root: usize,
        dtype: ffi::MPI_Datatype,
    ) -> Result<(), CommError> {
        const OP: &str = "broadcast";
        if root >= self.world {
            return Err(CommError::Invalid {
                rank: self.rank,
                op: OP,
                why: format!("root {root} outside world size {}", self.world),
            });
        }
        let count = self.count(OP, n)?;
        // SAFETY: the callers pass `buf` of `n` elements of `dtype`, borrowed mutably.
        unsafe {
            self.run(OP, |comm, req| {
                ffi::MPI_Ibcast(buf, count, dtype, root as c_int, comm, req)
            })
        };
        Ok(())
    }
}

impl Drop for MpiComm {
    fn drop(&mut self) {
        // SAFETY: `comm` was made by MPI_Comm_dup and no collective on it is pending (every
        // collective waits for completion before returning). MPI is finalised afterwards, when
        // `_universe` drops.
        unsafe {
            ffi::MPI_Comm_free(&mut self.comm);
        }
    }
}

impl Communicator for MpiComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn backend(&self) -> &'static str {
        "mpi"
    }

    fn all_reduce(&self, buf: &mut [f32], op: ReduceOp) -> Result<(), CommError> {
        const OP: &str = "all_reduce";
        let count = self.count(OP, buf.len())?;
        let mut scratch = self.scratch.borrow_mut();
        scratch.clear();
        scratch.extend_from_slice(buf);
        let (send, recv) = (scratch.as_ptr().cast::<c_void>(), buf.as_mut_ptr().cast::<c_void>());
        // SAFETY: `scratch` and `buf` hold `count` f32 each and stay borrowed until `run`
        // returns, which is after the collective completed.
        unsafe {
            self.run(OP, |comm, req| {
                ffi::MPI_Iallreduce(send, recv, count, ffi::RSMPI_FLOAT, Self::mpi_op(op), comm, req)
            })
        };
        Ok(())
    }

    fn all_gather(&self, send: &[f32], recv: &mut [f32]) -> Result<(), CommError> {
        const OP: &str = "all_gather";
        check_len(self.rank, OP, send.len() * self.world, recv.len())?;
        let dtype = float();
        self.gather_raw(OP, send.as_ptr().cast(), send.len(), recv.as_mut_ptr().cast(), dtype)
    }

    fn all_gather_varied(&self, send: &[f32], counts: &[usize], recv: &mut [f32]) -> Result<(), CommError> {
        const OP: &str = "all_gather_varied";
        let total = narrow::check_varied(self.rank, self.world, send.len(), counts, recv.len())?;
        self.count(OP, total)?;
        let sizes: Vec<c_int> = counts.iter().map(|&c| c as c_int).collect();
        let mut displs = Vec::with_capacity(sizes.len());
        let mut off: c_int = 0;
        for &c in &sizes {
            displs.push(off);
            off += c;
        }
        let mine = sizes[self.rank];
        let (s, r) = (send.as_ptr().cast::<c_void>(), recv.as_mut_ptr().cast::<c_void>());
        // SAFETY: `send` holds `counts[rank]` and `recv` `Σ counts` f32 (checked), `sizes` and
        // `displs` one entry per rank; all stay borrowed until the collective completed.
        unsafe {
            self.run(OP, |comm, req| {
                ffi::MPI_Iallgatherv(
                    s,
                    mine,
                    ffi::RSMPI_FLOAT,
                    r,
                    sizes.as_ptr(),
                    displs.as_ptr(),
                    ffi::RSMPI_FLOAT,
                    comm,
                    req,
                )
            })
        };
        Ok(())
    }

    fn reduce_scatter(&self, send: &[f32], recv: &mut [f32], op: ReduceOp) -> Result<(), CommError> {
        const OP: &str = "reduce_scatter";
        check_len(self.rank, OP, recv.len() * self.world, send.len())?;
        let count = self.count(OP, recv.len())?;
        self.count(OP, send.len())?;
        let (s, r) = (send.as_ptr().cast::<c_void>(), recv.as_mut_ptr().cast::<c_void>());
        // SAFETY: `send` holds `world × count` and `recv` `count` f32 (checked), borrowed until
        // the collective completed.
        unsafe {
            self.run(OP, |comm, req| {
                ffi::MPI_Ireduce_scatter_block(s, r, count, ffi::RSMPI_FLOAT, Self::mpi_op(op), comm, req)
            })
        };
        Ok(())
    }

    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<(), CommError> {
        let dtype = float();
        self.broadcast_raw(buf.as_mut_ptr().cast(), buf.len(), root, dtype)
    }

    fn barrier(&self) -> Result<(), CommError> {
        // SAFETY: a barrier has no buffers.
        unsafe { self.run("barrier", |comm, req| ffi::MPI_Ibarrier(comm, req)) };
        Ok(())
    }

    fn all_gather_bf16(&self, send: &[bf16], recv: &mut [bf16]) -> Result<(), CommError> {
        const OP: &str = "all_gather";
        check_len(self.rank, OP, send.len() * self.world, recv.len())?;
        let dtype = bits16();
        self.gather_raw(OP, send.as_ptr().cast(), send.len(), recv.as_mut_ptr().cast(), dtype)
    }

    fn all_gather_f16(&self, send: &[f16], recv: &mut [f16]) -> Result<(), CommError> {
        const OP: &str = "all_gather";
        check_len(self.rank, OP, send.len() * self.world, recv.len())?;
        let dtype = bits16();
        self.gather_raw(OP, send.as_ptr().cast(), send.len(), recv.as_mut_ptr().cast(), dtype)
    }

    fn broadcast_bf16(&self, buf: &mut [bf16], root: usize) -> Result<(), CommError> {
        let dtype = bits16();
        self.broadcast_raw(buf.as_mut_ptr().cast(), buf.len(), root, dtype)
    }

    fn broadcast_f16(&self, buf: &mut [f16], root: usize) -> Result<(), CommError> {
        let dtype = bits16();
        self.broadcast_raw(buf.as_mut_ptr().cast(), buf.len(), root, dtype)
    }
}
