//! Reusing tensor buffers from step to step.

use lsc_tensor::Tensor;

/// Gives `t` the shape `shape`, keeping its allocation. Contents are unspecified (zero when
/// the length changed, the old values otherwise): for outputs that are overwritten whole.
pub(crate) fn reshape(t: &mut Tensor, shape: &[usize]) {
    let n: usize = shape.iter().product();
    if t.numel() == n {
        if t.shape() != shape {
            *t = std::mem::take(t).reshape(shape).expect("same element count");
        }
    } else {
        t.resize_zeroed(shape);
    }
}
