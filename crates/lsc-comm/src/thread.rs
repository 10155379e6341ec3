//! N ranks as threads of one process, sharing memory: [`ThreadComm`], [`run_ranks`].
//!
//! A group of `n` handles is made once ([`ThreadComm::group`]) and each handle is moved to its
//! own thread. The ranks exchange data directly through each other's buffers:
//!
//! - `all_reduce`: reduce-scatter then all-gather, in place. The buffer is cut into `n`
//!   contiguous, balanced slices (sizes differ by at most one); rank `r` reduces slice `r` from
//!   every rank's buffer into its own buffer, then every rank copies the other slices from
//!   their owners.
//! - `all_gather`: every rank copies every other rank's `send` into its own `recv`.
//! - `all_gather_varied`: the same with each rank's own length; the offsets come from the
//!   published lengths.
//! - `reduce_scatter`: every rank reduces its own block over all ranks' `send` buffers.
//! - `broadcast`: the non-root ranks copy from the root's buffer.
//! - `barrier`: the entry barrier alone.
//!
//! Every element is reduced in the order rank 0, 1, …, n−1 by exactly one rank and then copied,
//! so results are bit-identical on every rank and from run to run, whatever the scheduling.
//!
//! # Protocol
//!
//! One `Mutex` guards the group's state: a generation-counting barrier, the abort state and two
//! slot arrays, in which each rank publishes a slot (the collective it called, a pointer to
//! its buffer and the lengths) for even and odd collectives alternately. A collective is:
//!
//! 1. *Entry*: under the lock, publish the slot and arrive at the barrier; wait (a `Condvar`
//!    with `wait_timeout`, no spinning) until every rank arrived, the group was aborted, or the
//!    timeout passed. The entry barrier never completes once the group is aborted. On passing
//!    it, copy the slot array into the handle.
//! 2. *Validation* of that copy, which is the same on every rank, so every rank takes the same
//!    decision: on a mismatch (collective, reduce op, root, lengths) every rank aborts the group
//!    and returns an error naming itself, without touching any peer's buffer.
//! 3. *Data phases*, separated by inner barriers, in which every rank writes only its own
//!    buffers, in regions no peer reads during that phase, and reads only regions of peers'
//!    buffers that no rank writes during that phase.
//! 4. *Exit*: an inner barrier, so that no rank returns — ending the borrow its published pointer
//!    was derived from — before every rank has finished reading its buffers.
//!
//! Inner barriers have no timeout and ignore aborts: every rank that passed the entry barrier
//! reaches them without waiting on anything else (the code in between is bounded memory copies,
//! and panics there are caught and re-raised only after the exit barrier). Timing them out
//! would let a rank return while a peer still reads its buffer.
//!
//! A rank publishes collective `k + 2` in the slot array it used for `k` only after passing the
//! entry barrier of `k + 1`, which every rank reaches after copying the slots of `k`; so a
//! collective without an exit barrier (`barrier`, or a failed validation) is safe too.
//!
//! # Failures
//!
//! Dropping a handle (its thread returned or panicked) aborts the group with "rank K left the
//! group": peers waiting at or later entering a collective get [`CommError::Aborted`]. A rank
//! that waits longer than the timeout at an entry barrier aborts the group and gets
//! [`CommError::Timeout`], as do the other ranks waiting there; later collectives get
//! `Aborted`. Any failed collective leaves the group aborted.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::fmt;
use std::ops::Range;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::{CommError, Communicator, ReduceOp};

/// How long a rank waits for the others at a collective unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// The environment variable that overrides [`DEFAULT_TIMEOUT`] for [`ThreadComm::group`], in
/// seconds (fractions allowed).
pub const TIMEOUT_ENV: &str = "LSC_COMM_TIMEOUT_S";

/// The timeout [`ThreadComm::group`] uses: `LSC_COMM_TIMEOUT_S` seconds if set, else 600 s.
///
/// # Panics
///
/// If `LSC_COMM_TIMEOUT_S` is set but is not a positive, finite number of seconds; call
/// [`timeout_from_env`] first to report that as an error instead.
pub fn default_timeout() -> Duration {
    timeout_from_env().unwrap_or_else(|why| panic!("{why}"))
}

/// `LSC_COMM_TIMEOUT_S` as a timeout (600 s when unset), or a message naming the variable.
pub fn timeout_from_env() -> Result<Duration, String> {
    match std::env::var_os(TIMEOUT_ENV) {
        None => Ok(DEFAULT_TIMEOUT),
        Some(v) => v
            .to_str()
            .ok_or_else(|| "not UTF-8".to_string())
            .and_then(parse_timeout)
            .map_err(|why| format!("{TIMEOUT_ENV}={v:?}: {why}")),
    }
}

/// Parses a timeout in seconds, e.g. `"600"` or `"0.2"`.
fn parse_timeout(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|e| format!("expected a number of seconds ({e})"))?;
    if !(secs.is_finite() && secs > 0.0) {
        return Err(format!("expected a positive number of seconds, got {secs}"));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{e}"))
}

/// The elements in slice `r` of `len` elements cut into `n` contiguous slices whose sizes
/// differ by at most one (the first `len % n` slices are one longer).
pub fn balanced_slice(len: usize, n: usize, r: usize) -> Range<usize> {
    assert!(r < n, "slice {r} of {n}");
    let (base, rem) = (len / n, len % n);
    let start = r * base + r.min(rem);
    start..start + base + usize::from(r < rem)
}

/// Which collective a rank called, with the arguments every rank must agree on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    AllReduce(ReduceOp),
    AllGather,
    AllGatherVaried,
    ReduceScatter(ReduceOp),
    Broadcast { root: usize },
    Barrier,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::AllReduce(_) => "all_reduce",
            Kind::AllGather => "all_gather",
            Kind::AllGatherVaried => "all_gather_varied",
            Kind::ReduceScatter(_) => "reduce_scatter",
            Kind::Broadcast { .. } => "broadcast",
            Kind::Barrier => "barrier",
        }
    }

    fn describe(self) -> String {
        match self {
            Kind::AllReduce(op) | Kind::ReduceScatter(op) => format!("{}({op:?})", self.name()),
            Kind::Broadcast { root } => format!("broadcast(root {root})"),
            Kind::AllGather | Kind::AllGatherVaried | Kind::Barrier => self.name().to_string(),
        }
    }
}

/// What a rank publishes when it enters a collective.
///
/// `len` is the length every rank must agree on (the buffer for `all_reduce` and `broadcast`,
/// `send` for `all_gather`, `recv` for `reduce_scatter`); `other_len` is the length of the other
/// buffer, which must be `world_size × len` for `all_gather` (`recv`) and `reduce_scatter`
/// (`send`). `data` points to `len` (or, for `reduce_scatter`, `other_len`) elements that peers
/// may read during the collective; peers never write through it. For `all_gather_varied`,
/// `len` is the rank's own `send` length, `other_len` its `recv` length and `counts` a
/// fingerprint of the `counts` it passed (see [`counts_fingerprint`]).
#[derive(Clone, Copy, Debug)]
struct Slot {
    kind: Kind,
    data: *const f32,
    len: usize,
    other_len: usize,
    counts: u64,
}

impl Slot {
    const EMPTY: Slot = Slot {
        kind: Kind::Barrier,
        data: std::ptr::null(),
        len: 0,
        other_len: 0,
        counts: 0,
    };
}

/// A fingerprint of a list of counts. Validation compares every rank's fingerprint of the
/// `counts` it passed with the fingerprint of the lengths the ranks actually published, a
/// computation on the shared slots alone, so every rank takes the same decision. (The copies
/// use the published lengths, so even a collision could not make a rank read out of bounds.)
fn counts_fingerprint(counts: impl ExactSizeIterator<Item = usize>) -> u64 {
    let mix = |mut z: u64| {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let n = counts.len() as u64;
    counts.fold(mix(n), |h, c| mix(h ^ c as u64))
}

// SAFETY: a `Slot` is plain data. Its pointer is dereferenced only by the collectives, between
// the entry and the exit barrier of the collective that published it, while the publishing
// rank is blocked inside that same collective and so keeps the pointed-to buffer borrowed
// (see the module docs).
unsafe impl Send for Slot {}

/// Checks that every rank called the same collective with consistent sizes. Every rank runs
/// this on the same slots, so every rank takes the same decision; the error names rank `me`.
fn validate(me: usize, slots: &[Slot]) -> Result<(), CommError> {
    let n = slots.len();
    let op = slots[me].kind.name();
    let first = slots[0];
    if let Some((q, s)) = slots.iter().enumerate().find(|(_, s)| s.kind != first.kind) {
        return Err(CommError::Invalid {
            rank: me,
            op,
            why: format!(
                "rank {q} called {} while rank 0 called {}",
                s.kind.describe(),
                first.kind.describe()
            ),
        });
    }
    if let Kind::Broadcast { root } = first.kind
        && root >= n
    {
        return Err(CommError::Invalid {
            rank: me,
            op,
            why: format!("root {root} outside world size {n}"),
        });
    }
    if first.kind == Kind::AllGatherVaried {
        return validate_varied(me, slots);
    }
    // (expected, got) when rank q's buffers disagree with each other or with rank 0's.
    let mismatch = |s: &Slot| -> Option<(usize, usize)> {
        if matches!(first.kind, Kind::AllGather | Kind::ReduceScatter(_)) {
            let expected = n.checked_mul(s.len);
            if expected != Some(s.other_len) {
                return Some((expected.unwrap_or(usize::MAX), s.other_len));
            }
        }
        (s.len != first.len).then_some((first.len, s.len))
    };
    // The rank's own buffers first, so a rank at fault reports its own sizes.
    for q in std::iter::once(me).chain(0..n) {
        if let Some((expected, got)) = mismatch(&slots[q]) {
            return Err(CommError::Size {
                rank: me,
                op,
                expected,
                got,
            });
        }
    }
    Ok(())
}

/// [`validate`] for `all_gather_varied`: every rank's counts are the published `send` lengths
/// and every `recv` holds their sum.
fn validate_varied(me: usize, slots: &[Slot]) -> Result<(), CommError> {
    const OP: &str = "all_gather_varied";
    let lens = || slots.iter().map(|s| s.len);
    let actual = counts_fingerprint(lens());
    // The rank's own counts first, so a rank at fault names itself.
    let order = std::iter::once(me).chain(0..slots.len());
    if let Some(q) = order.clone().find(|&q| slots[q].counts != actual) {
        let whose = if q == me {
            "this rank's".to_string()
        } else {
            format!("rank {q}'s")
        };
        return Err(CommError::Invalid {
            rank: me,
            op: OP,
            why: format!(
                "{whose} counts disagree with the send lengths the ranks passed, {:?}",
                lens().collect::<Vec<_>>()
            ),
        });
    }
    let total = lens().try_fold(0usize, usize::checked_add).unwrap_or(usize::MAX);
    if let Some(q) = order.clone().find(|&q| slots[q].other_len != total) {
        return Err(CommError::Size {
            rank: me,
            op: OP,
            expected: total,
            got: slots[q].other_len,
        });
    }
    Ok(())
}

/// Elements reduced per step of [`reduce_ordered`]: small enough to stay in L1.
const CHUNK: usize = 1024;

/// `acc[i] = op(acc[i], v[i])`.
#[inline]
fn combine(acc: &mut [f32], v: &[f32], op: ReduceOp) {
    debug_assert_eq!(acc.len(), v.len());
    // One loop per op so that each vectorises.
    match op {
        ReduceOp::Sum => {
            for (a, &b) in acc.iter_mut().zip(v) {
                *a = ReduceOp::Sum.apply(*a, b);
            }
        }
        ReduceOp::Max => {
            for (a, &b) in acc.iter_mut().zip(v) {
                *a = ReduceOp::Max.apply(*a, b);
            }
        }
    }
}

/// Sets `out` to the reduction of `src(0)`, `src(1)`, …, `src(n - 1)` in that order
/// (`op(op(src(0), src(1)), src(2))…`). Each `src(q)` has `out.len()` elements. With
/// `own = Some(p)`, `out` initially holds rank `p`'s contribution and `src(p)` is never called.
fn reduce_ordered<'a>(out: &mut [f32], n: usize, own: Option<usize>, src: impl Fn(usize) -> &'a [f32], op: ReduceOp) {
    let mut saved = [0.0f32; CHUNK];
    for (c, acc) in out.chunks_mut(CHUNK).enumerate() {
        let r = c * CHUNK..c * CHUNK + acc.len();
        let saved = &mut saved[..acc.len()];
        match own {
            Some(0) => {}
            Some(_) => {
                saved.copy_from_slice(acc);
                acc.copy_from_slice(&src(0)[r.clone()]);
            }
            None => acc.copy_from_slice(&src(0)[r.clone()]),
        }
        for q in 1..n {
            if own == Some(q) {
                combine(acc, saved, op);
            } else {
                combine(acc, &src(q)[r.clone()], op);
            }
        }
    }
}

/// Why a group was aborted. The first cause wins.
#[derive(Clone, Debug)]
enum Abort {
    Left { rank: usize },
    TimedOut { rank: usize, op: &'static str, secs: f64 },
    Failed { error: CommError },
    Panicked { rank: usize, op: &'static str },
}

impl Abort {
    fn why(&self) -> String {
        match self {
            Abort::Left { rank } => format!("rank {rank} left the group"),
            Abort::TimedOut { rank, op, secs } => {
                format!("rank {rank} timed out after {secs:.1} s in {op}")
            }
            Abort::Failed { error } => format!("an earlier collective failed: {error}"),
            Abort::Panicked { rank, op } => format!("rank {rank} panicked inside {op}"),
        }
    }
}

struct State {
    /// Ranks that arrived at the current barrier.
    arrived: usize,
    /// Completed barriers (entry and inner alike).
    generation: u64,
    abort: Option<Abort>,
    /// The slots of even and odd collectives, indexed by rank.
    slots: [Vec<Slot>; 2],
    /// Ranks whose handles were dropped, in the order they were.
    left: Vec<usize>,
}

struct Shared {
    world: usize,
    timeout: Duration,
    state: Mutex<State>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The critical sections cannot panic, but a poisoned lock still holds consistent state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A rank's handle in a group of ranks that are threads of one process.
///
/// Made with [`ThreadComm::group`]; each handle is moved to its own thread (it is `Send`, not
/// `Sync`). Dropping a handle takes its rank out of the group and aborts the group's
/// collectives. See the module docs for the algorithms and the failure semantics.
pub struct ThreadComm {
    rank: usize,
    shared: Arc<Shared>,
    /// Collectives entered by this rank: picks the slot array.
    seq: Cell<u64>,
    /// The slots of the current collective, copied at its entry barrier.
    view: RefCell<Vec<Slot>>,
}

impl fmt::Debug for ThreadComm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThreadComm")
            .field("rank", &self.rank)
            .field("world_size", &self.shared.world)
            .field("timeout", &self.shared.timeout)
            .finish_non_exhaustive()
    }
}

impl ThreadComm {
    /// A group of `n` ranks, in rank order, with [`default_timeout`].
    ///
    /// # Panics
    ///
    /// If `LSC_COMM_TIMEOUT_S` is set to something that is not a positive number of seconds.
    pub fn group(n: usize) -> Vec<ThreadComm> {
        Self::group_with_timeout(n, default_timeout())
    }

    /// A group of `n` ranks, in rank order; a rank waits at most `timeout` for the others to
    /// enter a collective (a timeout too large to represent as an `Instant` means none).
    pub fn group_with_timeout(n: usize, timeout: Duration) -> Vec<ThreadComm> {
        let shared = Arc::new(Shared {
            world: n,
            timeout,
            state: Mutex::new(State {
                arrived: 0,
                generation: 0,
                abort: None,
                slots: [vec![Slot::EMPTY; n], vec![Slot::EMPTY; n]],
                left: Vec::new(),
            }),
            wake: Condvar::new(),
        });
        (0..n)
            .map(|rank| ThreadComm {
                rank,
                shared: Arc::clone(&shared),
                seq: Cell::new(0),
                view: RefCell::new(vec![Slot::EMPTY; n]),
            })
            .collect()
    }

    /// How long this rank waits for the others to enter a collective.
    pub fn timeout(&self) -> Duration {
        self.shared.timeout
    }

    fn aborted(&self, op: &'static str, abort: &Abort) -> CommError {
        CommError::Aborted {
            rank: self.rank,
            op,
            why: abort.why(),
        }
    }

    /// The entry barrier: publishes `slot`, waits for every rank, and copies every rank's slot
    /// into `self.view`.
    fn enter(&self, slot: Slot) -> Result<(), CommError> {
        let op = slot.kind.name();
        let sh = &*self.shared;
        let mut st = sh.lock();
        if let Some(a) = &st.abort {
            return Err(self.aborted(op, a));
        }
        let seq = self.seq.get();
        self.seq.set(seq + 1);
        let parity = (seq % 2) as usize;
        st.slots[parity][self.rank] = slot;
        let generation = st.generation;
        st.arrived += 1;
        if st.arrived == sh.world {
            st.arrived = 0;
            st.generation = generation.wrapping_add(1);
            sh.wake.notify_all();
        } else {
            let start = Instant::now();
            let deadline = start.checked_add(sh.timeout);
            loop {
                st = match deadline {
                    None => sh.wake.wait(st).unwrap_or_else(PoisonError::into_inner),
                    Some(deadline) => {
                        let now = Instant::now();
                        if now >= deadline {
                            // Not released and not aborted (checked below after every wake).
                            let secs = now.duration_since(start).as_secs_f64();
                            st.abort = Some(Abort::TimedOut {
                                rank: self.rank,
                                op,
                                secs,
                            });
                            drop(st);
                            sh.wake.notify_all();
                            return Err(CommError::Timeout {
                                rank: self.rank,
                                op,
                                secs,
                            });
                        }
                        sh.wake
                            .wait_timeout(st, deadline - now)
                            .unwrap_or_else(PoisonError::into_inner)
                            .0
                    }
                };
                if st.generation != generation {
                    break;
                }
                if let Some(a) = &st.abort {
                    return Err(match a {
                        Abort::TimedOut { .. } => CommError::Timeout {
                            rank: self.rank,
                            op,
                            secs: start.elapsed().as_secs_f64(),
                        },
                        _ => self.aborted(op, a),
                    });
                }
            }
        }
        self.view.borrow_mut().copy_from_slice(&st.slots[parity]);
        Ok(())
    }

    /// An inner barrier of a collective that every rank passed the entry of: no timeout, no
    /// abort check (see the module docs). Fails if a rank panicked in this collective.
    fn sync(&self, op: &'static str) -> Result<(), CommError> {
        let sh = &*self.shared;
        let mut st = sh.lock();
        let generation = st.generation;
        st.arrived += 1;
        if st.arrived == sh.world {
            st.arrived = 0;
            st.generation = generation.wrapping_add(1);
            sh.wake.notify_all();
        } else {
            while st.generation == generation {
                st = sh.wake.wait(st).unwrap_or_else(PoisonError::into_inner);
            }
        }
        // Only a participant of this collective can have set `Panicked` while it is running,
        // and no later collective can start until this rank enters it.
        match &st.abort {
            Some(a @ Abort::Panicked { .. }) => Err(self.aborted(op, a)),
            _ => Ok(()),
        }
    }

    /// Records a failed validation as the group's abort cause and returns the error.
    fn fail(&self, error: CommError) -> CommError {
        let mut st = self.shared.lock();
        if st.abort.is_none() {
            st.abort = Some(Abort::Failed { error: error.clone() });
        }
        error
    }

    /// Runs a data phase, catching a panic so that the caller still reaches the remaining
    /// barriers (its buffers must outlive the peers' reads) before re-raising it.
    fn guarded(&self, op: &'static str, f: impl FnOnce()) -> Option<Box<dyn Any + Send>> {
        let payload = panic::catch_unwind(AssertUnwindSafe(f)).err()?;
        let mut st = self.shared.lock();
        if st.abort.is_none() {
            st.abort = Some(Abort::Panicked { rank: self.rank, op });
        }
        Some(payload)
    }

    /// Ends a collective after its exit barrier: re-raises this rank's panic, if any.
    fn finish(panic: Option<Box<dyn Any + Send>>, result: Result<(), CommError>) -> Result<(), CommError> {
        if let Some(payload) = panic {
            panic::resume_unwind(payload);
        }
        result
    }
}

impl Drop for ThreadComm {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.left.push(self.rank);
        if st.abort.is_none() {
            st.abort = Some(Abort::Left { rank: self.rank });
        }
        drop(st);
        self.shared.wake.notify_all();
    }
}

impl Communicator for ThreadComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.shared.world
    }

    fn backend(&self) -> &'static str {
        "threads"
    }

    fn all_reduce(&self, buf: &mut [f32], op: ReduceOp) -> Result<(), CommError> {
        const OP: &str = "all_reduce";
        let len = buf.len();
        // From here to the return, this rank accesses `buf` only through `own`, the pointer
        // its peers read through as well; `buf` itself is not used again.
        let own: *mut f32 = buf.as_mut_ptr();
        self.enter(Slot {
            kind: Kind::AllReduce(op),
            data: own.cast_const(),
            len,
            other_len: len,
            counts: 0,
        })?;
        let view = self.view.borrow();
        validate(self.rank, &view).map_err(|e| self.fail(e))?;
        let (me, n) = (self.rank, view.len());

        // Phase 1 (reduce-scatter): rank `me` reads slice `me` of every buffer and writes slice
        // `me` of its own; the slices of different ranks are disjoint.
        let mine = balanced_slice(len, n, me);
        let mut panicked = self.guarded(OP, || {
            // SAFETY: `own` points to this rank's `len` elements, borrowed mutably for this
            // call; `mine` lies within them. In this phase no peer touches slice `me` of this
            // buffer (each peer reads only its own slice of it).
            let out = unsafe { std::slice::from_raw_parts_mut(own.add(mine.start), mine.len()) };
            let src = |q: usize| {
                // SAFETY: rank `q` published `len` elements (validated equal on every rank),
                // kept borrowed until the exit barrier. Slice `me` of them is written by no
                // one in this phase: rank `q` writes only slice `q != me` of its buffer.
                unsafe { std::slice::from_raw_parts(view[q].data.add(mine.start), mine.len()) }
            };
            reduce_ordered(out, n, Some(me), src, op);
        });
        let mid = self.sync(OP);

        // Phase 2 (all-gather): rank `me` copies slice `q` from rank `q`'s buffer into its own,
        // for every `q != me`. Rank `q`'s slice `q` is final and written by no one; the slices
        // `me` writes in its own buffer are read by no one (peers read only slice `me` of it).
        if panicked.is_none() && mid.is_ok() {
            panicked = self.guarded(OP, || {
                for q in (0..n).filter(|&q| q != me) {
                    let theirs = balanced_slice(len, n, q);
                    // SAFETY: within this rank's buffer (see phase 1); in this phase peers
                    // read only slice `me` of it, and `q != me`.
                    let dst = unsafe { std::slice::from_raw_parts_mut(own.add(theirs.start), theirs.len()) };
                    // SAFETY: within rank `q`'s published buffer; slice `q` of it is written
                    // by no one in this phase (rank `q` writes only the other slices).
                    let src = unsafe { std::slice::from_raw_parts(view[q].data.add(theirs.start), theirs.len()) };
                    dst.copy_from_slice(src);
                }
            });
        }
        let end = self.sync(OP);
        Self::finish(panicked, mid.and(end))
    }

    fn all_gather(&self, send: &[f32], recv: &mut [f32]) -> Result<(), CommError> {
        const OP: &str = "all_gather";
        self.enter(Slot {
            kind: Kind::AllGather,
            data: send.as_ptr(),
            len: send.len(),
            other_len: recv.len(),
            counts: 0,
        })?;
        let view = self.view.borrow();
        validate(self.rank, &view).map_err(|e| self.fail(e))?;
        let (me, n, m) = (self.rank, view.len(), send.len());
        // Every rank reads the peers' `send` (never written: they are shared borrows) and
        // writes only its own `recv`, which no peer reads.
        let panicked = self.guarded(OP, || {
            for q in 0..n {
                let dst = &mut recv[q * m..(q + 1) * m];
                if q == me {
                    dst.copy_from_slice(send);
                } else {
                    // SAFETY: rank `q` published its `send` of `m` elements (validated), a
                    // shared borrow kept alive until the exit barrier.
                    dst.copy_from_slice(unsafe { std::slice::from_raw_parts(view[q].data, m) });
                }
            }
        });
        let end = self.sync(OP);
        Self::finish(panicked, end)
    }

    fn all_gather_varied(&self, send: &[f32], counts: &[usize], recv: &mut [f32]) -> Result<(), CommError> {
        const OP: &str = "all_gather_varied";
        // No early return on bad counts: the fingerprint makes every rank fail alike.
        self.enter(Slot {
            kind: Kind::AllGatherVaried,
            data: send.as_ptr(),
            len: send.len(),
            other_len: recv.len(),
            counts: counts_fingerprint(counts.iter().copied()),
        })?;
        let view = self.view.borrow();
        validate(self.rank, &view).map_err(|e| self.fail(e))?;
        let me = self.rank;
        // As `all_gather`: peers' `send` are only read, and only this rank writes its `recv`,
        // whose length is the sum of the published lengths (validated).
        let panicked = self.guarded(OP, || {
            let mut off = 0;
            for (q, slot) in view.iter().enumerate() {
                let dst = &mut recv[off..off + slot.len];
                if q == me {
                    dst.copy_from_slice(send);
                } else {
                    // SAFETY: rank `q` published its `send` of `slot.len` elements, a shared
                    // borrow kept alive until the exit barrier.
                    dst.copy_from_slice(unsafe { std::slice::from_raw_parts(slot.data, slot.len) });
                }
                off += slot.len;
            }
        });
        let end = self.sync(OP);
        Self::finish(panicked, end)
    }

    fn reduce_scatter(&self, send: &[f32], recv: &mut [f32], op: ReduceOp) -> Result<(), CommError> {
        const OP: &str = "reduce_scatter";
        self.enter(Slot {
            kind: Kind::ReduceScatter(op),
            data: send.as_ptr(),
            len: recv.len(),
            other_len: send.len(),
            counts: 0,
        })?;
        let view = self.view.borrow();
        validate(self.rank, &view).map_err(|e| self.fail(e))?;
        let (me, n, m) = (self.rank, view.len(), recv.len());
        let block = me * m..(me + 1) * m;
        // Every rank reads block `me` of the peers' `send` (shared borrows, never written) and
        // writes only its own `recv`, which no peer reads.
        let panicked = self.guarded(OP, || {
            let src = |q: usize| {
                if q == me {
                    &send[block.clone()]
                } else {
                    // SAFETY: rank `q` published its `send` of `n × m` elements (validated),
                    // a shared borrow kept alive until the exit barrier; `block` lies within.
                    unsafe { std::slice::from_raw_parts(view[q].data.add(block.start), m) }
                }
            };
            reduce_ordered(recv, n, None, src, op);
        });
        let end = self.sync(OP);
        Self::finish(panicked, end)
    }

    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<(), CommError> {
        const OP: &str = "broadcast";
        self.enter(Slot {
            kind: Kind::Broadcast { root },
            data: buf.as_ptr(),
            len: buf.len(),
            other_len: buf.len(),
            counts: 0,
        })?;
        let view = self.view.borrow();
        validate(self.rank, &view).map_err(|e| self.fail(e))?;
        // The root's buffer is only read (by the others); each other rank writes only its own.
        let panicked = if self.rank == root {
            None
        } else {
            self.guarded(OP, || {
                // SAFETY: the root published `buf.len()` elements (validated equal), borrowed
                // until the exit barrier, and does not write them during the collective.
                buf.copy_from_slice(unsafe { std::slice::from_raw_parts(view[root].data, view[root].len) });
            })
        };
        let end = self.sync(OP);
        Self::finish(panicked, end)
    }

    fn barrier(&self) -> Result<(), CommError> {
        self.enter(Slot::EMPTY)?;
        validate(self.rank, &self.view.borrow()).map_err(|e| self.fail(e))
    }
}

/// Runs `f` on `n` ranks of a fresh [`ThreadComm::group`], one scoped thread per rank, and
/// returns the results in rank order.
///
/// If ranks panic, the others are not left hanging (the panicking rank's handle is dropped
/// while unwinding, which aborts the group); after joining every thread, the panic of the rank
/// that left the group first is re-raised (the likely cause of the others).
///
/// ```
/// use lsc_comm::{Communicator, ReduceOp, run_ranks};
///
/// let sums = run_ranks(3, |c| {
///     let mut v = [c.rank() as f32, 1.0];
///     c.all_reduce(&mut v, ReduceOp::Sum).unwrap();
///     v
/// });
/// assert_eq!(sums, vec![[3.0, 3.0]; 3]);
/// ```
pub fn run_ranks<T: Send>(n: usize, f: impl Fn(ThreadComm) -> T + Sync) -> Vec<T> {
    run_group(ThreadComm::group(n), f)
}

/// [`run_ranks`] with the given collective timeout instead of [`default_timeout`].
pub fn run_ranks_with_timeout<T: Send>(n: usize, timeout: Duration, f: impl Fn(ThreadComm) -> T + Sync) -> Vec<T> {
    run_group(ThreadComm::group_with_timeout(n, timeout), f)
}

fn run_group<T: Send>(comms: Vec<ThreadComm>, f: impl Fn(ThreadComm) -> T + Sync) -> Vec<T> {
    let shared = comms.first().map(|c| Arc::clone(&c.shared));
    let f = &f;
    let outcomes: Vec<std::thread::Result<T>> = std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .into_iter()
            .map(|comm| {
                std::thread::Builder::new()
                    .name(format!("lsc-rank-{}", comm.rank))
                    .spawn_scoped(s, move || f(comm))
                    .expect("failed to spawn a rank thread")
            })
            .collect();
        handles.into_iter().map(|h| h.join()).collect()
    });
    let mut results = Vec::with_capacity(outcomes.len());
    let mut panics = Vec::new();
    for (rank, outcome) in outcomes.into_iter().enumerate() {
        match outcome {
            Ok(v) => results.push(v),
            Err(payload) => panics.push((rank, payload)),
        }
    }
    if !panics.is_empty() {
        let left = shared.map(|s| s.lock().left.clone()).unwrap_or_default();
        let pick = left
            .iter()
            .find_map(|&r| panics.iter().position(|(p, _)| *p == r))
            .unwrap_or(0);
        panic::resume_unwind(panics.swap_remove(pick).1);
    }
    results
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balanced_slices_tile_the_buffer() {
        for n in 1..=9 {
            for len in 0..40 {
                let mut next = 0;
                for r in 0..n {
                    let s = balanced_slice(len, n, r);
                    assert_eq!(s.start, next);
                    assert!(s.len() == len / n || s.len() == len / n + 1, "{len} {n} {r}");
                    next = s.end;
                }
                assert_eq!(next, len);
            }
        }
    }

    #[test]
    fn timeouts_parse() {
        assert_eq!(parse_timeout("600"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_timeout(" 0.25 "), Ok(Duration::from_millis(250)));
        for bad in ["", "x", "0", "-1", "inf", "NaN", "1e300"] {
            assert!(parse_timeout(bad).is_err(), "{bad:?}");
        }
    }

    fn slot(kind: Kind, len: usize, other_len: usize) -> Slot {
        Slot {
            kind,
            data: std::ptr::null(),
            len,
            other_len,
            counts: 0,
        }
    }

    #[test]
    fn varied_validation_is_decided_from_the_slots() {
        let v = |len, other, counts: &[usize]| Slot {
            counts: counts_fingerprint(counts.iter().copied()),
            ..slot(Kind::AllGatherVaried, len, other)
        };
        let ok = [v(1, 3, &[1, 2]), v(2, 3, &[1, 2])];
        assert_eq!(validate(0, &ok), Ok(()));
        // Rank 1 passed other counts: both ranks fail, rank 1 naming itself.
        let bad = [v(1, 3, &[1, 2]), v(2, 3, &[2, 1])];
        for me in 0..2 {
            match validate(me, &bad) {
                Err(CommError::Invalid {
                    rank,
                    op: "all_gather_varied",
                    why,
                }) => {
                    assert_eq!(rank, me);
                    let whose = if me == 1 { "this rank's" } else { "rank 1's" };
                    assert!(why.starts_with(whose), "{why}");
                    assert!(why.ends_with("[1, 2]"), "{why}");
                }
                e => panic!("{e:?}"),
            }
        }
        // Rank 0's recv is short.
        let short = [v(1, 2, &[1, 2]), v(2, 3, &[1, 2])];
        assert_eq!(
            validate(1, &short),
            Err(CommError::Size {
                rank: 1,
                op: "all_gather_varied",
                expected: 3,
                got: 2
            })
        );
    }

    #[test]
    fn validation_names_the_caller() {
        let ag = |len, other| slot(Kind::AllGather, len, other);
        let ok = [ag(2, 6), ag(2, 6), ag(2, 6)];
        assert_eq!(validate(1, &ok), Ok(()));
        // Rank 2's recv is wrong: rank 2 reports its own sizes, the others rank 2's.
        let bad = [ag(2, 6), ag(2, 6), ag(2, 5)];
        for me in 0..3 {
            assert_eq!(
                validate(me, &bad),
                Err(CommError::Size {
                    rank: me,
                    op: "all_gather",
                    expected: 6,
                    got: 5
                })
            );
        }
        // Rank 1's send disagrees with rank 0's.
        let bad = [ag(2, 6), ag(3, 9), ag(2, 6)];
        assert!(matches!(
            validate(1, &bad),
            Err(CommError::Size {
                rank: 1,
                expected: 2,
                got: 3,
                ..
            })
        ));
        assert!(matches!(
            validate(2, &bad),
            Err(CommError::Size {
                rank: 2,
                expected: 2,
                got: 3,
                ..
            })
        ));
        // A different collective or reduce op.
        let mixed = [
            slot(Kind::AllReduce(ReduceOp::Sum), 4, 4),
            slot(Kind::AllReduce(ReduceOp::Max), 4, 4),
        ];
        assert!(matches!(
            validate(0, &mixed),
            Err(CommError::Invalid {
                rank: 0,
                op: "all_reduce",
                ..
            })
        ));
        let mixed = [slot(Kind::AllReduce(ReduceOp::Sum), 4, 4), Slot::EMPTY];
        assert!(matches!(
            validate(1, &mixed),
            Err(CommError::Invalid {
                rank: 1,
                op: "barrier",
                ..
            })
        ));
        let root = [
            slot(Kind::Broadcast { root: 2 }, 1, 1),
            slot(Kind::Broadcast { root: 2 }, 1, 1),
        ];
        assert!(matches!(
            validate(0, &root),
            Err(CommError::Invalid {
                rank: 0,
                op: "broadcast",
                ..
            })
        ));
    }

    /// Every collective on a small group; small enough for Miri (`cargo +nightly miri test -p
    /// lsc-comm --lib`), which checks the aliasing and data-race arguments of the module docs.
    #[test]
    fn small_group_runs_every_collective() {
        let n = 3;
        let out = run_ranks(n, |c| {
            let r = c.rank() as f32;
            let mut sum: Vec<f32> = (0..7).map(|i| r * 10.0 + i as f32).collect();
            c.all_reduce(&mut sum, ReduceOp::Sum).unwrap();
            let mut max: Vec<f32> = (0..5).map(|i| if i == c.rank() { 100.0 } else { r }).collect();
            c.all_reduce(&mut max, ReduceOp::Max).unwrap();
            let mut gathered = vec![0.0; 2 * n];
            c.all_gather(&[r, r + 0.5], &mut gathered).unwrap();
            let send: Vec<f32> = (0..2 * n).map(|i| r + i as f32).collect();
            let mut scattered = [0.0; 2];
            c.reduce_scatter(&send, &mut scattered, ReduceOp::Sum).unwrap();
            let mut bcast = [r; 3];
            c.broadcast(&mut bcast, 2).unwrap();
            c.barrier().unwrap();
            let labels = c.all_gather_u32(&[c.rank() as u32 + (1 << 30)]).unwrap();
            let mut empty: [f32; 0] = [];
            c.all_reduce(&mut empty, ReduceOp::Sum).unwrap();
            // A size mismatch fails on every rank and aborts the group.
            let bad = c.all_reduce(&mut vec![0.0; 1 + c.rank()], ReduceOp::Sum);
            (sum, max, gathered, scattered, bcast, labels, bad, c.barrier())
        });
        for (rank, (sum, max, gathered, scattered, bcast, labels, bad, after)) in out.into_iter().enumerate() {
            assert_eq!(sum, (0..7).map(|i| 30.0 + 3.0 * i as f32).collect::<Vec<_>>());
            assert_eq!(max, [100.0, 100.0, 100.0, 2.0, 2.0]);
            assert_eq!(gathered, [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]);
            let block = 2.0 * rank as f32;
            assert_eq!(scattered, [3.0 + 3.0 * block, 6.0 + 3.0 * block]);
            assert_eq!(bcast, [2.0; 3]);
            assert_eq!(labels, [1 << 30, (1 << 30) + 1, (1 << 30) + 2]);
            assert!(matches!(bad, Err(CommError::Size { rank: r, op: "all_reduce", .. }) if r == rank));
            assert!(matches!(after, Err(CommError::Aborted { rank: r, op: "barrier", .. }) if r == rank));
        }
    }

    #[test]
    fn ordered_reduction_matches_rank_order() {
        let n = 4;
        let len = 2 * CHUNK + 3;
        let data: Vec<Vec<f32>> = (0..n)
            .map(|q| {
                (0..len)
                    .map(|i| ((i * 7 + q * 13) % 17) as f32 * 0.1 + q as f32 * 1e-3)
                    .collect()
            })
            .collect();
        let expect: Vec<f32> = (0..len)
            .map(|i| (1..n).fold(data[0][i], |a, q| a + data[q][i]))
            .collect();
        for own in [None, Some(0), Some(2), Some(3)] {
            let mut out = match own {
                Some(p) => data[p].clone(),
                None => vec![f32::NAN; len],
            };
            reduce_ordered(&mut out, n, own, |q| &data[q], ReduceOp::Sum);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&out), bits(&expect), "{own:?}");
        }
    }
}
