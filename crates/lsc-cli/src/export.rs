//! `lsc export CKPT --out MODEL`: a checkpoint's backbone as a BN-folded inference model.

use anyhow::{Context, Result, bail};
use lexopt::prelude::*;
use lsc_nn::{IResNet, InferenceNet, load_named};
use lsc_train::Config;
use std::ffi::OsString;
use std::path::PathBuf;

const USAGE: &str = "\
usage: lsc export CKPT --out MODEL [--force]

  CKPT         a checkpoint directory (step-N/), or a checkpoint root (its newest checkpoint)
  --out MODEL  the model directory to write
  --force      replace MODEL if it exists

Builds the checkpoint's backbone from the config recorded in its manifest, folds every BN
that follows a convolution or the FC into it, and writes MODEL/model.safetensors (the folded
weights) and MODEL/model.toml (architecture, input shape, normalisation, embedding size,
source checkpoint and step), into a temporary directory renamed into place when complete.
Checksums of the checkpoint are verified first. `lsc model summary MODEL` describes it.
";

pub fn run(args: Vec<OsString>) -> Result<()> {
    let mut p = lexopt::Parser::from_args(args);
    let (mut ckpt, mut out, mut force) = (None::<PathBuf>, None::<PathBuf>, false);
    while let Some(arg) = p.next()? {
        match arg {
            Long("out") => out = Some(PathBuf::from(p.value()?)),
            Long("force") => force = true,
            Value(v) if ckpt.is_none() => ckpt = Some(PathBuf::from(v)),
            Short('h') | Long("help") => {
                print!("{USAGE}");
                return Ok(());
            }
            other => bail!("export: {}\n\n{USAGE}", other.unexpected()),
        }
    }
    let Some(ckpt) = ckpt else {
        bail!("export: missing CKPT\n\n{USAGE}")
    };
    let Some(out) = out else {
        bail!("export: missing --out MODEL\n\n{USAGE}")
    };
    let (dir, m) = lsc_ckpt::load_manifest(&ckpt, true)?;
    let origin = format!("{} (its config)", dir.join(lsc_ckpt::MANIFEST).display());
    let cfg = Config::from_str_with_defaults(&origin, &m.config)?;
    cfg.model.validate().with_context(|| origin.clone())?;
    let mut net = IResNet::new(&cfg.model, cfg.seed)?;
    let file = dir.join("backbone.safetensors");
    let (tensors, _) = lsc_ckpt::read_safetensors(&file)?;
    load_named(&mut net, &tensors).map_err(|why| {
        anyhow::anyhow!(
            "{}: does not hold the IResNet of the checkpoint's [model] (a custom backbone cannot be exported): {why}",
            file.display()
        )
    })?;
    let folded = InferenceNet::from_resnet(&net);
    drop(net);
    let abs = std::fs::canonicalize(&dir).unwrap_or(dir.clone());
    let em = folded.save(&out, &abs.display().to_string(), m.step, force)?;
    println!(
        "exported {} (step {}) to {}: {} tensors, {} scalars, {} ({} bytes, lsc64 {}); input [{}x{}x{}], {}-d embedding",
        dir.display(),
        m.step,
        out.display(),
        folded.tensors().len(),
        folded.num_params(),
        em.weights.name,
        em.weights.bytes,
        em.weights.hash,
        em.input_shape[0],
        em.input_shape[1],
        em.input_shape[2],
        em.emb_dim
    );
    Ok(())
}
