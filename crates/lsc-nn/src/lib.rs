//! Layers with an explicit forward and backward (as llm.c does), and the face ResNet built
//! from them.
//!
//! The key decision: there is no tape autograd. Each [`Layer`] caches what its backward needs
//! during a training forward, and its backward takes the output gradient, accumulates its
//! parameter gradients into [`Param::grad`] and returns the input gradient. Every layer's
//! backward is checked against finite differences by [`gradcheck`].
//!
//! For deployment, [`InferenceNet`] is an IResNet in eval mode with every BN that follows a
//! convolution or the FC folded into it; [`InferenceNet::save`] / [`InferenceNet::load`] move
//! it to and from an exported model directory.

pub mod arch; // defines: ResNetConfig (presets, TOML ModelSpec, validation), Summary
mod bn; // defines: BatchNorm (2-D and 1-D), its fused BN + PReLU (+ residual) passes
mod buf; // defines: reshape (reuse a tensor's allocation)
mod conv; // defines: Conv2d (Winograd F(4x4,3x3) or im2col + GEMM), set_winograd
mod dropout; // defines: Dropout
pub mod gradcheck; // defines: check_layer, check_backbone, finite-difference gradient checks
pub mod inference; // defines: InferenceNet (BN folded), ExportManifest, save/load of a model dir
mod layer; // defines: Layer, Param, Mode, Backbone
mod linear; // defines: Linear
mod prelu; // defines: PRelu
pub mod profile; // defines: per-layer-type timing (scope, report)
pub mod resnet; // defines: IResNet, IrUnit, load_named

pub use arch::{ModelSpec, PRESETS, ResNetConfig, Summary};
pub use bn::BatchNorm;
pub use conv::{Conv2d, set_winograd};
pub use dropout::Dropout;
pub use inference::{ExportManifest, InferenceNet};
pub use layer::{Backbone, Layer, Mode, Param};
pub use linear::Linear;
pub use prelu::{PRelu, PreluMode};
pub use resnet::{IResNet, IrUnit, load_named};
