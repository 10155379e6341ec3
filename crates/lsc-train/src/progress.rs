//! The live progress line (on stderr) and the final machine-readable summary (on stdout).

use std::io::{IsTerminal, Write};
use std::time::Instant;

/// Rank 0's progress reporter.
pub struct Progress {
    tty: bool,
    every: usize,
    quiet: bool,
}

/// One step's figures for the progress line.
pub struct StepInfo {
    pub epoch: usize,
    pub epochs: usize,
    pub step: usize,
    pub steps: usize,
    pub loss: f32,
    pub lr: f32,
    pub images_per_s: f64,
    pub data_wait_frac: f64,
    pub eta_s: f64,
}

fn hms(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m{:02}s", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

impl Progress {
    /// Live `\r` updates on a terminal, else a line every `every` steps; `quiet` prints nothing.
    pub fn new(every: usize, quiet: bool) -> Progress {
        Progress {
            tty: std::io::stderr().is_terminal(),
            every: every.max(1),
            quiet,
        }
    }

    pub fn step(&mut self, s: &StepInfo) {
        if self.quiet || !(self.tty || s.step.is_multiple_of(self.every) || s.step == s.steps) {
            return;
        }
        let line = format!(
            "epoch {}/{} step {}/{} loss {} lr {:.5} {:.0} img/s data-wait {:.0}% ETA {}",
            s.epoch,
            s.epochs,
            s.step,
            s.steps,
            if s.loss.is_finite() {
                format!("{:.4}", s.loss)
            } else {
                "- (skipped)".into()
            },
            s.lr,
            s.images_per_s,
            100.0 * s.data_wait_frac,
            hms(s.eta_s)
        );
        let mut e = std::io::stderr().lock();
        if self.tty {
            let _ = write!(e, "\r\x1b[2K{line}");
        } else {
            let _ = writeln!(e, "{line}");
        }
        let _ = e.flush();
    }

    /// A line that must stay (epoch results): ends any live line first.
    pub fn line(&mut self, text: &str) {
        if self.quiet {
            return;
        }
        let mut e = std::io::stderr().lock();
        if self.tty {
            let _ = write!(e, "\r\x1b[2K");
        }
        let _ = writeln!(e, "{text}");
    }
}

/// What a training run did: printed as one JSON line at the end.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub epochs: usize,
    pub steps: usize,
    pub ranks: usize,
    pub loss: String,
    /// Mean training loss of the first and of the last epoch.
    pub first_epoch_loss: f32,
    pub final_loss: f32,
    /// Per-epoch mean losses.
    pub epoch_losses: Vec<f32>,
    pub test_top1: Option<f32>,
    /// Global training images per second (evaluation excluded).
    pub images_per_s: f64,
    pub wall_s: f64,
    /// Seconds the model waited for the loader.
    pub data_wait_s: f64,
    /// Steps skipped because a non-finite value appeared.
    pub skipped_steps: usize,
}

fn num(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.6}")
    } else {
        "null".into()
    }
}

impl Summary {
    /// One JSON object on one line.
    pub fn to_json(&self) -> String {
        let losses: Vec<String> = self.epoch_losses.iter().map(|&v| num(v as f64)).collect();
        format!(
            "{{\"epochs\":{},\"steps\":{},\"ranks\":{},\"loss\":\"{}\",\"first_epoch_loss\":{},\"final_loss\":{},\"epoch_losses\":[{}],\"test_top1\":{},\"images_per_s\":{:.1},\"wall_s\":{:.2},\"data_wait_s\":{:.2},\"skipped_steps\":{}}}",
            self.epochs,
            self.steps,
            self.ranks,
            self.loss,
            num(self.first_epoch_loss as f64),
            num(self.final_loss as f64),
            losses.join(","),
            self.test_top1.map_or("null".into(), |v| num(v as f64)),
            self.images_per_s,
            self.wall_s,
            self.data_wait_s,
            self.skipped_steps
        )
    }
}

/// A stopwatch that accumulates.
#[derive(Default)]
pub(crate) struct Clock {
    total: f64,
}

impl Clock {
    pub(crate) fn time<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let r = f();
        self.total += t.elapsed().as_secs_f64();
        r
    }
    pub(crate) fn secs(&self) -> f64 {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_line_has_the_required_keys() {
        let s = Summary {
            epochs: 2,
            steps: 10,
            ranks: 1,
            loss: "arcface".into(),
            first_epoch_loss: 3.0,
            final_loss: 1.5,
            epoch_losses: vec![3.0, 1.5],
            test_top1: Some(0.9),
            images_per_s: 123.4,
            wall_s: 5.0,
            data_wait_s: 0.1,
            skipped_steps: 0,
        };
        let j = s.to_json();
        for k in [
            "\"epochs\":2",
            "\"final_loss\":1.5",
            "\"test_top1\":0.9",
            "\"images_per_s\":123.4",
            "\"wall_s\":5.00",
        ] {
            assert!(j.contains(k), "{j}");
        }
        assert!(!j.contains('\n'));
        assert!(
            Summary {
                test_top1: None,
                final_loss: f32::NAN,
                ..s
            }
            .to_json()
            .contains("\"final_loss\":null")
        );
    }
}
