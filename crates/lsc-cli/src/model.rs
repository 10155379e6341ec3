//! `lsc model summary | list`: what an architecture costs (shapes, parameters, FLOPs).

use anyhow::{Context, Result, bail};
use lexopt::prelude::*;
use lsc_nn::inference::{ExportManifest, MANIFEST as MODEL_MANIFEST};
use lsc_nn::{PRESETS, ResNetConfig, Summary};
use lsc_train::Config;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

const USAGE: &str = "\
usage: lsc model summary [--model NAME | --config FILE | DIR] [--json]
       lsc model list

summary  prints each stage's output shape, the parameter count and the forward FLOPs per
         image of one architecture (the built-in default's when none is named):
  --model NAME   a preset: small, resnet50, resnet101, resnet152, iresnet18, iresnet34,
                 iresnet50, iresnet100
  --config FILE  the [model] table of a training config (overlaid on the built-in defaults)
  DIR            an exported model (lsc export) or a checkpoint directory (or root)
  --json         one JSON line instead of the table
list     one line per preset.

FLOPs are 2 x the multiply-accumulates of the convolutions and the FC, as
resnet_bench.py --mode flops counts them; BN and PReLU are counted apart, in elements.
";

/// Where an architecture came from, for the heading.
struct Source {
    label: String,
    cfg: ResNetConfig,
    exported: Option<(ExportManifest, usize)>,
}

fn from_dir(dir: &Path) -> Result<Source> {
    if dir.join(MODEL_MANIFEST).is_file() {
        let net = lsc_nn::InferenceNet::load(dir)?;
        let m = net.manifest().expect("a loaded model has its manifest").clone();
        return Ok(Source {
            label: format!("exported model {}", dir.display()),
            cfg: m.model.clone(),
            exported: Some((m, net.num_params())),
        });
    }
    let (ck, m) = lsc_ckpt::load_manifest(dir, false).with_context(|| {
        format!(
            "{}: neither an exported model ({MODEL_MANIFEST}) nor a checkpoint",
            dir.display()
        )
    })?;
    let cfg = Config::from_str_with_defaults(
        &format!("{} (its config)", ck.join(lsc_ckpt::MANIFEST).display()),
        &m.config,
    )?;
    Ok(Source {
        label: format!("checkpoint {} (step {})", ck.display(), m.step),
        cfg: cfg.model,
        exported: None,
    })
}

pub fn run(args: Vec<OsString>) -> Result<()> {
    let mut p = lexopt::Parser::from_args(args);
    let sub = match p.next()? {
        Some(Value(v)) => v.to_string_lossy().into_owned(),
        Some(Short('h') | Long("help")) => {
            print!("{USAGE}");
            return Ok(());
        }
        Some(other) => bail!("{}\n\n{USAGE}", other.unexpected()),
        None => bail!("missing model command\n\n{USAGE}"),
    };
    match sub.as_str() {
        "summary" => summary(p),
        "list" => {
            if let Some(a) = p.next()? {
                bail!("model list: {}\n\n{USAGE}", a.unexpected());
            }
            list();
            Ok(())
        }
        other => bail!("unknown model command `{other}`\n\n{USAGE}"),
    }
}

fn summary(mut p: lexopt::Parser) -> Result<()> {
    let (mut name, mut config, mut dir, mut json) = (None::<String>, None::<PathBuf>, None::<PathBuf>, false);
    while let Some(arg) = p.next()? {
        match arg {
            Long("model") => name = Some(p.value()?.to_string_lossy().into_owned()),
            Long("config") => config = Some(PathBuf::from(p.value()?)),
            Long("json") => json = true,
            Value(v) if dir.is_none() => dir = Some(PathBuf::from(v)),
            Short('h') | Long("help") => {
                print!("{USAGE}");
                return Ok(());
            }
            other => bail!("model summary: {}\n\n{USAGE}", other.unexpected()),
        }
    }
    if [name.is_some(), config.is_some(), dir.is_some()]
        .iter()
        .filter(|&&b| b)
        .count()
        > 1
    {
        bail!("model summary: name one of --model, --config or DIR\n\n{USAGE}");
    }
    let src = if let Some(n) = name {
        let cfg = ResNetConfig::preset(&n)
            .with_context(|| format!("--model {n}: not a preset (known: {})", PRESETS.join(", ")))?;
        Source {
            label: format!("preset {n}"),
            cfg,
            exported: None,
        }
    } else if let Some(path) = config {
        Source {
            label: format!("config {}", path.display()),
            cfg: Config::load(&path)?.model,
            exported: None,
        }
    } else if let Some(d) = dir {
        from_dir(&d)?
    } else {
        Source {
            label: "the built-in defaults".into(),
            cfg: Config::defaults().model,
            exported: None,
        }
    };
    src.cfg.validate()?;
    let s = src.cfg.summary();
    if json {
        println!("{}", to_json(&src, &s));
    } else {
        print!("{}", table(&src, &s));
    }
    Ok(())
}

/// `12345678` as `12,345,678`.
fn grouped(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn dims(v: &[usize]) -> String {
    v.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x")
}

fn describe(c: &ResNetConfig) -> String {
    format!(
        "units {:?}, widths {:?}, strides {:?}; input 3x{}x{}, {}-d embedding, PReLU {}, dropout {}, BN eps {:e}",
        c.units,
        c.widths,
        c.strides,
        c.input_size[0],
        c.input_size[1],
        c.emb_dim,
        match c.prelu {
            lsc_nn::PreluMode::PerChannel => "per channel",
            lsc_nn::PreluMode::Shared => "shared (one per layer)",
        },
        c.dropout,
        c.bn_eps
    )
}

fn table(src: &Source, s: &Summary) -> String {
    let mut o = format!(
        "model: {}{}\n  {}\n",
        src.label,
        match src.cfg.preset_name() {
            Some(n) if !src.label.starts_with("preset") => format!(" (preset {n})"),
            _ => String::new(),
        },
        describe(&src.cfg)
    );
    o += &format!(
        "{:<8} {:>5}  {:<12} {:>14} {:>18}\n",
        "stage", "units", "output", "params", "FLOPs/image"
    );
    for r in &s.stages {
        let units = if r.units == 0 {
            "-".to_string()
        } else {
            r.units.to_string()
        };
        o += &format!(
            "{:<8} {:>5}  {:<12} {:>14} {:>18}\n",
            r.name,
            units,
            dims(&r.out_shape),
            grouped(r.params as u64),
            grouped(r.flops)
        );
    }
    o += &format!(
        "{:<8} {:>5}  {:<12} {:>14} {:>18}\n",
        "total",
        "",
        "",
        grouped(s.params as u64),
        grouped(s.flops)
    );
    o += &format!(
        "params {:.3} M, {:.4} GFLOPs per image forward (conv MACs {}, FC MACs {}); BN {} and PReLU {} elements per image\n",
        s.params as f64 / 1e6,
        s.flops as f64 / 1e9,
        s.conv_macs,
        s.linear_macs,
        s.bn_elems,
        s.prelu_elems
    );
    if let Some((m, stored)) = &src.exported {
        o += &format!(
            "exported: BN folded, {} stored scalars; from {} at step {}; input [{}] RGB as (x - {}) / {}\n",
            grouped(*stored as u64),
            m.source_checkpoint,
            m.source_step,
            dims(&m.input_shape),
            m.mean,
            m.std
        );
    }
    o
}

fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o += "\\\"",
            '\\' => o += "\\\\",
            c if (c as u32) < 0x20 => o += &format!("\\u{:04x}", c as u32),
            c => o.push(c),
        }
    }
    o + "\""
}

fn json_list(v: &[usize]) -> String {
    format!("[{}]", v.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(","))
}

fn to_json(src: &Source, s: &Summary) -> String {
    let c = &src.cfg;
    let stages: Vec<String> = s
        .stages
        .iter()
        .map(|r| {
            format!(
                "{{\"name\":{},\"units\":{},\"output\":{},\"params\":{},\"flops\":{}}}",
                json_str(&r.name),
                r.units,
                json_list(&r.out_shape),
                r.params,
                r.flops
            )
        })
        .collect();
    let mut o = format!(
        "{{\"source\":{},\"preset\":{},\"input\":[3,{},{}],\"emb_dim\":{},\"params\":{},\"flops\":{},\"conv_macs\":{},\"linear_macs\":{},\"bn_elems\":{},\"prelu_elems\":{},\"stages\":[{}]",
        json_str(&src.label),
        c.preset_name().map_or("null".to_string(), json_str),
        c.input_size[0],
        c.input_size[1],
        c.emb_dim,
        s.params,
        s.flops,
        s.conv_macs,
        s.linear_macs,
        s.bn_elems,
        s.prelu_elems,
        stages.join(",")
    );
    if let Some((m, stored)) = &src.exported {
        o += &format!(
            ",\"exported\":{{\"stored_params\":{stored},\"source_checkpoint\":{},\"source_step\":{}}}",
            json_str(&m.source_checkpoint),
            m.source_step
        );
    }
    o + "}"
}

fn list() {
    println!(
        "{:<11} {:<16} {:<17} {:>4} {:<11} {:>9} {:>9}",
        "preset", "units", "widths", "emb", "PReLU", "params M", "GFLOPs"
    );
    for n in PRESETS {
        let c = ResNetConfig::preset(n).expect("a listed preset");
        let s = c.summary();
        println!(
            "{:<11} {:<16} {:<17} {:>4} {:<11} {:>9.3} {:>9.4}",
            n,
            format!("{:?}", c.units),
            c.widths.iter().map(|w| w.to_string()).collect::<Vec<_>>().join("-"),
            c.emb_dim,
            match c.prelu {
                lsc_nn::PreluMode::PerChannel => "per_channel",
                lsc_nn::PreluMode::Shared => "shared",
            },
            s.params as f64 / 1e6,
            s.flops as f64 / 1e9
        );
    }
}
