//! The example backbone trains through `lsc_train::train_with` on the committed real
//! Fashion-MNIST images, and its checkpoints hold its own parameter names.

use lsc_example_backbone::TinyCnn;
use lsc_nn::Backbone;
use lsc_train::{Config, train_with};
use std::path::PathBuf;

fn make(cfg: &Config) -> Result<Box<dyn Backbone>, String> {
    let [h, w] = cfg.model.input_size;
    Ok(Box::new(TinyCnn::new([h, w], 8, 16, cfg.model.emb_dim, cfg.seed)))
}

#[test]
fn trains_a_few_epochs_with_a_custom_backbone_and_checkpoints_it() {
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../datasets/fashion-mnist-mini");
    let mut cfg = Config::from_str_with_defaults("test", "[head]\nloss = \"softmax\"\n").unwrap();
    cfg.data.train = data.join("train");
    cfg.data.test = data.join("test");
    cfg.data.limit = 640;
    cfg.data.batch_size = 32;
    cfg.train.epochs = 3;
    cfg.train.eval_every = 3;
    cfg.optim.decay_epochs = vec![];
    let root = std::env::temp_dir().join(format!("lsc-example-backbone-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    cfg.train.checkpoint_dir = root.clone();
    let s = train_with(&cfg, true, &make).unwrap();
    println!("{}", s.to_json());
    assert_eq!((s.steps, s.skipped_steps), (3 * 20, 0));
    assert!(
        s.final_loss < s.first_epoch_loss,
        "loss did not drop: {:?}",
        s.epoch_losses
    );
    assert!(s.test_top1.unwrap() > 0.2, "top-1 {:?} (chance 0.1)", s.test_top1);
    let (dir, _) = lsc_ckpt::load_manifest(&root, true).unwrap();
    let (t, _) = lsc_ckpt::read_safetensors(&dir.join("backbone.safetensors")).unwrap();
    for n in ["conv1.weight", "prelu2.weight", "bn2.running_var", "features.bias"] {
        assert!(t.contains_key(n), "{n} missing from the checkpoint");
    }
    // A backbone that disagrees with [model] is refused with both shapes named.
    let bad = |_: &Config| -> Result<Box<dyn Backbone>, String> { Ok(Box::new(TinyCnn::new([28, 28], 4, 4, 7, 0))) };
    cfg.train.checkpoint_dir = PathBuf::new();
    let e = train_with(&cfg, true, &bad).unwrap_err().to_string();
    assert!(e.contains("model.emb_dim"), "{e}");
    std::fs::remove_dir_all(&root).unwrap();
}
