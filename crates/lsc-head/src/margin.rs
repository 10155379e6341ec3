//! The margin applied to the target logit, and the head's configuration.
//!
//! With θ = acos(cos), the target logit is `s·φ(cos)`, every other logit `s·cos`:
//! - ArcFace (m2): φ = cos(θ + m2);
//! - CosFace (m3): φ = cos − m3;
//! - combined (m1, m2, m3): φ = cos(m1·θ + m2) − m3.
//!
//! Where `m1·θ + m2 > π`, cos(·) stops decreasing in θ; there φ falls back to
//! `cos − m3 − m2·sin(m2)` (insightface's `cos − m·sin(π − m)` for ArcFace). With easy margin
//! the margin applies only where cos > 0.
//!
//! The derivative: dφ/dcos = m1·sin(m1·θ + m2) / sin θ, which grows without bound as
//! sin θ → 0 (|cos| → 1). It is computed with sin θ clamped below at `sin_eps` (default 1e-3,
//! i.e. θ within 0.06° of 0 or π), so the gradient stays finite at |cos| = 1. With
//! `straight_through` the margin is treated as a constant shift (insightface computes it under
//! no_grad): dφ/dcos = 1.

use serde::{Deserialize, Serialize};

/// Which loss the head computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LossKind {
    /// Plain softmax on raw embeddings and weights plus a bias, as PLSC's dist_softmax.
    Softmax,
    ArcFace,
    CosFace,
    /// The combined margin (m1, m2, m3).
    Combined,
}

/// The `[head]` table of a config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadConfig {
    pub loss: LossKind,
    /// Logit scale s (unused by softmax).
    #[serde(default = "default_scale")]
    pub scale: f32,
    /// The margin: m2 for ArcFace, m3 for CosFace.
    #[serde(default = "default_margin")]
    pub margin: f32,
    /// The combined margin's (m1, m2, m3).
    #[serde(default = "default_combined")]
    pub combined: [f32; 3],
    #[serde(default)]
    pub easy_margin: bool,
    #[serde(default)]
    pub straight_through: bool,
    #[serde(default = "default_sin_eps")]
    pub sin_eps: f32,
    /// Softmax only: learn a per-class bias.
    #[serde(default = "default_true")]
    pub bias: bool,
    /// Std of the Normal init of the class weights.
    #[serde(default = "default_init_std")]
    pub init_std: f32,
    /// Storage of the class weights and their momentum: f32 or bf16 (stochastic rounding).
    #[serde(default)]
    pub dtype: crate::DType,
    /// Partial FC: the fraction of each shard's classes computed per step (positives always).
    #[serde(default = "default_sample_rate")]
    pub sample_rate: f32,
    /// Classes per tile of the fused kernel.
    #[serde(default = "default_tile")]
    pub tile: usize,
}

fn default_sample_rate() -> f32 {
    1.0
}
fn default_tile() -> usize {
    256
}

fn default_scale() -> f32 {
    64.0
}
fn default_margin() -> f32 {
    0.5
}
fn default_combined() -> [f32; 3] {
    [1.0, 0.3, 0.2]
}
fn default_sin_eps() -> f32 {
    1e-3
}
fn default_true() -> bool {
    true
}
fn default_init_std() -> f32 {
    0.01
}

impl HeadConfig {
    /// A config of `loss` with every other field at its default.
    pub fn new(loss: LossKind) -> HeadConfig {
        HeadConfig {
            loss,
            scale: default_scale(),
            margin: default_margin(),
            combined: default_combined(),
            easy_margin: false,
            straight_through: false,
            sin_eps: default_sin_eps(),
            bias: true,
            init_std: default_init_std(),
            dtype: crate::DType::F32,
            sample_rate: default_sample_rate(),
            tile: default_tile(),
        }
    }

    /// The margin this config applies (None for softmax).
    pub fn margin(&self) -> Option<Margin> {
        let (m1, m2, m3) = match self.loss {
            LossKind::Softmax => return None,
            LossKind::ArcFace => (1.0, self.margin, 0.0),
            LossKind::CosFace => (1.0, 0.0, self.margin),
            LossKind::Combined => (self.combined[0], self.combined[1], self.combined[2]),
        };
        Some(Margin {
            m1,
            m2,
            m3,
            easy: self.easy_margin,
            straight_through: self.straight_through,
            sin_eps: self.sin_eps,
        })
    }

    /// Checks the values, naming the offending field.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.scale > 0.0 && self.scale.is_finite()) {
            return Err(format!("head.scale: {} must be positive", self.scale));
        }
        // Past these bounds the margin stops being a margin: cos(θ + m) for m > π/2 inverts
        // the ranking, and cos − m for m > 1 pushes every target below every other class.
        let max_margin = match self.loss {
            LossKind::CosFace => 1.0,
            _ => std::f32::consts::FRAC_PI_2,
        };
        if !(self.margin >= 0.0 && self.margin <= max_margin) {
            return Err(format!(
                "head.margin: {} outside [0, {max_margin:.4}] for {:?}",
                self.margin, self.loss
            ));
        }
        let [m1, m2, m3] = self.combined;
        if !(m1 > 0.0 && m1 <= 2.0 && (0.0..=std::f32::consts::FRAC_PI_2).contains(&m2) && (0.0..=1.0).contains(&m3)) {
            return Err(format!(
                "head.combined: {:?} needs m1 in (0, 2], m2 in [0, π/2] and m3 in [0, 1]",
                self.combined
            ));
        }
        if !(self.sin_eps > 0.0 && self.sin_eps < 1.0) {
            return Err(format!("head.sin_eps: {} outside (0, 1)", self.sin_eps));
        }
        if !(self.sample_rate > 0.0 && self.sample_rate <= 1.0) {
            return Err(format!("head.sample_rate: {} outside (0, 1]", self.sample_rate));
        }
        if self.tile == 0 {
            return Err("head.tile must be positive".into());
        }
        if !(self.init_std > 0.0) {
            return Err(format!("head.init_std: {} must be positive", self.init_std));
        }
        Ok(())
    }
}

/// The target-logit margin φ and its derivative.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Margin {
    pub m1: f32,
    pub m2: f32,
    pub m3: f32,
    pub easy: bool,
    pub straight_through: bool,
    pub sin_eps: f32,
}

impl Margin {
    /// φ(cos) and dφ/dcos, in f64, for a cosine clamped to [−1, 1].
    pub fn apply(&self, cos: f32) -> (f64, f64) {
        let c = (cos as f64).clamp(-1.0, 1.0);
        let (m1, m2, m3) = (self.m1 as f64, self.m2 as f64, self.m3 as f64);
        if self.easy && c <= 0.0 {
            return (c, 1.0);
        }
        let sin = (1.0 - c * c).max(0.0).sqrt();
        let (phi, d) = if m1 == 1.0 && m2 == 0.0 {
            (c - m3, 1.0)
        } else {
            let theta = c.acos();
            let u = m1 * theta + m2;
            if u <= std::f64::consts::PI {
                let d = m1 * u.sin() / sin.max(self.sin_eps as f64);
                let v = if m1 == 1.0 {
                    // cos(θ + m2) without the acos round trip.
                    c * m2.cos() - sin * m2.sin()
                } else {
                    u.cos()
                };
                (v - m3, d)
            } else {
                (c - m3 - m2 * m2.sin(), 1.0)
            }
        };
        (phi, if self.straight_through { 1.0 } else { d })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arc(m: f32) -> Margin {
        HeadConfig {
            margin: m,
            ..HeadConfig::new(LossKind::ArcFace)
        }
        .margin()
        .unwrap()
    }

    #[test]
    fn derivative_matches_finite_differences_away_from_the_edges() {
        let cfgs = [
            arc(0.5),
            HeadConfig::new(LossKind::CosFace).margin().unwrap(),
            HeadConfig::new(LossKind::Combined).margin().unwrap(),
            Margin {
                m1: 0.9,
                m2: 0.4,
                m3: 0.15,
                easy: false,
                straight_through: false,
                sin_eps: 1e-3,
            },
            Margin { easy: true, ..arc(0.5) },
        ];
        for m in cfgs {
            for i in 0..=40 {
                let c = -0.95 + 1.9 * i as f64 / 40.0;
                // Stay away from the kinks: the fallback boundary and easy margin's 0.
                let theta = c.acos();
                let u = m.m1 as f64 * theta + m.m2 as f64;
                if (u - std::f64::consts::PI).abs() < 0.05 || (m.easy && c.abs() < 0.02) {
                    continue;
                }
                let h = 1e-4;
                let num = (m.apply((c + h) as f32).0 - m.apply((c - h) as f32).0) / (2.0 * h);
                let ana = m.apply(c as f32).1;
                assert!(
                    (num - ana).abs() < 2e-3 * (1.0 + ana.abs()),
                    "{m:?} at cos {c}: {ana} vs {num}"
                );
            }
        }
    }

    #[test]
    fn arcface_values_and_fallback() {
        let m = arc(0.5);
        let (v, _) = m.apply(0.6);
        let want = (0.6f64.acos() + 0.5).cos();
        assert!((v - want).abs() < 1e-6);
        // θ + m > π: cos(θ+m) would increase again; insightface's fallback applies.
        let (v, d) = m.apply(-0.95);
        assert!((v - (-0.95 - 0.5 * 0.5f64.sin())).abs() < 1e-6 && d == 1.0);
    }

    #[test]
    fn finite_at_the_poles() {
        for m in [arc(0.5), HeadConfig::new(LossKind::Combined).margin().unwrap()] {
            for c in [1.0f32, -1.0, 1.0 + 1e-7, -1.0 - 1e-7, 0.999_999_9] {
                let (v, d) = m.apply(c);
                assert!(v.is_finite() && d.is_finite(), "{m:?} at {c}: {v} {d}");
                assert!(d.abs() <= 1.0 / m.sin_eps as f64 + 1.0);
            }
        }
    }

    #[test]
    fn straight_through_has_unit_derivative() {
        let m = Margin {
            straight_through: true,
            ..arc(0.5)
        };
        assert_eq!(m.apply(0.3).1, 1.0);
        assert_eq!(m.apply(0.3).0, arc(0.5).apply(0.3).0);
    }
}
