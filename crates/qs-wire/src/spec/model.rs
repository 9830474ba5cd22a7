//! `[model.NAME]`: a model runtime (seed 003's Soulstone) with its tiers, discipline, inertia
//! and authority, checked like every spec (file, line, column, field).
//!
//! ```toml
//! [model.llama]
//! authority = "exclusive"        # we start, stop and swap it; "shared": route only
//! discipline = "parallel"        # or "serial"
//! max_concurrency = 8
//! inertia_bias_ms = 5000
//! load_ms = 20000                # the load time assumed until one is seen
//! health = { kind = "http", path = "/health" }
//! warm_path = "/v1/models"
//! resident = false               # true: kept loaded in the GPU's reserved margin
//!
//! [[model.llama.tier]]           # largest first
//! name = "70b"
//! vram_mib = 40960
//! command = "vllm serve meta-llama/Llama-3.1-70B --port {port}"
//!
//! [[model.llama.tier]]
//! name = "8b"
//! vram_mib = 6144
//! command = "llama-server -m llama-8b.gguf --port {port}"
//! ```

use super::locate::Locator;
use super::validate::{InvalidField, bad, command, within};
use super::{HealthCheck, MAX_COMMAND_BYTES, RawHealth, SpecError, health};
use crate::ids::ServiceName;
use serde::{Deserialize, Serialize};
use toml::Spanned;

/// Most tiers one model may have.
pub const MAX_TIERS: usize = 8;
/// Most requests one runtime takes at once.
pub const MAX_CONCURRENCY: i64 = 4096;
/// Longest load time or inertia bias a spec may name (an hour).
pub const MAX_MODEL_MS: i64 = 3_600_000;
/// Largest VRAM one tier may need (1 TiB).
const MAX_TIER_VRAM_MIB: i64 = 1 << 20;
/// Longest tier name, shared runtime address and warm path.
const MAX_TIER_NAME_BYTES: usize = 32;
const MAX_URL_BYTES: usize = 253;
const MAX_WARM_PATH_BYTES: usize = 256;
const MIB: u64 = 1024 * 1024;

/// Who manages a runtime's lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Authority {
    /// Ours: we may start, stop and swap it.
    Exclusive,
    /// Someone else's: we route to it and never touch its lifecycle.
    Shared,
}

/// How a runtime takes requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum ModelDiscipline {
    /// Continuous batching: up to `max_concurrency` requests at once.
    Parallel { max_concurrency: u32 },
    /// One request at a time.
    Serial,
}

/// One size of a model (70B, then 8B): what it needs and how it starts.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ModelTier {
    pub name: String,
    pub vram_bytes: u64,
    /// The server's command line (`{port}` and `{gpu}` are replaced); `None` when shared.
    pub command: Option<String>,
}

/// A model runtime as the operator declared it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ModelSpec {
    pub name: ServiceName,
    pub authority: Authority,
    pub discipline: ModelDiscipline,
    pub inertia_bias_ms: u64,
    pub load_ms: u64,
    /// Largest first.
    pub tiers: Vec<ModelTier>,
    /// A shared runtime's address (`http://host:port`).
    pub url: Option<String>,
    pub health: Option<HealthCheck>,
    /// A path that answers 200 once the model is loaded (`/v1/models`).
    pub warm_path: Option<String>,
    /// A small model that stays loaded through every swap, in the GPU's reserved margin
    /// (nothing else may use the margin).
    #[serde(default)]
    pub resident: bool,
}

impl ModelSpec {
    /// Every rule a model runtime must keep, whatever way it came in: parsed from a spec
    /// (after [`parse_spec`](super::parse_spec) located its TOML) or read from the fleet's
    /// `models` KV bucket, where any node with write access (or a bug) may have put it.
    pub fn validate(&self) -> Result<(), InvalidField> {
        if let ModelDiscipline::Parallel { max_concurrency } = self.discipline {
            within(
                "max_concurrency",
                max_concurrency.into(),
                1,
                MAX_CONCURRENCY as u64,
            )?;
        }
        within(
            "inertia_bias_ms",
            self.inertia_bias_ms,
            0,
            MAX_MODEL_MS as u64,
        )?;
        within("load_ms", self.load_ms, 1, MAX_MODEL_MS as u64)?;
        if self.tiers.is_empty() || self.tiers.len() > MAX_TIERS {
            return bad("tier", format!("1 to {MAX_TIERS} tiers"));
        }
        let shared = self.authority == Authority::Shared;
        if shared && self.resident {
            return bad(
                "resident",
                "a shared runtime is someone else's: it cannot be kept resident here",
            );
        }
        if shared && self.tiers.len() > 1 {
            return bad(
                "tier",
                "a shared runtime is one size: we never choose its tier",
            );
        }
        for (i, t) in self.tiers.iter().enumerate() {
            let field = |f: &str| format!("tier[{i}].{f}");
            let well_formed = !t.name.is_empty()
                && t.name.len() <= MAX_TIER_NAME_BYTES
                && t.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !well_formed {
                return bad(
                    &field("name"),
                    format!("1 to {MAX_TIER_NAME_BYTES} letters, digits, '-', '_' or '.'"),
                );
            }
            if self.tiers[..i].iter().any(|o| o.name == t.name) {
                return bad(&field("name"), format!("tier `{}` is named twice", t.name));
            }
            within(
                &field("vram_bytes"),
                t.vram_bytes,
                1,
                MAX_TIER_VRAM_MIB as u64 * MIB,
            )?;
            if i > 0 && t.vram_bytes >= self.tiers[i - 1].vram_bytes {
                return bad(&field("vram_bytes"), "tiers go largest first");
            }
            match (&t.command, shared) {
                (Some(c), false) => {
                    command(&field("command"), c)?;
                    if !c.contains("{port}") {
                        return bad(&field("command"), "must listen on {port}");
                    }
                }
                (None, false) => {
                    return bad(
                        &field("command"),
                        "an exclusive runtime needs the command that starts it",
                    );
                }
                (Some(_), true) => {
                    return bad(
                        &field("command"),
                        "a shared runtime is started by someone else: no command",
                    );
                }
                (None, true) => {}
            }
        }
        match (&self.url, shared) {
            (Some(u), true) => {
                let ok = u
                    .strip_prefix("http://")
                    .or_else(|| u.strip_prefix("https://"))
                    .is_some_and(|rest| {
                        !rest.is_empty()
                            && rest.len() <= MAX_URL_BYTES
                            && !rest.chars().any(|c| c.is_control() || c == ' ')
                    });
                if !ok {
                    return bad("url", "must be an http:// or https:// address");
                }
            }
            (None, true) => return bad("url", "a shared runtime needs the `url` it is reached at"),
            (Some(_), false) => {
                return bad(
                    "url",
                    "only a shared runtime has a `url`: an exclusive one is started here",
                );
            }
            (None, false) => {}
        }
        if let Some(p) = &self.warm_path {
            let ok = p.starts_with('/')
                && p.len() <= MAX_WARM_PATH_BYTES
                && !p.chars().any(|c| c.is_control() || c == ' ');
            if !ok {
                return bad(
                    "warm_path",
                    format!(
                        "must be a path starting with '/' (at most {MAX_WARM_PATH_BYTES} bytes)"
                    ),
                );
            }
        }
        if let Some(h) = &self.health {
            super::validate::health(h)?;
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawModel {
    authority: Option<Spanned<String>>,
    discipline: Option<Spanned<String>>,
    max_concurrency: Option<Spanned<i64>>,
    inertia_bias_ms: Option<Spanned<i64>>,
    load_ms: Option<Spanned<i64>>,
    #[serde(default)]
    tier: Vec<Spanned<RawTier>>,
    url: Option<Spanned<String>>,
    health: Option<Spanned<RawHealth>>,
    warm_path: Option<Spanned<String>>,
    resident: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTier {
    name: Spanned<String>,
    vram_mib: Spanned<i64>,
    command: Option<Spanned<String>>,
}

/// Checks one `[model.NAME]` table.
pub(super) fn model(
    at: &Locator<'_>,
    path: &str,
    name: &str,
    raw: &Spanned<RawModel>,
) -> Result<ModelSpec, SpecError> {
    let name = ServiceName::new(name).map_err(|e| at.error(raw.span(), path, e.to_string()))?;
    let m = raw.get_ref();
    let field = |f: &str| format!("{path}.{f}");
    let authority = match m.authority.as_ref().map(|a| (a.get_ref().as_str(), a)) {
        None | Some(("exclusive", _)) => Authority::Exclusive,
        Some(("shared", _)) => Authority::Shared,
        Some((other, a)) => {
            return Err(at.error(
                a.span(),
                &field("authority"),
                format!("unknown authority `{other}`, expected `exclusive` or `shared`"),
            ));
        }
    };
    let ms = |v: &Option<Spanned<i64>>, f: &str, min: i64, default: u64| match v {
        None => Ok(default),
        Some(v) if (min..=MAX_MODEL_MS).contains(v.get_ref()) => Ok(*v.get_ref() as u64),
        Some(v) => Err(at.error(
            v.span(),
            &field(f),
            format!("must be in {min}..={MAX_MODEL_MS} ms, got {}", v.get_ref()),
        )),
    };
    let discipline = match m.discipline.as_ref().map(|d| (d.get_ref().as_str(), d)) {
        None | Some(("parallel", _)) => {
            let n = match &m.max_concurrency {
                None => 4,
                Some(v) if (1..=MAX_CONCURRENCY).contains(v.get_ref()) => *v.get_ref() as u32,
                Some(v) => {
                    return Err(at.error(
                        v.span(),
                        &field("max_concurrency"),
                        format!("must be in 1..={MAX_CONCURRENCY}, got {}", v.get_ref()),
                    ));
                }
            };
            ModelDiscipline::Parallel { max_concurrency: n }
        }
        Some(("serial", _)) => {
            if let Some(v) = &m.max_concurrency {
                return Err(at.error(
                    v.span(),
                    &field("max_concurrency"),
                    "a serial runtime takes one request at a time",
                ));
            }
            ModelDiscipline::Serial
        }
        Some((other, d)) => {
            return Err(at.error(
                d.span(),
                &field("discipline"),
                format!("unknown discipline `{other}`, expected `parallel` or `serial`"),
            ));
        }
    };
    let url = match (&m.url, authority) {
        (Some(u), Authority::Shared) => {
            let ok = u
                .get_ref()
                .strip_prefix("http://")
                .or_else(|| u.get_ref().strip_prefix("https://"))
                .is_some_and(|rest| !rest.is_empty() && rest.len() <= MAX_URL_BYTES);
            if !ok {
                return Err(at.error(
                    u.span(),
                    &field("url"),
                    "must be an http:// or https:// address",
                ));
            }
            Some(u.get_ref().clone())
        }
        (Some(u), Authority::Exclusive) => {
            return Err(at.error(
                u.span(),
                &field("url"),
                "only a shared runtime has a `url`: an exclusive one is started here",
            ));
        }
        (None, Authority::Shared) => {
            return Err(at.error(
                raw.span(),
                &field("url"),
                "a shared runtime needs the `url` it is reached at",
            ));
        }
        (None, Authority::Exclusive) => None,
    };
    let tiers = tiers(at, path, raw, authority)?;
    let warm_path = match &m.warm_path {
        Some(p) if p.get_ref().starts_with('/') && p.get_ref().len() <= MAX_WARM_PATH_BYTES => {
            Some(p.get_ref().clone())
        }
        Some(p) => {
            return Err(at.error(
                p.span(),
                &field("warm_path"),
                "must be a path starting with '/' (at most 256 bytes)",
            ));
        }
        None => None,
    };
    let spec = ModelSpec {
        name,
        authority,
        discipline,
        inertia_bias_ms: ms(&m.inertia_bias_ms, "inertia_bias_ms", 0, 0)?,
        load_ms: ms(&m.load_ms, "load_ms", 1, 30_000)?,
        tiers,
        url,
        health: m
            .health
            .as_ref()
            .map(|h| health(at, &field("health"), h))
            .transpose()?,
        warm_path,
        resident: m.resident.as_ref().is_some_and(|r| *r.get_ref()),
    };
    // The rules every way in shares; the checks above only locate the common mistakes
    // more precisely.
    spec.validate()
        .map_err(|f| at.error(raw.span(), &field(&f.field), f.reason))?;
    Ok(spec)
}

fn tiers(
    at: &Locator<'_>,
    path: &str,
    raw: &Spanned<RawModel>,
    authority: Authority,
) -> Result<Vec<ModelTier>, SpecError> {
    let m = raw.get_ref();
    if m.tier.is_empty() {
        return Err(at.error(
            raw.span(),
            &format!("{path}.tier"),
            "a model needs at least one [[tier]] with its vram_mib",
        ));
    }
    if m.tier.len() > MAX_TIERS {
        return Err(at.error(
            m.tier[MAX_TIERS].span(),
            &format!("{path}.tier"),
            format!("at most {MAX_TIERS} tiers"),
        ));
    }
    if authority == Authority::Shared && m.tier.len() > 1 {
        return Err(at.error(
            m.tier[1].span(),
            &format!("{path}.tier"),
            "a shared runtime is one size: we never choose its tier",
        ));
    }
    let mut out: Vec<ModelTier> = Vec::new();
    for (i, t) in m.tier.iter().enumerate() {
        let field = |f: &str| format!("{path}.tier[{i}].{f}");
        let t = t.get_ref();
        let name = t.name.get_ref();
        let well_formed = !name.is_empty()
            && name.len() <= MAX_TIER_NAME_BYTES
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !well_formed {
            return Err(at.error(
                t.name.span(),
                &field("name"),
                "1 to 32 letters, digits, '-', '_' or '.'",
            ));
        }
        if out.iter().any(|o| &o.name == name) {
            return Err(at.error(
                t.name.span(),
                &field("name"),
                format!("tier `{name}` is named twice"),
            ));
        }
        let mib = *t.vram_mib.get_ref();
        if !(1..=MAX_TIER_VRAM_MIB).contains(&mib) {
            return Err(at.error(
                t.vram_mib.span(),
                &field("vram_mib"),
                format!("must be in 1..={MAX_TIER_VRAM_MIB} MiB, got {mib}"),
            ));
        }
        let vram_bytes = mib as u64 * MIB;
        if let Some(prev) = out.last()
            && vram_bytes >= prev.vram_bytes
        {
            return Err(at.error(
                t.vram_mib.span(),
                &field("vram_mib"),
                format!(
                    "tiers go largest first: {mib} MiB is not less than tier `{}`'s {} MiB",
                    prev.name,
                    prev.vram_bytes / MIB
                ),
            ));
        }
        let command = match (&t.command, authority) {
            (Some(c), Authority::Exclusive) => {
                let c = c.get_ref();
                if c.trim().is_empty() || c.len() > MAX_COMMAND_BYTES || !c.contains("{port}") {
                    return Err(at.error(
                        t.command.as_ref().map_or(raw.span(), |c| c.span()),
                        &field("command"),
                        format!(
                            "a command of at most {MAX_COMMAND_BYTES} bytes that listens on {{port}}"
                        ),
                    ));
                }
                Some(c.clone())
            }
            (None, Authority::Exclusive) => {
                return Err(at.error(
                    raw.span(),
                    &field("command"),
                    "an exclusive runtime needs the command that starts it",
                ));
            }
            (Some(c), Authority::Shared) => {
                return Err(at.error(
                    c.span(),
                    &field("command"),
                    "a shared runtime is started by someone else: no command",
                ));
            }
            (None, Authority::Shared) => None,
        };
        out.push(ModelTier {
            name: name.clone(),
            vram_bytes,
            command,
        });
    }
    Ok(out)
}
