//! The collective cases every engine must pass, written once over `&dyn Communicator`.
//!
//! Used by `tests/conformance.rs` (LocalComm, ThreadComm groups of 1 to 4 ranks), by
//! `tests/mpi.rs` (MpiComm, one process per rank under `mpirun`) and by the NCCL GPU test.
//! Every rank computes every rank's input from `(seed, rank, index)`, so each rank checks its
//! own result without a reference rank. With [`Order::RankOrder`] sums must be bit-identical to
//! the fold in rank order 0, 1, …; engines that reduce in another order (MPI with more than two
//! ranks, NCCL) are checked to a tolerance instead. Max, gathers and broadcasts are always
//! exact.

#![allow(dead_code)]

use lsc_comm::{Communicator, ReduceOp, bf16, f16};

/// How an engine orders a sum over ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// In rank order: results bit-identical to [`reduce_in_rank_order`].
    RankOrder,
    /// Any order: sums agree to a rounding tolerance.
    Any,
}

/// Buffer lengths: empty, fewer than the ranks, odd, and large.
pub const SIZES: [usize; 6] = [0, 1, 2, 7, 1001, 1 << 20];
/// Per-rank block lengths for reduce-scatter.
pub const BLOCKS: [usize; 6] = [0, 1, 2, 7, 1001, 1 << 18];

/// SplitMix64: a deterministic stream for test data.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A non-integer value with a varied exponent, so sums depend on their order.
pub fn value(seed: u64, rank: usize, i: usize) -> f32 {
    let h = mix(seed ^ mix((rank as u64) << 40 ^ i as u64));
    let unit = (h >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
    // Scaled by 2^-6 … 2^9 with exact operations only (no `powi`, which need not be exact).
    unit * (1u32 << (h & 15)) as f32 / 64.0
}

pub fn inputs(seed: u64, world: usize, len: usize) -> Vec<Vec<f32>> {
    (0..world)
        .map(|r| (0..len).map(|i| value(seed, r, i)).collect())
        .collect()
}

/// The elementwise reduction of `inputs` in rank order 0, 1, …
pub fn reduce_in_rank_order(inputs: &[Vec<f32>], op: ReduceOp) -> Vec<f32> {
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

/// The bound on a sum's error in any order: `n` roundings of the largest partial sum.
fn sum_tolerance(inputs: &[Vec<f32>], i: usize) -> f32 {
    let abs: f32 = inputs.iter().map(|v| v[i].abs()).sum();
    abs * f32::EPSILON * inputs.len() as f32
}

#[track_caller]
pub fn assert_bits_eq(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
        panic!("{what}: element {i}: got {} want {}", got[i], want[i]);
    }
}

/// Checks a reduction result: bit-exact for max or in rank order, else within tolerance.
#[track_caller]
fn assert_reduced(
    got: &[f32],
    inputs: &[Vec<f32>],
    range: std::ops::Range<usize>,
    op: ReduceOp,
    order: Order,
    what: &str,
) {
    let want = reduce_in_rank_order(inputs, op);
    let want = &want[range.clone()];
    if op == ReduceOp::Max || order == Order::RankOrder {
        return assert_bits_eq(got, want, what);
    }
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (k, i) in range.enumerate() {
        let tol = sum_tolerance(inputs, i);
        assert!(
            (got[k] - want[k]).abs() <= tol,
            "{what}: element {i}: got {} want {} (tolerance {tol})",
            got[k],
            want[k]
        );
    }
}

fn label(c: &dyn Communicator) -> String {
    format!("{} rank {}/{}", c.backend(), c.rank(), c.world_size())
}

// ---- f32 ----

pub fn check_all_reduce(c: &dyn Communicator, seed: u64, len: usize, op: ReduceOp, order: Order) {
    let inputs = inputs(seed, c.world_size(), len);
    let mut buf = inputs[c.rank()].clone();
    c.all_reduce(&mut buf, op).unwrap();
    let what = format!("all_reduce {op:?} len {len} {}", label(c));
    assert_reduced(&buf, &inputs, 0..len, op, order, &what);
}

pub fn check_all_gather(c: &dyn Communicator, seed: u64, len: usize) {
    let inputs = inputs(seed, c.world_size(), len);
    let mut recv = vec![f32::NAN; len * c.world_size()];
    c.all_gather(&inputs[c.rank()], &mut recv).unwrap();
    assert_bits_eq(&recv, &inputs.concat(), &format!("all_gather len {len} {}", label(c)));
}

/// Per-rank counts for the variable-size all-gather: pattern `k` of a few shapes (equal,
/// growing, some ranks empty, one large block, all empty).
pub fn varied_counts(k: usize, world: usize) -> Vec<usize> {
    (0..world)
        .map(|q| match k {
            0 => 3,
            1 => q,
            2 => {
                if q % 2 == 0 {
                    0
                } else {
                    5 + q
                }
            }
            3 => {
                if q == world - 1 {
                    1 << 16
                } else {
                    (7 * q + 1) % 5
                }
            }
            _ => 0,
        })
        .collect()
}

pub const VARIED_PATTERNS: usize = 5;

pub fn check_all_gather_varied(c: &dyn Communicator, seed: u64, counts: &[usize]) {
    let send: Vec<Vec<f32>> = counts
        .iter()
        .enumerate()
        .map(|(q, &n)| (0..n).map(|i| value(seed, q, i)).collect())
        .collect();
    let mut recv = vec![f32::NAN; counts.iter().sum()];
    c.all_gather_varied(&send[c.rank()], counts, &mut recv).unwrap();
    assert_bits_eq(
        &recv,
        &send.concat(),
        &format!("all_gather_varied counts {counts:?} {}", label(c)),
    );
}

pub fn check_reduce_scatter(c: &dyn Communicator, seed: u64, block: usize, op: ReduceOp, order: Order) {
    let (n, r) = (c.world_size(), c.rank());
    let inputs = inputs(seed, n, block * n);
    let mut recv = vec![f32::NAN; block];
    c.reduce_scatter(&inputs[r], &mut recv, op).unwrap();
    let what = format!("reduce_scatter {op:?} block {block} {}", label(c));
    assert_reduced(&recv, &inputs, r * block..(r + 1) * block, op, order, &what);
}

pub fn check_broadcast(c: &dyn Communicator, seed: u64, len: usize, root: usize) {
    let inputs = inputs(seed, c.world_size(), len);
    let mut buf = inputs[c.rank()].clone();
    c.broadcast(&mut buf, root).unwrap();
    assert_bits_eq(
        &buf,
        &inputs[root],
        &format!("broadcast len {len} root {root} {}", label(c)),
    );
}

pub fn check_all_gather_u32(c: &dyn Communicator, len: usize) {
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
    let want: Vec<u32> = (0..c.world_size()).flat_map(send_of).collect();
    assert_eq!(
        c.all_gather_u32(&send_of(c.rank())).unwrap(),
        want,
        "all_gather_u32 len {len} {}",
        label(c)
    );
}

pub fn check_scalar(c: &dyn Communicator) {
    let n = c.world_size();
    let got = c.all_reduce_scalar(c.rank() as f32 + 0.5, ReduceOp::Sum).unwrap();
    let want = (0..n).fold(0.0f32, |a, r| a + r as f32 + 0.5);
    assert_eq!(got, want, "all_reduce_scalar sum {}", label(c));
    let got = c.all_reduce_scalar(-(c.rank() as f32), ReduceOp::Max).unwrap();
    assert_eq!(got, 0.0, "all_reduce_scalar max {}", label(c));
}

pub fn check_barrier(c: &dyn Communicator, rounds: usize) {
    for _ in 0..rounds {
        c.barrier().unwrap();
    }
}

// ---- bf16 / f16 ----

/// A 16-bit float type with the trait's collectives for it.
pub trait Half: Copy + PartialEq + std::fmt::Debug {
    const NAME: &'static str;
    fn from_f32(v: f32) -> Self;
    fn to_f32(self) -> f32;
    fn bits(self) -> u16;
    fn all_reduce(c: &dyn Communicator, b: &mut [Self], op: ReduceOp) -> Result<(), lsc_comm::CommError>;
    fn all_gather(c: &dyn Communicator, s: &[Self], r: &mut [Self]) -> Result<(), lsc_comm::CommError>;
    fn reduce_scatter(
        c: &dyn Communicator,
        s: &[Self],
        r: &mut [Self],
        op: ReduceOp,
    ) -> Result<(), lsc_comm::CommError>;
    fn broadcast(c: &dyn Communicator, b: &mut [Self], root: usize) -> Result<(), lsc_comm::CommError>;
}

macro_rules! half_impl {
    ($t:ty, $name:literal, $ar:ident, $ag:ident, $rs:ident, $bc:ident) => {
        impl Half for $t {
            const NAME: &'static str = $name;
            fn from_f32(v: f32) -> Self {
                <$t>::from_f32(v)
            }
            fn to_f32(self) -> f32 {
                <$t>::to_f32(self)
            }
            fn bits(self) -> u16 {
                self.to_bits()
            }
            fn all_reduce(c: &dyn Communicator, b: &mut [Self], op: ReduceOp) -> Result<(), lsc_comm::CommError> {
                c.$ar(b, op)
            }
            fn all_gather(c: &dyn Communicator, s: &[Self], r: &mut [Self]) -> Result<(), lsc_comm::CommError> {
                c.$ag(s, r)
            }
            fn reduce_scatter(
                c: &dyn Communicator,
                s: &[Self],
                r: &mut [Self],
                op: ReduceOp,
            ) -> Result<(), lsc_comm::CommError> {
                c.$rs(s, r, op)
            }
            fn broadcast(c: &dyn Communicator, b: &mut [Self], root: usize) -> Result<(), lsc_comm::CommError> {
                c.$bc(b, root)
            }
        }
    };
}
half_impl!(
    bf16,
    "bf16",
    all_reduce_bf16,
    all_gather_bf16,
    reduce_scatter_bf16,
    broadcast_bf16
);
half_impl!(
    f16,
    "f16",
    all_reduce_f16,
    all_gather_f16,
    reduce_scatter_f16,
    broadcast_f16
);

/// Inputs representable in both formats (|x| ≤ 8, so f16 sums of four ranks stay finite).
fn half_inputs<H: Half>(seed: u64, world: usize, len: usize) -> Vec<Vec<H>> {
    (0..world)
        .map(|r| (0..len).map(|i| H::from_f32(value(seed, r, i) / 64.0)).collect())
        .collect()
}

/// Checks a 16-bit reduction: with [`Order::RankOrder`] (the widening engines) exactly the f32
/// fold in rank order rounded once; otherwise within a few 16-bit ulps of it (native engines
/// round after every step).
#[track_caller]
fn assert_half_reduced<H: Half>(
    got: &[H],
    inputs: &[Vec<H>],
    range: std::ops::Range<usize>,
    op: ReduceOp,
    order: Order,
    what: &str,
) {
    let wide: Vec<Vec<f32>> = inputs.iter().map(|v| v.iter().map(|x| x.to_f32()).collect()).collect();
    let want: Vec<H> = reduce_in_rank_order(&wide, op)[range.clone()]
        .iter()
        .map(|&v| H::from_f32(v))
        .collect();
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (k, i) in range.enumerate() {
        let (g, w) = (got[k], want[k]);
        if op == ReduceOp::Max || order == Order::RankOrder {
            assert_eq!(g.bits(), w.bits(), "{what}: element {i}: got {g:?} want {w:?}");
        } else {
            // Each of the n - 1 steps rounds by half an ulp of a partial sum at most.
            let abs: f32 = wide.iter().map(|v| v[i].abs()).sum();
            let ulp = if H::NAME == "bf16" { 1.0 / 128.0 } else { 1.0 / 1024.0 };
            let tol = abs * ulp * wide.len() as f32;
            assert!(
                (g.to_f32() - w.to_f32()).abs() <= tol,
                "{what}: element {i}: got {g:?} want {w:?}"
            );
        }
    }
}

pub fn check_half<H: Half>(c: &dyn Communicator, seed: u64, len: usize, order: Order) {
    let (n, r) = (c.world_size(), c.rank());
    let l = label(c);
    let inputs = half_inputs::<H>(seed, n, len);
    for op in [ReduceOp::Sum, ReduceOp::Max] {
        let mut buf = inputs[r].clone();
        H::all_reduce(c, &mut buf, op).unwrap();
        let what = format!("all_reduce_{} {op:?} len {len} {l}", H::NAME);
        assert_half_reduced(&buf, &inputs, 0..len, op, order, &what);
    }
    let mut recv = vec![H::from_f32(f32::NAN); len * n];
    H::all_gather(c, &inputs[r], &mut recv).unwrap();
    let want: Vec<H> = inputs.concat();
    assert!(
        recv.iter().zip(&want).all(|(a, b)| a.bits() == b.bits()),
        "all_gather_{} len {len} {l}",
        H::NAME
    );
    let block = len.div_ceil(n.max(1));
    let rs_inputs = half_inputs::<H>(seed ^ 1, n, block * n);
    let mut recv = vec![H::from_f32(0.0); block];
    H::reduce_scatter(c, &rs_inputs[r], &mut recv, ReduceOp::Sum).unwrap();
    let what = format!("reduce_scatter_{} block {block} {l}", H::NAME);
    assert_half_reduced(
        &recv,
        &rs_inputs,
        r * block..(r + 1) * block,
        ReduceOp::Sum,
        order,
        &what,
    );
    let root = (seed as usize) % n;
    let mut buf = inputs[r].clone();
    H::broadcast(c, &mut buf, root).unwrap();
    assert!(
        buf.iter().zip(&inputs[root]).all(|(a, b)| a.bits() == b.bits()),
        "broadcast_{} len {len} root {root} {l}",
        H::NAME
    );
}

// ---- groups of cases, one per collective ----

pub fn all_reduce_cases(c: &dyn Communicator, order: Order) {
    for len in SIZES {
        for op in [ReduceOp::Sum, ReduceOp::Max] {
            check_all_reduce(c, 1, len, op, order);
        }
    }
}

pub fn all_gather_cases(c: &dyn Communicator) {
    for len in SIZES {
        check_all_gather(c, 3, len);
    }
}

pub fn all_gather_varied_cases(c: &dyn Communicator) {
    for k in 0..VARIED_PATTERNS {
        check_all_gather_varied(c, 11 + k as u64, &varied_counts(k, c.world_size()));
    }
}

pub fn reduce_scatter_cases(c: &dyn Communicator, order: Order) {
    for block in BLOCKS {
        for op in [ReduceOp::Sum, ReduceOp::Max] {
            check_reduce_scatter(c, 4, block, op, order);
        }
    }
}

pub fn broadcast_cases(c: &dyn Communicator) {
    for len in SIZES {
        for root in 0..c.world_size() {
            check_broadcast(c, 5, len, root);
        }
    }
}

pub fn half_cases(c: &dyn Communicator, order: Order) {
    for (k, len) in [0usize, 1, 2, 7, 1001, 65_537].into_iter().enumerate() {
        check_half::<bf16>(c, 20 + k as u64, len, order);
        check_half::<f16>(c, 40 + k as u64, len, order);
    }
}

pub fn u32_cases(c: &dyn Communicator) {
    for len in [0, 1, 8, 1001] {
        check_all_gather_u32(c, len);
    }
}

/// Every case, in the same order on every rank.
pub fn run_all(c: &dyn Communicator, order: Order) {
    all_reduce_cases(c, order);
    all_gather_cases(c);
    all_gather_varied_cases(c);
    reduce_scatter_cases(c, order);
    broadcast_cases(c);
    half_cases(c, order);
    u32_cases(c);
    check_scalar(c);
    check_barrier(c, 20);
}
