//! `lsc model summary | list` and `lsc export`, run as a user runs them, and the `[model]`
//! declarations of a config.

use lsc_data::Dataset;
use lsc_nn::{Backbone, IResNet, InferenceNet, Mode, load_named};
use lsc_tensor::Tensor;
use lsc_train::Config;
mod common;

use common::{lsc, root, stderr};
use std::path::{Path, PathBuf};
use std::process::Output;

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lsc-cli-model-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The integer after `"key":` in a JSON line.
fn json_u64(line: &str, key: &str) -> u64 {
    let at = line
        .find(&format!("\"{key}\":"))
        .unwrap_or_else(|| panic!("{key} in {line}"))
        + key.len()
        + 3;
    line[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .unwrap()
}

#[test]
fn summary_of_every_preset_counts_what_the_pytorch_baseline_counts() {
    // resnet_bench.py --arch r50 --mode flops: conv_macs 6296485888 + linear_macs 12845056,
    // i.e. 12618661888 FLOPs (its "total_gflops": 12.6187); PLSC's resnet50 has the same
    // layers with one PReLU slope per layer (43590848 params per channel, 5888 slopes → 25).
    let out = ok(&lsc(&["model", "summary", "--model", "resnet50", "--json"]));
    let line = out.lines().last().unwrap();
    assert_eq!(json_u64(line, "flops"), 12_618_661_888, "{line}");
    assert_eq!(json_u64(line, "params"), 43_590_848 - 5888 + 25, "{line}");
    assert!(line.contains("\"preset\":\"resnet50\""), "{line}");
    // iresnet100 = r100: 2 × (12076761088 + 12845056).
    let out = ok(&lsc(&["model", "summary", "--model", "iresnet100", "--json"]));
    assert_eq!(json_u64(out.lines().last().unwrap(), "flops"), 24_179_212_288);
    for n in lsc_nn::PRESETS {
        let t = ok(&lsc(&["model", "summary", "--model", n]));
        assert!(
            t.contains("layer4") && t.contains("head") && t.contains("GFLOPs"),
            "{n}: {t}"
        );
    }
    let t = ok(&lsc(&["model", "summary", "--model", "resnet152"]));
    assert!(t.contains("layer3      36  256x14x14"), "{t}");
    // No model named: the built-in default (small).
    let t = ok(&lsc(&["model", "summary"]));
    assert!(t.contains("preset small") && t.contains("128x2x2"), "{t}");
    let l = ok(&lsc(&["model", "list"]));
    assert_eq!(l.lines().count(), 1 + lsc_nn::PRESETS.len(), "{l}");
    let e = stderr(&lsc(&["model", "summary", "--model", "resnet51"]));
    assert!(e.contains("--model resnet51") && e.contains("iresnet100"), "{e}");
}

#[test]
fn a_model_declared_in_toml_is_summarised_and_a_bad_one_is_named() {
    let d = temp_dir("toml");
    let good = d.join("staged.toml");
    std::fs::write(
        &good,
        r#"[model]
emb_dim = 256
input_size = [112, 96]
prelu = "shared"
stages = [
  { unit = "ir", depth = 2, width = 32, stride = 2 },
  { unit = "ir", depth = 3, width = 64, stride = 2 },
  { unit = "ir", depth = 1, width = 64, stride = 1 },
  { unit = "ir", depth = 2, width = 128 },
]
"#,
    )
    .unwrap();
    let t = ok(&lsc(&["model", "summary", "--config", good.to_str().unwrap()]));
    for row in ["stem", "layer1", "32x56x48", "64x28x24", "layer3", "128x14x12", "256"] {
        assert!(t.contains(row), "{row} in {t}");
    }
    // The same architecture through the library: the trainer reads what the summary shows.
    let cfg = Config::load(&good).unwrap();
    cfg.validate().unwrap();
    assert_eq!(
        (cfg.model.units.clone(), cfg.model.strides.clone()),
        (vec![2, 3, 1, 2], vec![2, 2, 1, 2])
    );
    let mut net = IResNet::new(&cfg.model, 0).unwrap();
    assert_eq!(Backbone::num_params(&mut net), cfg.model.summary().params);

    let bad = d.join("bad.toml");
    std::fs::write(
        &bad,
        "[model]\nstages = [\n  { depth = 1, width = 8 },\n  { depth = 1, width = 8 },\n  { depth = 2, width = 0 },\n]\n",
    )
    .unwrap();
    for args in [
        vec!["model", "summary", "--config", bad.to_str().unwrap()],
        vec!["train", "--config", bad.to_str().unwrap()],
    ] {
        let e = stderr(&lsc(&args));
        assert!(
            e.contains("bad.toml") && e.contains("model.stages[2].width: must be > 0"),
            "{args:?}: {e}"
        );
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn presets_and_overrides_in_a_config() {
    let c = Config::from_str_with_defaults("u.toml", "[model]\nname = \"iresnet50\"\nemb_dim = 256\n").unwrap();
    assert_eq!(
        (c.model.units.clone(), c.model.emb_dim, c.model.input_size),
        (vec![3, 4, 14, 3], 256, [112, 112])
    );
    // The defaults are the small preset, unchanged in meaning.
    let d = Config::defaults();
    assert_eq!(d.model, lsc_nn::ResNetConfig::preset("small").unwrap());
    // A resolved config, as a checkpoint records it, reads back the same.
    assert_eq!(Config::from_str_with_defaults("x", &c.to_toml()).unwrap(), c);
    let e = Config::from_str_with_defaults("u.toml", "[model]\nname = \"resnet5\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("u.toml") && e.contains("model.name: unknown preset \"resnet5\""),
        "{e}"
    );
    let e = Config::from_str_with_defaults("u.toml", "[model]\nstages = [{ depth = 1, width = 8, colour = 1 }]\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("u.toml") && e.contains("colour"), "{e}");
}

/// The first `n` test images, decoded and normalised as the trainer's loader does.
fn test_images(n: usize) -> Tensor {
    let ds = lsc_data::Base64Shards::open(&root().join("datasets/fashion-mnist-mini/test")).unwrap();
    let mut x = vec![0.0f32; n * 3 * 28 * 28];
    for (i, out) in x.chunks_mut(3 * 28 * 28).enumerate() {
        let r = ds.record(i).unwrap();
        let (rgb, h, w) = lsc_data::decode_rgb(&r.image).unwrap();
        lsc_data::to_chw_normalized(&rgb, h, w, false, out);
    }
    Tensor::from_vec(&[n, 3, 28, 28], x).unwrap()
}

/// The checkpoint's backbone as the trainer holds it.
fn checkpoint_net(ckpt: &Path) -> IResNet {
    let (dir, m) = lsc_ckpt::load_manifest(ckpt, true).unwrap();
    let cfg = Config::from_str_with_defaults("manifest", &m.config).unwrap();
    let mut net = IResNet::new(&cfg.model, 12345).unwrap();
    let (t, _) = lsc_ckpt::read_safetensors(&dir.join("backbone.safetensors")).unwrap();
    load_named(&mut net, &t).unwrap();
    net
}

#[test]
fn export_folds_a_trained_checkpoint_that_then_gives_the_same_embeddings() {
    let d = temp_dir("export");
    let ck = d.join("ckpt");
    let model = d.join("model");
    ok(&lsc(&[
        "train",
        "--limit",
        "64",
        "--batch-size",
        "32",
        "--max-steps",
        "2",
        "--checkpoint-dir",
        ck.to_str().unwrap(),
        "--quiet",
    ]));
    let out = ok(&lsc(&[
        "export",
        ck.to_str().unwrap(),
        "--out",
        model.to_str().unwrap(),
    ]));
    assert!(out.contains("(step 2)") && out.contains("model.safetensors"), "{out}");
    assert!(model.join("model.toml").is_file() && !d.join(".tmp-model").exists());

    let inf = InferenceNet::load(&model).unwrap();
    let m = inf.manifest().unwrap();
    assert_eq!((m.input_shape, m.emb_dim, m.source_step), ([3, 28, 28], 128, 2));
    assert!(
        m.source_checkpoint.ends_with("step-000000002"),
        "{}",
        m.source_checkpoint
    );
    // The manifest's normalisation is the loader's: (x − mean) / std.
    let mut px = [0.0f32; 3];
    lsc_data::to_chw_normalized(&[0, 255, 128], 1, 1, false, &mut px);
    assert_eq!(
        px,
        [
            (0.0 - m.mean) / m.std,
            (255.0 - m.mean) / m.std,
            (128.0 - m.mean) / m.std
        ]
    );

    let x = test_images(16);
    let mut net = checkpoint_net(&ck);
    let want = Backbone::forward(&mut net, &x, Mode::Eval);
    let got = inf.forward(&x);
    let d_max = got
        .data()
        .iter()
        .zip(want.data())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    let scale = want.data().iter().map(|v| v.abs()).fold(0.0f32, f32::max);
    println!("exported vs checkpoint (eval): max |diff| {d_max:.3e}, max |emb| {scale:.3e}");
    assert!(d_max <= 1e-4 * scale, "relative error {}", d_max / scale);

    // The summary reads an exported model and a checkpoint.
    let t = ok(&lsc(&["model", "summary", model.to_str().unwrap()]));
    assert!(t.contains("exported: BN folded") && t.contains("at step 2"), "{t}");
    let t = ok(&lsc(&["model", "summary", ck.to_str().unwrap()]));
    assert!(t.contains("checkpoint") && t.contains("preset small"), "{t}");
    // An existing model is kept unless --force.
    let e = stderr(&lsc(&[
        "export",
        ck.to_str().unwrap(),
        "--out",
        model.to_str().unwrap(),
    ]));
    assert!(e.contains("already exists"), "{e}");
    ok(&lsc(&[
        "export",
        ck.to_str().unwrap(),
        "--out",
        model.to_str().unwrap(),
        "--force",
    ]));
    let e = stderr(&lsc(&["export", d.join("nothing").to_str().unwrap(), "--out", "x"]));
    assert!(e.contains("no checkpoint found"), "{e}");
    std::fs::remove_dir_all(&d).unwrap();
}
