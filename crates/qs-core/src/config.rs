//! Tunables of the core, with the defaults of DESIGN.md.

use qs_wire::{Capacity, Load, Resource};
use serde::{Deserialize, Serialize};

/// Sensing thresholds: a node over any of them is hot and does not offer (seed 000 §2).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Thresholds {
    pub cpu: f64,
    pub memory: f64,
    pub gpu: f64,
    /// Whether the host's sensed CPU utilisation counts: against `cpu`, and in the free CPU
    /// an offer weighs. Agents that share one host (several nodes on a test machine,
    /// containers on one box) each sense the others' load as their own; with `false` only
    /// the CPU committed to their instances counts, as a scheduler by requests would.
    pub cpu_sensed: bool,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            cpu: 0.80,
            memory: 0.85,
            gpu: 0.90,
            cpu_sensed: true,
        }
    }
}

impl Thresholds {
    /// The first resource whose sensed use is over its threshold, if any. `gpu` limits the GPU
    /// check to one GPU; `None` checks every GPU.
    pub fn over(&self, load: &Load, capacity: &Capacity, gpu: Option<usize>) -> Option<Resource> {
        if self.cpu_sensed && load.cpu_util > self.cpu {
            return Some(Resource::Cpu);
        }
        if capacity.memory_bytes > 0
            && load.memory_used_bytes as f64 / capacity.memory_bytes as f64 > self.memory
        {
            return Some(Resource::Memory);
        }
        let hot = |g: &qs_wire::GpuLoad| g.util > self.gpu;
        let gpu_hot = match gpu {
            Some(i) => load.gpus.get(i).is_some_and(hot),
            None => load.gpus.iter().any(hot),
        };
        gpu_hot.then_some(Resource::Gpu)
    }

    /// The fraction of the node's CPU taken: the larger of what is sensed (when it counts)
    /// and what its instances were committed.
    pub fn cpu_taken(&self, load: &Load, capacity: &Capacity, committed_millicores: u64) -> f64 {
        let committed = committed_millicores as f64 / capacity.cpu_millicores.max(1) as f64;
        if self.cpu_sensed {
            load.cpu_util.max(committed)
        } else {
            committed
        }
    }
}

/// Most nodes asked to relay one probe, whatever the config says.
pub const MAX_PROBE_RELAYS: usize = 16;
/// The smallest `ledger_max_bytes`: a ledger must hold at least a few hundred records.
pub const MIN_LEDGER_BYTES: u64 = 64 * 1024;

/// Every tunable of the core. Durations are in milliseconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub thresholds: Thresholds,
    /// Admission gate: a composite must exceed this.
    pub gate_min: f64,
    pub heartbeat_ms: u64,
    /// A node silent this long is suspected and probed, directly and through
    /// `probe_relays` other nodes (2 heartbeats by default).
    pub suspect_after_ms: u64,
    /// A suspect that answers no probe within this long is declared dead.
    pub probe_timeout_ms: u64,
    /// Nodes asked to probe a suspect for us (indirect probes).
    pub probe_relays: usize,
    /// A node silent this long is declared dead whatever the probes say (4 heartbeats by
    /// default).
    pub dead_after_ms: u64,
    /// A starting node listens this long before it acts as a steward, so its view of who is
    /// alive (and so of who stewards what) is complete.
    pub join_settle_ms: u64,
    /// Fleets with more live nodes than this are queried by weighted sample.
    pub query_all_below: usize,
    /// Nodes asked per capacity query in large fleets (power of d choices).
    pub query_sample: usize,
    /// Bounds of the adaptive offer-gathering deadline.
    pub query_timeout_min_ms: u64,
    pub query_timeout_max_ms: u64,
    pub dispatch_timeout_ms: u64,
    /// How long a singleton's placement waits for its claim on the `instances` KV.
    pub claim_timeout_ms: u64,
    pub retry_backoff_ms: u64,
    pub retry_backoff_max_ms: u64,
    /// Query rounds before a placement gives up (the steward starts a new one later).
    pub max_attempts: u32,
    /// A steward that inherits a service (its spec existed before the tenure began) waits
    /// this long before placing, so dispatches its predecessor left in flight surface first.
    pub steward_settle_ms: u64,
    /// The same wait for singletons, longer: two of them must never run.
    pub singleton_settle_ms: u64,
    pub scale_out_cooldown_ms: u64,
    /// No hot instance for this long gives back one autoscaled replica.
    pub scale_in_after_ms: u64,
    /// An accepted instance must show in its host's heartbeat within this long.
    pub pending_timeout_ms: u64,
    /// In-place restarts of a failed instance before its node gives it up to the steward.
    pub max_restarts: u32,
    /// First restart delay; it doubles with each restart of the same instance.
    pub restart_backoff_ms: u64,
    pub restart_backoff_max_ms: u64,
    pub failure_half_life_ms: u64,
    pub pressure_cap: f64,
    /// Placements one node drives at once, over all its services.
    pub max_placements_in_flight: usize,
    /// Placements one service has in flight at once.
    pub max_placements_per_service: u32,
    /// Completed job instances a host keeps reporting, so every observer sees the completion.
    pub completion_linger_ms: u64,
    /// Messages timestamped further than this from the receiver's clock are dropped as stale.
    pub max_clock_skew_ms: u64,
    /// Invalid messages from one sender within `quarantine_window_ms` that quarantine it.
    pub quarantine_after: u32,
    pub quarantine_window_ms: u64,
    /// How long a quarantined sender's messages are dropped unread.
    pub quarantine_ms: u64,
    /// After a service's steward changed here, how long orders (dispatch, stop, promote)
    /// from the one before are still obeyed: the two views of the fleet settle meanwhile.
    pub steward_grace_ms: u64,
    /// A node dead this long is forgotten (a name that returns later joins as new).
    pub forget_dead_after_ms: u64,
    /// An ended instance's logs are removed this long after they were last written.
    pub log_retention_ms: u64,
    /// The ledger keeps this much history: older records are compacted into its snapshot
    /// (those that still describe the present, such as a running instance's start, stay).
    pub ledger_max_age_ms: u64,
    /// Past this many bytes of records the oldest are compacted, down to three quarters.
    pub ledger_max_bytes: u64,
    /// The users a root agent runs instances as when their spec names one (a spec naming
    /// any other is refused when its instance starts); without a name: `nobody`. Root is
    /// never among them unless named here: whoever can write a spec could otherwise run
    /// commands as root on every node.
    pub child_users: Vec<String>,
    /// Model runtimes on GPUs: the reserved margin, stasis and drain bounds, the policy.
    pub models: crate::gpu::ModelsConfig,
    /// The fleet's stable service addresses: where this agent listens, where it is reached.
    pub addresses: AddressesConfig,
    /// Certificates and the encryption of directed messages.
    pub trust: crate::transport::TrustConfig,
    /// How the agent reaches its NATS servers: credentials and TLS.
    pub nats: crate::transport::NatsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            thresholds: Thresholds::default(),
            gate_min: 0.3,
            heartbeat_ms: 250,
            suspect_after_ms: 500,
            probe_timeout_ms: 250,
            probe_relays: 3,
            dead_after_ms: 1000,
            join_settle_ms: 1000,
            query_all_below: 32,
            query_sample: 8,
            query_timeout_min_ms: 5,
            query_timeout_max_ms: 500,
            dispatch_timeout_ms: 500,
            claim_timeout_ms: 2000,
            retry_backoff_ms: 100,
            retry_backoff_max_ms: 2000,
            max_attempts: 5,
            steward_settle_ms: 500,
            singleton_settle_ms: 2000,
            scale_out_cooldown_ms: 2000,
            scale_in_after_ms: 30_000,
            pending_timeout_ms: 3000,
            max_restarts: 2,
            restart_backoff_ms: 200,
            restart_backoff_max_ms: 10_000,
            failure_half_life_ms: 3_600_000,
            pressure_cap: 0.9,
            max_placements_in_flight: 256,
            max_placements_per_service: 32,
            completion_linger_ms: 2000,
            max_clock_skew_ms: 30_000,
            quarantine_after: 16,
            quarantine_window_ms: 10_000,
            quarantine_ms: 60_000,
            steward_grace_ms: 3000,
            forget_dead_after_ms: 3_600_000,
            log_retention_ms: 86_400_000,
            ledger_max_age_ms: 7 * 86_400_000,
            ledger_max_bytes: 512 << 20,
            child_users: vec!["nobody".into()],
            models: Default::default(),
            addresses: Default::default(),
            trust: Default::default(),
            nats: Default::default(),
        }
    }
}

/// A config value out of range.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("config field `{field}`: {message}")]
pub struct ConfigError {
    pub field: &'static str,
    pub message: String,
}

impl Config {
    /// Checks every value; the first one out of range is named.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fraction = |field, v: f64| {
            if v.is_finite() && v > 0.0 && v <= 1.0 {
                Ok(())
            } else {
                Err(ConfigError {
                    field,
                    message: format!("must be in (0, 1], got {v}"),
                })
            }
        };
        fraction("thresholds.cpu", self.thresholds.cpu)?;
        fraction("thresholds.memory", self.thresholds.memory)?;
        fraction("thresholds.gpu", self.thresholds.gpu)?;
        fraction("pressure_cap", self.pressure_cap)?;
        if self.pressure_cap >= 1.0 {
            return Err(ConfigError {
                field: "pressure_cap",
                message: "must stay below 1 so a node can always recover".into(),
            });
        }
        if !(self.gate_min.is_finite() && self.gate_min >= 0.0) {
            return Err(ConfigError {
                field: "gate_min",
                message: format!("must be a non-negative number, got {}", self.gate_min),
            });
        }
        let positive = |field, v: u64| {
            if v > 0 {
                Ok(())
            } else {
                Err(ConfigError {
                    field,
                    message: "must be more than 0".into(),
                })
            }
        };
        positive("heartbeat_ms", self.heartbeat_ms)?;
        positive("query_timeout_min_ms", self.query_timeout_min_ms)?;
        positive("dispatch_timeout_ms", self.dispatch_timeout_ms)?;
        positive("claim_timeout_ms", self.claim_timeout_ms)?;
        positive("failure_half_life_ms", self.failure_half_life_ms)?;
        positive("query_sample", self.query_sample as u64)?;
        positive("max_attempts", u64::from(self.max_attempts))?;
        positive(
            "max_placements_in_flight",
            self.max_placements_in_flight as u64,
        )?;
        positive(
            "max_placements_per_service",
            u64::from(self.max_placements_per_service),
        )?;
        if self.dead_after_ms < 2 * self.heartbeat_ms {
            return Err(ConfigError {
                field: "dead_after_ms",
                message: format!(
                    "must be at least two heartbeats ({} ms), got {}",
                    2 * self.heartbeat_ms,
                    self.dead_after_ms
                ),
            });
        }
        positive("probe_timeout_ms", self.probe_timeout_ms)?;
        positive("max_clock_skew_ms", self.max_clock_skew_ms)?;
        positive("quarantine_after", u64::from(self.quarantine_after))?;
        positive("quarantine_window_ms", self.quarantine_window_ms)?;
        positive("quarantine_ms", self.quarantine_ms)?;
        positive("steward_grace_ms", self.steward_grace_ms)?;
        positive("forget_dead_after_ms", self.forget_dead_after_ms)?;
        positive("log_retention_ms", self.log_retention_ms)?;
        positive("ledger_max_age_ms", self.ledger_max_age_ms)?;
        if self.ledger_max_bytes < MIN_LEDGER_BYTES {
            return Err(ConfigError {
                field: "ledger_max_bytes",
                message: format!(
                    "must be at least {MIN_LEDGER_BYTES} bytes, got {}",
                    self.ledger_max_bytes
                ),
            });
        }
        if self.child_users.len() > 64
            || self
                .child_users
                .iter()
                .any(|u| u.is_empty() || u.len() > 32)
        {
            return Err(ConfigError {
                field: "child_users",
                message: "at most 64 user names of 1 to 32 bytes".into(),
            });
        }
        if self.probe_relays > MAX_PROBE_RELAYS {
            return Err(ConfigError {
                field: "probe_relays",
                message: format!(
                    "must be at most {}, got {}",
                    MAX_PROBE_RELAYS, self.probe_relays
                ),
            });
        }
        if self.suspect_after_ms < self.heartbeat_ms || self.suspect_after_ms > self.dead_after_ms {
            return Err(ConfigError {
                field: "suspect_after_ms",
                message: format!(
                    "must be between one heartbeat ({} ms) and dead_after_ms ({} ms), got {}",
                    self.heartbeat_ms, self.dead_after_ms, self.suspect_after_ms
                ),
            });
        }
        if self.query_timeout_max_ms < self.query_timeout_min_ms {
            return Err(ConfigError {
                field: "query_timeout_max_ms",
                message: "must be at least query_timeout_min_ms".into(),
            });
        }
        if let Some(a) = self.addresses.advertise
            && (a.is_unspecified() || a.is_multicast())
        {
            return Err(ConfigError {
                field: "addresses.advertise",
                message: format!("{a} is not an address a machine is reached at"),
            });
        }
        self.trust
            .check()
            .and_then(|()| self.nats.check())
            .map_err(|(field, message)| ConfigError { field, message })?;
        self.models
            .check()
            .map_err(|(field, message)| ConfigError { field, message })
    }
}

/// `[addresses]` of the agent's config: where it listens for the fleet's stable addresses and
/// where other machines reach the instances it runs.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AddressesConfig {
    /// The IP every address's port is bound on (all of the machine's by default).
    pub listen: core::net::IpAddr,
    /// The IP this node's instances are reached at, said in its heartbeat; by default the
    /// one its route to the NATS server leaves from (loopback for an embedded fleet).
    pub advertise: Option<core::net::IpAddr>,
    /// The directories a spec's `publish.file` may be written in (the agent writes it with
    /// its own rights, so a spec may not name any file of the machine).
    pub publish_dirs: Vec<String>,
}

impl Default for AddressesConfig {
    fn default() -> Self {
        AddressesConfig {
            listen: core::net::IpAddr::from([0, 0, 0, 0]),
            advertise: None,
            publish_dirs: vec!["/run/qs".into(), "/var/lib/qs".into()],
        }
    }
}

impl AddressesConfig {
    /// Whether a publish file may be written at `path` (absolute, no `..`, below one of
    /// `publish_dirs`).
    pub fn may_publish_at(&self, path: &str) -> bool {
        path.starts_with('/')
            && !path.split('/').any(|c| c == "..")
            && self.publish_dirs.iter().any(|d| {
                let d = d.trim_end_matches('/');
                path.strip_prefix(d)
                    .is_some_and(|rest| rest.starts_with('/'))
            })
    }
}
