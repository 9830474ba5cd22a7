//! `qs check FILE...`: spec files parsed and checked, shown as text or JSON.

use crate::render::OutputFormat;
use anyhow::{Context, Result};
use std::path::PathBuf;

pub fn check(files: &[PathBuf], output: OutputFormat) -> Result<()> {
    let mut docs = Vec::new();
    for file in files {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let doc = qs_wire::parse_spec(&file.display().to_string(), &text)?;
        docs.push((file, doc));
    }
    match output {
        OutputFormat::Json => {
            let all: Vec<_> = docs.iter().map(|(_, d)| d).collect();
            println!("{}", serde_json::to_string_pretty(&all)?);
        }
        OutputFormat::Text => {
            for (file, doc) in &docs {
                println!("{}: ok", file.display());
                for w in &doc.workloads {
                    let kind = if w.is_job() { "job" } else { "service" };
                    println!(
                        "  {kind} {}: {}, {} to {} instances, {:.2} cores, {} MiB{}",
                        w.name,
                        w.pattern,
                        w.base_count(),
                        w.max_count(),
                        w.resources.cpu_millicores as f64 / 1000.0,
                        w.resources.memory_bytes >> 20,
                        if w.resources.vram_bytes > 0 {
                            format!(", {} MiB VRAM", w.resources.vram_bytes >> 20)
                        } else {
                            String::new()
                        }
                    );
                }
                for m in &doc.models {
                    let discipline = match m.discipline {
                        qs_wire::ModelDiscipline::Parallel { max_concurrency } => {
                            format!("parallel x{max_concurrency}")
                        }
                        qs_wire::ModelDiscipline::Serial => "serial".into(),
                    };
                    let tiers: Vec<String> = m
                        .tiers
                        .iter()
                        .map(|t| format!("{} ({} MiB)", t.name, t.vram_bytes >> 20))
                        .collect();
                    let authority = match m.authority {
                        qs_wire::Authority::Exclusive => "exclusive",
                        qs_wire::Authority::Shared => "shared",
                    };
                    println!(
                        "  model {}: {authority}{}, {discipline}, tiers {}",
                        m.name,
                        if m.resident { " resident" } else { "" },
                        tiers.join(", ")
                    );
                }
                for n in &doc.nodes {
                    println!(
                        "  node {}: level {} (weight {:.3}), {:.0} cores, {} MiB, {} GPUs",
                        n.id,
                        n.level,
                        qs_core::level_weight(n.level),
                        n.capacity.cpu_millicores as f64 / 1000.0,
                        n.capacity.memory_bytes >> 20,
                        n.capacity.gpus.len()
                    );
                }
            }
        }
    }
    Ok(())
}
