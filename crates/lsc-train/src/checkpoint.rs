//! Saving and restoring a whole training run: backbone (parameters, BN statistics, momentum),
//! every head shard (weights, momentum, bias, step counter) and the trainer's position.
//!
//! Every rank writes its own head shard into the pending directory; rank 0 writes the rest,
//! then commits (manifest, rename) after a barrier. Loading checks the manifest's checksums on
//! rank 0, and the config, class count, embedding size and world size on every rank.

use crate::config::Config;
use crate::trainer::TrainError;
use lsc_ckpt::{
    Data, Dtype, Manifest, NamedTensor, PendingSave, ShardEntry, TensorFile, TensorSpec, read_safetensors, record_file,
    write_safetensors, write_safetensors_with,
};
use lsc_comm::Communicator;
use lsc_head::{MarginSoftmax, Rows};
use lsc_nn::Backbone;
use lsc_optim::Sgd;
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

const BACKBONE: &str = "backbone.safetensors";
const TRAINER: &str = "trainer.safetensors";
const MOMENTUM_PREFIX: &str = "optim.momentum.";
const WEIGHT: &str = "head.weight";
const WEIGHT_M: &str = "head.weight.momentum";
const BIAS: &str = "head.bias";
const BIAS_M: &str = "head.bias.momentum";
const STEPS: &str = "head.steps";
/// Rows per piece when a head tensor is streamed between files.
const TILE_ROWS: usize = 4096;

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
    /// The global batch (per-rank batch × ranks) the run had: mid-epoch, `step_in_epoch`
    /// counts global batches of this size (0: not recorded).
    pub global_batch: u64,
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
    let file_dtype = write_head_shard(&pending.tmp, &shard_file(rank, world), head, shard.len(), d)?;
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
                shape: vec![7],
                data: Data::U64(vec![
                    pos.step,
                    pos.epoch,
                    pos.step_in_epoch,
                    pos.skipped,
                    pos.loss_sum.to_bits(),
                    pos.loss_count,
                    pos.global_batch,
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
            file_dtype: file_dtype.name().to_lowercase(),
            shards,
            files: vec![],
            config: cfg.to_toml(),
        };
        let dir = pending.commit(m).map_err(ck)?;
        // Pushed to the remote store (when configured) before any local rotation.
        let store = cfg.train.store();
        lsc_ckpt::publish(root, &dir, store.as_deref(), cfg.train.keep_last)
            .map_err(|e| TrainError::Other(format!("checkpoint {} was saved locally, but: {e}", dir.display())))?;
        out = Some(dir);
    }
    comm.barrier()?;
    Ok(out)
}

/// Writes this rank's head shard, streamed from its store in the store's own dtype (so a bf16
/// head is saved exactly and at half the size); returns that dtype.
fn write_head_shard(dir: &Path, name: &str, head: &MarginSoftmax, rows: usize, d: usize) -> Result<Dtype, TrainError> {
    let dtype = match head.weight_rows().as_f32() {
        Some(_) => Dtype::F32,
        None => Dtype::Bf16,
    };
    let mut specs = vec![
        TensorSpec::new(WEIGHT, dtype, &[rows, d]),
        TensorSpec::new(WEIGHT_M, dtype, &[rows, d]),
        TensorSpec::new(STEPS, Dtype::U64, &[1]),
    ];
    if head.bias().is_some() {
        specs.push(TensorSpec::new(BIAS, Dtype::F32, &[rows]));
        specs.push(TensorSpec::new(BIAS_M, Dtype::F32, &[rows]));
    }
    let rows_of = |r: &Rows, sink: &mut lsc_ckpt::Sink| match (r.as_f32(), r.as_bf16_bits()) {
        (Some(v), _) => sink.f32s(v),
        (_, Some(v)) => sink.bf16s(v),
        _ => unreachable!("a store is f32 or bf16"),
    };
    let meta: BTreeMap<String, String> = [("format".to_string(), lsc_ckpt::FORMAT.to_string())].into();
    let (n, h) = write_safetensors_with(&dir.join(name), &specs, &meta, |i, sink| match i {
        0 => rows_of(head.weight_rows(), sink),
        1 => rows_of(head.momentum_rows(), sink),
        2 => sink.u64s(&[head.steps()]),
        3 => sink.f32s(head.bias().unwrap_or_default()),
        _ => sink.f32s(head.bias_momentum().unwrap_or_default()),
    })
    .map_err(ck)?;
    record_file(dir, name, n, &h).map_err(ck)?;
    Ok(dtype)
}

/// The head shards of a checkpoint, opened lazily through memory maps, read by class range
/// whatever the number of ranks that saved them.
struct HeadShards<'a> {
    dir: &'a Path,
    m: &'a Manifest,
    open: BTreeMap<String, TensorFile>,
}

impl<'a> HeadShards<'a> {
    /// Checks that the manifest's shards tile `0..num_classes` in order.
    fn new(dir: &'a Path, m: &'a Manifest) -> Result<HeadShards<'a>, TrainError> {
        let mut next = 0u64;
        for s in &m.shards {
            if s.class_start != next || s.class_end < s.class_start {
                return Err(TrainError::Other(format!(
                    "checkpoint {}: {}: the shard of rank {} covers classes {}..{}, expected it to start at {next}",
                    dir.display(),
                    lsc_ckpt::MANIFEST,
                    s.rank,
                    s.class_start,
                    s.class_end
                )));
            }
            next = s.class_end;
        }
        if next != m.num_classes {
            return Err(TrainError::Other(format!(
                "checkpoint {}: {}: the shards cover classes 0..{next} of {}",
                dir.display(),
                lsc_ckpt::MANIFEST,
                m.num_classes
            )));
        }
        Ok(HeadShards {
            dir,
            m,
            open: BTreeMap::new(),
        })
    }

    fn file(&mut self, name: &str) -> Result<&TensorFile, TrainError> {
        if !self.open.contains_key(name) {
            let f = TensorFile::open(&self.dir.join(name)).map_err(ck)?;
            self.open.insert(name.to_string(), f);
        }
        Ok(&self.open[name])
    }

    /// Whether the shards hold a tensor called `tensor` (checked on the first shard).
    fn has(&mut self, tensor: &str) -> Result<bool, TrainError> {
        match self.m.shards.first() {
            Some(s) => {
                let name = s.file.clone();
                Ok(self.file(&name)?.tensors().contains_key(tensor))
            }
            None => Ok(false),
        }
    }

    /// The element type of `tensor` in the first shard.
    fn dtype(&mut self, tensor: &str) -> Result<Dtype, TrainError> {
        let name = self.m.shards.first().map(|s| s.file.clone()).unwrap_or_default();
        let f = self.file(&name)?;
        f.tensors()
            .get(tensor)
            .map(|t| t.dtype)
            .ok_or_else(|| TrainError::Other(format!("checkpoint {}: {name}: no tensor {tensor}", self.dir.display())))
    }

    /// Classes `classes` of `tensor` (`[rows, per]` per shard) as f32 into `out`.
    fn rows(&mut self, tensor: &str, per: usize, classes: Range<usize>, out: &mut [f32]) -> Result<(), TrainError> {
        let m = self.m;
        for s in &m.shards {
            let (a, b) = (s.class_start as usize, s.class_end as usize);
            let (lo, hi) = (classes.start.max(a), classes.end.min(b));
            if lo >= hi {
                continue;
            }
            let dir = self.dir.display().to_string();
            let f = self.file(&s.file)?;
            let info = f
                .tensors()
                .get(tensor)
                .ok_or_else(|| TrainError::Other(format!("checkpoint {dir}: {}: no tensor {tensor}", s.file)))?;
            let want: Vec<usize> = if per == 1 { vec![b - a] } else { vec![b - a, per] };
            if info.shape != want {
                return Err(TrainError::Other(format!(
                    "checkpoint {dir}: {}: tensor {tensor} has shape {:?}, its class range {a}..{b} needs {want:?}",
                    s.file, info.shape
                )));
            }
            let dst = &mut out[(lo - classes.start) * per..(hi - classes.start) * per];
            f.rows_f32(tensor, lo - a..hi - a, dst).map_err(ck)?;
        }
        Ok(())
    }

    /// The head's step counter (every shard holds the same one).
    fn steps(&mut self) -> Result<u64, TrainError> {
        let name = self.m.shards.first().map(|s| s.file.clone()).unwrap_or_default();
        let dir = self.dir.display().to_string();
        let t = self.file(&name)?.read(STEPS).map_err(ck)?;
        match t.data {
            Data::U64(v) if v.len() == 1 => Ok(v[0]),
            _ => Err(TrainError::Other(format!("checkpoint {dir}: {name}: no {STEPS}"))),
        }
    }
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
        // Name the keys that differ.
        let table = |c: &Config| toml::Value::try_from(&c.model).ok().and_then(|v| v.as_table().cloned());
        let (a, b) = (table(saved).unwrap_or_default(), table(cfg).unwrap_or_default());
        let keys: Vec<String> = a
            .keys()
            .chain(b.keys())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .filter(|k| a.get(*k) != b.get(*k))
            .map(|k| {
                let show = |v: Option<&toml::Value>| v.map_or("(absent)".to_string(), |v| v.to_string());
                format!("model.{k} = {} there, {} here", show(a.get(k)), show(b.get(k)))
            })
            .collect();
        return Err(format!("its [model] differs from this config's: {}", keys.join("; ")));
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
    // Rank 0 pulls the newest remote checkpoint (when a store is configured and it is newer
    // than the local ones) and checks every file's checksum; the others wait and trust the
    // manifest.
    let first = if rank == 0 {
        let pulled = match cfg.train.store() {
            Some(store) => lsc_ckpt::pull_newest(&cfg.train.checkpoint_dir, store.as_ref()).map(|_| ()),
            None => Ok(()),
        };
        Some(
            pulled
                .and_then(|_| lsc_ckpt::load_manifest(&cfg.train.resume, true))
                .map_err(ck),
        )
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
    // This rank's classes, gathered from however many shards saved them (re-partitioning
    // when the rank count differs), streamed from memory maps into this head's store.
    let range = lsc_head::shard_range(cfg.data.num_classes, world, rank);
    let d = cfg.model.emb_dim;
    let mut shards = HeadShards::new(&dir, &m)?;
    let dtype = cfg.head.dtype;
    head.release_storage();
    let mut rows = |tensor: &str| {
        Rows::from_fill(range.len(), d, dtype, |r, out| {
            shards.rows(tensor, d, range.start + r.start..range.start + r.end, out)
        })
    };
    let weight = rows(WEIGHT)?;
    let momentum = rows(WEIGHT_M)?;
    let bias = if shards.has(BIAS)? {
        let mut b = vec![0.0; range.len()];
        let mut bm = vec![0.0; range.len()];
        shards.rows(BIAS, 1, range.clone(), &mut b)?;
        shards.rows(BIAS_M, 1, range.clone(), &mut bm)?;
        Some((b, bm))
    } else {
        None
    };
    let steps = shards.steps()?;
    head.restore_rows(weight, momentum, bias, steps)
        .map_err(|e| bad(format!("head shard of rank {rank}: {e}")))?;
    // Where training stands.
    let (tt, _) = read_safetensors(&dir.join(TRAINER)).map_err(ck)?;
    let p = match tt.get("trainer.position").map(|t| &t.data) {
        Some(Data::U64(v)) if v.len() == 6 || v.len() == 7 => v.clone(),
        _ => return Err(bad(format!("{TRAINER}: no trainer.position"))),
    };
    let losses = tt.get("trainer.epoch_losses").map(f32s).unwrap_or_default();
    // Mid-epoch, the position counts global batches into the epoch's order: it names the same
    // samples only with the same global batch.
    let was = p.get(6).copied().unwrap_or(0);
    let now = (cfg.data.batch_size * world) as u64;
    if p[2] > 0 && was > 0 && was != now {
        return Err(bad(format!(
            "it stopped {} steps into an epoch with a global batch of {was}; resuming mid-epoch needs the \
             same global batch, and this run has {now} (data.batch_size {} × {world} ranks)",
            p[2], cfg.data.batch_size
        )));
    }
    Ok((
        dir,
        Position {
            step: p[0],
            epoch: p[1],
            step_in_epoch: p[2],
            skipped: p[3],
            loss_sum: f64::from_bits(p[4]),
            loss_count: p[5],
            global_batch: was,
            epoch_losses: losses,
        },
    ))
}

/// Re-partitions the checkpoint `src` (a checkpoint directory, or a root whose newest is taken)
/// for `ranks` ranks into the new checkpoint directory `out`, offline. Every file is checked
/// against the manifest first; each new shard is streamed from the old shards' memory maps a
/// tile at a time, so memory stays at one tile whatever the head's size. The backbone and
/// trainer files are copied as they are. `out` is written under a temporary name and renamed.
pub fn reshard(src: &Path, ranks: usize, out: &Path) -> Result<PathBuf, TrainError> {
    if ranks == 0 {
        return Err(TrainError::Other("reshard: --ranks must be at least 1".into()));
    }
    if out.exists() {
        return Err(TrainError::Other(format!(
            "reshard: {} already exists; name a new directory",
            out.display()
        )));
    }
    let (dir, m) = lsc_ckpt::load_manifest(src, true).map_err(ck)?;
    let mut shards = HeadShards::new(&dir, &m)?;
    let (c, d) = (m.num_classes as usize, m.emb_dim as usize);
    let wdt = shards.dtype(WEIGHT)?;
    let has_bias = shards.has(BIAS)?;
    let steps = shards.steps()?;
    let pending = PendingSave::begin_to(out).map_err(ck)?;
    let meta: BTreeMap<String, String> = [("format".to_string(), lsc_ckpt::FORMAT.to_string())].into();
    let mut entries = Vec::new();
    let mut tile = Vec::new();
    for r in 0..ranks {
        let range = lsc_head::shard_range(c, ranks, r);
        let n = range.len();
        let mut specs = vec![
            TensorSpec::new(WEIGHT, wdt, &[n, d]),
            TensorSpec::new(WEIGHT_M, wdt, &[n, d]),
            TensorSpec::new(STEPS, Dtype::U64, &[1]),
        ];
        if has_bias {
            specs.push(TensorSpec::new(BIAS, Dtype::F32, &[n]));
            specs.push(TensorSpec::new(BIAS_M, Dtype::F32, &[n]));
        }
        let file = shard_file(r, ranks);
        let mut err = None;
        let res = write_safetensors_with(&pending.tmp.join(&file), &specs, &meta, |i, sink| {
            let (tensor, per, dt) = match i {
                0 => (WEIGHT, d, wdt),
                1 => (WEIGHT_M, d, wdt),
                2 => return sink.u64s(&[steps]),
                3 => (BIAS, 1, Dtype::F32),
                _ => (BIAS_M, 1, Dtype::F32),
            };
            for start in (range.start..range.end).step_by(TILE_ROWS) {
                let end = (start + TILE_ROWS).min(range.end);
                tile.resize((end - start) * per, 0.0);
                if let Err(e) = shards.rows(tensor, per, start..end, &mut tile) {
                    err = Some(e);
                    return Err(lsc_ckpt::CkptError::Corrupt {
                        path: dir.display().to_string(),
                        why: "a shard could not be read".into(),
                    });
                }
                match dt {
                    // bf16 values widened to f32 narrow back exactly.
                    Dtype::Bf16 => {
                        let bits: Vec<u16> = tile.iter().map(|v| (v.to_bits() >> 16) as u16).collect();
                        sink.bf16s(&bits)?;
                    }
                    _ => sink.f32s(&tile)?,
                }
            }
            Ok(())
        });
        if let Some(e) = err {
            return Err(e);
        }
        let (bytes, hash) = res.map_err(ck)?;
        record_file(&pending.tmp, &file, bytes, &hash).map_err(ck)?;
        entries.push(ShardEntry {
            rank: r as u64,
            class_start: range.start as u64,
            class_end: range.end as u64,
            file,
        });
    }
    for name in [BACKBONE, TRAINER] {
        let f = m.file(name).ok_or_else(|| {
            TrainError::Other(format!(
                "checkpoint {}: {} lists no {name}",
                dir.display(),
                lsc_ckpt::MANIFEST
            ))
        })?;
        let to = pending.tmp.join(name);
        std::fs::copy(dir.join(name), &to)
            .map_err(|e| TrainError::Other(format!("reshard: copying {}: {e}", dir.join(name).display())))?;
        // The source was checked against its manifest above; the copy's size is checked at commit.
        record_file(&pending.tmp, name, f.bytes, &f.hash).map_err(ck)?;
    }
    let mut cfg = Config::from_str_with_defaults("the checkpoint's config", &m.config)?;
    cfg.train.ranks = ranks;
    let manifest = Manifest {
        world_size: ranks as u64,
        shards: entries,
        files: vec![],
        config: cfg.to_toml(),
        ..m.clone()
    };
    pending.commit(manifest).map_err(ck)
}
