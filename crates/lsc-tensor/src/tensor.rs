//! The dense f32 tensor: a shape and a contiguous row-major buffer.

use crate::rng::Rng;

/// Errors from building or reshaping tensors. Each names the operation and both shapes.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TensorError {
    #[error("{op}: shape {shape:?} needs {expected} elements, got {got}")]
    Len {
        op: &'static str,
        shape: Vec<usize>,
        expected: usize,
        got: usize,
    },
    #[error("{op}: expected shape {expected:?}, got {got:?}")]
    Shape {
        op: &'static str,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
}

/// A dense f32 tensor in row-major order (NCHW for images).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl Tensor {
    /// A tensor of zeros.
    pub fn zeros(shape: &[usize]) -> Tensor {
        Tensor {
            shape: shape.to_vec(),
            data: vec![0.0; shape.iter().product()],
        }
    }

    /// A tensor filled with `v`.
    pub fn full(shape: &[usize], v: f32) -> Tensor {
        Tensor {
            shape: shape.to_vec(),
            data: vec![v; shape.iter().product()],
        }
    }

    /// Wraps `data`, checking that its length matches `shape`.
    pub fn from_vec(shape: &[usize], data: Vec<f32>) -> Result<Tensor, TensorError> {
        let expected: usize = shape.iter().product();
        if expected != data.len() {
            return Err(TensorError::Len {
                op: "Tensor::from_vec",
                shape: shape.to_vec(),
                expected,
                got: data.len(),
            });
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            data,
        })
    }

    /// Normal(0, std) entries from `rng`.
    pub fn randn(shape: &[usize], std: f32, rng: &mut Rng) -> Tensor {
        let mut t = Tensor::zeros(shape);
        for v in &mut t.data {
            *v = rng.normal() * std;
        }
        t
    }

    /// Uniform[lo, hi) entries from `rng`.
    pub fn uniform(shape: &[usize], lo: f32, hi: f32, rng: &mut Rng) -> Tensor {
        let mut t = Tensor::zeros(shape);
        for v in &mut t.data {
            *v = lo + (hi - lo) * rng.uniform();
        }
        t
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Size of dimension `i`.
    pub fn dim(&self, i: usize) -> usize {
        self.shape[i]
    }

    pub fn numel(&self) -> usize {
        self.data.len()
    }

    pub fn data(&self) -> &[f32] {
        &self.data
    }

    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    pub fn into_vec(self) -> Vec<f32> {
        self.data
    }

    /// Reinterprets the buffer with a new shape of the same element count.
    pub fn reshape(mut self, shape: &[usize]) -> Result<Tensor, TensorError> {
        let expected: usize = shape.iter().product();
        if expected != self.data.len() {
            return Err(TensorError::Len {
                op: "Tensor::reshape",
                shape: shape.to_vec(),
                expected,
                got: self.data.len(),
            });
        }
        self.shape = shape.to_vec();
        Ok(self)
    }

    /// Checks that the shape is exactly `expected`.
    pub fn expect_shape(&self, op: &'static str, expected: &[usize]) -> Result<(), TensorError> {
        if self.shape != expected {
            return Err(TensorError::Shape {
                op,
                expected: expected.to_vec(),
                got: self.shape.clone(),
            });
        }
        Ok(())
    }

    /// Resizes in place to `shape`, reusing the allocation; contents are zeroed.
    pub fn resize_zeroed(&mut self, shape: &[usize]) {
        let n: usize = shape.iter().product();
        self.shape.clear();
        self.shape.extend_from_slice(shape);
        self.data.clear();
        self.data.resize(n, 0.0);
    }

    /// Sets every element to zero.
    pub fn fill_zero(&mut self) {
        self.data.fill(0.0);
    }

    /// True when every element is finite.
    pub fn all_finite(&self) -> bool {
        self.data.iter().all(|v| v.is_finite())
    }

    /// Sum of squares, accumulated in f64.
    pub fn sum_sq(&self) -> f64 {
        self.data.iter().map(|&v| (v as f64) * (v as f64)).sum()
    }

    /// `self += other` elementwise.
    pub fn add_assign(&mut self, other: &Tensor) -> Result<(), TensorError> {
        other.expect_shape("Tensor::add_assign", &self.shape)?;
        for (a, b) in self.data.iter_mut().zip(&other.data) {
            *a += b;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_vec_checks_length() {
        let err = Tensor::from_vec(&[2, 3], vec![0.0; 5]).unwrap_err();
        assert!(err.to_string().contains("[2, 3] needs 6 elements, got 5"), "{err}");
        let t = Tensor::from_vec(&[2, 3], vec![1.0; 6]).unwrap();
        assert_eq!(t.numel(), 6);
        assert!(t.clone().reshape(&[3, 3]).is_err());
        assert_eq!(t.reshape(&[6]).unwrap().shape(), &[6]);
    }

    #[test]
    fn add_assign_rejects_mismatch() {
        let mut a = Tensor::zeros(&[2]);
        assert!(a.add_assign(&Tensor::zeros(&[3])).is_err());
        a.add_assign(&Tensor::full(&[2], 1.5)).unwrap();
        assert_eq!(a.data(), &[1.5, 1.5]);
    }
}
