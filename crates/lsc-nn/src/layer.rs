//! The layer and backbone contracts.

use lsc_tensor::Tensor;

/// Training or inference behaviour (batch statistics and dropout vs running statistics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Train,
    Eval,
}

/// A learnable tensor, its gradient, and whether weight decay applies to it.
#[derive(Clone, Debug)]
pub struct Param {
    /// Stable name, insightface style (`layer1.0.conv1.weight`): checkpoints key on it.
    pub name: String,
    pub value: Tensor,
    pub grad: Tensor,
    pub decay: bool,
}

impl Param {
    pub fn new(name: impl Into<String>, value: Tensor) -> Param {
        let grad = Tensor::zeros(value.shape());
        Param {
            name: name.into(),
            value,
            grad,
            decay: true,
        }
    }
}

/// One layer: forward caches what backward needs (in `Mode::Train`), backward accumulates
/// parameter gradients and returns the input gradient.
pub trait Layer: Send {
    /// Computes the output. In `Mode::Train` it also caches the state backward needs.
    fn forward(&mut self, x: &Tensor, mode: Mode) -> Tensor;
    /// Given dL/dy for the last training forward, adds dL/dparam into each `Param::grad` and
    /// returns dL/dx.
    fn backward(&mut self, dy: &Tensor) -> Tensor;
    /// Visits every learnable parameter.
    fn visit_params(&mut self, _f: &mut dyn FnMut(&mut Param)) {}
    /// Visits every non-learnable state tensor (BN running statistics), by stable name.
    fn visit_buffers(&mut self, _f: &mut dyn FnMut(&str, &mut Tensor)) {}
}

/// A feature extractor from images `[N, C, H, W]` to embeddings `[N, emb_dim]`.
///
/// User-defined models implement this trait; the trainer sees nothing else of the model.
pub trait Backbone: Send {
    /// Embeddings for a batch. In `Mode::Train` it caches what backward needs.
    fn forward(&mut self, x: &Tensor, mode: Mode) -> Tensor;
    /// Given dL/d(embedding), accumulates every parameter's gradient.
    fn backward(&mut self, d_emb: &Tensor);
    fn emb_dim(&self) -> usize;
    /// The expected input `[C, H, W]` of one image.
    fn input_shape(&self) -> [usize; 3];
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param));
    fn visit_buffers(&mut self, f: &mut dyn FnMut(&str, &mut Tensor));

    /// Tells the model the global step about to run, so that its randomness (dropout) is a
    /// function of (seed, step) and a resumed run draws the same masks.
    fn set_step(&mut self, _step: u64) {}

    /// Zeroes every parameter gradient.
    fn zero_grad(&mut self) {
        self.visit_params(&mut |p| p.grad.fill_zero());
    }
    /// Number of learnable scalars.
    fn num_params(&mut self) -> usize {
        let mut n = 0;
        self.visit_params(&mut |p| n += p.value.numel());
        n
    }
}
