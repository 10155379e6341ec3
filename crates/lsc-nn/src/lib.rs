//! Layers with an explicit forward and backward (as llm.c does), and the face ResNet built
//! from them.
//!
//! The key decision: there is no tape autograd. Each [`Layer`] caches what its backward needs
//! during a training forward, and its backward takes the output gradient, accumulates its
//! parameter gradients into [`Param::grad`] and returns the input gradient. Every layer's
//! backward is checked against finite differences by [`gradcheck`].

mod bn; // defines: BatchNorm (2-D and 1-D)
mod conv; // defines: Conv2d (im2col + GEMM)
mod dropout; // defines: Dropout
pub mod gradcheck; // defines: check_layer, finite-difference gradient checks
mod layer; // defines: Layer, Param, Mode, Backbone
mod linear; // defines: Linear
mod prelu; // defines: PRelu
pub mod profile; // defines: per-layer-type timing (scope, report)
pub mod resnet; // defines: IResNet, IrUnit, ResNetConfig

pub use bn::BatchNorm;
pub use conv::Conv2d;
pub use dropout::Dropout;
pub use layer::{Backbone, Layer, Mode, Param};
pub use linear::Linear;
pub use prelu::{PRelu, PreluMode};
pub use resnet::{IResNet, IrUnit, ResNetConfig};
