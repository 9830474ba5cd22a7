//! The `qs` binary end to end: real processes, real files.

use std::path::Path;
use std::process::{Command, Output};

fn qs(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qs"))
        .args(args)
        .output()
        .expect("qs runs")
}

fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

fn repo(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
        .display()
        .to_string()
}

#[test]
fn the_examples_are_valid_specs() {
    let out = qs(&["check", &repo("examples/seed-fleet.toml")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(s.contains("node forge: level 1 (weight 7.067)"), "{s}");
    assert!(s.contains("node pcdev: level 2 (weight 4.712)"), "{s}");
    let out = qs(&["check", &repo("examples/models.toml")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(
        s.contains("model tiny: exclusive resident, parallel x4, tiers 1g (1024 MiB)"),
        "{s}"
    );
}

/// Each bad spec is refused with file:line:column, the field, and why; exit code 2.
#[test]
fn bad_specs_are_refused_with_their_location() {
    let dir = tempfile::tempdir().unwrap();
    let check = |name: &str, body: &str, want: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        let out = qs(&["check", path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{name}");
        let err = text(&out.stderr);
        let want = format!("{}:{want}", path.display());
        assert!(err.contains(&want), "{name}:\n  got  {err}\n  want {want}");
    };
    check(
        "unknown.toml",
        "[service.web]\nreplica = 2\nresources = { cpu_cores = 1, memory_mib = 64 }\n",
        "2:1: service.web.replica: unknown field `replica`",
    );
    check(
        "type.toml",
        "[service.web]\nresources = { cpu_cores = \"lots\", memory_mib = 64 }\n",
        "2:27: service.web.resources.cpu_cores: invalid type: string \"lots\"",
    );
    check(
        "zero.toml",
        "[service.web]\n[service.web.resources]\ncpu_cores = 0\nmemory_mib = 64\n",
        "3:13: service.web.resources.cpu_cores: must be more than 0",
    );
    check(
        "level.toml",
        "[node.far]\nlevel = 12\ncpu_cores = 2\nmemory_mib = 512\n",
        "2:9: node.far.level: level must be in 0..=7",
    );
    check(
        "pattern.toml",
        "[job.x]\npattern = \"gpu-swarm\"\nresources = { cpu_cores = 1, memory_mib = 64 }\n",
        "2:11: job.x.pattern: unknown variant `gpu-swarm`",
    );
}

#[test]
fn out_of_range_sim_flags_are_refused() {
    for (args, want) in [
        (vec!["sim", "--nodes", "0"], "--nodes"),
        (vec!["sim", "--nodes", "200000"], "--nodes"),
        (vec!["sim", "--duration-ms", "1"], "--duration-ms"),
        (
            vec!["sim", "--nodes", "10", "--kill-fraction", "0.9"],
            "--kill-fraction: must be in 0..=0.5",
        ),
        (vec!["sim", "--seed", "-3"], "'-3'"),
    ] {
        let out = qs(&args);
        assert!(!out.status.success(), "{args:?}");
        let err = text(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

#[test]
fn the_same_seed_gives_the_same_trace_hash() {
    let hash = |seed: &str| {
        let out = qs(&[
            "sim",
            "--nodes",
            "200",
            "--seed",
            seed,
            "--duration-ms",
            "4000",
            "--output",
            "json",
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["violation_count"], 0);
        v["trace_hash"].as_str().unwrap().to_owned()
    };
    assert_eq!(hash("5"), hash("5"));
    assert_ne!(hash("5"), hash("6"));
}

/// `qs sim --ledger` writes every event durably; `qs events` reads the stories back.
#[test]
fn a_simulation_ledger_tells_the_placement_stories() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("sim.redb");
    let ledger = ledger.to_str().unwrap();
    let out = qs(&[
        "sim",
        "--nodes",
        "50",
        "--seed",
        "3",
        "--duration-ms",
        "3000",
        "--ledger",
        ledger,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let placed: u64 = text(&out.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("placements"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .expect("the report counts placements");
    let out = qs(&[
        "events", "--ledger", ledger, "--limit", "10000", "--output", "json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let events: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let placed_events = events
        .iter()
        .filter(|e| e["event"]["event"] == "placed")
        .count() as u64;
    assert_eq!(placed_events, placed);
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1));
    let out = qs(&[
        "events", "--ledger", ledger, "--grep", "capacity", "--limit", "1",
    ]);
    assert!(text(&out.stdout).contains("capacity query: who can take it?"));
    let out = qs(&["events", "--ledger", &format!("{ledger}.missing")]);
    assert!(text(&out.stderr).contains("no such ledger"));
}

/// A bad `--config` is refused before anything starts, naming file, line, column and field.
#[test]
fn a_bad_config_is_refused_with_its_location() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let check = |name: &str, body: &str, want: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        let out = qs(&[
            "up",
            "--config",
            path.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ]);
        assert!(!out.status.success(), "{name} was accepted");
        let err = text(&out.stderr);
        assert!(err.contains(&format!("{name}:{want}")), "{name}: {err}");
    };
    check(
        "range.toml",
        "heartbeat_ms = 250\n\n[thresholds]\n  cpu = 7.0\n",
        "4:3: config field `thresholds.cpu`",
    );
    check(
        "unknown.toml",
        "heartbeat_ms = 250\nbogus = 1\n",
        "2:1: unknown field `bogus`",
    );
    check(
        "policy.toml",
        "[models]\nreserved_mib = 1024\npolicy = \"best\"\n",
        "3:1: config field `models.policy`",
    );
    check(
        "executor.toml",
        "[models]\nexecutor = \"docker\"\n",
        "2:1: config field `models.executor`",
    );
}

/// A non-loopback API over plain HTTP is refused before anything starts, unless the
/// operator says `--insecure-listen`.
#[test]
fn a_non_loopback_api_needs_insecure_listen() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let out = qs(&[
        "up",
        "--listen",
        "0.0.0.0:0",
        "--state-dir",
        state.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("refusing to serve the API on 0.0.0.0:0") && err.contains("--insecure-listen"),
        "{err}"
    );
    assert!(!state.exists(), "nothing started");
}

/// `qs bench gpu` on two small traces: one JSON object per line, every policy side by side,
/// nothing lost; a bad trace line is refused by file, line and field.
#[test]
fn the_gpu_bench_replays_traces_and_names_a_bad_line() {
    let dir = tempfile::tempdir().unwrap();
    let header = "TIMESTAMP,ContextTokens,GeneratedTokens\n";
    let mut code = header.to_owned();
    let mut conv = header.to_owned();
    for i in 0..200u32 {
        let (s, frac) = (i / 10, i % 10);
        let line = format!(
            "2023-11-16 18:00:{s:02}.{frac}000000,{},{}\n",
            500 + i,
            20 + i % 7
        );
        if (i / 25) % 2 == 0 {
            code.push_str(&line);
        } else {
            conv.push_str(&line);
        }
    }
    std::fs::write(dir.path().join("AzureLLMInferenceTrace_code.csv"), &code).unwrap();
    std::fs::write(dir.path().join("AzureLLMInferenceTrace_conv.csv"), &conv).unwrap();
    let traces = dir.path().to_str().unwrap();
    let args = [
        "bench",
        "gpu",
        "--traces",
        traces,
        "--loads",
        "2",
        "--utilisations",
        "0.5",
        "--slots",
        "4",
    ];
    let out = qs(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let value = |metric: &str| {
        lines
            .iter()
            .find(|l| l["metric"] == metric)
            .unwrap_or_else(|| panic!("no {metric}"))["value"]
            .as_f64()
            .unwrap()
    };
    for policy in [
        "fifo",
        "llama-swap",
        "exhaustive",
        "tipping-point",
        "oracle",
    ] {
        let key = format!("{policy}.exclusive.slots_4.load_2s.util_0.5");
        assert_eq!(value(&format!("{key}.lost")), 0.0, "{policy}");
        assert_eq!(value(&format!("{key}.margin_violations")), 0.0, "{policy}");
        assert!(value(&format!("{key}.swaps")) >= 1.0, "{policy}");
        let co = format!("{policy}.co-resident.slots_4.load_2s.util_0.5.swaps");
        assert_eq!(value(&co), 0.0, "{policy}");
    }
    assert_eq!(value("requests.code") + value("requests.conv"), 200.0);

    std::fs::write(
        dir.path().join("AzureLLMInferenceTrace_conv.csv"),
        format!("{header}2023-11-16 18:00:00.0,12,x\n"),
    )
    .unwrap();
    let out = qs(&args);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("AzureLLMInferenceTrace_conv.csv:2: field `GeneratedTokens`"),
        "{err}"
    );
}

/// `[model.*]` runtimes are checked and shown by `qs check`.
#[test]
fn model_runtimes_are_checked_and_shown() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("models.toml");
    std::fs::write(
        &file,
        "[model.llama]\nmax_concurrency = 8\n[[model.llama.tier]]\nname = \"70b\"\nvram_mib = 40960\ncommand = \"vllm serve --port {port}\"\n[[model.llama.tier]]\nname = \"8b\"\nvram_mib = 6144\ncommand = \"llama-server --port {port}\"\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let out = qs(&["check", file]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(
        shown.contains("model llama: exclusive, parallel x8, tiers 70b (40960 MiB), 8b (6144 MiB)"),
        "{shown}"
    );
}

/// `qs systemd units` writes one unit per model runtime, with `Conflicts=` between those that
/// cannot share the GPU; systemd's own checker accepts them.
#[test]
fn systemd_units_conflict_where_runtimes_cannot_share_a_gpu_and_verify() {
    let analyze = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("systemd-analyze is missing: install Debian's systemd package (scripts/test does, as root)");
    let dir = tempfile::tempdir().unwrap();
    let file = std::path::PathBuf::from(repo("examples/models.toml"));
    let out_dir = dir.path().join("units");
    let out = qs(&[
        "systemd",
        "units",
        "-f",
        file.to_str().unwrap(),
        "--gpu-mib",
        "24576",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let unit = |name: &str| std::fs::read_to_string(out_dir.join(name)).unwrap();
    let conflicts = |name: &str| {
        unit(name)
            .lines()
            .find_map(|l| l.strip_prefix("Conflicts=").map(str::to_owned))
    };
    assert_eq!(
        conflicts("qs-model-code.19g.service").as_deref(),
        Some("qs-model-conv.8g.service")
    );
    assert_eq!(
        conflicts("qs-model-conv.8g.service").as_deref(),
        Some("qs-model-code.19g.service")
    );
    assert_eq!(
        conflicts("qs-model-tiny.1g.service"),
        None,
        "the resident fits in the margin"
    );
    let mut verify = std::process::Command::new(analyze);
    verify.arg("verify");
    for name in ["code.19g", "conv.8g", "tiny.1g"] {
        verify.arg(out_dir.join(format!("qs-model-{name}.service")));
    }
    let checked = verify.output().unwrap();
    assert!(
        checked.status.success(),
        "systemd-analyze verify: {}{}",
        text(&checked.stdout),
        text(&checked.stderr)
    );
    // The checker is not blind: a unit whose command does not exist is refused.
    let bad = out_dir.join("qs-model-bad.service");
    std::fs::write(&bad, "[Service]\nExecStart=no-such-binary-here\n").unwrap();
    let refused = std::process::Command::new(analyze)
        .arg("verify")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!refused.status.success());
}
