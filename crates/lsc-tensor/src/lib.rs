//! Dense f32 tensors and the CPU kernels every other crate computes with.
//!
//! The key decision: a [`Tensor`] is a shape plus one contiguous `Vec<f32>` in row-major (NCHW)
//! order, with no strides and no views. Layers own their buffers and call the kernels in
//! [`cpu`] on plain slices, so a GPU backend later adds a second storage kind without touching
//! the layer code's arithmetic contracts. Each fast kernel has a plain reference in
//! [`cpu::reference`] and a test that compares the two.

pub mod cpu; // defines: matmul (gemm crate), im2col/col2im, reference kernels
pub mod device; // defines: Device, probe_cuda (run-time driver probe, no CUDA needed to build)
pub mod rng; // defines: Rng (xoshiro256**), seeded streams
mod tensor; // defines: Tensor, TensorError

pub use device::Device;
pub use rng::Rng;
pub use tensor::{Tensor, TensorError};
