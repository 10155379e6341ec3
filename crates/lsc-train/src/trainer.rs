//! The training loop of one rank, the thread launcher, and evaluation.

use crate::checkpoint::{self, Position};
use crate::config::{Config, ConfigError};
use crate::progress::{Clock, Progress, StepInfo, Summary};
use lsc_comm::{CommError, Communicator, LocalComm, ReduceOp, ThreadComm};
use lsc_data::{
    Base64Shards, DataError, Dataset, ImageList, LoaderOptions, Record, RecordIo, Sampler, epoch_loader_with,
};
use lsc_head::{HeadError, MarginSoftmax, Update};
use lsc_nn::{Backbone, IResNet, Mode, profile};
use lsc_optim::Sgd;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// Most ranks one process may run as threads.
pub const MAX_THREAD_RANKS: usize = 256;

/// A failed run. Each message is complete on its own: it names the file and line, the rank,
/// the collective or the config key (no error wraps another as its `source`).
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Model(String),
    #[error("data.{role} {path}: {err}")]
    Open {
        role: &'static str,
        path: String,
        err: String,
    },
    #[error("{0}")]
    Data(#[from] DataError),
    #[error("{err} (record {location})")]
    Label { location: String, err: HeadError },
    #[error("{0}")]
    Head(#[from] HeadError),
    #[error("{0}")]
    Comm(#[from] CommError),
    #[error("{0}")]
    Other(String),
}

impl TrainError {
    /// True for a collective that failed because another rank left or failed first.
    fn is_consequence(&self) -> bool {
        matches!(
            self,
            TrainError::Comm(CommError::Aborted { .. } | CommError::Timeout { .. })
                | TrainError::Head(HeadError::Comm(CommError::Aborted { .. } | CommError::Timeout { .. }))
        )
    }
}

/// The first `n` records of a dataset.
struct Limited {
    inner: Arc<dyn Dataset>,
    n: usize,
}

impl Dataset for Limited {
    fn len(&self) -> usize {
        self.n.min(self.inner.len())
    }
    fn record(&self, i: usize) -> Result<Record, DataError> {
        self.inner.record(i)
    }
    fn locate(&self, i: usize) -> String {
        self.inner.locate(i)
    }
}

/// Opens a data set by its shape on disk: a `.rec` file (insightface RecordIO with its
/// `.idx`), a `label.txt` (or a directory holding one: PLSC's image-folder list), otherwise
/// PLSC base64 shards (a `file_list.txt`, its directory, or one shard). Labels are checked
/// against `num_classes` up front where the format lists them.
fn open(role: &'static str, path: &Path, num_classes: usize) -> Result<Arc<dyn Dataset>, TrainError> {
    let fail = |err: String| TrainError::Open {
        role,
        path: path.display().to_string(),
        err,
    };
    if !path.exists() && path.is_relative() {
        let cwd = std::env::current_dir()
            .map(|d| d.display().to_string())
            .unwrap_or_default();
        return Err(fail(format!(
            "not found (relative paths are taken from the current directory, {cwd}; pass --data DIR or run from the repository root)"
        )));
    }
    let (ds, labels): (Arc<dyn Dataset>, Option<Vec<u32>>) = if path.extension().is_some_and(|e| e == "rec") {
        (Arc::new(RecordIo::open(path).map_err(|e| fail(e.to_string()))?), None)
    } else if path.file_name().is_some_and(|n| n == lsc_data::LABEL_TXT) || path.join(lsc_data::LABEL_TXT).is_file() {
        let l = ImageList::open(path).map_err(|e| fail(e.to_string()))?;
        let labels = l.labels().to_vec();
        (Arc::new(l), Some(labels))
    } else {
        let b = Base64Shards::open(path).map_err(|e| fail(e.to_string()))?;
        let labels = b.labels().to_vec();
        (Arc::new(b), Some(labels))
    };
    if ds.is_empty() {
        return Err(fail("holds no records".into()));
    }
    if let Some(i) = labels
        .as_ref()
        .and_then(|l| l.iter().position(|&v| v as usize >= num_classes))
    {
        let l = labels.as_ref().map_or(0, |l| l[i]);
        return Err(fail(format!(
            "{}: label {l} is outside 0..{num_classes} (data.num_classes)",
            ds.locate(i)
        )));
    }
    Ok(ds)
}

/// Decodes every test record up front (in parallel), so that a bad test set fails before
/// training: each record must decode, be `h × w`, and have a label below `num_classes`.
fn check_test_set(
    ds: &dyn Dataset,
    path: &Path,
    [h, w]: [usize; 2],
    resize: bool,
    num_classes: usize,
) -> Result<(), TrainError> {
    use rayon::prelude::*;
    let fail = |err: String| TrainError::Open {
        role: "test",
        path: path.display().to_string(),
        err,
    };
    let bad = (0..ds.len()).into_par_iter().find_first(|&i| {
        !matches!(ds.record(i).map(|r| (lsc_data::decode_rgb(&r.image).ok(), r.label)), Ok((Some((_, rh, rw)), l)) if (resize || (rh == h && rw == w)) && (l as usize) < num_classes)
    });
    if let Some(i) = bad {
        let why = match ds.record(i) {
            Err(e) => e.to_string(),
            Ok(r) => match lsc_data::decode_rgb(&r.image) {
                Err(e) => format!("{}: {e}", ds.locate(i)),
                Ok((_, rh, rw)) if !resize && (rh, rw) != (h, w) => {
                    format!(
                        "{}: a {rh}x{rw} image but the model takes {h}x{w} (model.input_size); set data.resize = true to resize",
                        ds.locate(i)
                    )
                }
                Ok(_) => format!(
                    "{}: label {} is outside 0..{num_classes} (data.num_classes)",
                    ds.locate(i),
                    r.label
                ),
            },
        };
        return Err(fail(why));
    }
    Ok(())
}

/// Builds one rank's backbone from the config (every rank calls it; the result must not depend
/// on the rank). This is how a user-defined model plugs into the trainer.
pub type BackboneFactory = dyn Fn(&Config) -> Result<Box<dyn Backbone>, String> + Sync;

/// The built-in backbone: the face IResNet that `[model]` describes, seeded by `seed`.
pub fn default_backbone(cfg: &Config) -> Result<Box<dyn Backbone>, String> {
    IResNet::new(&cfg.model, cfg.seed)
        .map(|n| Box::new(n) as Box<dyn Backbone>)
        .map_err(|e| e.to_string())
}

/// Opens the training set (cut to `data.limit`) and the checked test set for `n` ranks.
/// The training set and the optional test set.
type DataSets = (Arc<dyn Dataset>, Option<Arc<dyn Dataset>>);

fn open_data(cfg: &Config, n: usize) -> Result<DataSets, TrainError> {
    let classes = cfg.data.num_classes;
    let mut train_ds: Arc<dyn Dataset> = open("train", &cfg.data.train, classes)?;
    if cfg.data.limit > 0 {
        train_ds = Arc::new(Limited {
            inner: train_ds,
            n: cfg.data.limit,
        });
    }
    let global = cfg.data.batch_size * n;
    if train_ds.len() < global {
        return Err(TrainError::Other(format!(
            "data.train {}: {} record{} are fewer than one global batch of {global} (data.batch_size {} × {n} rank{})",
            cfg.data.train.display(),
            train_ds.len(),
            if train_ds.len() == 1 { "" } else { "s" },
            cfg.data.batch_size,
            if n == 1 { "" } else { "s" },
        )));
    }
    let test_ds: Option<Arc<dyn Dataset>> = if cfg.data.test.as_os_str().is_empty() {
        None
    } else {
        let ds = open("test", &cfg.data.test, classes)?;
        if !cfg.data.skip_bad {
            check_test_set(
                ds.as_ref(),
                &cfg.data.test,
                cfg.model.input_size,
                cfg.data.resize,
                classes,
            )?;
        }
        Some(ds)
    };
    Ok((train_ds, test_ds))
}

/// Trains with `cfg.train.ranks` ranks (threads) and returns rank 0's summary.
/// Progress goes to stderr unless `quiet`.
pub fn train(cfg: &Config, quiet: bool) -> Result<Summary, TrainError> {
    train_with(cfg, quiet, &default_backbone)
}

/// [`train`] with a backbone of the caller's: `make` builds each rank's copy. Its
/// `input_shape()` must be `[3, H, W]` with `[H, W] = model.input_size` (what the loader
/// produces) and its `emb_dim()` must be `model.emb_dim`.
pub fn train_with(cfg: &Config, quiet: bool, make: &BackboneFactory) -> Result<Summary, TrainError> {
    cfg.validate()?;
    let n = cfg.train.ranks;
    if n > MAX_THREAD_RANKS {
        return Err(TrainError::Config(ConfigError::Invalid(format!(
            "train.ranks: {n} thread ranks is more than the {MAX_THREAD_RANKS} one process runs"
        ))));
    }
    let timeout = lsc_comm::timeout_from_env().map_err(TrainError::Other)?;
    let (train_ds, test_ds) = open_data(cfg, n)?;
    if n == 1 {
        let mut p = Progress::new(cfg.train.log_every, quiet);
        return train_rank(cfg, make, &LocalComm, train_ds, test_ds, Some(&mut p));
    }
    let results = lsc_comm::run_ranks_with_timeout(n, timeout, |comm: ThreadComm| {
        let mut p = Progress::new(cfg.train.log_every, quiet);
        let progress = (comm.rank() == 0).then_some(&mut p);
        train_rank(cfg, make, &comm, train_ds.clone(), test_ds.clone(), progress)
    });
    // Report the root cause: a rank's own failure, not the aborted collectives it caused.
    let mut first_err: Option<TrainError> = None;
    let mut summary = None;
    for (r, res) in results.into_iter().enumerate() {
        match res {
            Ok(s) if r == 0 => summary = Some(s),
            Ok(_) => {}
            Err(e) => {
                if first_err
                    .as_ref()
                    .is_none_or(|f| f.is_consequence() && !e.is_consequence())
                {
                    first_err = Some(e);
                }
            }
        }
    }
    match (first_err, summary) {
        (Some(e), _) => Err(e),
        (None, Some(s)) => Ok(s),
        (None, None) => Err(TrainError::Other("rank 0 produced no summary".into())),
    }
}

/// Trains one rank on `comm`, a communicator whose other ranks run this same call in other
/// processes (MPI, NCCL), and returns this rank's summary. `cfg.train.ranks` is taken as
/// `comm.world_size()`; progress goes to stderr on rank 0 only, unless `quiet`.
pub fn train_on(
    cfg: &Config,
    quiet: bool,
    make: &BackboneFactory,
    comm: &dyn Communicator,
) -> Result<Summary, TrainError> {
    let mut cfg = cfg.clone();
    cfg.train.ranks = comm.world_size();
    cfg.validate()?;
    let (train_ds, test_ds) = open_data(&cfg, comm.world_size())?;
    let mut p = Progress::new(cfg.train.log_every, quiet);
    let progress = (comm.rank() == 0).then_some(&mut p);
    train_rank(&cfg, make, comm, train_ds, test_ds, progress)
}

/// Flattens every backbone gradient into `buf`, sums it over ranks, and writes it back.
fn all_reduce_grads(net: &mut dyn Backbone, buf: &mut Vec<f32>, comm: &dyn Communicator) -> Result<(), CommError> {
    if comm.world_size() == 1 {
        return Ok(());
    }
    buf.clear();
    net.visit_params(&mut |p| buf.extend_from_slice(p.grad.data()));
    comm.all_reduce(buf, ReduceOp::Sum)?;
    let mut off = 0;
    net.visit_params(&mut |p| {
        let n = p.grad.numel();
        p.grad.data_mut().copy_from_slice(&buf[off..off + n]);
        off += n;
    });
    Ok(())
}

/// Makes every rank's BN running statistics rank 0's (as PLSC does before testing).
fn broadcast_buffers(net: &mut dyn Backbone, comm: &dyn Communicator) -> Result<(), CommError> {
    if comm.world_size() == 1 {
        return Ok(());
    }
    let mut res = Ok(());
    net.visit_buffers(&mut |_, t| {
        if res.is_ok() {
            res = comm.broadcast(t.data_mut(), 0);
        }
    });
    res
}

/// One rank's whole run.
fn train_rank(
    cfg: &Config,
    make: &BackboneFactory,
    comm: &dyn Communicator,
    train_ds: Arc<dyn Dataset>,
    test_ds: Option<Arc<dyn Dataset>>,
    mut progress: Option<&mut Progress>,
) -> Result<Summary, TrainError> {
    let t0 = Instant::now();
    let (rank, world) = (comm.rank(), comm.world_size());
    let mut net = make(cfg).map_err(TrainError::Model)?;
    let [h, w] = cfg.model.input_size;
    if net.input_shape() != [3, h, w] || net.emb_dim() != cfg.model.emb_dim {
        return Err(TrainError::Model(format!(
            "the backbone takes {:?} and gives {} dims; the config says [3, {h}, {w}] (model.input_size) and {} (model.emb_dim)",
            net.input_shape(),
            net.emb_dim(),
            cfg.model.emb_dim
        )));
    }
    let mut head = MarginSoftmax::new(
        &cfg.head,
        cfg.data.num_classes,
        cfg.model.emb_dim,
        comm,
        cfg.seed ^ 0x4ead,
    );
    let bs = cfg.data.batch_size;
    let sampler = Sampler::new(train_ds.len(), cfg.seed, rank, world, bs, true);
    let steps_per_epoch = sampler.steps();
    let sched = cfg.optim.schedule(steps_per_epoch);
    let mut opt_net = Sgd::new(cfg.optim.momentum, cfg.optim.weight_decay);
    let opts = LoaderOptions {
        batch_size: bs,
        height: h,
        width: w,
        flip: cfg.data.flip,
        drop_last: true,
        seed: cfg.seed,
        prefetch: cfg.data.prefetch,
    };
    let epochs = cfg.train.epochs;
    let total_steps = epochs * steps_per_epoch;
    let mut pos = Position::default();
    if !cfg.train.resume.as_os_str().is_empty() {
        let (dir, p) = checkpoint::load(cfg, comm, net.as_mut(), &mut opt_net, &mut head)?;
        if p.step_in_epoch as usize >= steps_per_epoch {
            return Err(TrainError::Other(format!(
                "checkpoint {}: it stopped {} steps into epoch {}, but this run has only {steps_per_epoch} steps \
                 per epoch ({} records in global batches of {}): resume with the data and global batch it was \
                 saved with",
                dir.display(),
                p.step_in_epoch,
                p.epoch + 1,
                train_ds.len(),
                bs * world
            )));
        }
        if let Some(pr) = progress.as_deref_mut() {
            pr.line(&format!(
                "resumed from {} at step {} (epoch {}, step {} of it)",
                dir.display(),
                p.step,
                p.epoch + 1,
                p.step_in_epoch
            ));
        }
        pos = p;
    }
    let saving = !cfg.train.checkpoint_dir.as_os_str().is_empty();
    let mut grad_buf = Vec::new();
    let (mut wait, mut compute) = (Clock::default(), Clock::default());
    let mut epoch_losses = pos.epoch_losses.clone();
    let mut skipped = pos.skipped as usize;
    let mut top1 = None;
    let mut k = pos.step as usize;
    let k0 = k;
    let mut stopped = false;
    for epoch in (pos.epoch as usize)..epochs {
        let first = if epoch as u64 == pos.epoch {
            pos.step_in_epoch as usize
        } else {
            0
        };
        let mut indices = sampler.epoch(epoch as u64);
        indices.drain(..(first * bs).min(indices.len()));
        let mut loader = epoch_loader_with(
            train_ds.clone(),
            indices,
            opts.clone(),
            cfg.data.augment(true),
            epoch as u64,
        );
        let (mut sum, mut cnt, mut win, mut win_n) = if first > 0 {
            (pos.loss_sum, pos.loss_count as usize, 0.0f64, 0usize)
        } else {
            (0.0f64, 0usize, 0.0f64, 0usize)
        };
        let mut done = first;
        let (mut bad_records, mut bad_first) = (0usize, None::<String>);
        for step in first..steps_per_epoch {
            done = step + 1;
            let batch = match wait.time(|| loader.next()) {
                Some(b) => b?,
                None => {
                    return Err(TrainError::Other(format!(
                        "rank {rank}: loader ended early at step {step} of epoch {}",
                        epoch + 1
                    )));
                }
            };
            if !batch.skipped.is_empty() {
                if bad_first.is_none() {
                    bad_first = batch.skipped.first().cloned();
                }
                bad_records += batch.skipped.len();
            }
            let lr = sched.lr(k);
            let out = compute.time(|| -> Result<_, TrainError> {
                net.set_step(k as u64);
                let emb = net.forward(&batch.images, Mode::Train);
                let timer = profile::scope("head", 0.0);
                let upd = Update {
                    lr,
                    momentum: cfg.optim.momentum,
                    weight_decay: cfg.optim.weight_decay,
                };
                // The head's fused step applies its own SGD update to its shard.
                let s = head.step(&emb, &batch.labels, comm, &upd).map_err(|e| match e {
                    HeadError::Label { index, .. } => TrainError::Label {
                        location: train_ds.locate(batch.indices[index]),
                        err: e,
                    },
                    e => e.into(),
                })?;
                drop(timer);
                if s.skipped {
                    net.zero_grad();
                    return Ok(s);
                }
                net.backward(&s.d_emb);
                {
                    let _t = profile::scope("allreduce", 0.0);
                    all_reduce_grads(net.as_mut(), &mut grad_buf, comm)?;
                }
                let _t = profile::scope("optim", 0.0);
                opt_net.step(lr, &mut |f| net.visit_params(f));
                Ok(s)
            })?;
            k += 1;
            if out.skipped {
                skipped += 1;
            } else {
                sum += out.loss as f64;
                cnt += 1;
                win += out.loss as f64;
                win_n += 1;
            }
            if let Some(p) = progress.as_deref_mut() {
                let busy = wait.secs() + compute.secs();
                let ips = ((k - k0) * bs * world) as f64 / busy.max(1e-9);
                p.step(&StepInfo {
                    epoch: epoch + 1,
                    epochs,
                    step: step + 1,
                    steps: steps_per_epoch,
                    loss: if win_n > 0 {
                        (win / win_n as f64) as f32
                    } else {
                        f32::NAN
                    },
                    lr,
                    images_per_s: ips,
                    data_wait_frac: wait.secs() / busy.max(1e-9),
                    eta_s: (total_steps - k) as f64 * busy / (k - k0) as f64,
                });
                if step + 1 == steps_per_epoch || (step + 1).is_multiple_of(cfg.train.log_every) {
                    win = 0.0;
                    win_n = 0;
                }
            }
            let stop = cfg.train.max_steps > 0 && k >= cfg.train.max_steps;
            let every = cfg.train.save_every_steps;
            if saving && step + 1 < steps_per_epoch && (stop || (every > 0 && k.is_multiple_of(every))) {
                let at = Position {
                    step: k as u64,
                    epoch: epoch as u64,
                    step_in_epoch: (step + 1) as u64,
                    skipped: skipped as u64,
                    epoch_losses: epoch_losses.clone(),
                    loss_sum: sum,
                    loss_count: cnt as u64,
                    global_batch: (bs * world) as u64,
                };
                let dir = checkpoint::save(cfg, comm, net.as_mut(), &opt_net, &head, &at)?;
                if let (Some(p), Some(d)) = (progress.as_deref_mut(), dir) {
                    p.line(&format!("saved {}", d.display()));
                }
            }
            if stop {
                stopped = true;
                break;
            }
        }
        if done < steps_per_epoch {
            // Stopped mid-epoch by train.max_steps (and saved there): no epoch mean, no evaluation.
            break;
        }
        if cnt == 0 {
            return Err(TrainError::Other(format!(
                "training diverged: all {steps_per_epoch} steps of epoch {} were skipped for non-finite values \
                 (lower optim.lr or head.scale)",
                epoch + 1
            )));
        }
        let mean = (sum / cnt as f64) as f32;
        epoch_losses.push(mean);
        let last = epoch + 1 == epochs;
        let mut msg = format!("epoch {}/{} mean loss {:.4}", epoch + 1, epochs, mean);
        let epoch_skips = steps_per_epoch - cnt;
        if epoch_skips > 0 {
            msg += &format!(" (warning: {epoch_skips} of {steps_per_epoch} steps skipped for non-finite values)");
        }
        if bad_records > 0 {
            msg += &format!(
                " (warning: rank {rank} skipped {bad_records} bad record(s) (data.skip_bad), first: {})",
                bad_first.unwrap_or_default()
            );
        }
        if let Some(ds) = &test_ds
            && (last || (epoch + 1).is_multiple_of(cfg.train.eval_every))
        {
            broadcast_buffers(net.as_mut(), comm)?;
            let acc = evaluate(net.as_mut(), &head, ds.clone(), &opts, &cfg.data.augment(false), comm)?;
            top1 = Some(acc);
            msg += &format!(" test_top1 {acc:.4}");
        }
        if let Some(p) = progress.as_deref_mut() {
            msg += &format!(" elapsed {:.1}s", t0.elapsed().as_secs_f64());
            p.line(&msg);
        }
        let every = cfg.train.save_every_epochs;
        if saving && (stopped || last || (every > 0 && (epoch + 1).is_multiple_of(every))) {
            let at = Position {
                step: k as u64,
                epoch: (epoch + 1) as u64,
                step_in_epoch: 0,
                skipped: skipped as u64,
                epoch_losses: epoch_losses.clone(),
                loss_sum: 0.0,
                loss_count: 0,
                global_batch: (bs * world) as u64,
            };
            let dir = checkpoint::save(cfg, comm, net.as_mut(), &opt_net, &head, &at)?;
            if let (Some(p), Some(d)) = (progress.as_deref_mut(), dir) {
                p.line(&format!("saved {}", d.display()));
            }
        }
        if stopped {
            break;
        }
    }
    let busy = wait.secs() + compute.secs();
    Ok(Summary {
        epochs,
        steps: k,
        ranks: world,
        loss: format!("{:?}", cfg.head.loss).to_lowercase(),
        first_epoch_loss: epoch_losses.first().copied().unwrap_or(f32::NAN),
        final_loss: epoch_losses.last().copied().unwrap_or(f32::NAN),
        epoch_losses,
        test_top1: top1,
        images_per_s: ((k - k0) * bs * world) as f64 / busy.max(1e-9),
        wall_s: t0.elapsed().as_secs_f64(),
        data_wait_s: wait.secs(),
        skipped_steps: skipped,
    })
}

/// Top-1 accuracy over a whole dataset: every rank evaluates every record (in order, no
/// flip) and the head's arg-max spans all class shards.
pub fn evaluate(
    net: &mut dyn Backbone,
    head: &MarginSoftmax,
    ds: Arc<dyn Dataset>,
    train_opts: &LoaderOptions,
    aug: &lsc_data::Augment,
    comm: &dyn Communicator,
) -> Result<f32, TrainError> {
    let opts = LoaderOptions {
        flip: false,
        drop_last: false,
        ..train_opts.clone()
    };
    let n = ds.len();
    let mut correct = 0usize;
    for batch in epoch_loader_with(ds, (0..n).collect(), opts, aug.clone(), 0) {
        let batch = batch?;
        let emb = net.forward(&batch.images, Mode::Eval);
        let pred = head.predict(&emb, comm)?;
        correct += pred.iter().zip(&batch.labels).filter(|(p, l)| p == l).count();
    }
    Ok(correct as f32 / n.max(1) as f32)
}
