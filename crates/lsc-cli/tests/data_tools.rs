//! `lsc data` tools as a user runs them: verify / stats messages, shuffle-split under a memory
//! limit, pack from every input format, make-bin read back by Python's pickle.

mod common;

use common::{lsc as run, lsc_cmd, text};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("lsc-cli-data-tools-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn s(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../lsc-data/tests/fixtures")
}

fn jpeg(k: usize) -> Vec<u8> {
    std::fs::read(fixtures().join(format!("imagelist/images/img{k}.jpg"))).unwrap()
}

fn b64(bytes: &[u8]) -> String {
    // A plain base64 encoder, independent of the crate under test.
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for k in 0..4 {
            if k <= c.len() {
                out.push(A[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn verify_names_every_bad_record_by_file_and_line() {
    let t = TempDir::new("verify");
    let good = |k: usize| format!("{}\t{k}", b64(&jpeg(k)));
    // CRLF and no final newline are fine.
    std::fs::write(t.path("ok"), format!("{}\r\n{}", good(0), good(1))).unwrap();
    let o = run(&["data", "verify", "--num-classes", "2", "--size", "28x28", &t.s("ok")]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("2 records, 0 bad"), "{}", text(&o.stdout));

    let not_image = b64(b"this is not an image");
    let cases: Vec<(&str, String, Vec<&str>, &str)> = vec![
        (
            "b64",
            format!("{}\n@@@notbase64!\t1\n", good(0)),
            vec![],
            "2: bad base64",
        ),
        (
            "decode",
            format!("{}\n{not_image}\t1\n", good(0)),
            vec![],
            "2: not a JPEG or PNG image",
        ),
        (
            "nolabel",
            format!("{}\n{}\t\n", good(0), b64(&jpeg(1))),
            vec![],
            "2: label `` is not",
        ),
        (
            "notab",
            format!("{}\n{}\n", good(0), b64(&jpeg(1))),
            vec![],
            "2: no tab",
        ),
        (
            "nonint",
            format!("{}\n{}\t1.5\n", good(0), b64(&jpeg(1))),
            vec![],
            "2: label `1.5` is not",
        ),
        (
            "range",
            format!("{}\n{}\n", good(0), good(3)),
            vec!["--num-classes", "3"],
            "2: label 3 is outside 0..3",
        ),
        (
            "size",
            format!("{}\n", good(0)),
            vec!["--size", "112x112"],
            "1: image is 28x28 (HxW) but the loader expects 112x112",
        ),
        (
            "emptyline",
            format!("{}\n\n{}\n", good(0), good(1)),
            vec![],
            "2: empty line",
        ),
    ];
    for (name, body, flags, want) in &cases {
        std::fs::write(t.path(name), body).unwrap();
        let mut args = vec!["data", "verify"];
        args.extend(flags.iter().copied());
        let path = t.s(name);
        args.push(&path);
        let o = run(&args);
        let err = text(&o.stderr);
        assert!(!o.status.success(), "{name}: {err}");
        assert!(err.contains(&format!("{path}:{want}")), "{name}: {err}");
        assert!(err.contains("1 bad record"), "{name}: {err}");
        // --skip-bad: a counted warning, exit 0.
        args.insert(2, "--skip-bad");
        let o = run(&args);
        assert!(o.status.success(), "{name}: {}", text(&o.stderr));
        assert!(text(&o.stderr).contains("warning: 1 bad record(s) skipped"), "{name}");
    }
    std::fs::write(t.path("empty"), "").unwrap();
    let o = run(&["data", "verify", &t.s("empty")]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains(&format!("{}: empty file", t.s("empty"))),
        "{}",
        text(&o.stderr)
    );
    // Every bad line of a file is reported, not only the first.
    let all: String = cases.iter().map(|c| c.1.clone()).collect();
    std::fs::write(t.path("all"), all).unwrap();
    let o = run(&["data", "verify", "--num-classes", "3", &t.s("all")]);
    let bad_lines = text(&o.stderr).lines().filter(|l| l.starts_with(&t.s("all"))).count();
    assert_eq!(bad_lines, 7, "{}", text(&o.stderr));
}

#[test]
fn stats_counts_classes_and_sizes() {
    let t = TempDir::new("stats");
    let mut lines = String::new();
    for (k, label) in [(0, 5), (1, 5), (2, 5), (3, 7), (0, 9), (1, 9)] {
        lines.push_str(&format!("{}\t{label}\n", b64(&jpeg(k))));
    }
    let png = std::fs::read(fixtures().join("png/rgb8.png")).unwrap();
    lines.push_str(&format!("{}\t7\n", b64(&png)));
    std::fs::write(t.path("s"), lines).unwrap();
    let o = run(&["data", "stats", &t.s("s")]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    for want in [
        "7 records, 7 good, 0 bad",
        "classes: 3; images per class: min 2, median 2, max 3",
        "sizes (HxW): 6x7: 1, 28x28: 6",
        "    5: 3\n    7: 2\n    9: 2\n",
    ] {
        assert!(out.contains(want), "{want:?} in\n{out}");
    }
    assert!(
        text(&o.stderr).is_empty(),
        "quiet when stderr is not a terminal: {}",
        text(&o.stderr)
    );
}

/// Runs `cmd` with its address space limited to `bytes` (RLIMIT_AS).
#[cfg(target_os = "linux")]
fn with_address_space_limit(cmd: &mut Command, bytes: u64) -> Output {
    use std::os::unix::process::CommandExt as _;
    #[repr(C)]
    struct RLimit {
        cur: u64,
        max: u64,
    }
    unsafe extern "C" {
        fn setrlimit(resource: i32, rlim: *const RLimit) -> i32;
    }
    const RLIMIT_AS: i32 = 9;
    let limit = RLimit { cur: bytes, max: bytes };
    // SAFETY: setrlimit(2) is async-signal-safe; the closure touches only `limit`, which lives
    // until the fork returns, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if setrlimit(RLIMIT_AS, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    cmd.output().expect("lsc runs")
}

/// A 64-bit FNV-1a hash of a line.
fn hash(line: &[u8]) -> u64 {
    line.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

fn line_hashes(paths: &[PathBuf], label_first: bool) -> Vec<u64> {
    let mut v = Vec::new();
    for p in paths {
        let data = std::fs::read(p).unwrap();
        for line in data.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if label_first {
                let tab = line.iter().position(|&b| b == b'\t').unwrap();
                let mut std_order = line[tab + 1..].to_vec();
                std_order.push(b'\t');
                std_order.extend_from_slice(&line[..tab]);
                v.push(hash(&std_order));
            } else {
                v.push(hash(line));
            }
        }
    }
    v.sort_unstable();
    v
}

#[cfg(target_os = "linux")]
#[test]
fn shuffle_split_streams_input_larger_than_its_memory_limit() {
    let t = TempDir::new("shuffle");
    let budget_mb = 4u64;
    // The address space the binary needs for a tiny input (what it takes to start).
    std::fs::write(t.path("tiny"), "5\tAAAA\n6\tAAAA\n").unwrap();
    let mut base = None;
    for mb in (8..=256u64).step_by(2) {
        let out = t.path("tiny-out");
        let _ = std::fs::remove_dir_all(&out);
        let mut cmd = lsc_cmd(&[
            "data",
            "shuffle-split",
            "--seed",
            "1",
            "--parts",
            "2",
            "--label-first",
            "--memory-mb",
            &budget_mb.to_string(),
            "--out",
            out.to_str().unwrap(),
            t.path("tiny").to_str().unwrap(),
        ]);
        if with_address_space_limit(&mut cmd, mb << 20).status.success() {
            base = Some(mb);
            break;
        }
    }
    let base = base.expect("shuffle-split runs within 256 MiB of address space");
    let limit = (base + 2 * budget_mb) << 20;
    // Input larger than the whole limit, over two files, in PLSC's label-first order.
    let target = limit + (limit / 2);
    let mut inputs = Vec::new();
    let mut written = 0u64;
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut n = 0usize;
    for f in 0..2 {
        let path = t.path(&format!("in{f}"));
        let mut text = Vec::with_capacity((target / 2 + 4096) as usize);
        while (text.len() as u64) < target / 2 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = 200 + (state % 1800) as usize;
            let body: String = (0..len)
                .map(|k| (b'A' + ((state >> (k % 58)) as u8).wrapping_add(k as u8) % 26) as char)
                .collect();
            text.extend_from_slice(format!("{}\t{n:08}{body}\n", state % 1000).as_bytes());
            n += 1;
        }
        written += text.len() as u64;
        std::fs::write(&path, text).unwrap();
        inputs.push(path);
    }
    assert!(written > limit, "{written} <= {limit}");
    let out = t.path("out");
    let parts = 3;
    let mut args: Vec<String> = [
        "data",
        "shuffle-split",
        "--seed",
        "42",
        "--parts",
        &parts.to_string(),
        "--label-first",
        "--no-pad",
        "--memory-mb",
        &budget_mb.to_string(),
        "--out",
        out.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(inputs.iter().map(|p| p.display().to_string()));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    // The limit bites: holding the whole input in memory (one bucket) does not fit under it.
    let mut whole = argv.clone();
    let budget_at = whole.iter().position(|&a| a == "--memory-mb").unwrap() + 1;
    whole[budget_at] = "1024";
    let o = with_address_space_limit(&mut lsc_cmd(&whole), limit);
    assert!(!o.status.success(), "an in-memory shuffle fitted under the limit");
    let o = with_address_space_limit(&mut lsc_cmd(&argv), limit);
    assert!(
        o.status.success(),
        "under a {} MiB limit with {} MiB of input: {}",
        limit >> 20,
        written >> 20,
        text(&o.stderr)
    );
    eprintln!(
        "shuffle-split: {} MiB of input under a {} MiB address-space limit (start needs {base} MiB): {}",
        written >> 20,
        limit >> 20,
        text(&o.stdout).trim()
    );
    // The inputs still exist, unchanged in size.
    let sizes: u64 = inputs.iter().map(|p| std::fs::metadata(p).unwrap().len()).sum();
    assert_eq!(sizes, written);
    // The output is a permutation of the input (in base64<TAB>label order).
    let list = std::fs::read_to_string(out.join("file_list.txt")).unwrap();
    let outs: Vec<PathBuf> = list.lines().map(|l| out.join(l)).collect();
    assert_eq!(outs.len(), parts);
    assert_eq!(line_hashes(&outs, false), line_hashes(&inputs, true));
    // Shuffled: the first output lines are not the first input lines.
    let first_out = std::fs::read_to_string(&outs[0]).unwrap();
    let ids: Vec<&str> = first_out
        .lines()
        .take(20)
        .map(|l| &l.split('\t').next().unwrap()[..8])
        .collect();
    let sorted = {
        let mut s = ids.clone();
        s.sort();
        s
    };
    assert_ne!(ids, sorted, "output looks unshuffled");
    // Nothing temporary left.
    let names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), parts + 1, "{names:?}");
}

#[test]
fn pack_reads_every_input_format() {
    let t = TempDir::new("pack");
    // Image folder: two classes.
    let folder = t.path("folder");
    for (class, ks) in [("cat", [0, 1]), ("dog", [2, 3])] {
        std::fs::create_dir_all(folder.join(class)).unwrap();
        for k in ks {
            std::fs::write(folder.join(class).join(format!("{k}.jpg")), jpeg(k)).unwrap();
        }
    }
    std::fs::copy(fixtures().join("png/rgb8.png"), folder.join("dog/9.png")).unwrap();
    let inputs = [
        ("folder", folder.display().to_string(), 5),
        ("list", fixtures().join("imagelist").display().to_string(), 6),
        ("rec", fixtures().join("face/train.rec").display().to_string(), 6),
        ("rec", fixtures().join("plain/data.rec").display().to_string(), 5),
    ];
    for (k, (format, src, n)) in inputs.iter().enumerate() {
        let out = t.s(&format!("out{k}"));
        let o = run(&[
            "data", "pack", "--format", format, "--src", src, "--out", &out, "--shards", "2",
        ]);
        assert!(o.status.success(), "{format}: {}", text(&o.stderr));
        assert!(
            text(&o.stdout).contains(&format!("{n} records, 2 shard(s)")),
            "{}",
            text(&o.stdout)
        );
        let o = run(&["data", "verify", &out]);
        assert!(o.status.success(), "{format}: {}", text(&o.stderr));
        // And the packed shards pack again (shards -> shards) to the same records.
        let again = t.s(&format!("again{k}"));
        let o = run(&["data", "pack", "--format", "shards", "--src", &out, "--out", &again]);
        assert!(o.status.success(), "{}", text(&o.stderr));
    }
    let classes = std::fs::read_to_string(t.path("out0/classes.txt")).unwrap();
    assert_eq!(classes, "0\tcat\n1\tdog\n");
    // A bad image fails the pack naming it, and nothing is left under a final name.
    std::fs::write(folder.join("dog/bad.jpg"), b"not a jpeg").unwrap();
    let out = t.s("bad");
    let o = run(&[
        "data",
        "pack",
        "--format",
        "folder",
        "--src",
        &folder.display().to_string(),
        "--out",
        &out,
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("dog/bad.jpg: not a JPEG or PNG"),
        "{}",
        text(&o.stderr)
    );
    assert!(!t.path("bad/part-00000").exists() && !t.path("bad/file_list.txt").exists());
    let o = run(&[
        "data",
        "pack",
        "--format",
        "folder",
        "--skip-bad",
        "--src",
        &folder.display().to_string(),
        "--out",
        &out,
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("warning: 1 bad record(s) skipped"),
        "{}",
        text(&o.stderr)
    );
    assert!(text(&o.stdout).contains("5 records"), "{}", text(&o.stdout));
}

/// `python3`, if present.
fn python() -> Option<&'static str> {
    let ok = Command::new("python3")
        .arg("-c")
        .arg("pass")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("LSC_REQUIRE_PYTHON").as_deref() != Ok("1"),
            "LSC_REQUIRE_PYTHON=1 but python3 is not available"
        );
        eprintln!("SKIPPED: python3 is not available (CI sets LSC_REQUIRE_PYTHON=1 after installing it)");
        return None;
    }
    Some("python3")
}

#[test]
fn make_bin_is_read_back_by_python_pickle() {
    let t = TempDir::new("makebin");
    let out = t.s("pairs.bin");
    let o = run(&[
        "data",
        "make-bin",
        "--pairs",
        &fixtures().join("bin/pairs.txt").display().to_string(),
        "--root",
        &fixtures().join("imagelist").display().to_string(),
        "--out",
        &out,
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("2 pairs (1 same, 1 different), 4 images"),
        "{}",
        text(&o.stdout)
    );
    let Some(py) = python() else { return };
    let script = r#"
import hashlib, pickle, sys
with open(sys.argv[1], 'rb') as f:
    bins, issame = pickle.load(f)
with open(sys.argv[1], 'rb') as f:
    bins2, issame2 = pickle.load(f, encoding='bytes')
assert bins == bins2 and issame == issame2
assert all(isinstance(b, bytes) for b in bins) and all(isinstance(s, bool) for s in issame)
print(len(bins), ' '.join(hashlib.sha256(b).hexdigest()[:16] for b in bins), issame)
"#;
    let o = Command::new(py).arg("-c").arg(script).arg(&out).output().unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let digest = |b: &[u8]| {
        let o = Command::new(py)
            .arg("-c")
            .arg("import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],'rb').read()).hexdigest()[:16])")
            .arg(fixtures().join(format!("imagelist/images/img{}.jpg", b[0])))
            .output()
            .unwrap();
        text(&o.stdout).trim().to_string()
    };
    let want: Vec<String> = (0..4u8).map(|k| digest(&[k])).collect();
    assert_eq!(text(&o.stdout).trim(), format!("4 {} [True, False]", want.join(" ")));
}
