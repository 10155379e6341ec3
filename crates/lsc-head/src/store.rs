//! Class-weight storage: rows of `D` values in f32 or bf16, read and written as f32.
//!
//! bf16 keeps 8 bits of mantissa, so an update much smaller than 2⁻⁸ of a weight would be
//! rounded away every step. Writes therefore use stochastic rounding: the value rounds up with
//! probability equal to its distance from the lower bf16 neighbour, which makes every write
//! unbiased (E[stored] = value), so small updates accumulate in expectation instead of
//! vanishing. The random bits come from a seeded stream per (step, row) so runs are
//! reproducible.

use half::bf16;
use lsc_tensor::Rng;
use serde::{Deserialize, Serialize};

/// Storage type of the class weights and their momentum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    #[default]
    F32,
    Bf16,
}

/// `rows × d` values.
#[derive(Clone, Debug)]
pub enum Rows {
    F32 { d: usize, data: Vec<f32> },
    Bf16 { d: usize, data: Vec<bf16> },
}

/// Rounds `v` to bf16 stochastically with the 16 random bits `r`.
#[inline]
pub fn bf16_stochastic(v: f32, r: u32) -> bf16 {
    if !v.is_finite() {
        return bf16::from_f32(v);
    }
    let bits = v.to_bits();
    // Adding r ∈ [0, 2¹⁶) below the kept bits carries into them with probability equal to
    // the discarded fraction; the sign-magnitude layout makes this right for negatives too.
    let up = bits.wrapping_add(r & 0xFFFF);
    // A carry out of the largest finite exponent would make inf: keep the truncation then.
    let out = if (up >> 23) & 0xFF == 0xFF { bits } else { up };
    bf16::from_bits((out >> 16) as u16)
}

impl Rows {
    /// Stores `data` (`rows × d`, f32) as `dtype` (round to nearest for bf16).
    pub fn from_f32(data: Vec<f32>, d: usize, dtype: DType) -> Rows {
        match dtype {
            DType::F32 => Rows::F32 { d, data },
            DType::Bf16 => Rows::Bf16 {
                d,
                data: data.iter().map(|&v| bf16::from_f32(v)).collect(),
            },
        }
    }

    /// `rows × d` values produced tile by tile: `fill(range, out)` writes rows `range` as f32
    /// into `out` (`range.len() × d`). bf16 storage rounds each tile to nearest, so at most one
    /// tile of f32 is held beside the store: this is how a 1M-class shard is initialised or
    /// loaded without an f32 copy of the whole shard.
    pub fn from_fill<E>(
        rows: usize,
        d: usize,
        dtype: DType,
        mut fill: impl FnMut(std::ops::Range<usize>, &mut [f32]) -> Result<(), E>,
    ) -> Result<Rows, E> {
        const TILE_ROWS: usize = 2048;
        match dtype {
            DType::F32 => {
                let mut data = vec![0.0f32; rows * d];
                for start in (0..rows).step_by(TILE_ROWS) {
                    let end = (start + TILE_ROWS).min(rows);
                    fill(start..end, &mut data[start * d..end * d])?;
                }
                Ok(Rows::F32 { d, data })
            }
            DType::Bf16 => {
                let mut data = Vec::with_capacity(rows * d);
                let mut tile = vec![0.0f32; TILE_ROWS.min(rows) * d];
                for start in (0..rows).step_by(TILE_ROWS) {
                    let end = (start + TILE_ROWS).min(rows);
                    let t = &mut tile[..(end - start) * d];
                    fill(start..end, t)?;
                    data.extend(t.iter().map(|&v| bf16::from_f32(v)));
                }
                Ok(Rows::Bf16 { d, data })
            }
        }
    }

    /// The values when stored as f32.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match self {
            Rows::F32 { data, .. } => Some(data),
            Rows::Bf16 { .. } => None,
        }
    }

    /// The bf16 bit patterns when stored as bf16.
    pub fn as_bf16_bits(&self) -> Option<&[u16]> {
        use half::slice::HalfFloatSliceExt;
        match self {
            Rows::F32 { .. } => None,
            Rows::Bf16 { data, .. } => Some(data.reinterpret_cast()),
        }
    }

    /// Zeros, written out now (not left to lazily mapped zero pages), so that the first
    /// training step does not pay for faulting the whole buffer in.
    pub fn zeros(rows: usize, d: usize, dtype: DType) -> Rows {
        match dtype {
            DType::F32 => {
                let mut data = Vec::with_capacity(rows * d);
                data.resize(rows * d, 0.0f32);
                Rows::F32 { d, data }
            }
            DType::Bf16 => {
                let mut data = Vec::with_capacity(rows * d);
                data.resize(rows * d, bf16::ZERO);
                Rows::Bf16 { d, data }
            }
        }
    }

    pub fn dtype(&self) -> DType {
        match self {
            Rows::F32 { .. } => DType::F32,
            Rows::Bf16 { .. } => DType::Bf16,
        }
    }

    pub fn dim(&self) -> usize {
        match self {
            Rows::F32 { d, .. } | Rows::Bf16 { d, .. } => *d,
        }
    }

    pub fn rows(&self) -> usize {
        match self {
            Rows::F32 { d, data } => data.len() / (*d).max(1),
            Rows::Bf16 { d, data } => data.len() / (*d).max(1),
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match self {
            Rows::F32 { data, .. } => data.len() * 4,
            Rows::Bf16 { data, .. } => data.len() * 2,
        }
    }

    /// Copies row `r` into `out` as f32.
    #[inline]
    pub fn read_row(&self, r: usize, out: &mut [f32]) {
        match self {
            Rows::F32 { d, data } => out.copy_from_slice(&data[r * d..(r + 1) * d]),
            Rows::Bf16 { d, data } => widen(&data[r * d..(r + 1) * d], out),
        }
    }

    /// Writes row `r` from f32 (stochastic rounding with `rng` for bf16).
    #[inline]
    pub fn write_row(&mut self, r: usize, src: &[f32], rng: &mut Rng) {
        match self {
            Rows::F32 { d, data } => data[r * *d..(r + 1) * *d].copy_from_slice(src),
            Rows::Bf16 { d, data } => {
                let dst = &mut data[r * *d..(r + 1) * *d];
                let mut bits = 0u64;
                for (k, (o, &v)) in dst.iter_mut().zip(src).enumerate() {
                    if k % 4 == 0 {
                        bits = rng.next_u64();
                    }
                    *o = bf16_stochastic(v, (bits >> (16 * (k % 4))) as u32);
                }
            }
        }
    }

    /// Every value as f32 (for checkpoints, tests and evaluation).
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            Rows::F32 { data, .. } => data.clone(),
            Rows::Bf16 { data, .. } => data.iter().map(|v| v.to_f32()).collect(),
        }
    }
}

/// Rows read by a pass of the fused kernel: a shared store, or the writer of the update.
pub(crate) trait RowSource: Sync {
    /// Copies row `r` into `out` as f32.
    ///
    /// # Safety
    /// No other thread writes row `r` during the call.
    unsafe fn copy_row(&self, r: usize, out: &mut [f32]);
    /// Asks the CPU to start loading row `r` into cache (a hint: never faults, no effect
    /// elsewhere), so that the rows after the current one stream in while it is processed.
    fn prefetch_row(&self, r: usize);
    /// Rows `range` as one slice when the store is f32; `None` for bf16.
    ///
    /// # Safety
    /// No other thread writes these rows while the returned slice is alive.
    unsafe fn f32_block(&self, range: std::ops::Range<usize>) -> Option<&[f32]>;
}

/// Prefetch hints for the `bytes` bytes from `p`. A hint reads nothing and never faults, so
/// `p` need not be valid and another thread may be writing there.
pub(crate) fn prefetch(p: *const u8, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    for off in (0..bytes).step_by(64) {
        // SAFETY: _mm_prefetch only hints the cache; it dereferences nothing.
        unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.wrapping_add(off).cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, bytes);
}

fn widen(src: &[bf16], buf: &mut [f32]) {
    for (o, v) in buf.iter_mut().zip(src) {
        *o = v.to_f32();
    }
}

impl RowSource for Rows {
    unsafe fn f32_block(&self, range: std::ops::Range<usize>) -> Option<&[f32]> {
        match self {
            Rows::F32 { d, data } => Some(&data[range.start * d..range.end * d]),
            Rows::Bf16 { .. } => None,
        }
    }
    fn prefetch_row(&self, r: usize) {
        match self {
            Rows::F32 { d, data } => prefetch(data.as_ptr().wrapping_add(r * d).cast(), d * 4),
            Rows::Bf16 { d, data } => prefetch(data.as_ptr().wrapping_add(r * d).cast(), d * 2),
        }
    }
    unsafe fn copy_row(&self, r: usize, out: &mut [f32]) {
        self.read_row(r, out);
    }
}

/// Mutable views of disjoint rows, for parallel tile updates.
pub(crate) struct RowWriter<'a> {
    ptr: RowsPtr,
    d: usize,
    rows: usize,
    _life: std::marker::PhantomData<&'a mut Rows>,
}

#[derive(Clone, Copy)]
enum RowsPtr {
    F32(*mut f32),
    Bf16(*mut bf16),
}

// SAFETY: RowWriter hands out rows through `write_row`, whose contract requires that each
// row is written by at most one thread at a time; the pointer is valid for the borrow 'a.
unsafe impl Send for RowWriter<'_> {}
// SAFETY: as above; shared references only allow `write_row` under that contract.
unsafe impl Sync for RowWriter<'_> {}

impl<'a> RowWriter<'a> {
    pub(crate) fn new(rows: &'a mut Rows) -> RowWriter<'a> {
        let (d, n) = (rows.dim(), rows.rows());
        let ptr = match rows {
            Rows::F32 { data, .. } => RowsPtr::F32(data.as_mut_ptr()),
            Rows::Bf16 { data, .. } => RowsPtr::Bf16(data.as_mut_ptr()),
        };
        RowWriter {
            ptr,
            d,
            rows: n,
            _life: std::marker::PhantomData,
        }
    }

    /// Reads row `r` as f32.
    ///
    /// # Safety
    /// No other thread writes row `r` concurrently.
    pub(crate) unsafe fn read_row(&self, r: usize, out: &mut [f32]) {
        assert!(r < self.rows && out.len() == self.d);
        // SAFETY: r < rows, so the row lies inside the allocation; the caller guarantees no
        // concurrent writer of this row.
        unsafe {
            match self.ptr {
                RowsPtr::F32(p) => out.copy_from_slice(std::slice::from_raw_parts(p.add(r * self.d), self.d)),
                RowsPtr::Bf16(p) => widen(std::slice::from_raw_parts(p.add(r * self.d), self.d), out),
            }
        }
    }

    /// Row `r` of an f32 store, to update in place; `None` for bf16.
    ///
    /// # Safety
    /// No other thread reads or writes row `r` while the returned slice is alive.
    #[allow(clippy::mut_from_ref)] // rows are handed out disjointly under the contract above
    pub(crate) unsafe fn f32_row_mut(&self, r: usize) -> Option<&mut [f32]> {
        assert!(r < self.rows);
        match self.ptr {
            // SAFETY: r < rows keeps the row inside the allocation; the caller guarantees
            // exclusive access to it while the slice lives.
            RowsPtr::F32(p) => Some(unsafe { std::slice::from_raw_parts_mut(p.add(r * self.d), self.d) }),
            RowsPtr::Bf16(_) => None,
        }
    }

    /// Writes row `r` from f32 (stochastic rounding for bf16).
    ///
    /// # Safety
    /// No other thread reads or writes row `r` concurrently.
    pub(crate) unsafe fn write_row(&self, r: usize, src: &[f32], rng: &mut Rng) {
        assert!(r < self.rows && src.len() == self.d);
        // SAFETY: r < rows keeps the row inside the allocation, and the caller guarantees
        // exclusive access to it for the duration of this call.
        unsafe {
            match self.ptr {
                RowsPtr::F32(p) => std::slice::from_raw_parts_mut(p.add(r * self.d), self.d).copy_from_slice(src),
                RowsPtr::Bf16(p) => {
                    let dst = std::slice::from_raw_parts_mut(p.add(r * self.d), self.d);
                    let mut bits = 0u64;
                    for (k, (o, &v)) in dst.iter_mut().zip(src).enumerate() {
                        if k % 4 == 0 {
                            bits = rng.next_u64();
                        }
                        *o = bf16_stochastic(v, (bits >> (16 * (k % 4))) as u32);
                    }
                }
            }
        }
    }
}

impl RowSource for RowWriter<'_> {
    unsafe fn f32_block(&self, range: std::ops::Range<usize>) -> Option<&[f32]> {
        assert!(range.start <= range.end && range.end <= self.rows);
        match self.ptr {
            RowsPtr::F32(p) => {
                // SAFETY: the range lies inside the allocation; the caller guarantees that no
                // thread writes these rows while the slice lives.
                Some(unsafe { std::slice::from_raw_parts(p.add(range.start * self.d), range.len() * self.d) })
            }
            RowsPtr::Bf16(_) => None,
        }
    }
    fn prefetch_row(&self, r: usize) {
        match self.ptr {
            RowsPtr::F32(p) => prefetch(p.wrapping_add(r * self.d).cast(), self.d * 4),
            RowsPtr::Bf16(p) => prefetch(p.wrapping_add(r * self.d).cast(), self.d * 2),
        }
    }
    unsafe fn copy_row(&self, r: usize, out: &mut [f32]) {
        // SAFETY: forwarded to the caller.
        unsafe { self.read_row(r, out) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stochastic_rounding_is_unbiased_and_brackets_the_value() {
        let mut rng = Rng::new(1);
        for &v in &[1.0f32 + 1e-3, -2.5173, 1e-20, 65504.5, -0.0] {
            let lo = bf16::from_f32(v);
            let n = 20_000;
            let mut s = 0.0f64;
            for _ in 0..n {
                let b = bf16_stochastic(v, rng.next_u64() as u32);
                let bf = b.to_f32();
                // Always one of the two neighbours around v.
                assert!(
                    (bf - v).abs() <= 2.0 * (lo.to_f32() - v).abs().max(v.abs() / 128.0) + 1e-38,
                    "{v} -> {bf}"
                );
                s += bf as f64;
            }
            let mean = s / n as f64;
            assert!(
                (mean - v as f64).abs() <= 1e-3 * (v as f64).abs().max(1e-30),
                "{v}: mean {mean}"
            );
        }
        assert!(bf16_stochastic(f32::MAX, u32::MAX).to_f32().is_finite());
        assert!(bf16_stochastic(f32::NAN, 0).to_f32().is_nan());
    }

    #[test]
    fn small_updates_survive_bf16_storage() {
        // 1000 updates of 1e-4 on a weight of 1: round-to-nearest loses every one of them
        // (bf16's spacing at 1 is 2⁻⁷), stochastic rounding keeps their sum in expectation.
        let mut rng = Rng::new(2);
        let mut rows = Rows::from_f32(vec![1.0; 64], 64, DType::Bf16);
        let mut buf = vec![0.0f32; 64];
        for _ in 0..1000 {
            rows.read_row(0, &mut buf);
            for v in &mut buf {
                *v += 1e-4;
            }
            rows.write_row(0, &buf, &mut rng);
        }
        let mean: f32 = rows.to_f32().iter().sum::<f32>() / 64.0;
        assert!((mean - 1.1).abs() < 0.01, "mean {mean}");
        let nearest = (0..1000).fold(bf16::from_f32(1.0), |w, _| bf16::from_f32(w.to_f32() + 1e-4));
        assert_eq!(nearest.to_f32(), 1.0);
    }
}
