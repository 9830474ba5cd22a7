//! The HTTP API's router, through `tower::ServiceExt::oneshot`, on a running one-node fleet
//! (no-op executor): the input is a request (`METHOD PATH`, header lines, a blank line, the
//! body); `TOKEN` in it stands for the real token, so the fuzzer gets past the guard too.
#![no_main]

use axum::body::Body;
use axum::http::Request;
use libfuzzer_sys::fuzz_target;
use qs_agent::api;
use qs_agent::fleet::{EmbeddedFleet, FleetOptions};
use std::sync::OnceLock;
use tower::ServiceExt;

struct World {
    rt: tokio::runtime::Runtime,
    router: axum::Router,
    token: String,
    /// Kept for the whole run (a static: it lives as long as the process).
    _fleet: std::sync::Mutex<EmbeddedFleet>,
    _dir: tempfile::TempDir,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let node = qs_wire::parse_spec(
            "f.toml",
            "[node.alpha]\nlevel = 0\ncpu_cores = 4\nmemory_mib = 4096\n",
        )
        .unwrap()
        .nodes;
        let opts = FleetOptions {
            state_dir: dir.path().to_path_buf(),
            listen: "127.0.0.1:0".parse().unwrap(),
            nodes: node,
            config: qs_core::Config::default(),
            sense_every: std::time::Duration::from_millis(500),
            stop_grace: std::time::Duration::from_millis(100),
            seed: 1,
            host: false,
            noop_executor: true,
            mode: "embedded",
            authenticate: false,
            rekey: false,
            trust: qs_agent::trust::Trust::FirstUse,
            api_hosts: vec![],
            tls: None,
            mesh: Default::default(),
        };
        let fleet = rt.block_on(EmbeddedFleet::start(opts)).unwrap();
        let state = qs_store::StateDir::open(dir.path()).unwrap();
        let token = api::ApiToken::load_or_create(&state).unwrap();
        let access = api::Access::new(token.clone(), "127.0.0.1:0".parse().unwrap(), &[]);
        let router = api::router(api::Api::new(
            fleet.shared.clone(),
            fleet.fabric.clone(),
            "embedded",
            access,
        ));
        World {
            rt,
            router,
            token: token.as_str().to_owned(),
            _fleet: std::sync::Mutex::new(fleet),
            _dir: dir,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let text = String::from_utf8_lossy(data).replace("TOKEN", &w.token);
    // Chaos routes do what they say (freeze or panic a node), and a long poll waits up to
    // 30 s: neither tells anything about parsing, and both would stall the run.
    if text.contains("chaos") || text.contains("wait_ms") {
        return;
    }
    let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let Some((method, path)) = lines.next().and_then(|l| l.split_once(' ')) else {
        return;
    };
    let mut req = Request::builder().method(method).uri(path);
    for line in lines.take(32) {
        if let Some((k, v)) = line.split_once(':') {
            req = req.header(k.trim(), v.trim());
        }
    }
    let Ok(req) = req.body(Body::from(body.to_owned())) else {
        return;
    };
    let router = w.router.clone();
    let _ = w.rt.block_on(async {
        tokio::time::timeout(std::time::Duration::from_secs(10), router.oneshot(req)).await
    });
});
