//! `qs fleet` (the fleet authority: init, token, revoke, status), `qs doctor`, and what
//! `qs agent` needs from its flags and config to trust its peers and reach NATS securely.

use anyhow::{Context, Result, bail};
use qs_agent::names::NODES_BUCKET;
use qs_agent::trust::{CertTrust, Trust, revocation_key};
use qs_core::transport::NatsConfig;
use qs_core::trust::{Anchor, Authority};
use qs_fabric::nats::{ClientCertificate, NatsFabric, NatsSecurity, UserPassword};
use qs_fabric::{Fabric, Kv, KvEvent};
use qs_store::{StateDir, StateFile};
use qs_wire::identity::hex;
use qs_wire::trust::{AuthorityRecord, Capability, Certificate, JoinToken, Signed};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How `qs agent` trusts its peers: what its flags say.
#[derive(Clone, Debug, Default)]
pub struct TrustChoice {
    pub join_token: Option<String>,
    /// A directory with the authority's key (`qs fleet init`).
    pub authority: Option<PathBuf>,
    pub first_use: bool,
}

const KEY_FILE: &str = "authority.key";
const RECORD_FILE: &str = "authority.json";

#[derive(clap::Subcommand, Debug)]
pub enum FleetAction {
    /// Create the fleet's authority key pair in DIR (its secret half never leaves it: keep it
    /// offline, or on the designated authority nodes, which run `qs agent --authority DIR`).
    Init {
        /// The fleet's name (as `qs agent --fleet` gives it).
        #[arg(long, default_value = "default")]
        fleet: String,
        #[arg(long)]
        dir: PathBuf,
        /// Hybrid: sign with ML-DSA-65 as well as Ed25519 (both signatures must hold, so a
        /// forger must break both; documents grow by about 6.6 KB).
        #[arg(long)]
        hybrid: bool,
    },
    /// Issue a single-use join token; prints it.
    Token {
        /// The authority's directory (from `qs fleet init`).
        #[arg(long)]
        dir: PathBuf,
        /// How long the token may be used: 90s, 30m, 1h, 2d.
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: Duration,
        /// The joining node's level, 0 (best) to 7.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=7))]
        level: u8,
        /// What the node may do: host, steward, gpu, api, authority, or all (every one but
        /// authority), comma-separated.
        #[arg(long, default_value = "all")]
        capabilities: String,
        /// The only node name the token may bring in (a token found on the bus by another
        /// member is then of no use to it).
        #[arg(long)]
        node: Option<String>,
    },
    /// Revoke a node's certificate: every agent stops hearing it at once.
    Revoke {
        node: String,
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "revoked by the operator")]
        reason: String,
        #[command(flatten)]
        bus: Bus,
    },
    /// List the fleet's certificates, their expiries and revocations.
    Status {
        /// The authority's directory, or a state directory's keys/authority.json, to check
        /// each certificate's signature against; without it, none is checked.
        #[arg(long)]
        dir: Option<PathBuf>,
        #[command(flatten)]
        bus: Bus,
        #[arg(long, value_enum, default_value_t = crate::render::OutputFormat::Text)]
        output: crate::render::OutputFormat,
    },
}

/// Where the fleet's bus is, for the commands that read or write it.
#[derive(clap::Args, Debug)]
pub struct Bus {
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub(crate) nats: String,
    #[arg(long, default_value = "default")]
    pub(crate) fleet: String,
    /// The agent's config, for its [nats] credentials and TLS settings.
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct DoctorArgs {
    /// The agent's config ([nats], [trust]).
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    /// The agent's state directory (its keys and certificates).
    #[arg(long, default_value = ".qs-state")]
    pub(crate) state_dir: PathBuf,
    /// The fleet's NATS servers; without it, NATS is not checked.
    #[arg(long)]
    pub(crate) nats: Option<String>,
    #[arg(long, default_value = "default")]
    pub(crate) fleet: String,
}

fn parse_ttl(text: &str) -> Result<Duration, String> {
    let (n, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{text:?}: a number and s, m, h or d"))?;
    let s = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("{text:?}: a number and s, m, h or d")),
    };
    if s == 0 || s > 366 * 86_400 {
        return Err(format!("{text:?}: between 1 s and a year"));
    }
    Ok(Duration::from_secs(s))
}

pub(crate) fn now_ms() -> u64 {
    qs_agent::clock::now().as_millis()
}

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b).map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
    Ok(b)
}

/// The authority kept in `dir`, and its public record.
fn load_authority(dir: &Path) -> Result<(Authority, AuthorityRecord)> {
    let record = load_record(dir)?;
    let path = dir.join(KEY_FILE);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let secret =
        qs_wire::identity::unhex(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let authority = if record.ml_dsa.is_some() {
        Authority::hybrid(&record.fleet, secret)?
    } else {
        Authority::new(&record.fleet, secret)?
    };
    if *authority.anchor() != anchor_of(&record)? {
        bail!(
            "{}: the public key does not match {KEY_FILE}",
            dir.join(RECORD_FILE).display()
        );
    }
    Ok((authority, record))
}

fn load_record(dir: &Path) -> Result<AuthorityRecord> {
    let path = if dir.is_dir() {
        dir.join(RECORD_FILE)
    } else {
        dir.to_path_buf()
    };
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    AuthorityRecord::decode(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

pub(crate) fn anchor_of(record: &AuthorityRecord) -> Result<Anchor> {
    let anchor = Anchor::new(&record.fleet, record.key())?;
    match &record.ml_dsa {
        None => Ok(anchor),
        Some(text) => {
            let bytes = qs_wire::trust::unhex_len(text, qs_wire::trust::ML_DSA_KEY_LEN)
                .map_err(anyhow::Error::msg)?;
            Ok(anchor.with_ml_dsa(qs_core::trust::MlDsaKey::decode(&bytes)?))
        }
    }
}

pub fn fleet(action: FleetAction) -> Result<()> {
    match action {
        FleetAction::Init { fleet, dir, hybrid } => init(&fleet, &dir, hybrid),
        FleetAction::Token {
            dir,
            ttl,
            level,
            capabilities,
            node,
        } => {
            let (authority, _) = load_authority(&dir)?;
            let grant = qs_core::trust::TokenGrant {
                level,
                capabilities: Capability::parse_list(&capabilities).map_err(anyhow::Error::msg)?,
                node: node
                    .map(|n| qs_wire::NodeId::new(&n))
                    .transpose()
                    .context("--node")?,
            };
            let token = authority.token(random()?, grant, now_ms() + ttl.as_millis() as u64);
            println!("{}", token.to_token_text());
            Ok(())
        }
        FleetAction::Revoke {
            node,
            dir,
            reason,
            bus,
        } => {
            let (authority, _) = load_authority(&dir)?;
            let node = qs_wire::NodeId::new(&node).context("the node's name")?;
            block_on(async {
                let nodes = connect(&bus).await?.kv(NODES_BUCKET).await?;
                let revocation = authority.revoke(&node, now_ms(), &reason);
                nodes
                    .put(&revocation_key(&node), revocation.encode().into())
                    .await?;
                println!("revoked every certificate of {node} issued until now");
                Ok(())
            })
        }
        FleetAction::Status { dir, bus, output } => {
            let anchor = dir.as_deref().map(load_record).transpose()?;
            let anchor = anchor.as_ref().map(anchor_of).transpose()?;
            block_on(status(&bus, anchor.as_ref(), output))
        }
    }
}

fn init(fleet: &str, dir: &Path, hybrid: bool) -> Result<()> {
    let key = dir.join(KEY_FILE);
    if key.exists() {
        bail!(
            "{} exists: this fleet has an authority already",
            key.display()
        );
    }
    let secret: [u8; 32] = random()?;
    let authority = if hybrid {
        Authority::hybrid(fleet, secret)?
    } else {
        Authority::new(fleet, secret)?
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_private(&key, hex(&secret).as_bytes())?;
    let record = AuthorityRecord {
        fleet: fleet.into(),
        public_key: hex(&authority.anchor().public()),
        ml_dsa: authority.anchor().ml_dsa().map(|k| hex(k.encoded())),
    };
    std::fs::write(dir.join(RECORD_FILE), serde_json::to_vec_pretty(&record)?)?;
    println!(
        "fleet {fleet}: authority {}",
        authority.anchor().fingerprint()
    );
    println!(
        "  secret key: {} (mode 0600): keep it offline, or only on the authority nodes",
        key.display()
    );
    if hybrid {
        println!("  hybrid: Ed25519 and ML-DSA-65 sign every document; both must hold");
    }
    println!("  public key: {}", dir.join(RECORD_FILE).display());
    println!(
        "next: qs agent --authority {} ... on an authority node, and `qs fleet token --dir {}` for each other node",
        dir.display(),
        dir.display()
    );
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)?;
    Ok(())
}

pub(crate) fn block_on<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?
        .block_on(f)
}

pub(crate) async fn connect(bus: &Bus) -> Result<NatsFabric> {
    let config = crate::config_file::read_config(bus.config.as_deref())?;
    let security = nats_security(&config.nats)?;
    let fabric = NatsFabric::connect_secured(&bus.nats, &bus.fleet, 1, &security)
        .await
        .with_context(|| format!("connecting to {}", bus.nats))?;
    Ok(fabric)
}

/// Every entry of the `nodes` bucket as it is now.
async fn entries<K: Kv>(kv: &K) -> Result<Vec<(String, Vec<u8>)>> {
    let mut watch = kv.watch("").await?;
    let mut out = Vec::new();
    let read = async {
        while let Some(event) = watch.next().await {
            match event? {
                KvEvent::Put(e) => out.push((e.key, e.value.to_vec())),
                KvEvent::Delete { .. } => {}
                KvEvent::Synced => break,
            }
        }
        Ok::<_, anyhow::Error>(())
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .context("reading the nodes bucket")??;
    Ok(out)
}

async fn status(
    bus: &Bus,
    anchor: Option<&Anchor>,
    output: crate::render::OutputFormat,
) -> Result<()> {
    let nodes = connect(bus).await?.kv(NODES_BUCKET).await?;
    let all = entries(&nodes).await?;
    let mut revoked = std::collections::BTreeMap::new();
    for (key, value) in all.iter().filter(|(k, _)| k.starts_with("revoked.")) {
        let Ok(signed) = Signed::decode(value) else {
            continue;
        };
        let checked = match anchor {
            Some(a) => a.revocation(&signed).map_err(|e| e.to_string()),
            None => signed.open().map_err(|e| e.to_string()),
        };
        match checked {
            Ok(r) => {
                revoked.insert(r.node.to_string(), r);
            }
            Err(e) => eprintln!("ignored {key}: {e}"),
        }
    }
    let now = now_ms();
    let mut rows = Vec::new();
    for (key, value) in all.iter().filter(|(k, _)| !k.starts_with("revoked.")) {
        let row = match Signed::decode(value)
            .map_err(|e| e.to_string())
            .and_then(|s| {
                let cert: Certificate = s.open().map_err(|e| e.to_string())?;
                let verdict = match anchor.map(|a| a.certificate(&s, now)) {
                    None => "unchecked".to_string(),
                    Some(Ok(_)) => "valid".to_string(),
                    Some(Err(e)) => e.to_string(),
                };
                Ok((cert, verdict))
            }) {
            Ok((cert, verdict)) => {
                let state = match revoked.get(cert.node.as_str()).filter(|r| r.covers(&cert)) {
                    Some(r) => format!("revoked: {}", r.reason),
                    None if cert.not_after_ms <= now => "expired".into(),
                    None => verdict,
                };
                serde_json::json!({
                    "node": key,
                    "serial": format!("{:016x}", cert.serial),
                    "level": cert.level,
                    "capabilities": cert.capabilities.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
                    "expires_in_s": (cert.not_after_ms.saturating_sub(now)) / 1000,
                    "state": state,
                })
            }
            Err(e) => serde_json::json!({"node": key, "state": format!("not a certificate: {e}")}),
        };
        rows.push(row);
    }
    let value = serde_json::json!({ "certificates": rows, "revocations": revoked.len() });
    crate::fleet::show(output, &value, |v| {
        let mut t = crate::fleet::table(&[
            "NODE",
            "SERIAL",
            "LEVEL",
            "CAPABILITIES",
            "EXPIRES IN",
            "STATE",
        ]);
        for r in v["certificates"].as_array().into_iter().flatten() {
            let caps: Vec<&str> = r["capabilities"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c.as_str())
                .collect();
            t.add_row(vec![
                r["node"].as_str().unwrap_or("").to_string(),
                r["serial"].as_str().unwrap_or("-").to_string(),
                r["level"].to_string(),
                caps.join(","),
                r["expires_in_s"]
                    .as_u64()
                    .map_or("-".into(), |s| format!("{}h{:02}m", s / 3600, s / 60 % 60)),
                r["state"].as_str().unwrap_or("").to_string(),
            ]);
        }
        format!("{t}\n{} revocation(s)", v["revocations"])
    })
}

/// How `qs agent` trusts its peers, from its flags and what its state directory pinned.
pub fn choose(choice: &TrustChoice, fleet: &str, state: &StateDir) -> Result<Trust> {
    if choice.first_use {
        eprintln!(
            "qs agent: WARNING: --trust-on-first-use: the first key registered under a node's \
             name is trusted, and anyone who can write the fleet's KV can join it. For a single \
             lab machine only; a fleet uses `qs fleet init` and join tokens"
        );
        return Ok(Trust::FirstUse);
    }
    let pinned = match state.read(StateFile::Anchor)? {
        Some(bytes) => Some(
            AuthorityRecord::decode(&bytes)
                .map_err(|e| anyhow::anyhow!("{}: {e}", state.path(StateFile::Anchor).display()))?,
        ),
        None => None,
    };
    let (record, join_token, authority) = if let Some(dir) = &choice.authority {
        let (authority, record) = load_authority(dir)?;
        (record, None, Some(std::sync::Arc::new(authority)))
    } else if let Some(text) = &choice.join_token {
        let signed = Signed::from_token_text(text).context("--join-token")?;
        let token: JoinToken = signed.open().context("--join-token")?;
        let record = AuthorityRecord {
            fleet: token.fleet,
            public_key: token.authority,
            ml_dsa: token.authority_ml_dsa,
        };
        // Signed by the key it names, for its fleet (a token altered on its way is refused
        // here); whether it expired or was used is the authority's to judge, and count.
        anchor_of(&record)?
            .token(&signed, 0)
            .map_err(|r| anyhow::anyhow!("--join-token: {r}"))?;
        (record, Some(signed), None)
    } else if let Some(record) = pinned.clone() {
        (record, None, None)
    } else {
        bail!(
            "this agent trusts no fleet authority yet: give it --join-token (from `qs fleet \
             token` on the authority's machine), or --authority DIR on an authority node, or \
             --trust-on-first-use for a single lab machine"
        );
    };
    if record.fleet != fleet {
        bail!(
            "the authority is fleet {:?}'s, and this agent joins {fleet:?} (--fleet)",
            record.fleet
        );
    }
    if let Some(p) = &pinned
        && p != &record
    {
        bail!(
            "this state directory trusts another authority ({}): a node changes fleets with a \
             fresh state directory",
            state.path(StateFile::Anchor).display()
        );
    }
    if pinned.is_none() {
        state.write(
            StateFile::Anchor,
            &serde_json::to_vec(&record)?,
            Some(0o644),
        )?;
    }
    Ok(Trust::Certificates(Box::new(CertTrust {
        anchor: anchor_of(&record)?,
        join_token,
        authority,
    })))
}

fn read_secret(path: &str, what: &str) -> Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading [nats] {what} {path}"))?;
    Ok(text.trim().to_owned())
}

/// The NATS credentials and TLS settings of `[nats]`, with the files it names read.
pub fn nats_security(c: &NatsConfig) -> Result<NatsSecurity> {
    let password = match (&c.password, &c.password_file) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(f)) => Some(read_secret(f, "password_file")?),
        (None, None) => None,
    };
    Ok(NatsSecurity {
        user: c
            .user
            .clone()
            .zip(password)
            .map(|(user, password)| UserPassword { user, password }),
        nkey_seed: c
            .nkey_seed_file
            .as_deref()
            .map(|f| read_secret(f, "nkey_seed_file"))
            .transpose()?,
        creds: c
            .creds_file
            .as_deref()
            .map(|f| read_secret(f, "creds_file"))
            .transpose()?,
        tls_ca: c.tls_ca.as_ref().map(PathBuf::from),
        tls_client: c
            .tls_cert
            .clone()
            .zip(c.tls_key.clone())
            .map(|(cert, key)| ClientCertificate {
                cert: cert.into(),
                key: key.into(),
            }),
        tls_required: c.tls_required,
    })
}
