//! The init system as a runtime's authority (seed 003): `qs systemd units` writes one
//! systemd unit per model runtime, each on its GPU (the core's strategy, as the agent places
//! it) with `Conflicts=` between runtimes that cannot share that GPU, so systemd itself never
//! runs two of them at once (starting one stops the others). A resident model conflicts
//! with nothing: it fits in the margin.
//!
//! Each unit runs the tier's command through `/bin/sh -c 'exec …'` (as the process executor
//! does), with `{port}` a fixed port (`port_base` + the runtime's index) and `{gpu}` its GPU,
//! `CUDA_VISIBLE_DEVICES` set, and `KillMode=control-group` so nothing it started outlives a
//! stop.

use qs_core::gpu::{GpuSlot, ModelsConfig, StrategyKind, conflicts, place_resident};
use qs_wire::{Authority, ModelSpec};

/// One unit file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unit {
    /// `qs-model-NAME.service`.
    pub name: String,
    pub text: String,
    /// Where it runs.
    pub gpu: u32,
    pub port: u16,
}

/// Why units cannot be written.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UnitError {
    #[error("model {model}: no tier fits any GPU given ({gpus} GPUs)")]
    NoFit { model: String, gpus: usize },
    #[error("model {model}: ports from {port_base} run past 65535")]
    Ports { model: String, port_base: u16 },
}

/// The unit name of `model`.
pub fn unit_name(model: &str) -> String {
    format!("qs-model-{model}.service")
}

/// The units of `models` (shared runtimes have none: someone else runs them) on GPUs of
/// `gpus_vram_bytes`, with `qs` the path `{qs}` stands for.
pub fn units(
    models: &[ModelSpec],
    gpus_vram_bytes: &[u64],
    config: &ModelsConfig,
    qs: &str,
    port_base: u16,
) -> Result<Vec<Unit>, UnitError> {
    let strategy = config
        .strategy()
        .unwrap_or(StrategyKind::TippingPoint)
        .build();
    let reserved = config.gpu(0).reserved_bytes;
    let mut placed: Vec<(usize, &ModelSpec, usize)> = Vec::new();
    let mut margin_held = vec![0u64; gpus_vram_bytes.len()];
    for spec in models
        .iter()
        .filter(|m| m.authority == Authority::Exclusive)
    {
        let tiers: Vec<u64> = spec.tiers.iter().map(|t| t.vram_bytes).collect();
        let no_fit = || UnitError::NoFit {
            model: spec.name.to_string(),
            gpus: gpus_vram_bytes.len(),
        };
        let p = if spec.resident {
            let free: Vec<u64> = margin_held
                .iter()
                .map(|h| reserved.saturating_sub(*h))
                .collect();
            let p = place_resident(&tiers, &free).ok_or_else(no_fit)?;
            margin_held[p.gpu] += tiers[p.tier];
            p
        } else {
            let slots: Vec<GpuSlot> = gpus_vram_bytes
                .iter()
                .enumerate()
                .map(|(i, vram)| {
                    let on_it = placed.iter().filter(|(g, m, _)| *g == i && !m.resident);
                    GpuSlot {
                        budget_bytes: vram.saturating_sub(reserved),
                        placed_bytes: on_it.clone().map(|(_, m, _)| m.tiers[0].vram_bytes).sum(),
                        placed: on_it.count(),
                        power_watts: None,
                        power_limit_watts: None,
                        temperature_c: None,
                    }
                })
                .collect();
            strategy.place(&tiers, &slots).ok_or_else(no_fit)?
        };
        placed.push((p.gpu, spec, p.tier));
    }
    let mut out = Vec::new();
    for (i, (gpu, spec, tier)) in placed.iter().enumerate() {
        let port = u16::try_from(usize::from(port_base) + i).map_err(|_| UnitError::Ports {
            model: spec.name.to_string(),
            port_base,
        })?;
        let budget = gpus_vram_bytes[*gpu].saturating_sub(reserved);
        let vram = spec.tiers[*tier].vram_bytes;
        let mut against: Vec<String> = placed
            .iter()
            .filter(|(g, other, t)| {
                g == gpu
                    && other.name != spec.name
                    && !spec.resident
                    && !other.resident
                    && conflicts(vram, other.tiers[*t].vram_bytes, budget)
            })
            .map(|(_, other, _)| unit_name(other.name.as_str()))
            .collect();
        against.sort();
        out.push(Unit {
            name: unit_name(spec.name.as_str()),
            text: render(spec, *tier, *gpu as u32, port, &against, qs),
            gpu: *gpu as u32,
            port,
        });
    }
    Ok(out)
}

fn render(
    spec: &ModelSpec,
    tier: usize,
    gpu: u32,
    port: u16,
    conflicts: &[String],
    qs: &str,
) -> String {
    let t = &spec.tiers[tier];
    let command = t
        .command
        .as_deref()
        .unwrap_or_default()
        .replace("{port}", &port.to_string())
        .replace("{gpu}", &gpu.to_string())
        .replace("{qs}", qs);
    // systemd's own quoting: the command as one single-quoted word of `sh -c`, its `'`s
    // closed and escaped, and `%` (a specifier) and `$` (a variable) doubled.
    let quoted = command
        .replace('\\', "\\\\")
        .replace('\'', "'\\''")
        .replace('%', "%%")
        .replace('$', "$$");
    let mut u = String::new();
    u.push_str("# Written by `qs systemd units`: a model runtime of Quasicrystal.\n");
    u.push_str("[Unit]\n");
    u.push_str(&format!(
        "Description=Quasicrystal model {} (tier {}, GPU {gpu}{})\n",
        spec.name,
        t.name,
        if spec.resident { ", resident" } else { "" }
    ));
    u.push_str("After=network.target\n");
    if !conflicts.is_empty() {
        u.push_str(&format!("Conflicts={}\n", conflicts.join(" ")));
    }
    u.push_str("\n[Service]\n");
    u.push_str("Type=simple\n");
    u.push_str(&format!("ExecStart=/bin/sh -c 'exec {quoted}'\n"));
    u.push_str(&format!("Environment=CUDA_VISIBLE_DEVICES={gpu}\n"));
    u.push_str(&format!("Environment=QS_PORT={port}\n"));
    u.push_str("KillMode=control-group\n");
    u.push_str(&format!(
        "TimeoutStartSec={}\n",
        (spec.load_ms.saturating_mul(4) / 1000).max(10)
    ));
    u.push_str("TimeoutStopSec=30\n");
    u.push_str(if spec.resident {
        "Restart=on-failure\nRestartSec=1\n"
    } else {
        "Restart=no\n"
    });
    u.push_str("\n[Install]\nWantedBy=multi-user.target\n");
    u
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> Vec<ModelSpec> {
        qs_wire::parse_spec(
            "m.toml",
            r#"
[model.code]
[[model.code.tier]]
name = "19g"
vram_mib = 19456
command = "{qs} model-double --port {port} --model code"

[model.conv]
[[model.conv.tier]]
name = "8g"
vram_mib = 8704
command = "llama-server -m 'conv 8b.gguf' --port {port} --n-gpu-layers 99%"

[model.small]
[[model.small.tier]]
name = "2g"
vram_mib = 2048
command = "llama-server --port {port}"

[model.tiny]
resident = true
[[model.tiny.tier]]
name = "1g"
vram_mib = 1024
command = "{qs} model-double --port {port} --model tiny"

[model.ext]
authority = "shared"
url = "http://127.0.0.1:9999"
[[model.ext.tier]]
name = "x"
vram_mib = 1024
"#,
        )
        .unwrap()
        .models
    }

    #[test]
    fn runtimes_that_cannot_share_a_gpu_conflict_and_the_resident_conflicts_with_none() {
        let units = units(
            &doc(),
            &[24 << 30],
            &ModelsConfig::default(),
            "/usr/bin/qs",
            8100,
        )
        .unwrap();
        let names: Vec<&str> = units.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "qs-model-code.service",
                "qs-model-conv.service",
                "qs-model-small.service",
                "qs-model-tiny.service"
            ],
            "no unit for the shared runtime"
        );
        let conflicts = |i: usize| {
            units[i]
                .text
                .lines()
                .find_map(|l| l.strip_prefix("Conflicts="))
                .unwrap_or("")
                .to_owned()
        };
        // code (19 GiB) fits beside neither conv nor... small (2 GiB): 21 of 22.5 GiB fits.
        assert_eq!(conflicts(0), "qs-model-conv.service");
        assert_eq!(conflicts(1), "qs-model-code.service");
        assert_eq!(conflicts(2), "");
        assert_eq!(conflicts(3), "", "the resident fits in the margin");
        assert!(units[0].text.contains(
            "ExecStart=/bin/sh -c 'exec /usr/bin/qs model-double --port 8100 --model code'"
        ));
        // Quotes, and % and $ as systemd reads them.
        assert!(
            units[1].text.contains(
                "'exec llama-server -m '\\''conv 8b.gguf'\\'' --port 8101 --n-gpu-layers 99%%'"
            ),
            "{}",
            units[1].text
        );
        assert!(units[3].text.contains("Restart=on-failure"));
    }

    #[test]
    fn a_model_that_fits_no_gpu_is_refused_by_name() {
        let err = units(&doc(), &[4 << 30], &ModelsConfig::default(), "qs", 8100).unwrap_err();
        assert_eq!(
            err,
            UnitError::NoFit {
                model: "code".into(),
                gpus: 1
            }
        );
    }
}
