//! Resuming on a different number of ranks: the head's class shards are re-partitioned on load
//! (or offline by `checkpoint::reshard`), and the continued run matches the same-rank
//! continuation within fp tolerance.
//!
//! The backbone here has no batch norm (a linear map of the pixels), so nothing in the model
//! depends on how the global batch is split over ranks: the only differences between rank
//! counts are the order of floating-point sums.

use lsc_nn::{Backbone, Layer, Linear, Mode, Param};
use lsc_tensor::{Rng, Tensor};
use lsc_train::{Config, checkpoint, train_with};
use std::path::{Path, PathBuf};

/// Pixels → embedding, one linear layer.
struct Flat {
    fc: Linear,
    input: [usize; 3],
    dim: usize,
}

impl Flat {
    fn make(cfg: &Config) -> Result<Box<dyn Backbone>, String> {
        let [h, w] = cfg.model.input_size;
        let mut rng = Rng::stream(cfg.seed, 7);
        Ok(Box::new(Flat {
            fc: Linear::new("fc", 3 * h * w, cfg.model.emb_dim, &mut rng),
            input: [3, h, w],
            dim: cfg.model.emb_dim,
        }))
    }
}

impl Backbone for Flat {
    fn forward(&mut self, x: &Tensor, mode: Mode) -> Tensor {
        let n = x.dim(0);
        let flat = x.clone().reshape(&[n, x.numel() / n.max(1)]).unwrap();
        self.fc.forward(&flat, mode)
    }
    fn backward(&mut self, d_emb: &Tensor) {
        self.fc.backward(d_emb);
    }
    fn emb_dim(&self) -> usize {
        self.dim
    }
    fn input_shape(&self) -> [usize; 3] {
        self.input
    }
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
        self.fc.visit_params(f)
    }
    fn visit_buffers(&mut self, _f: &mut dyn FnMut(&str, &mut Tensor)) {}
}

/// 384 records, a global batch of 24 (16 steps an epoch), 2 epochs.
fn config(ranks: usize, root: &Path) -> Config {
    let mut c = Config::defaults();
    let d = lsc_tests::mini_dataset();
    c.data.train = d.join("train");
    c.data.test = PathBuf::new();
    c.data.limit = 384;
    c.data.batch_size = 24 / ranks;
    c.train.ranks = ranks;
    c.train.epochs = 2;
    c.train.checkpoint_dir = root.to_path_buf();
    c.optim.lr = 0.05;
    c.optim.warmup_epochs = 0.0;
    c.optim.decay_epochs = vec![];
    c.model.emb_dim = 16;
    c
}

/// The whole head (weights and momentum, `[C, D]` each) of a checkpoint, whatever its shards.
fn full_head(dir: &Path) -> (Vec<f32>, Vec<f32>) {
    let (dir, m) = lsc_ckpt::load_manifest(dir, true).unwrap();
    let (mut w, mut mo) = (Vec::new(), Vec::new());
    for s in &m.shards {
        let f = lsc_ckpt::TensorFile::open(&dir.join(&s.file)).unwrap();
        let n = (s.class_end - s.class_start) as usize;
        for (name, out) in [("head.weight", &mut w), ("head.weight.momentum", &mut mo)] {
            let mut v = vec![0.0; n * m.emb_dim as usize];
            f.rows_f32(name, 0..n, &mut v).unwrap();
            out.extend(v);
        }
    }
    (w, mo)
}

fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-12);
    a.iter().zip(b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn resuming_on_another_rank_count_matches_the_same_rank_continuation() {
    let tmp = std::env::temp_dir().join(format!("lsc-reshard-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    // (ranks that saved, ranks that continue): fewer, more, and an uneven 10-class split.
    for (from, to) in [(3usize, 2usize), (1, 4), (4, 3)] {
        let saved = tmp.join(format!("saved-{from}"));
        if !saved.exists() {
            let mut c = config(from, &saved);
            c.train.max_steps = 6; // mid-epoch
            assert_eq!(train_with(&c, true, &Flat::make).unwrap().steps, 6);
        }
        let cont = |ranks: usize, name: &str| {
            let root = tmp.join(format!("{name}-{from}-to-{ranks}"));
            let mut c = config(ranks, &root);
            c.train.resume = saved.clone();
            let s = train_with(&c, true, &Flat::make).unwrap();
            (s, root)
        };
        let (same, same_root) = cont(from, "same");
        let (other, other_root) = cont(to, "other");
        assert_eq!((same.steps, other.steps), (32, 32));
        for (a, b) in same.epoch_losses.iter().zip(&other.epoch_losses) {
            assert!(
                (a - b).abs() <= 1e-4 * a.abs(),
                "{from}→{to}: losses {:?} vs {:?}",
                same.epoch_losses,
                other.epoch_losses
            );
        }
        let (wa, ma) = full_head(&same_root);
        let (wb, mb) = full_head(&other_root);
        let (dw, dm) = (max_rel_diff(&wa, &wb), max_rel_diff(&ma, &mb));
        println!(
            "{from}→{to} ranks: final losses {:?} / {:?}; head weights max rel diff {dw:.2e}, momentum {dm:.2e}",
            same.epoch_losses, other.epoch_losses
        );
        assert!(
            dw < 1e-4 && dm < 1e-3,
            "{from}→{to}: weights differ by {dw}, momentum by {dm}"
        );
    }
    // Offline re-partition gives exactly what resuming re-partitions on load.
    let saved = tmp.join("saved-3");
    let offline = tmp.join("offline-2");
    let dir = checkpoint::reshard(&saved, 2, &offline).unwrap();
    let (_, m) = lsc_ckpt::load_manifest(&dir, true).unwrap();
    assert_eq!((m.world_size, m.shards.len(), m.step), (2, 2, 6));
    assert_eq!(full_head(&dir), full_head(&saved));
    let mut c = config(2, &tmp.join("from-offline"));
    c.train.resume = dir.clone();
    let a = train_with(&c, true, &Flat::make).unwrap();
    let (w1, _) = full_head(&tmp.join("from-offline"));
    let (w2, _) = full_head(&tmp.join("other-3-to-2"));
    assert_eq!(
        w1, w2,
        "resuming from the offline re-partition differs from re-partitioning on load"
    );
    assert_eq!(a.steps, 32);
    // Mid-epoch, a different global batch is refused (the position counts global batches).
    let mut c = config(2, &tmp.join("other-batch"));
    c.data.batch_size = 8;
    c.train.resume = saved.clone();
    let e = train_with(&c, true, &Flat::make).unwrap_err().to_string();
    assert!(
        e.contains("same global batch") && e.contains("24") && e.contains("16"),
        "{e}"
    );
    // A position past the end of this run's epochs (fewer records) is refused.
    let mut c = config(3, &tmp.join("fewer-records"));
    c.data.limit = 96;
    c.train.resume = saved.clone();
    let e = train_with(&c, true, &Flat::make).unwrap_err().to_string();
    assert!(e.contains("6 steps into epoch 1") && e.contains("only 4 steps"), "{e}");
    // Refusals: an existing output, zero ranks.
    let e = checkpoint::reshard(&saved, 2, &offline).unwrap_err().to_string();
    assert!(e.contains("already exists"), "{e}");
    let e = checkpoint::reshard(&saved, 0, &tmp.join("zero"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("at least 1"), "{e}");
    std::fs::remove_dir_all(&tmp).unwrap();
}
