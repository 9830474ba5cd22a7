//! Tiering on real processes (seed 003): `qs up` with `qs model-double` runtimes on one
//! simulated 24 GB GPU. A model wanted while another is busy starts at the tier that fits
//! beside it, with no swap and no stream cut; once the other has idled, it moves back up.

mod common;

use common::models::*;
use common::*;
use std::sync::mpsc;

/// Vision (12 GiB) and reasoning (14 GiB, or 6 GiB): 22.5 GiB usable, so only reasoning's
/// smaller tier fits beside vision.
const VISION_AND_REASONING: &str = r#"
[model.vision]
max_concurrency = 2
load_ms = 300
[[model.vision.tier]]
name = "12g"
vram_mib = 12288
command = "{qs} model-double --port {port} --model vision --vram-mib 12288 --load-ms 300 --decode-tps 40"

[model.reasoning]
max_concurrency = 2
load_ms = 300
[[model.reasoning.tier]]
name = "14g"
vram_mib = 14336
command = "{qs} model-double --port {port} --model reasoning --vram-mib 14336 --load-ms 300 --decode-tps 400"
[[model.reasoning.tier]]
name = "6g"
vram_mib = 6144
command = "{qs} model-double --port {port} --model reasoning --vram-mib 6144 --load-ms 300 --decode-tps 400"
"#;

/// The tier `model` shows in `/v1/models`.
fn model_tier(up: &Up, model: &str) -> String {
    model_field(up, model, "tier")
}

/// The tiers `model`'s runtimes were started at, from the ledger, in order.
fn started_tiers(up: &Up, model: &str) -> Vec<String> {
    up.events()
        .iter()
        .filter(|e| e["event"]["model"] == model && e["event"]["step"] == "started")
        .filter_map(|e| {
            let d = e["event"]["detail"].as_str()?;
            Some(d.strip_prefix("tier ")?.split(' ').next()?.to_owned())
        })
        .collect()
}

#[test]
fn a_model_wanted_beside_a_busy_one_runs_smaller_then_moves_up_once_the_other_idles() {
    let dir = tempfile::tempdir().unwrap();
    let up = start(dir.path(), "[models]\nidle_room_ms = 1500\n");
    declare(&up, VISION_AND_REASONING, "vision");
    declare(&up, VISION_AND_REASONING, "reasoning");

    // A stream for vision in flight (60 tokens at 40/s: about 1.5 s) ...
    let (first_tx, first_rx) = mpsc::channel();
    let stream = {
        let c = client(&up);
        std::thread::spawn(move || {
            post(
                &c,
                "/v1/chat/completions",
                &chat("vision", 60, true),
                Some(first_tx),
            )
        })
    };
    first_rx
        .recv_timeout(LIMIT)
        .expect("the vision stream began");
    // ... while reasoning is asked for: its 14 GiB cannot sit beside vision, its 6 GiB can.
    let (status, _, text) = post(
        &up,
        "/v1/chat/completions",
        &chat("reasoning", 4, false),
        None,
    );
    assert_eq!(status, 200, "{text}");
    assert_eq!(model_tier(&up, "reasoning"), "6g");
    let (status, _, text) = stream.join().unwrap();
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        text.matches("data: {").count(),
        60,
        "the vision stream was not cut: {text}"
    );
    let before = steps(&up);
    assert!(
        !before.iter().any(|(m, s)| m == "vision" && s == "drained"),
        "no swap while vision was busy: {before:?}"
    );
    let begun = up
        .events()
        .into_iter()
        .find(|e| e["event"]["model"] == "reasoning" && e["event"]["step"] == "swap-begun")
        .unwrap();
    let detail = begun["event"]["detail"].as_str().unwrap().to_owned();
    assert!(
        detail.starts_with("tier 6g; a smaller tier") && detail.contains("evicts []"),
        "{detail}"
    );

    // Vision idles past idle_room_ms: its room is reasoning's, which moves up to 14 GiB
    // (vision drained and stopped, reasoning stopped, the VRAM seen free, 14g started).
    up.wait("reasoning moved up to 14g", |u| {
        model_tier(u, "reasoning") == "14g" && model_state(u, "reasoning") == "warm"
    });
    assert_eq!(started_tiers(&up, "reasoning"), vec!["6g", "14g"]);
    assert_eq!(model_state(&up, "vision"), "absent");
    let (status, _, text) = post(
        &up,
        "/v1/chat/completions",
        &chat("reasoning", 4, false),
        None,
    );
    assert_eq!(status, 200, "{text}");
    let after = steps(&up);
    assert!(
        !after.iter().any(|(_, s)| s == "load-failed"),
        "no runtime ran out of memory: {after:?}"
    );
    let (_, metrics) = up.http("GET", "/metrics", "");
    let metrics = metrics.as_str().unwrap_or("").to_owned();
    assert!(
        metrics.contains("qs_model_tier_changes_total 2"),
        "one move down, one up: {metrics}"
    );
}
