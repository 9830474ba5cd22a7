//! One GPU's model runtimes (seed 003, "The Physical Will"): which runtimes are resident,
//! where each request goes, and when a swap is worth its cost.
//!
//! [`GpuScheduler`] is a sans-IO state machine like the rest of the core: requests, finished
//! requests, loads, stops and VRAM readings go in through [`GpuScheduler::handle`]; routes,
//! refusals, drains, stops, VRAM checks and starts come out of [`GpuScheduler::poll`]. The
//! agent's executor carries them out on real processes; `qs bench gpu` drives the very same
//! machine on a virtual clock over the Azure traces.
//!
//! The rules it keeps, whatever the [`SwapPolicy`]:
//! - **Exclusivity:** the runtimes resident on the GPU (its profile) fit in its VRAM less the
//!   reserved margin; a runtime starts only after those that had to go were stopped and the
//!   VRAM they held was seen free.
//! - **Drain:** a runtime that must go takes no new request; it is stopped only once nothing
//!   is in flight on it (or its drain bound passed), so no generation is cut by a swap.
//! - **Warm traffic is never blocked by a transition:** a request for a warm runtime that is
//!   not being drained is routed as soon as it has a free slot (the parallel gate), except
//!   under the FIFO policy, whose point is to show what blocking costs.
//! - **Live stasis is bounded:** past `max_waiting` requests, a new one is refused with a
//!   retry-after (unless a free slot takes it at once); nothing accepted is dropped without
//!   a word: a request whose runtime exited or was stopped at its drain bound is refused
//!   with the reason.
//! - **Time alone moves it:** while requests wait for a model that is not resident, a policy
//!   whose choice changes with time is asked again every [`scheduler::RECONSIDER_MS`]
//!   ([`GpuScheduler::poll_timeout`]); drain, stop, load and stasis bounds have their own.
//! - A failed start is tried again only once the VRAM it held is seen free; after
//!   `max_failed_starts` the watchdog resets it and refuses its waiting requests.
//!
//! Commitment (a swapped-in runtime serves the requests that waited for it before it may
//! go) is the [`TippingPoint`]'s; the baselines behave as the tools they stand for.

mod keeper;
mod policy;
mod queue;
mod scheduler;
mod state;
mod strategy;
#[cfg(test)]
mod tests;
mod view;

pub use keeper::{Keeper, KeeperVerdict, over_quota};
pub use policy::{Exhaustive, Fifo, LlamaSwap, PolicyKind, SwapPolicy, TippingPoint};
pub use queue::class_weight;
pub use scheduler::{GpuScheduler, RECONSIDER_MS};
pub use state::Phase;
pub use strategy::{
    EnergyAware, FirstGpu, GpuSlot, MultiGpu, Placement, Strategy, StrategyKind, conflicts,
    place_resident,
};
pub use view::View;

use crate::Time;
use qs_wire::ServiceName;

/// A model's name (the `[model.NAME]` of its spec).
pub type ModelName = ServiceName;

/// The priority class of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    /// A person waits on it: answered first, its wait weighs most.
    Interactive,
    /// Work that can wait for a batch.
    Batch,
    /// Embedding and ingestion: bounded priority with aging, never starved, always yielding
    /// to interactive requests.
    Ingestion,
}

impl Class {
    pub const ALL: [Class; 3] = [Class::Interactive, Class::Batch, Class::Ingestion];

    pub fn name(self) -> &'static str {
        match self {
            Class::Interactive => "interactive",
            Class::Batch => "batch",
            Class::Ingestion => "ingestion",
        }
    }

    pub fn named(name: &str) -> Option<Class> {
        Class::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// How a runtime takes requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Discipline {
    /// Continuous batching: up to `max_concurrency` requests at once.
    Parallel { max_concurrency: u32 },
    /// One request at a time.
    Serial,
}

impl Discipline {
    pub fn slots(self) -> u32 {
        match self {
            Discipline::Parallel { max_concurrency } => max_concurrency.max(1),
            Discipline::Serial => 1,
        }
    }
}

/// One model runtime as the scheduler sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelProfile {
    pub name: ModelName,
    /// The VRAM of each size it may run at on this GPU, largest first (seed 003's tiers, such
    /// as a 70B and then an 8B): the largest that fits beside the runtimes busy on the GPU is
    /// started. Empty, it fits nowhere.
    pub tiers_vram_bytes: Vec<u64>,
    pub discipline: Discipline,
    /// Added to the momentum of this runtime: how much more a swap away must be worth (a
    /// prefix-cache server such as SGLang loses its radix tree).
    pub inertia_bias_ms: u64,
    /// The load time assumed before any load was seen; learned from each load after.
    pub load_ms: u64,
}

impl ModelProfile {
    /// The VRAM of its smallest tier.
    pub fn smallest_bytes(&self) -> u64 {
        self.tiers_vram_bytes.last().copied().unwrap_or(u64::MAX)
    }
}

/// The GPU and the bounds of its scheduler.
#[derive(Clone, Debug, PartialEq)]
pub struct GpuConfig {
    pub vram_bytes: u64,
    /// Kept for the resident model that stays through every swap; nothing else may use it.
    pub reserved_bytes: u64,
    /// Requests waiting (live stasis) at most; one more is refused with a retry-after, unless
    /// a request of a lower class waits, which gives it its place.
    pub max_waiting: usize,
    /// Requests of each class (interactive, batch, ingestion) waiting at most.
    pub max_waiting_by_class: [usize; 3],
    /// Prefill speed of the runtimes, for the cost of re-processing the context in flight.
    pub prefill_tokens_per_s: u64,
    /// Longest a drain waits for requests in flight before the runtime is stopped anyway.
    pub drain_timeout_ms: u64,
    /// Longest a stopped runtime may take to exit before it is told again (and killed).
    pub stop_timeout_ms: u64,
    /// Failed starts in a row after which the watchdog resets the runtime and alerts.
    pub max_failed_starts: u32,
    /// A wait this long is recorded (durable stasis), to be resumed after a restart.
    pub durable_after_ms: u64,
    /// How long leased work may drain once local interactive use revokes its lease.
    pub lease_revoke_ms: u64,
    /// A load may take this many times the learned load time (and at least
    /// `min_load_bound_ms`) before it counts as a failed start.
    pub load_bound_factor: u32,
    pub min_load_bound_ms: u64,
    /// A runtime idle this long counts as room for another to move up a tier (as a model
    /// server's keep-alive ends).
    pub idle_room_ms: u64,
}

impl Default for GpuConfig {
    fn default() -> Self {
        GpuConfig {
            vram_bytes: 24 << 30,
            reserved_bytes: 1536 << 20,
            max_waiting: 65_536,
            max_waiting_by_class: [65_536; 3],
            prefill_tokens_per_s: 5_000,
            drain_timeout_ms: 600_000,
            stop_timeout_ms: 30_000,
            max_failed_starts: 3,
            durable_after_ms: 5_000,
            lease_revoke_ms: 1_000,
            load_bound_factor: 4,
            min_load_bound_ms: 10_000,
            idle_room_ms: 300_000,
        }
    }
}

impl GpuConfig {
    /// How long a runtime whose load takes `load_ms` (learned, or declared before any was
    /// seen) may load before the watchdog counts it failed: `load_bound_factor` times it,
    /// and at least `min_load_bound_ms`. One rule for the scheduled runtimes and the
    /// resident one.
    pub fn load_bound_ms(&self, load_ms: u64) -> u64 {
        load_ms
            .saturating_mul(u64::from(self.load_bound_factor))
            .max(self.min_load_bound_ms)
    }
}

/// The `[models]` section of the config: the bounds every GPU's scheduler of a node gets.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelsConfig {
    /// VRAM kept on each GPU for a small resident model (seed 003's margin).
    pub reserved_mib: u64,
    /// Requests waiting per GPU at most (live stasis); one more is refused 429, unless one
    /// of a lower class waits (it is refused in its place).
    pub max_waiting: usize,
    /// Requests of each class waiting per GPU at most (a flood of one class is refused 429
    /// before it fills the stasis); each at most `max_waiting`.
    pub max_waiting_by_class: ClassBounds,
    pub drain_timeout_ms: u64,
    pub stop_timeout_ms: u64,
    pub max_failed_starts: u32,
    /// A wait this long is written to the ledger and resumed after a restart.
    pub durable_after_ms: u64,
    /// How long another node's leased work may drain once a local interactive request
    /// revokes its lease.
    pub lease_revoke_ms: u64,
    /// A runtime idle this long is room for one running below its largest tier to move up.
    pub idle_room_ms: u64,
    /// `tipping-point` (ours), `exhaustive`, `llama-swap` or `fifo`.
    pub policy: String,
    /// Where a model goes among a node's GPUs, at which tier: `tipping-point` (the first
    /// that holds it), `spread`, `pack` or `energy-aware`.
    pub strategy: String,
    /// Who starts and stops the runtimes: `process` (the agent forks them) or `systemd`
    /// (each a unit with `Conflicts=`, started and stopped with `systemctl`).
    pub executor: String,
    /// With the systemd executor: the user manager of `$XDG_RUNTIME_DIR` (`systemctl
    /// --user`) instead of the system's.
    pub systemd_user: bool,
    /// The secret file of the entry point's API keys (each with its class and models).
    pub keys_file: Option<String>,
}

/// The executors a `[models] executor` may name.
pub const EXECUTORS: [&str; 2] = ["process", "systemd"];

impl Default for ModelsConfig {
    fn default() -> Self {
        let g = GpuConfig::default();
        ModelsConfig {
            reserved_mib: g.reserved_bytes >> 20,
            max_waiting: 1024,
            max_waiting_by_class: ClassBounds::default(),
            drain_timeout_ms: g.drain_timeout_ms,
            stop_timeout_ms: g.stop_timeout_ms,
            max_failed_starts: g.max_failed_starts,
            durable_after_ms: g.durable_after_ms,
            lease_revoke_ms: g.lease_revoke_ms,
            idle_room_ms: g.idle_room_ms,
            policy: PolicyKind::TippingPoint.name().to_owned(),
            strategy: StrategyKind::TippingPoint.name().to_owned(),
            executor: EXECUTORS[0].to_owned(),
            systemd_user: false,
            keys_file: None,
        }
    }
}

/// A bound for each class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClassBounds {
    pub interactive: usize,
    pub batch: usize,
    pub ingestion: usize,
}

impl Default for ClassBounds {
    fn default() -> Self {
        ClassBounds {
            interactive: 1024,
            batch: 1024,
            ingestion: 512,
        }
    }
}

impl ClassBounds {
    /// By class index (interactive, batch, ingestion).
    pub fn as_array(&self) -> [usize; 3] {
        [self.interactive, self.batch, self.ingestion]
    }
}

/// Most requests one GPU may hold waiting, whatever the config says.
pub const MAX_WAITING: usize = 65_536;

impl ModelsConfig {
    /// The policy named, if it is one.
    pub fn policy(&self) -> Option<PolicyKind> {
        PolicyKind::ALL
            .into_iter()
            .find(|p| p.name() == self.policy)
    }

    /// The strategy named, if it is one.
    pub fn strategy(&self) -> Option<StrategyKind> {
        StrategyKind::named(&self.strategy)
    }

    /// The scheduler's bounds for a GPU of `vram_bytes`.
    pub fn gpu(&self, vram_bytes: u64) -> GpuConfig {
        GpuConfig {
            vram_bytes,
            reserved_bytes: self.reserved_mib.saturating_mul(1 << 20),
            max_waiting: self.max_waiting,
            max_waiting_by_class: self.max_waiting_by_class.as_array(),
            drain_timeout_ms: self.drain_timeout_ms,
            stop_timeout_ms: self.stop_timeout_ms,
            max_failed_starts: self.max_failed_starts,
            durable_after_ms: self.durable_after_ms,
            lease_revoke_ms: self.lease_revoke_ms,
            idle_room_ms: self.idle_room_ms,
            ..GpuConfig::default()
        }
    }

    /// Why a value is out of range: the field and the reason.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let within = |field, v: u64, min: u64, max: u64| {
            if (min..=max).contains(&v) {
                Ok(())
            } else {
                Err((field, format!("must be in {min}..={max}, got {v}")))
            }
        };
        within("models.reserved_mib", self.reserved_mib, 0, 1 << 20)?;
        within(
            "models.max_waiting",
            self.max_waiting as u64,
            1,
            MAX_WAITING as u64,
        )?;
        for (field, v) in [
            (
                "models.max_waiting_by_class.interactive",
                self.max_waiting_by_class.interactive,
            ),
            (
                "models.max_waiting_by_class.batch",
                self.max_waiting_by_class.batch,
            ),
            (
                "models.max_waiting_by_class.ingestion",
                self.max_waiting_by_class.ingestion,
            ),
        ] {
            within(field, v as u64, 1, MAX_WAITING as u64)?;
        }
        within(
            "models.drain_timeout_ms",
            self.drain_timeout_ms,
            1,
            3_600_000,
        )?;
        within("models.stop_timeout_ms", self.stop_timeout_ms, 1, 3_600_000)?;
        within("models.idle_room_ms", self.idle_room_ms, 1, 86_400_000)?;
        within(
            "models.max_failed_starts",
            self.max_failed_starts.into(),
            1,
            100,
        )?;
        if self.policy().is_none() {
            let names: Vec<&str> = PolicyKind::ALL.iter().map(|p| p.name()).collect();
            return Err((
                "models.policy",
                format!("{:?} is not one of {}", self.policy, names.join(", ")),
            ));
        }
        if let Some(f) = &self.keys_file
            && (f.is_empty() || f.len() > 4096)
        {
            return Err((
                "models.keys_file",
                "must be a path of 1 to 4096 bytes".into(),
            ));
        }
        if !EXECUTORS.contains(&self.executor.as_str()) {
            return Err((
                "models.executor",
                format!("{:?} is not one of {}", self.executor, EXECUTORS.join(", ")),
            ));
        }
        if self.strategy().is_none() {
            let names: Vec<&str> = StrategyKind::ALL.iter().map(|s| s.name()).collect();
            return Err((
                "models.strategy",
                format!("{:?} is not one of {}", self.strategy, names.join(", ")),
            ));
        }
        Ok(())
    }
}

/// A request's number, given by whoever feeds the scheduler.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

/// A request for a model.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub id: RequestId,
    pub model: ModelName,
    pub class: Class,
    /// Prompt tokens: what a cut-off request would have to process again.
    pub context_tokens: u32,
    /// Placed here by another node: it runs under that node's lease, which local
    /// interactive use revokes.
    pub lease: Option<qs_wire::NodeId>,
}

/// What the scheduler is told.
#[derive(Clone, Debug, PartialEq)]
pub enum GpuInput {
    /// A request arrives.
    Arrive(Request),
    /// A routed request finished (its slot is free).
    Finished { id: RequestId },
    /// A started runtime answered its warm check.
    Loaded { model: ModelName },
    /// A start failed (the process died, or the load outlasted its bound).
    LoadFailed { model: ModelName },
    /// A runtime told to stop has exited.
    Stopped { model: ModelName },
    /// The GPU's free VRAM, read after a stop (NVML, or the simulated GPU's accounting).
    VramFree { free_bytes: u64 },
    /// A waiting request's client went away (a vanished peer's leased work among them): it
    /// is swept from the queue, so no swap is made for nobody.
    Cancel { id: RequestId },
    /// A node whose leased work waits here left the fleet: that work is refused.
    HolderGone { holder: qs_wire::NodeId },
}

/// What the scheduler decided.
#[derive(Clone, Debug, PartialEq)]
pub enum GpuOutput {
    /// Send the request to the model's runtime.
    Route { id: RequestId, model: ModelName },
    /// Refuse the request (429/503) with when to try again.
    Refuse {
        id: RequestId,
        retry_after_ms: u64,
        reason: &'static str,
    },
    /// Stop the runtime: nothing is in flight on it (or its drain bound passed). `kill`:
    /// at once (SIGKILL), for one whose drain bound cut work still running on it, or one
    /// that has not exited `stop_timeout_ms` after it was told to stop.
    Stop { model: ModelName, kill: bool },
    /// Read the GPU's free VRAM and say it with [`GpuInput::VramFree`].
    CheckVram,
    /// Start the runtime at `tier` (an index into its profile's tiers, which needs
    /// `vram_bytes`); say [`GpuInput::Loaded`] once it is warm.
    Start {
        model: ModelName,
        tier: usize,
        vram_bytes: u64,
    },
    /// What happened, for the ledger.
    Event(GpuEvent),
}

/// The steps of a transition and the watchdog's verdicts, each with its duration.
#[derive(Clone, Debug, PartialEq)]
pub enum GpuEvent {
    /// A swap begins: `evict` are drained to make room for `to`, which starts at `tier`.
    /// A tier below its largest means the GPU could not hold its largest beside the runtimes
    /// busy there (tiering down); `to` among `evict` means it moves to a larger tier now
    /// that room returned (tiering up).
    SwapBegun {
        to: ModelName,
        tier: usize,
        evict: Vec<ModelName>,
        /// Requests waiting for `to`, which it serves before it may go (commitment).
        committed: usize,
    },
    /// A runtime had nothing in flight any more (or its drain bound passed, cutting `cut`).
    Drained {
        model: ModelName,
        took_ms: u64,
        cut: usize,
    },
    Stopped {
        model: ModelName,
    },
    /// A runtime told to stop had not exited within `stop_timeout_ms`: it is told again.
    StopOverdue {
        model: ModelName,
    },
    /// The VRAM of the stopped runtimes was seen free: `to` starts.
    VramReleased {
        to: ModelName,
        free_bytes: u64,
        took_ms: u64,
    },
    /// The VRAM `to` needs was not seen free within `stop_timeout_ms` after what had to go
    /// stopped: the swap gave up and its waiting requests were refused.
    VramNotReleased {
        to: ModelName,
        free_bytes: u64,
        waited_ms: u64,
    },
    Loaded {
        model: ModelName,
        took_ms: u64,
    },
    LoadFailed {
        model: ModelName,
        attempt: u32,
    },
    /// `model` was still loading past its bound: killed, and a failed start (the
    /// `LoadFailed` that follows counts it).
    LoadTimedOut {
        model: ModelName,
        bound_ms: u64,
    },
    /// The watchdog gave up on a runtime after `attempts` failed starts; its waiting
    /// requests were refused.
    WatchdogReset {
        model: ModelName,
        attempts: u32,
    },
    /// Requests for `model` have waited `durable_after_ms` (the oldest in `class`): the
    /// stasis is written down, to be resumed after a restart.
    StasisRecorded {
        model: ModelName,
        class: Class,
        waiting: usize,
    },
    /// Nothing waits for `model` any more.
    StasisEnded {
        model: ModelName,
    },
    /// `model` served only other nodes' leased work and is taken back for a local
    /// interactive request for `by`: drained within `lease_revoke_ms`, its leased requests
    /// still waiting served when the GPU is free again.
    LeaseRevoked {
        model: ModelName,
        by: ModelName,
    },
}

/// A request waiting (live stasis).
#[derive(Clone, Debug, PartialEq)]
pub struct Waiting {
    pub request: Request,
    pub arrived: Time,
    /// Its place in arrival order over every model.
    pub order: u64,
}
