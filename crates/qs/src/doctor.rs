//! `qs doctor`: this machine's clock against the NATS server's, the fleet authority and node
//! certificates in the state directory, and the `[nats]` settings; what is wrong, and what to
//! do about it.

use crate::trust::{Bus, DoctorArgs, anchor_of, block_on, connect, now_ms};
use anyhow::{Context, Result, bail};
use qs_store::{StateDir, StateFile};
use qs_wire::trust::{AuthorityRecord, Signed};
use std::path::PathBuf;
use std::time::Duration;

/// One finding of `qs doctor`.
struct Finding {
    ok: bool,
    what: String,
    fix: Option<String>,
}

fn finding(ok: bool, what: impl Into<String>, fix: Option<String>) -> Finding {
    Finding {
        ok,
        what: what.into(),
        fix,
    }
}

/// The mesh as the agent at `api` sees it (seed 001 Part 10's daily check): the mode, the
/// impedance distribution, the conflict log, the breakers. Nothing when no agent answers.
fn mesh(api: &str) -> Vec<Finding> {
    let Some(v) = crate::client::try_get::<serde_json::Value>(api, "/v1/mesh") else {
        return Vec::new();
    };
    if v["agents"].as_u64().unwrap_or(0) == 0 && v["local_agents"].as_u64().unwrap_or(0) == 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mode = v["mode"].as_str().unwrap_or("?").to_string();
    out.push(finding(
        mode == "FULL",
        format!(
            "mesh: {} of {} agents active, mode {mode}, root {}",
            v["active"],
            v["agents"],
            v["root"].as_str().unwrap_or("(none)")
        ),
        (mode != "FULL").then(|| {
            "agents are down: `qs mesh status` shows where; `qs mesh heal sector N` once fixed"
                .into()
        }),
    ));
    let mut classes = [0u64; 6];
    let (mut anomalies, mut worst_p95) = (0u64, 0.0f64);
    for s in v["sectors"].as_array().into_iter().flatten() {
        for (i, n) in s["classes"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
            .take(6)
        {
            classes[i] += n.as_u64().unwrap_or(0);
        }
        anomalies += s["anomalies"].as_u64().unwrap_or(0);
        worst_p95 = worst_p95.max(s["p95_impedance_ms"].as_f64().unwrap_or(0.0));
    }
    if classes.iter().sum::<u64>() > 0 {
        let dist: Vec<String> = classes
            .iter()
            .enumerate()
            .map(|(i, n)| format!("{}={n}", (b'A' + i as u8) as char))
            .collect();
        out.push(finding(
            anomalies == 0,
            format!(
                "impedance classes {}; worst sector p95 {worst_p95:.0} ms; {anomalies} agents anomalous",
                dist.join(" ")
            ),
            (anomalies > 0).then(|| {
                "slow or unstable agents: `qs mesh status` per sector; route around or heal them"
                    .into()
            }),
        ));
    }
    let k = &v["kpis"];
    let rate = k["conflict_rate"].as_f64().unwrap_or(0.0);
    let by_class: Vec<String> = v["conflicts_by_class"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c[1].as_u64().unwrap_or(0) > 0)
        .map(|c| format!("{} {}", c[0].as_str().unwrap_or("?"), c[1]))
        .collect();
    out.push(finding(
        rate <= 0.01,
        format!(
            "conflict log: {} conflicts here ({}), {:.2} % of answers",
            v["conflicts"],
            if by_class.is_empty() {
                "none".to_string()
            } else {
                by_class.join(", ")
            },
            100.0 * rate
        ),
        (rate > 0.01).then(|| "over 1 %: read them with `qs events --grep mesh-conflict`".into()),
    ));
    // Seed §10.1's daily review: "any unresolved critical conflicts?"
    let counts = match v["mesh_conflicts"].is_object() {
        true => &v["mesh_conflicts"],
        false => &v["conflicts_unresolved"],
    };
    let critical = counts["critical"].as_u64().unwrap_or(0);
    let overdue = counts["overdue"].as_u64().unwrap_or(0);
    out.push(finding(
        critical == 0 && overdue == 0,
        format!("conflicts: {}", crate::mesh_client::conflicts_line(&v)),
        (critical > 0 || overdue > 0).then(|| {
            "resolve them (`qs events --grep mesh-conflict` says what and where), then \
             `qs mesh heal SCOPE` releases what was reviewed"
                .into()
        }),
    ));
    let breakers: Vec<String> = v["breakers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b.as_str().map(str::to_string))
        .collect();
    out.push(finding(
        breakers.is_empty(),
        match breakers.is_empty() {
            true => "circuit breakers: all closed".to_string(),
            false => format!("circuit breakers not closed: {}", breakers.join(", ")),
        },
        (!breakers.is_empty()).then(|| "find the cause, then `qs mesh heal` the scope".into()),
    ));
    // Seed §7.2's capability mapping: not a fault, but what routing leaves out.
    let rules: Vec<&str> = v["excluded"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r.as_str())
        .collect();
    if !rules.is_empty() {
        out.push(finding(
            true,
            format!("capability mapping: {}", rules.join(", ")),
            None,
        ));
    }
    out
}

/// `qs doctor`: the clock against NATS's, the node certificates in the state directory,
/// the NATS settings; what is wrong and what to do about it. Fails when anything is.
pub fn doctor(api: &str, args: &DoctorArgs) -> Result<()> {
    let config = crate::config_file::read_config(args.config.as_deref())?;
    let mut findings = Vec::new();
    let state = StateDir::open(&args.state_dir)?;
    let pinned = state.read(StateFile::Anchor)?;
    let anchor = match pinned.as_deref().map(AuthorityRecord::decode) {
        None => {
            findings.push(finding(false, "no fleet authority pinned in the state directory", Some(
                "start the agent once with --join-token (or --authority DIR); --trust-on-first-use only on a single lab machine".into())));
            None
        }
        Some(Err(e)) => {
            findings.push(finding(
                false,
                format!("{}: {e}", state.path(StateFile::Anchor).display()),
                Some("remove it and join again with a token".into()),
            ));
            None
        }
        Some(Ok(r)) => {
            findings.push(finding(
                true,
                format!("fleet authority of {} pinned", r.fleet),
                None,
            ));
            anchor_of(&r).ok()
        }
    };
    let keys = state.root().join("keys");
    let certs: Vec<PathBuf> = std::fs::read_dir(&keys)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.to_string_lossy().ends_with(".cert.json"))
                .collect()
        })
        .unwrap_or_default();
    if certs.is_empty() && anchor.is_some() {
        findings.push(finding(
            false,
            "no node certificate in the state directory",
            Some("start the agent with a fresh --join-token".into()),
        ));
    }
    let now = now_ms();
    for path in &certs {
        let verdict = std::fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|b| Signed::decode(&b).map_err(|e| e.to_string()))
            .and_then(|s| match &anchor {
                Some(a) => a.certificate(&s, now).map_err(|e| e.to_string()),
                None => s.open().map_err(|e| e.to_string()),
            });
        match verdict {
            Ok(c) => {
                let left_s = c.not_after_ms.saturating_sub(now) / 1000;
                let renew = config.trust.renew_at_ms(c.not_before_ms, c.not_after_ms);
                let overdue = renew + 60_000 < now;
                findings.push(finding(!overdue, format!("certificate of {}: valid, expires in {}h{:02}m", c.node, left_s / 3600, left_s / 60 % 60),
                    overdue.then(|| "its renewal is overdue: is the agent running, and an authority node reachable?".into())));
            }
            Err(e) => findings.push(finding(
                false,
                format!("{}: {e}", path.display()),
                Some("remove it and join again with a fresh token (`qs fleet token`)".into()),
            )),
        }
    }
    let c = &config.nats;
    let tls = c.tls();
    let creds = c.user.is_some() || c.nkey_seed_file.is_some() || c.creds_file.is_some();
    findings.push(finding(
        tls,
        if tls {
            "NATS over TLS".to_string()
        } else {
            "NATS without TLS: the fleet's traffic crosses the network in clear".to_string()
        },
        (!tls).then(|| {
            "set [nats] tls_ca (and tls_cert, tls_key where the servers verify clients)".into()
        }),
    ));
    findings.push(finding(creds, if creds { "NATS credentials configured" } else { "no NATS credentials: anyone who reaches the servers is on the bus" },
        (!creds).then(|| "give the servers an authorization block and set [nats] user and password_file, nkey_seed_file or creds_file".into())));
    for (what, path) in [
        ("tls_ca", &c.tls_ca),
        ("tls_cert", &c.tls_cert),
        ("tls_key", &c.tls_key),
        ("password_file", &c.password_file),
        ("nkey_seed_file", &c.nkey_seed_file),
        ("creds_file", &c.creds_file),
    ] {
        if let Some(p) = path
            && std::fs::metadata(p).is_err()
        {
            findings.push(finding(
                false,
                format!("[nats] {what} {p} cannot be read"),
                Some("fix the path".into()),
            ));
        }
    }
    if let Some(url) = &args.nats {
        let bus = Bus {
            nats: url.clone(),
            fleet: args.fleet.clone(),
            config: args.config.clone(),
        };
        match block_on(async {
            let fabric = tokio::time::timeout(Duration::from_secs(10), connect(&bus))
                .await
                .context("no answer in 10 s")??;
            let skew = tokio::time::timeout(Duration::from_secs(10), fabric.clock_skew_ms())
                .await
                .context("no answer in 10 s")??;
            Ok(skew)
        }) {
            Ok(skew_ms) => {
                let max = config.max_clock_skew_ms as i64;
                let ok = skew_ms.abs() < max / 2;
                findings.push(finding(ok, format!("connected to {url}; this clock is {skew_ms} ms off the server's"),
                    (!ok).then(|| format!("synchronise the clock (chrony, systemd-timesyncd): messages further than {max} ms off are dropped"))));
            }
            Err(e) => findings.push(finding(
                false,
                format!("NATS at {url}: {e:#}"),
                Some(
                    "check the URL, [nats] credentials and TLS files, and that the server is up"
                        .into(),
                ),
            )),
        }
    }
    findings.extend(mesh(api));
    let failed = findings.iter().filter(|f| !f.ok).count();
    for f in &findings {
        println!("{} {}", if f.ok { "ok  " } else { "FIX " }, f.what);
        if let Some(fix) = &f.fix {
            println!("       -> {fix}");
        }
    }
    if failed > 0 {
        bail!("{failed} thing(s) to fix");
    }
    Ok(())
}
