//! Finite-difference gradient checks for layers and for any scalar function.
//!
//! The loss is `L = Σ g ⊙ f(x)` with a fixed random `g`, evaluated in f64 from the layer's f32
//! output; each checked coordinate is compared with the central difference
//! `(L(x + ε) − L(x − ε)) / 2ε` within `atol + rtol·max(|analytic|, |numeric|)`.

use crate::{Backbone, Layer, Mode, Param};
use lsc_tensor::{Rng, Tensor};

/// Step, tolerances, how many coordinates of each tensor to check, and the seed.
#[derive(Clone, Debug)]
pub struct CheckOptions {
    pub eps: f32,
    pub atol: f64,
    pub rtol: f64,
    pub max_checks: usize,
    pub seed: u64,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            eps: 1e-2,
            atol: 2e-3,
            rtol: 1e-2,
            max_checks: 60,
            seed: 0,
        }
    }
}

/// Coordinates to check: all of them when few, else a seeded random subset.
fn pick(n: usize, max: usize, rng: &mut Rng) -> Vec<usize> {
    if n <= max {
        return (0..n).collect();
    }
    (0..max).map(|_| rng.below(n as u64) as usize).collect()
}

/// Compares `analytic` with central differences of `loss` around `x`, which `loss` may read
/// through the slice it is given. `what` names the tensor in the error.
pub fn check_grad(
    what: &str,
    x: &mut [f32],
    analytic: &[f32],
    loss: &mut dyn FnMut(&[f32]) -> f64,
    opts: &CheckOptions,
    rng: &mut Rng,
) -> Result<(), String> {
    assert_eq!(x.len(), analytic.len(), "{what}: gradient length");
    let mut worst = String::new();
    let mut bad = 0;
    for i in pick(x.len(), opts.max_checks, rng) {
        let orig = x[i];
        x[i] = orig + opts.eps;
        let lp = loss(x);
        x[i] = orig - opts.eps;
        let lm = loss(x);
        x[i] = orig;
        let num = (lp - lm) / (2.0 * opts.eps as f64);
        let ana = analytic[i] as f64;
        let tol = opts.atol + opts.rtol * ana.abs().max(num.abs());
        if !((ana - num).abs() <= tol) {
            bad += 1;
            if worst.is_empty() {
                worst = format!("{what}[{i}]: analytic {ana:.6} vs numeric {num:.6}");
            }
        }
    }
    if bad > 0 {
        return Err(format!("{bad} coordinate(s) off, first: {worst}"));
    }
    Ok(())
}

/// Checks a layer's input and parameter gradients against finite differences in train mode.
pub fn check_layer(layer: &mut dyn Layer, x: &Tensor, opts: &CheckOptions) -> Result<(), String> {
    let mut rng = Rng::new(opts.seed ^ 0x5eed);
    layer.visit_params(&mut |p| p.grad.fill_zero());
    let y = layer.forward(x, Mode::Train);
    let g = Tensor::randn(y.shape(), 1.0, &mut rng);
    let dx = layer.backward(&g);
    let mut grads = Vec::new();
    layer.visit_params(&mut |p| grads.push((p.name.clone(), p.grad.data().to_vec())));

    let dot = |y: &Tensor| -> f64 { y.data().iter().zip(g.data()).map(|(a, b)| *a as f64 * *b as f64).sum() };

    if dx.numel() > 0 {
        let mut xv = x.data().to_vec();
        let shape = x.shape().to_vec();
        check_grad(
            "input",
            &mut xv,
            dx.data(),
            &mut |xs| {
                let t = Tensor::from_vec(&shape, xs.to_vec()).unwrap();
                dot(&layer.forward(&t, Mode::Train))
            },
            opts,
            &mut rng,
        )?;
    }
    for (k, (name, grad)) in grads.iter().enumerate() {
        let mut value = Vec::new();
        let mut idx = 0;
        layer.visit_params(&mut |p| {
            if idx == k {
                value = p.value.data().to_vec();
            }
            idx += 1;
        });
        check_grad(
            name,
            &mut value,
            grad,
            &mut |vs| {
                let mut idx = 0;
                layer.visit_params(&mut |p| {
                    if idx == k {
                        p.value.data_mut().copy_from_slice(vs);
                    }
                    idx += 1;
                });
                dot(&layer.forward(x, Mode::Train))
            },
            opts,
            &mut rng,
        )?;
        // Restore the original value (check_grad restores the slice, copy it back in).
        let mut idx = 0;
        layer.visit_params(&mut |p| {
            if idx == k {
                p.value.data_mut().copy_from_slice(&value);
            }
            idx += 1;
        });
    }
    Ok(())
}

/// A [`Backbone`] seen as a [`Layer`] with no input gradient, for [`check_layer`].
struct AsLayer<'a>(&'a mut dyn Backbone);

impl Layer for AsLayer<'_> {
    fn forward(&mut self, x: &Tensor, mode: Mode) -> Tensor {
        self.0.forward(x, mode)
    }
    fn backward(&mut self, dy: &Tensor) -> Tensor {
        self.0.backward(dy);
        Tensor::default()
    }
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
        self.0.visit_params(f)
    }
}

/// Checks every parameter gradient of a backbone (user-defined ones included) against finite
/// differences in train mode. A backbone with randomness (dropout) must make its training
/// forwards repeatable for the check, e.g. by calling `set_step` with a fixed step inside
/// `forward`, or by freezing its masks.
pub fn check_backbone(net: &mut dyn Backbone, x: &Tensor, opts: &CheckOptions) -> Result<(), String> {
    check_layer(&mut AsLayer(net), x, opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catches_a_wrong_gradient() {
        let mut x = vec![0.3f32, -0.7, 1.1];
        let wrong = vec![2.0 * 0.3, 2.0 * -0.7, 0.0]; // d(x²)/dx is 2x; the last one is wrong
        let mut f = |v: &[f32]| v.iter().map(|&a| (a as f64).powi(2)).sum::<f64>();
        let err = check_grad("x", &mut x, &wrong, &mut f, &CheckOptions::default(), &mut Rng::new(0)).unwrap_err();
        assert!(err.contains("x[2]"), "{err}");
        let right = vec![0.6f32, -1.4, 2.2];
        check_grad("x", &mut x, &right, &mut f, &CheckOptions::default(), &mut Rng::new(0)).unwrap();
    }
}
