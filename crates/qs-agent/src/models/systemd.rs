//! The init system as a runtime's authority (seed 003): one systemd unit per model runtime
//! (a model at one of its tiers), each on its GPU (the core's strategy, as the agent places
//! it) with `Conflicts=` between runtimes that cannot share that GPU, so systemd itself never
//! runs two of them at once (starting one stops the others): every other tier of the same
//! model, and every runtime of another model that does not fit beside it. A resident model
//! conflicts with nothing: it fits in the margin. `Conflicts=` is pairwise: three runtimes
//! that fit two at a time are kept apart by the core's scheduler, not by systemd.
//!
//! `qs systemd units` writes them for an operator ([`units`]); the agent's systemd executor
//! (`[models] executor = "systemd"`, [`super::systemctl`]) writes each as it starts it, with
//! the port it chose, through the same [`render`] and [`conflicts_of`].
//!
//! Each unit runs the tier's command through `/bin/sh -c 'exec …'` (as the process executor
//! does), with `{port}` its port and `{gpu}` its GPU, `CUDA_VISIBLE_DEVICES` set, and
//! `KillMode=control-group` so nothing it started outlives a stop.

use qs_core::gpu::{GpuSlot, ModelsConfig, StrategyKind, conflicts, place_resident};
use qs_wire::{Authority, ModelSpec};
use std::collections::BTreeMap;

/// One unit file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unit {
    /// `qs-model-NAME.TIER.service`.
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

/// The unit name of `model` at `tier` as `qs systemd units` writes it for an operator:
/// `qs-model-MODEL.TIER.service`.
pub fn unit_name(model: &str, tier: &str) -> String {
    format!("qs-model-{model}.{tier}.service")
}

/// The unit name of `model` at `tier` when node `node`'s agent runs it (several nodes of
/// one process share the host's systemd): `qs-runtime-NODE.MODEL.TIER.service`, or
/// `qs-resident-…` for a resident model's (which may be on its way out while the same model
/// starts scheduled). Node and model names are DNS labels, without dots, so no two nodes,
/// models or kinds share a name, nor an agent's unit an operator's.
pub fn agent_unit_name(node: &str, model: &str, tier: &str, resident: bool) -> String {
    let kind = if resident { "resident" } else { "runtime" };
    format!("qs-{kind}-{node}.{model}.{tier}.service")
}

/// The patterns of every unit name of node `node`'s agent (`systemctl stop` takes them).
pub fn agent_unit_patterns(node: &str) -> [String; 2] {
    ["runtime", "resident"].map(|kind| format!("qs-{kind}-{node}.*"))
}

/// One runtime as the units see it: a model at a tier on a GPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Runtime {
    pub unit: String,
    pub model: String,
    pub gpu: usize,
    pub vram_bytes: u64,
    pub resident: bool,
}

/// The units `runtimes[i]` conflicts with: every other tier of its model, and every runtime
/// of another model on its GPU (of `budget_bytes` for swapped runtimes) that does not fit
/// beside it; a resident one conflicts with none and none with it. Sorted.
pub fn conflicts_of(runtimes: &[Runtime], i: usize, budget_bytes: u64) -> Vec<String> {
    let me = &runtimes[i];
    let mut out: Vec<String> = runtimes
        .iter()
        .filter(|o| o.unit != me.unit && !me.resident && !o.resident && o.gpu == me.gpu)
        .filter(|o| o.model == me.model || conflicts(me.vram_bytes, o.vram_bytes, budget_bytes))
        .map(|o| o.unit.clone())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// What a runtime's unit says.
pub struct UnitText<'a> {
    pub model: &'a str,
    pub tier: &'a str,
    pub gpu: u32,
    /// The command, `{port}`, `{gpu}` and `{qs}` already replaced.
    pub command: &'a str,
    pub env: &'a BTreeMap<String, String>,
    pub conflicts: &'a [String],
    pub load_ms: u64,
    pub resident: bool,
    /// systemd restarts it when it fails (an operator's resident model; under the agent the
    /// core's keeper decides).
    pub restart_on_failure: bool,
}

/// The units of `models` (shared runtimes have none: someone else runs them) on GPUs of
/// `gpus_vram_bytes`, with `qs` the path `{qs}` stands for: each model at the tier the
/// strategy places it at and every smaller one (the scheduler may run any of them), a
/// resident one at its tier.
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
    // Every runtime: a model at each tier it may run.
    let mut runs: Vec<(Runtime, &ModelSpec, usize)> = Vec::new();
    for (gpu, spec, placed_tier) in &placed {
        let last = if spec.resident {
            *placed_tier + 1
        } else {
            spec.tiers.len()
        };
        for tier in *placed_tier..last {
            let t = &spec.tiers[tier];
            let runtime = Runtime {
                unit: unit_name(spec.name.as_str(), &t.name),
                model: spec.name.to_string(),
                gpu: *gpu,
                vram_bytes: t.vram_bytes,
                resident: spec.resident,
            };
            runs.push((runtime, spec, tier));
        }
    }
    let runtimes: Vec<Runtime> = runs.iter().map(|(r, _, _)| r.clone()).collect();
    let mut out = Vec::new();
    for (i, (runtime, spec, tier)) in runs.iter().enumerate() {
        let port = u16::try_from(usize::from(port_base) + i).map_err(|_| UnitError::Ports {
            model: spec.name.to_string(),
            port_base,
        })?;
        let gpu = runtime.gpu as u32;
        let budget = gpus_vram_bytes[runtime.gpu].saturating_sub(reserved);
        let against = conflicts_of(&runtimes, i, budget);
        let t = &spec.tiers[*tier];
        let command = t
            .command
            .as_deref()
            .unwrap_or_default()
            .replace("{port}", &port.to_string())
            .replace("{gpu}", &gpu.to_string())
            .replace("{qs}", qs);
        let env = BTreeMap::from([
            ("CUDA_VISIBLE_DEVICES".to_owned(), gpu.to_string()),
            ("QS_PORT".to_owned(), port.to_string()),
        ]);
        out.push(Unit {
            name: runtime.unit.clone(),
            text: render(&UnitText {
                model: spec.name.as_str(),
                tier: &t.name,
                gpu,
                command: &command,
                env: &env,
                conflicts: &against,
                load_ms: spec.load_ms,
                resident: spec.resident,
                restart_on_failure: spec.resident,
            }),
            gpu,
            port,
        });
    }
    Ok(out)
}

/// The text of a runtime's unit.
pub fn render(u: &UnitText) -> String {
    // systemd's own quoting: the command as one single-quoted word of `sh -c`, its `'`s
    // closed and escaped, and `%` (a specifier) and `$` (a variable) doubled.
    let quoted = u
        .command
        .replace('\\', "\\\\")
        .replace('\'', "'\\''")
        .replace('%', "%%")
        .replace('$', "$$")
        .replace('\n', "\\n")
        .replace('\r', "\\r");
    let mut s = String::new();
    s.push_str("# Written by Quasicrystal (qs): a model runtime.\n");
    s.push_str("[Unit]\n");
    s.push_str(&format!(
        "Description=Quasicrystal model {} (tier {}, GPU {}{})\n",
        u.model,
        u.tier,
        u.gpu,
        if u.resident { ", resident" } else { "" }
    ));
    s.push_str("After=network.target\n");
    if !u.conflicts.is_empty() {
        s.push_str(&format!("Conflicts={}\n", u.conflicts.join(" ")));
    }
    s.push_str("\n[Service]\n");
    s.push_str("Type=simple\n");
    s.push_str(&format!("ExecStart=/bin/sh -c 'exec {quoted}'\n"));
    for (k, v) in u.env {
        // Quoted: a specifier doubled, a backslash and a quote escaped (systemd does not
        // expand variables in Environment=, so `$` stays as it is).
        let v = v
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('%', "%%")
            .replace('\n', "\\n");
        s.push_str(&format!("Environment=\"{k}={v}\"\n"));
    }
    s.push_str("KillMode=control-group\n");
    s.push_str(&format!(
        "TimeoutStartSec={}\n",
        (u.load_ms.saturating_mul(4) / 1000).max(10)
    ));
    s.push_str("TimeoutStopSec=30\n");
    s.push_str(if u.restart_on_failure {
        "Restart=on-failure\nRestartSec=1\n"
    } else {
        "Restart=no\n"
    });
    s.push_str("\n[Install]\nWantedBy=multi-user.target\n");
    s
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
                "qs-model-code.19g.service",
                "qs-model-conv.8g.service",
                "qs-model-small.2g.service",
                "qs-model-tiny.1g.service"
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
        assert_eq!(conflicts(0), "qs-model-conv.8g.service");
        assert_eq!(conflicts(1), "qs-model-code.19g.service");
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
    fn each_tier_is_a_runtime_that_conflicts_with_the_others_of_its_model() {
        let mut models = doc();
        models.extend(
            qs_wire::parse_spec(
                "t.toml",
                r#"
[model.reason]
[[model.reason.tier]]
name = "15g"
vram_mib = 15360
command = "llama-server --port {port} -m big.gguf"
[[model.reason.tier]]
name = "3g"
vram_mib = 3072
command = "llama-server --port {port} -m small.gguf"
"#,
            )
            .unwrap()
            .models,
        );
        let units = units(&models, &[24 << 30], &ModelsConfig::default(), "qs", 8100).unwrap();
        let conflicts = |name: &str| {
            let u = units.iter().find(|u| u.name == name).unwrap();
            u.text
                .lines()
                .find_map(|l| l.strip_prefix("Conflicts="))
                .unwrap_or("")
                .to_owned()
        };
        // 15g fits beside nothing but small (2g); 3g beside every other model (19 + 3 of 22.5).
        assert_eq!(
            conflicts("qs-model-reason.15g.service"),
            "qs-model-code.19g.service qs-model-conv.8g.service qs-model-reason.3g.service"
        );
        assert_eq!(
            conflicts("qs-model-reason.3g.service"),
            "qs-model-reason.15g.service"
        );
        let ports: Vec<u16> = units.iter().map(|u| u.port).collect();
        assert_eq!(ports, (8100..8100 + units.len() as u16).collect::<Vec<_>>());
    }

    #[test]
    fn values_are_written_as_systemd_reads_them() {
        let env = BTreeMap::from([("TOKEN".to_owned(), "a$b\\c\"d%e\nf".to_owned())]);
        let text = render(&UnitText {
            model: "m",
            tier: "t",
            gpu: 0,
            command: "serve --prompt 'hi $USER' 100%\n--next",
            env: &env,
            conflicts: &[],
            load_ms: 1000,
            resident: false,
            restart_on_failure: false,
        });
        // No variable expansion in Environment=: `$` stays; `\`, `"`, `%` and a newline are
        // escaped.
        assert!(
            text.contains("Environment=\"TOKEN=a$b\\\\c\\\"d%%e\\nf\"\n"),
            "{text}"
        );
        // ExecStart: one line, `$` and `%` doubled, the newline escaped.
        let exec = text.lines().find(|l| l.starts_with("ExecStart=")).unwrap();
        assert_eq!(
            exec,
            "ExecStart=/bin/sh -c 'exec serve --prompt '\\''hi $$USER'\\'' 100%%\\n--next'"
        );
        assert_eq!(
            agent_unit_name("n1", "m", "t.q", true),
            "qs-resident-n1.m.t.q.service"
        );
        assert_eq!(
            agent_unit_patterns("n1"),
            ["qs-runtime-n1.*", "qs-resident-n1.*"]
        );
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
