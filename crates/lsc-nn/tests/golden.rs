//! Golden tests against PyTorch: small IResNets built from the baseline's IR block
//! (`tests/golden/make_golden.py`, outputs committed beside it) are loaded into our IResNet by
//! insightface parameter name and must reproduce PyTorch's embeddings, and in training mode its
//! gradients and BN running-statistic updates.
//!
//! "Within r relative" here means max |ours − torch| ≤ r · max |torch| over the tensor.

use lsc_ckpt::{Data, NamedTensor, read_safetensors};
use lsc_nn::{Backbone, IResNet, InferenceNet, Layer, Mode, ResNetConfig, load_named};
use lsc_tensor::Tensor;
use std::collections::BTreeMap;
use std::path::PathBuf;

struct Fixture {
    tensors: BTreeMap<String, NamedTensor>,
    cfg: ResNetConfig,
}

fn fixture(name: &str) -> Fixture {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    let (tensors, meta) = read_safetensors(&p).unwrap();
    let cfg: ResNetConfig = toml::from_str(&meta["config"]).unwrap();
    Fixture { tensors, cfg }
}

impl Fixture {
    fn get(&self, name: &str) -> Tensor {
        let t = &self.tensors[name];
        match &t.data {
            Data::F32(v) => Tensor::from_vec(&t.shape, v.clone()).unwrap(),
            _ => panic!("{name}: not f32"),
        }
    }

    /// The net with the fixture's weights; checks that every tensor left over is a test
    /// input or output, not a weight the model failed to pick up.
    fn net(&self) -> IResNet {
        let mut net = IResNet::new(&self.cfg, 0).unwrap();
        let unused = load_named(&mut net, &self.tensors).unwrap();
        for n in &unused {
            assert!(
                ["input", "emb_eval", "emb_train", "grad_out"].contains(&n.as_str())
                    || n.starts_with("grad.")
                    || n.starts_with("after_train."),
                "{n} was not loaded"
            );
        }
        net
    }
}

fn rel_err(ours: &[f32], torch: &[f32]) -> f64 {
    assert_eq!(ours.len(), torch.len());
    let d = ours
        .iter()
        .zip(torch)
        .map(|(a, b)| (a - b).abs() as f64)
        .fold(0.0, f64::max);
    let s = torch.iter().map(|b| b.abs() as f64).fold(0.0, f64::max);
    d / s.max(1e-30)
}

#[test]
fn eval_embeddings_match_pytorch_and_so_does_the_folded_net() {
    for name in ["golden_pc.safetensors", "golden_shared.safetensors"] {
        let f = fixture(name);
        let mut net = f.net();
        let x = f.get("input");
        let want = f.get("emb_eval");
        let got = Backbone::forward(&mut net, &x, Mode::Eval);
        let e = rel_err(got.data(), want.data());
        println!("{name}: eval embeddings within {e:.2e} relative of PyTorch");
        assert!(e < 1e-4, "{name}: relative error {e}");
        let folded = InferenceNet::from_resnet(&net).forward(&x);
        let e = rel_err(folded.data(), want.data());
        println!("{name}: BN-folded embeddings within {e:.2e} relative of PyTorch");
        assert!(e < 1e-4, "{name}: folded, relative error {e}");
    }
}

#[test]
fn train_mode_outputs_gradients_and_running_stats_match_pytorch() {
    let f = fixture("golden_pc.safetensors");
    let mut net = f.net();
    net.set_input_grad(true);
    let x = f.get("input");
    let emb = Layer::forward(&mut net, &x, Mode::Train);
    let e = rel_err(emb.data(), f.get("emb_train").data());
    assert!(e < 1e-4, "train-mode embeddings: relative error {e}");
    let dx = Layer::backward(&mut net, &f.get("grad_out"));
    // (name, max |ours − torch|, max |torch|) per gradient.
    let diff = |name: &str, ours: &[f32], torch: &[f32]| {
        let d = ours
            .iter()
            .zip(torch)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        (
            name.to_string(),
            d,
            torch.iter().map(|v| v.abs()).fold(0.0f32, f32::max),
        )
    };
    let mut rows = vec![diff("input", dx.data(), f.get("grad.input").data())];
    Layer::visit_params(&mut net, &mut |p| {
        rows.push(diff(&p.name, p.grad.data(), f.get(&format!("grad.{}", p.name)).data()));
    });
    // Biases right before a train-mode BN (every bn3 and downsample BN, bn2, fc) have an
    // exactly zero gradient: PyTorch gives ~1e-15, we give float noise. Each gradient is
    // compared to its own scale, floored at 1% of the largest gradient in the net.
    let top = rows.iter().map(|r| r.2).fold(0.0f32, f32::max);
    let (mut worst, mut at) = (0.0f32, String::new());
    for (name, d, m) in &rows {
        let e = d / m.max(0.01 * top);
        if e > worst {
            (worst, at) = (e, name.clone());
        }
    }
    println!(
        "{} gradients (input and every parameter): worst {at} at {worst:.2e} relative",
        rows.len()
    );
    assert!(worst < 1e-4, "gradient of {at}: relative error {worst}");
    Layer::visit_buffers(&mut net, &mut |name, t| {
        let e = rel_err(t.data(), f.get(&format!("after_train.{name}")).data());
        assert!(e < 1e-5, "{name} after one training forward: relative error {e}");
    });
}
