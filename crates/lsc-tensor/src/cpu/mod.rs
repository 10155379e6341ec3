//! CPU kernels on plain slices. Each has a plain reference in [`reference`] and a test against it.

mod conv; // defines: im2col(_ld), col2im(_ld), ConvGeom
pub mod math; // defines: exp (vectorisable), column softmax kernels, dot_wide, sgd_momentum
mod matmul; // defines: matmul, Trans, Par
pub mod par; // defines: ordered_fold (deterministic parallel reductions)
pub mod reference; // defines: matmul_ref, conv2d_ref, winograd_ref (plain loops, f64 accumulation)
pub mod winograd; // defines: conv3x3_winograd(_weight_grad), winograd_weights (F(4x4, 3x3))

pub use conv::{ConvGeom, col2im, col2im_ld, im2col, im2col_ld};
pub use matmul::{Par, Trans, matmul};
pub use winograd::{conv3x3_winograd, conv3x3_winograd_weight_grad, winograd_weights};
