//! The TOML config: built-in defaults (`defaults.toml`) overlaid by a user file and flags.

use lsc_head::HeadConfig;
use lsc_nn::ResNetConfig;
use lsc_optim::OptimConfig;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The defaults every config starts from.
pub const DEFAULTS: &str = include_str!("defaults.toml");

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub seed: u64,
    pub data: DataConfig,
    /// The backbone: a preset `name` and/or explicit keys, resolved on reading (`lsc_nn::arch`).
    pub model: ResNetConfig,
    pub head: HeadConfig,
    pub optim: OptimConfig,
    pub train: TrainConfig,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    pub train: PathBuf,
    pub test: PathBuf,
    pub num_classes: usize,
    pub batch_size: usize,
    pub flip: bool,
    pub prefetch: usize,
    pub limit: usize,
    pub resize: bool,
    pub random_crop: bool,
    pub crop_scale: [f32; 2],
    pub crop_ratio: [f32; 2],
    pub skip_bad: bool,
    pub workers: usize,
}

impl DataConfig {
    /// The loader's augmentation for training (`train`) or evaluation (no crop).
    pub fn augment(&self, train: bool) -> lsc_data::Augment {
        lsc_data::Augment {
            resize: self.resize,
            crop: (train && self.random_crop).then_some(lsc_data::RandomCrop {
                scale: (self.crop_scale[0], self.crop_scale[1]),
                ratio: (self.crop_ratio[0], self.crop_ratio[1]),
            }),
            skip_bad: self.skip_bad,
            num_classes: Some(self.num_classes),
            workers: self.workers,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub epochs: usize,
    pub ranks: usize,
    pub log_every: usize,
    pub eval_every: usize,
    /// Where checkpoints go ("" for none).
    pub checkpoint_dir: PathBuf,
    /// Save after every N epochs (0: never at epoch ends).
    pub save_every_epochs: usize,
    /// Save after every N global steps (0: never mid-epoch).
    pub save_every_steps: usize,
    /// Keep the newest N checkpoints (0: all).
    pub keep_last: usize,
    /// Resume from this checkpoint, or from the newest under this root ("" for a fresh start).
    pub resume: PathBuf,
    /// Stop after this many global steps (0: run every epoch).
    pub max_steps: usize,
    /// Remote mirror of `checkpoint_dir` ("" for none): a Hadoop path when `fs_name` is set,
    /// else a directory.
    pub fs_checkpoint_dir: String,
    pub fs_name: String,
    pub fs_user: String,
    pub hadoop_bin: PathBuf,
    pub fs_retries: u32,
    pub fs_backoff_s: f64,
}

impl TrainConfig {
    /// The remote checkpoint store the config names, if any.
    pub fn store(&self) -> Option<Box<dyn lsc_ckpt::Store>> {
        if self.fs_checkpoint_dir.is_empty() {
            return None;
        }
        let retry = lsc_ckpt::Retry {
            retries: self.fs_retries,
            backoff: std::time::Duration::from_secs_f64(self.fs_backoff_s.max(0.0)),
        };
        Some(if self.fs_name.is_empty() {
            Box::new(lsc_ckpt::DirStore {
                dir: PathBuf::from(&self.fs_checkpoint_dir),
                retry,
            })
        } else {
            Box::new(lsc_ckpt::HadoopStore {
                bin: self.hadoop_bin.clone(),
                fs_name: self.fs_name.clone(),
                user: self.fs_user.clone(),
                dir: self.fs_checkpoint_dir.clone(),
                retry,
            })
        })
    }
}

/// A config that could not be read; the message names the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("config {path}: {msg}")]
    Parse { path: String, msg: String },
    #[error("{0}")]
    Invalid(String),
}

/// `[table] key = value: message` for a deserialisation error in the merged text.
fn locate(text: &str, e: &toml::de::Error) -> String {
    let Some(span) = e.span() else {
        return e.message().to_string();
    };
    let at = span.start.min(text.len());
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("").trim();
    let table = text[..line_start]
        .lines()
        .rev()
        .find(|l| l.starts_with('['))
        .unwrap_or("(top level)");
    if line.starts_with('[') {
        format!("`{line}`: {}", e.message())
    } else if line.is_empty() {
        format!("{table}: {}", e.message())
    } else {
        format!("{table} `{line}`: {}", e.message())
    }
}

/// Overlays `over` onto `base`, table by table.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

impl Config {
    /// The built-in defaults.
    pub fn defaults() -> Config {
        Config::from_tables("built-in defaults", vec![]).expect("defaults.toml is valid")
    }

    /// Defaults overlaid by the TOML text `text` (from `origin`, for messages).
    pub fn from_str_with_defaults(origin: &str, text: &str) -> Result<Config, ConfigError> {
        let t: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.into(),
            msg: e.to_string(),
        })?;
        Config::from_tables(origin, vec![t])
    }

    /// Defaults overlaid by the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_str_with_defaults(&path.display().to_string(), &text)
    }

    fn from_tables(origin: &str, overs: Vec<toml::Table>) -> Result<Config, ConfigError> {
        let mut base: toml::Table = toml::from_str(DEFAULTS).expect("defaults.toml parses");
        for o in overs {
            merge(&mut base, o);
        }
        // Round-trip through text so that an unknown or mistyped key can be reported with its
        // table and its line as it reads (the merged text's line numbers are not the user's).
        let text = toml::to_string(&base).expect("a table serialises");
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: origin.into(),
            msg: locate(&text, &e),
        })
    }

    /// Checks every section, naming the offending key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let inv = ConfigError::Invalid;
        self.model.validate().map_err(|e| inv(e.to_string()))?;
        self.head.validate().map_err(inv)?;
        self.optim.validate().map_err(inv)?;
        if self.data.num_classes == 0 {
            return Err(inv("data.num_classes must be positive".into()));
        }
        if self.data.batch_size == 0 {
            return Err(inv("data.batch_size must be positive".into()));
        }
        if self.data.random_crop {
            self.data
                .augment(true)
                .crop
                .map_or(Ok(()), |c| c.validate())
                .map_err(|e| inv(format!("data.crop_scale / data.crop_ratio: {e}")))?;
        }
        if self.train.epochs == 0 {
            return Err(inv("train.epochs must be positive".into()));
        }
        if self.train.ranks == 0 {
            return Err(inv("train.ranks must be positive".into()));
        }
        if self.train.eval_every == 0 {
            return Err(inv("train.eval_every must be positive".into()));
        }
        if !self.train.fs_checkpoint_dir.is_empty() && self.train.checkpoint_dir.as_os_str().is_empty() {
            return Err(inv(
                "train.fs_checkpoint_dir mirrors train.checkpoint_dir, which is not set".into(),
            ));
        }
        if !(self.train.fs_backoff_s >= 0.0) {
            return Err(inv("train.fs_backoff_s must be at least 0".into()));
        }
        Ok(())
    }

    /// The resolved config as TOML text (recorded with checkpoints and printed by `--dry-run`).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("config serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_validate() {
        let c = Config::defaults();
        c.validate().unwrap();
        assert_eq!(c.head.scale, 64.0);
        assert_eq!(c.model.widths, vec![16, 32, 64, 128]);
        // The resolved text reads back to the same config.
        assert_eq!(Config::from_str_with_defaults("x", &c.to_toml()).unwrap(), c);
    }

    #[test]
    fn user_values_override_and_unknown_keys_are_named() {
        let c = Config::from_str_with_defaults("u.toml", "[optim]\nlr = 0.5\n[train]\nepochs = 3\n").unwrap();
        assert_eq!((c.optim.lr, c.train.epochs, c.optim.momentum), (0.5, 3, 0.9));
        let e = Config::from_str_with_defaults("u.toml", "[optim]\nlrr = 0.5\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("u.toml") && e.contains("lrr"), "{e}");
        let e = Config::from_str_with_defaults("u.toml", "[optim\nlr = 1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("u.toml") && e.contains("line 1"), "{e}");
        let e = Config::from_str_with_defaults("u.toml", "[head]\nloss = \"arcfase\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("arcfase"), "{e}");
        let c = Config::from_str_with_defaults("u.toml", "[model]\nwidths = [8, 8]\n").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("model.widths"));
    }

    #[test]
    fn missing_file_is_named() {
        let e = Config::load(Path::new("/no/such/lsc.toml")).unwrap_err().to_string();
        assert!(e.contains("/no/such/lsc.toml"), "{e}");
    }
}
