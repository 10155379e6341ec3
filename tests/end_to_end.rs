//! End to end: train the small IResNet with each head on a slice of the committed real
//! Fashion-MNIST images and check that the loss falls and the model beats chance.

use lsc_train::{Config, train};

/// The built-in defaults pointed at a slice of the committed data.
fn slice_config(records: usize, epochs: usize) -> Config {
    let mut c = Config::defaults();
    let d = lsc_tests::mini_dataset();
    c.data.train = d.join("train");
    c.data.test = d.join("test");
    c.data.limit = records;
    c.data.batch_size = 32;
    c.train.epochs = epochs;
    c.train.eval_every = epochs;
    c.optim.warmup_epochs = 0.5;
    c.optim.decay_epochs = vec![];
    c
}

#[test]
fn arcface_training_lowers_the_loss_on_real_images() {
    let cfg = slice_config(960, 3);
    let s = train(&cfg, true).unwrap();
    println!("{}", s.to_json());
    assert_eq!(s.steps, 3 * 30);
    assert_eq!(s.skipped_steps, 0);
    assert!(
        s.final_loss < 0.8 * s.first_epoch_loss,
        "loss did not drop: {:?}",
        s.epoch_losses
    );
    // 10 balanced classes: chance is 0.1.
    assert!(s.test_top1.unwrap() > 0.3, "top-1 {:?}", s.test_top1);
}

#[test]
fn every_head_trains_and_two_thread_ranks_agree_on_the_loop() {
    for loss in ["softmax", "cosface"] {
        let mut cfg = slice_config(320, 2);
        cfg.head = Config::from_str_with_defaults("test", &format!("[head]\nloss = \"{loss}\"\n"))
            .unwrap()
            .head;
        let s = train(&cfg, true).unwrap();
        assert!(s.final_loss < s.first_epoch_loss, "{loss}: {:?}", s.epoch_losses);
    }
    // Two ranks as threads: the batch per rank halves so the global batch is the same.
    let mut cfg = slice_config(640, 2);
    cfg.train.ranks = 2;
    cfg.data.batch_size = 16;
    let s = train(&cfg, true).unwrap();
    assert_eq!((s.ranks, s.steps), (2, 2 * 20));
    assert!(s.final_loss < s.first_epoch_loss, "2 ranks: {:?}", s.epoch_losses);
}

#[test]
fn a_bad_data_path_is_named() {
    let mut cfg = slice_config(64, 1);
    cfg.data.train = "/no/such/shards".into();
    let e = train(&cfg, true).unwrap_err().to_string();
    assert!(e.contains("/no/such/shards"), "{e}");
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let cfg = slice_config(320, 2);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| train(&cfg, true).unwrap())
    };
    let (a, b) = (run(1), run(3));
    assert_eq!(a.epoch_losses, b.epoch_losses);
    assert_eq!(a.test_top1, b.test_top1);
}

/// The lsc64 hashes of the files of the newest checkpoint under `root`.
fn final_hashes(root: &std::path::Path) -> Vec<(String, String)> {
    let (_, m) = lsc_ckpt::load_manifest(root, true).unwrap();
    m.files.into_iter().map(|f| (f.name, f.hash)).collect()
}

#[test]
fn an_interrupted_and_resumed_run_ends_bit_identical() {
    let tmp = std::env::temp_dir().join(format!("lsc-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    for ranks in [1, 2] {
        let mut base = slice_config(320, 3);
        base.train.ranks = ranks;
        base.data.batch_size = 32 / ranks;
        base.head.sample_rate = 0.7; // Partial FC sampling must resume too
        base.model.dropout = 0.2; // and dropout masks
        let mut whole = base.clone();
        whole.train.checkpoint_dir = tmp.join(format!("whole-{ranks}"));
        let a = train(&whole, true).unwrap();
        // Interrupted mid-epoch (step 7 of 10) and at an epoch end (step 20), then resumed.
        for stop in [7, 20] {
            let root = tmp.join(format!("cut-{ranks}-{stop}"));
            let mut cut = base.clone();
            cut.train.checkpoint_dir = root.clone();
            cut.train.max_steps = stop;
            let partial = train(&cut, true).unwrap();
            assert_eq!(partial.steps, stop);
            let mut rest = base.clone();
            rest.train.checkpoint_dir = root.clone();
            rest.train.resume = root.clone();
            let b = train(&rest, true).unwrap();
            assert_eq!(b.steps, a.steps);
            assert_eq!(b.epoch_losses, a.epoch_losses, "{ranks} ranks, cut at {stop}");
            assert_eq!(
                final_hashes(&root),
                final_hashes(&whole.train.checkpoint_dir),
                "{ranks} ranks, cut at {stop}"
            );
        }
    }
    // A corrupted checkpoint is refused, naming the file.
    let root = tmp.join("cut-1-7");
    let (dir, _) = lsc_ckpt::load_manifest(&root, true).unwrap();
    let f = dir.join("backbone.safetensors");
    let mut bytes = std::fs::read(&f).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x40;
    std::fs::write(&f, bytes).unwrap();
    let mut again = slice_config(320, 3);
    again.train.resume = root;
    let e = train(&again, true).unwrap_err().to_string();
    assert!(
        e.contains("backbone.safetensors") && e.contains("checksum mismatch"),
        "{e}"
    );
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn recordio_and_image_list_sets_train_and_evaluate() {
    let fx = lsc_tests::repo_root().join("crates/lsc-data/tests/fixtures");
    for (train_set, test_set) in [
        (fx.join("face/train.rec"), fx.join("imagelist/label.txt")),
        (fx.join("imagelist"), fx.join("plain/data.rec")),
    ] {
        let mut cfg = slice_config(0, 2);
        cfg.data.train = train_set.clone();
        cfg.data.test = test_set;
        cfg.data.batch_size = 2;
        let s = train(&cfg, true).unwrap_or_else(|e| panic!("{}: {e}", train_set.display()));
        assert_eq!(s.steps, 2 * 3, "{}", train_set.display());
        assert!(s.test_top1.is_some() && s.final_loss.is_finite());
    }
}

#[test]
fn resize_crop_and_skip_bad_train_and_a_bad_record_is_named_without_skip_bad() {
    let tmp = std::env::temp_dir().join(format!("lsc-e2e-bad-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    // 96 real records with a corrupt one (bad base64) as line 41.
    let src = std::fs::read_to_string(lsc_tests::mini_dataset().join("train/part-00000")).unwrap();
    let mut lines: Vec<&str> = src.lines().take(96).collect();
    lines.insert(40, "!!not base64!!\t3");
    std::fs::write(tmp.join("part-00000"), lines.join("\n") + "\n").unwrap();
    std::fs::write(tmp.join("file_list.txt"), "part-00000\n").unwrap();
    let mut cfg = slice_config(0, 1);
    cfg.data.train = tmp.clone();
    cfg.data.test = std::path::PathBuf::new();
    let e = train(&cfg, true).unwrap_err().to_string();
    assert!(e.contains("part-00000:41"), "{e}");
    cfg.data.skip_bad = true;
    // 28x28 images resized to 32x32, with random resized crops.
    cfg.data.resize = true;
    cfg.data.random_crop = true;
    cfg.data.crop_scale = [0.5, 1.0];
    cfg.model.input_size = [32, 32];
    let s = train(&cfg, true).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.steps, 97usize.div_ceil(32));
    assert!(s.final_loss.is_finite());
    cfg.data.crop_scale = [0.0, 1.0];
    let e = train(&cfg, true).unwrap_err().to_string();
    assert!(e.contains("data.crop_scale"), "{e}");
    std::fs::remove_dir_all(&tmp).unwrap();
}
