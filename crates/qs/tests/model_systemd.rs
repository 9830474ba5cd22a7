//! The systemd executor on a real systemd (seed 003's host-native authority): `qs up` with
//! `[models] executor = "systemd"` against a private user manager; each runtime is a unit the
//! agent writes (its port, `Conflicts=` with what cannot share the GPU) and starts and stops
//! with `systemctl`; the swap keeps its order (drain, stop, VRAM released, start).

mod common;

use common::models::*;
use common::systemd::SystemdUser;
use common::*;

/// The exclusive pair (19 GiB and 8.5 GiB on 24 GiB less the 1.5 GiB margin).
const PAIR: &str = r#"
[model.code]
max_concurrency = 2
load_ms = 300
[[model.code.tier]]
name = "19g"
vram_mib = 19456
command = "{qs} model-double --port {port} --model code --vram-mib 19456 --load-ms 300"

[model.conv]
max_concurrency = 2
load_ms = 300
[[model.conv.tier]]
name = "8g"
vram_mib = 8704
command = "{qs} model-double --port {port} --model conv --vram-mib 8704 --load-ms 300"
"#;

const CODE: &str = "qs-runtime-gpu-box.code.19g.service";
const CONV: &str = "qs-runtime-gpu-box.conv.8g.service";

#[test]
fn systemd_starts_and_stops_the_runtimes_as_units_that_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let systemd = SystemdUser::start(dir.path());
    let config = "[models]\nexecutor = \"systemd\"\nsystemd_user = true\n";
    let xdg = systemd.runtime_dir.display().to_string();
    let agent =
        || Up::start_fleet_with_env(dir.path(), GPU_FLEET, config, &[("XDG_RUNTIME_DIR", &xdg)]);
    let mut up = agent();
    declare(&up, PAIR, "code");
    declare(&up, PAIR, "conv");

    let (status, _, text) = post(&up, "/v1/chat/completions", &chat("code", 2, false), None);
    assert_eq!(status, 200, "{text}");
    assert_eq!(systemd.property(CODE, "ActiveState"), "active");
    // The runtime is the unit's main process: the pid the ledger recorded is systemd's.
    let pid: u32 = systemd.property(CODE, "MainPID").parse().unwrap();
    assert!(pid > 0 && alive(pid));
    let unit =
        std::fs::read_to_string(systemd.runtime_dir.join("systemd/user").join(CODE)).unwrap();
    assert!(unit.contains(&format!("Conflicts={CONV}")), "{unit}");
    assert!(unit.contains("model-double --port "), "{unit}");

    // A request for conv: code's unit is stopped before conv's starts.
    let (status, _, text) = post(&up, "/v1/chat/completions", &chat("conv", 2, false), None);
    assert_eq!(status, 200, "{text}");
    assert_eq!(systemd.property(CONV, "ActiveState"), "active");
    assert_eq!(systemd.property(CODE, "ActiveState"), "inactive");
    assert!(wait_gone(&[pid]));
    let steps = steps(&up);
    let stopped = position(&steps, "code", "stopped");
    let released = position(&steps, "conv", "vram-released");
    let started = position(&steps, "conv", "started");
    assert!(stopped < released && released < started, "{steps:?}");
    assert!(
        !steps.iter().any(|(_, s)| s == "load-failed"),
        "no runtime ran out of memory: {steps:?}"
    );

    // The agent is killed: systemd keeps its unit running, and the agent restarted stops
    // what its predecessor left (it holds the VRAM) before anything starts.
    let conv_pid: u32 = systemd.property(CONV, "MainPID").parse().unwrap();
    up.signal(libc::SIGKILL);
    assert_eq!(systemd.property(CONV, "ActiveState"), "active");
    let mut up = agent();
    up.wait("the leftover unit stopped", |_| {
        systemd.property(CONV, "ActiveState") == "inactive"
    });
    assert!(wait_gone(&[conv_pid]));

    // The agent stops: so do its units.
    let (status, _, text) = post(&up, "/v1/chat/completions", &chat("conv", 2, false), None);
    assert_eq!(status, 200, "{text}");
    let conv_pid: u32 = systemd.property(CONV, "MainPID").parse().unwrap();
    assert!(up.signal(libc::SIGTERM).success());
    assert_eq!(systemd.property(CONV, "ActiveState"), "inactive");
    assert!(wait_gone(&[conv_pid]));
}
