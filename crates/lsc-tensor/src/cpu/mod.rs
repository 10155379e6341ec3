//! CPU kernels on plain slices. Each has a plain reference in [`reference`] and a test against it.

mod conv; // defines: im2col(_ld), col2im(_ld), ConvGeom
pub mod math; // defines: exp (vectorisable), exp_shifted_sum
mod matmul; // defines: matmul, Trans, Par
pub mod par; // defines: ordered_fold (deterministic parallel reductions)
pub mod reference; // defines: matmul_ref, conv2d_ref (plain loops, f64 accumulation)

pub use conv::{ConvGeom, col2im, col2im_ld, im2col, im2col_ld};
pub use matmul::{Par, Trans, matmul};
