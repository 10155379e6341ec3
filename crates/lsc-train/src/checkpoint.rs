//! Saving and restoring a whole training run: backbone (parameters, BN statistics, momentum),
//! every head shard (weights, momentum, bias, step counter) and the trainer's position.
//!
//! Every rank writes its own head shard into the pending directory; rank 0 writes the rest,
//! then commits (manifest, rename) after a barrier. Loading checks the manifest's checksums on
//! rank 0, and the config, class count, embedding size and world size on every rank.

use crate::config::Config;
use crate::trainer::TrainError;
use lsc_ckpt::{
    Data, Manifest, NamedTensor, PendingSave, ShardEntry, read_safetensors, record_file, write_safetensors,
};
use lsc_comm::Communicator;
use lsc_head::MarginSoftmax;
use lsc_nn::Backbone;
use lsc_optim::Sgd;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const BACKBONE: &str = "backbone.safetensors";
const TRAINER: &str = "trainer.safetensors";
const MOMENTUM_PREFIX: &str = "optim.momentum.";

fn shard_file(rank: usize, world: usize) -> String {
    format!("head.rank{rank:05}-of-{world:05}.safetensors")
}

/// Where training stands: enough to continue bit-identically.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Position {
    /// Global steps done.
    pub step: u64,
    /// Epochs completed, and steps done in the epoch under way.
    pub epoch: u64,
    pub step_in_epoch: u64,
    pub skipped: u64,
    /// Per-epoch mean losses so far, and the running sum and count of the current epoch.
    pub epoch_losses: Vec<f32>,
    pub loss_sum: f64,
    pub loss_count: u64,
}

fn ck(e: lsc_ckpt::CkptError) -> TrainError {
    TrainError::Other(format!("checkpoint: {e}"))
}

fn write(dir: &Path, name: &str, tensors: &[NamedTensor]) -> Result<(), TrainError> {
    let meta: BTreeMap<String, String> = [("format".to_string(), lsc_ckpt::FORMAT.to_string())].into();
    let (n, h) = write_safetensors(&dir.join(name), tensors, &meta).map_err(ck)?;
    record_file(dir, name, n, &h).map_err(ck)
}

/// Saves the run after `pos.step` steps into `cfg.train.checkpoint_dir`. Every rank calls it.
pub fn save(
    cfg: &Config,
    comm: &dyn Communicator,
    net: &mut dyn Backbone,
    opt: &Sgd,
    head: &MarginSoftmax,
    pos: &Position,
) -> Result<Option<PathBuf>, TrainError> {
    let root = &cfg.train.checkpoint_dir;
    let (rank, world) = (comm.rank(), comm.world_size());
    let pending = if rank == 0 {
        PendingSave::begin(root, pos.step).map_err(ck)?
    } else {
        PendingSave::at(root, pos.step)
    };
    comm.barrier()?;
    let shard = head.shard();
    let d = cfg.model.emb_dim;
    let mut ht = vec![
        NamedTensor::f32("head.weight", &[shard.len(), d], head.weights()),
        NamedTensor::f32("head.weight.momentum", &[shard.len(), d], head.momentum()),
        NamedTensor {
            name: "head.steps".into(),
            shape: vec![1],
            data: Data::U64(vec![head.steps()]),
        },
    ];
    if let (Some(b), Some(bm)) = (head.bias(), head.bias_momentum()) {
        ht.push(NamedTensor::f32("head.bias", &[b.len()], b.to_vec()));
        ht.push(NamedTensor::f32("head.bias.momentum", &[bm.len()], bm.to_vec()));
    }
    write(&pending.tmp, &shard_file(rank, world), &ht)?;
    if rank == 0 {
        let mut bt = Vec::new();
        net.visit_params(&mut |p| {
            bt.push(NamedTensor::f32(
                p.name.clone(),
                p.value.shape(),
                p.value.data().to_vec(),
            ))
        });
        net.visit_buffers(&mut |name, t| bt.push(NamedTensor::f32(name.to_string(), t.shape(), t.data().to_vec())));
        for (name, v) in opt.state() {
            bt.push(NamedTensor::f32(
                format!("{MOMENTUM_PREFIX}{name}"),
                &[v.len()],
                v.clone(),
            ));
        }
        write(&pending.tmp, BACKBONE, &bt)?;
        let state = vec![
            NamedTensor {
                name: "trainer.position".into(),
                shape: vec![6],
                data: Data::U64(vec![
                    pos.step,
                    pos.epoch,
                    pos.step_in_epoch,
                    pos.skipped,
                    pos.loss_sum.to_bits(),
                    pos.loss_count,
                ]),
            },
            NamedTensor::f32(
                "trainer.epoch_losses",
                &[pos.epoch_losses.len()],
                pos.epoch_losses.clone(),
            ),
        ];
        write(&pending.tmp, TRAINER, &state)?;
    }
    comm.barrier()?;
    let mut out = None;
    if rank == 0 {
        let shards = (0..world)
            .map(|r| {
                let s = lsc_head::shard_range(cfg.data.num_classes, world, r);
                ShardEntry {
                    rank: r as u64,
                    class_start: s.start as u64,
                    class_end: s.end as u64,
                    file: shard_file(r, world),
                }
            })
            .collect();
        let m = Manifest {
            format: lsc_ckpt::FORMAT.into(),
            version: lsc_ckpt::VERSION,
            step: pos.step,
            epoch: pos.epoch,
            step_in_epoch: pos.step_in_epoch,
            num_classes: cfg.data.num_classes as u64,
            emb_dim: d as u64,
            world_size: world as u64,
            head_dtype: format!("{:?}", cfg.head.dtype).to_lowercase(),
            file_dtype: "f32".into(),
            shards,
            files: vec![],
            config: cfg.to_toml(),
        };
        let dir = pending.commit(m).map_err(ck)?;
        lsc_ckpt::rotate(root, cfg.train.keep_last).map_err(ck)?;
        out = Some(dir);
    }
    comm.barrier()?;
    Ok(out)
}

fn f32s(t: &NamedTensor) -> Vec<f32> {
    match &t.data {
        Data::F32(v) => v.clone(),
        _ => Vec::new(),
    }
}

/// The parts of the config a checkpoint must agree on to be resumed.
fn compatible(saved: &Config, cfg: &Config) -> Result<(), String> {
    if saved.model != cfg.model {
        return Err("its [model] differs from this config's".into());
    }
    if saved.head.loss != cfg.head.loss || saved.head.bias != cfg.head.bias {
        return Err(format!(
            "its head.loss {:?} (bias {}) differs from this config's {:?} (bias {})",
            saved.head.loss, saved.head.bias, cfg.head.loss, cfg.head.bias
        ));
    }
    Ok(())
}

/// Restores a run from `cfg.train.resume` (a checkpoint, or a root's newest). Every rank calls it.
pub fn load(
    cfg: &Config,
    comm: &dyn Communicator,
    net: &mut dyn Backbone,
    opt: &mut Sgd,
    head: &mut MarginSoftmax,
) -> Result<(PathBuf, Position), TrainError> {
    let (rank, world) = (comm.rank(), comm.world_size());
    // Rank 0 checks every file's checksum; the others wait and trust the manifest.
    let first = if rank == 0 {
        Some(lsc_ckpt::load_manifest(&cfg.train.resume, true).map_err(ck))
    } else {
        None
    };
    let ok = first.as_ref().is_none_or(|r| r.is_ok());
    let agreed = comm.all_reduce_scalar(if ok { 0.0 } else { 1.0 }, lsc_comm::ReduceOp::Max)?;
    if let Some(Err(e)) = first {
        return Err(e);
    }
    if agreed != 0.0 {
        return Err(TrainError::Other(format!(
            "rank {rank}: rank 0 could not read the checkpoint"
        )));
    }
    let (dir, m) = lsc_ckpt::load_manifest(&cfg.train.resume, false).map_err(ck)?;
    let bad = |why: String| TrainError::Other(format!("checkpoint {}: {why}", dir.display()));
    if m.num_classes as usize != cfg.data.num_classes || m.emb_dim as usize != cfg.model.emb_dim {
        return Err(bad(format!(
            "it has {} classes × {} dims, this config {} × {}",
            m.num_classes, m.emb_dim, cfg.data.num_classes, cfg.model.emb_dim
        )));
    }
    if m.world_size as usize != world {
        return Err(bad(format!(
            "it was saved by {} rank(s) and this run has {world}; re-partition it first (lsc ckpt reshard is not built yet)",
            m.world_size
        )));
    }
    let saved = Config::from_str_with_defaults("the checkpoint's config", &m.config).map_err(|e| bad(e.to_string()))?;
    compatible(&saved, cfg).map_err(bad)?;
    // Backbone, BN statistics and momentum.
    let (bt, _) = read_safetensors(&dir.join(BACKBONE)).map_err(ck)?;
    let mut missing = Vec::new();
    let mut put = |name: &str, dst: &mut lsc_tensor::Tensor| match bt.get(name) {
        Some(t) if t.shape == dst.shape() => dst.data_mut().copy_from_slice(&f32s(t)),
        Some(t) => missing.push(format!(
            "{name}: shape {:?} in the file, {:?} in the model",
            t.shape,
            dst.shape()
        )),
        None => missing.push(format!("{name}: not in the file")),
    };
    net.visit_params(&mut |p| put(&p.name, &mut p.value));
    net.visit_buffers(&mut |name, t| put(name, t));
    if !missing.is_empty() {
        return Err(bad(format!("{BACKBONE}: {}", missing.join("; "))));
    }
    let momentum: Vec<(String, Vec<f32>)> = bt
        .values()
        .filter_map(|t| t.name.strip_prefix(MOMENTUM_PREFIX).map(|n| (n.to_string(), f32s(t))))
        .collect();
    // Order the buffers as the model visits its parameters.
    let mut ordered = Vec::new();
    net.visit_params(&mut |p| {
        if let Some((n, v)) = momentum.iter().find(|(n, _)| n == &p.name) {
            ordered.push((n.clone(), v.clone()));
        }
    });
    if !ordered.is_empty() {
        opt.load_state(ordered);
    }
    // This rank's head shard.
    let file = shard_file(rank, world);
    let (ht, _) = read_safetensors(&dir.join(&file)).map_err(ck)?;
    let get = |n: &str| ht.get(n).map(f32s).ok_or_else(|| bad(format!("{file}: no tensor {n}")));
    let bias = match (ht.get("head.bias"), ht.get("head.bias.momentum")) {
        (Some(b), Some(bm)) => Some((f32s(b), f32s(bm))),
        _ => None,
    };
    let steps = match ht.get("head.steps").map(|t| &t.data) {
        Some(Data::U64(v)) if v.len() == 1 => v[0],
        _ => return Err(bad(format!("{file}: no head.steps"))),
    };
    head.restore(get("head.weight")?, get("head.weight.momentum")?, bias, steps)
        .map_err(|e| bad(format!("{file}: {e}")))?;
    // Where training stands.
    let (tt, _) = read_safetensors(&dir.join(TRAINER)).map_err(ck)?;
    let p = match tt.get("trainer.position").map(|t| &t.data) {
        Some(Data::U64(v)) if v.len() == 6 => v.clone(),
        _ => return Err(bad(format!("{TRAINER}: no trainer.position"))),
    };
    let losses = tt.get("trainer.epoch_losses").map(f32s).unwrap_or_default();
    Ok((
        dir,
        Position {
            step: p[0],
            epoch: p[1],
            step_in_epoch: p[2],
            skipped: p[3],
            loss_sum: f64::from_bits(p[4]),
            loss_count: p[5],
            epoch_losses: losses,
        },
    ))
}
