//! `qs systemd units`: one systemd unit per model runtime of the spec files, with
//! `Conflicts=` between runtimes that cannot share a GPU, written into a directory (for
//! `/etc/systemd/system`, or checked with `systemd-analyze verify`).

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

/// Options of `qs systemd units`.
pub struct Units {
    pub files: Vec<PathBuf>,
    /// The node's GPUs, by VRAM.
    pub gpus_mib: Vec<u64>,
    pub out: PathBuf,
    pub port_base: u16,
    pub config: Option<PathBuf>,
}

pub fn units(opts: &Units) -> Result<()> {
    if opts.gpus_mib.is_empty() {
        bail!("name the node's GPUs with --gpu-mib (one per GPU)");
    }
    let config = crate::config_file::read_config(opts.config.as_deref())?;
    let mut models = Vec::new();
    for file in &opts.files {
        models.extend(crate::up::read_spec(file)?.models);
    }
    if models.is_empty() {
        bail!("the files declare no [model.*] runtime");
    }
    let qs = std::env::current_exe()
        .context("the path of this qs")?
        .display()
        .to_string();
    let gpus: Vec<u64> = opts
        .gpus_mib
        .iter()
        .map(|m| m.saturating_mul(1 << 20))
        .collect();
    let units =
        qs_agent::models::systemd::units(&models, &gpus, &config.models, &qs, opts.port_base)?;
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("creating {}", opts.out.display()))?;
    for u in &units {
        let path: &Path = &opts.out.join(&u.name);
        std::fs::write(path, &u.text).with_context(|| format!("writing {}", path.display()))?;
        println!("{} (GPU {}, port {})", path.display(), u.gpu, u.port);
    }
    Ok(())
}
