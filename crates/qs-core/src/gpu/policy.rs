//! When to swap: the [`SwapPolicy`] trait, ours ([`TippingPoint`]) and the baselines the
//! benchmark holds it against ([`Fifo`], [`LlamaSwap`], [`Exhaustive`]).

use super::{Class, ModelName, View, Waiting, class_weight};

/// Decides, after every input, whether a transition begins and which waiting requests may
/// go. The scheduler keeps the rules of [`crate::gpu`] whatever a policy says.
pub trait SwapPolicy: Send + Sync {
    fn name(&self) -> &'static str;

    /// The model to bring onto the GPU now (draining what must go to make room), or none.
    /// Asked only while no transition is under way.
    fn choose(&self, view: &View) -> Option<ModelName>;

    /// Whether `next`, the next request for a serving runtime with a free slot, may go now.
    fn may_route(&self, _view: &View, _next: &Waiting) -> bool {
        true
    }

    /// Whether each model's requests go in arrival order, whatever their class (otherwise
    /// interactive first, with aging for the others).
    fn arrival_order(&self) -> bool {
        false
    }

    /// Whether its choice can change with time alone (urgency grows, aging bounds pass):
    /// then it is asked again every [`super::RECONSIDER_MS`] while requests wait for a model
    /// that is not resident. One that decides on arrivals and ends only is asked on inputs.
    fn moved_by_time(&self) -> bool {
        false
    }
}

/// The policies by name, for configs and the benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PolicyKind {
    Fifo,
    LlamaSwap,
    Exhaustive,
    TippingPoint,
}

impl PolicyKind {
    pub const ALL: [PolicyKind; 4] = [
        PolicyKind::Fifo,
        PolicyKind::LlamaSwap,
        PolicyKind::Exhaustive,
        PolicyKind::TippingPoint,
    ];

    pub fn build(self) -> Box<dyn SwapPolicy> {
        match self {
            PolicyKind::Fifo => Box::new(Fifo),
            PolicyKind::LlamaSwap => Box::new(LlamaSwap),
            PolicyKind::Exhaustive => Box::new(Exhaustive),
            PolicyKind::TippingPoint => Box::new(TippingPoint::default()),
        }
    }

    pub fn name(self) -> &'static str {
        self.build().name()
    }
}

/// The wanted model, not resident, whose oldest request came first.
fn oldest_wanted(view: &View) -> Option<ModelName> {
    view.wanted()
        .filter(|m| !view.is_resident(m))
        .filter_map(|m| view.oldest_waiting(m).map(|w| (w.order, m)))
        .min()
        .map(|(_, m)| m.clone())
}

/// Ollama-like: requests in arrival order over every model; the first one for a model that
/// is not loaded drains the GPU and swaps, and everything behind it waits, even requests
/// for the loaded model.
pub struct Fifo;

impl SwapPolicy for Fifo {
    fn name(&self) -> &'static str {
        "fifo"
    }

    fn choose(&self, view: &View) -> Option<ModelName> {
        let head = view.head()?;
        (!view.is_resident(&head.request.model)).then(|| head.request.model.clone())
    }

    fn may_route(&self, view: &View, next: &Waiting) -> bool {
        view.head().is_some_and(|h| h.order == next.order)
    }

    fn arrival_order(&self) -> bool {
        true
    }
}

/// llama-swap's default: a request for another model makes the swap pending at once (the
/// loaded runtime takes nothing new and goes when its requests in flight are done); swaps
/// follow arrival order.
pub struct LlamaSwap;

impl SwapPolicy for LlamaSwap {
    fn name(&self) -> &'static str {
        "llama-swap"
    }

    fn choose(&self, view: &View) -> Option<ModelName> {
        oldest_wanted(view)
    }
}

/// Exhaustive batching by model: the loaded model's queue is served until it is empty,
/// then the model whose request waited longest comes in.
pub struct Exhaustive;

impl SwapPolicy for Exhaustive {
    fn name(&self) -> &'static str {
        "exhaustive"
    }

    fn choose(&self, view: &View) -> Option<ModelName> {
        let busy = view
            .resident()
            .any(|m| view.is_serving(m) && view.waiting(m) > 0);
        if busy {
            return None;
        }
        oldest_wanted(view)
    }
}

/// Ours, seed 003's tipping point. A model that fits beside what is resident comes in at
/// once. Otherwise the most urgent wanted model (Σ class weight × waited ms over its
/// waiting requests) comes in only when its urgency exceeds the momentum of what would have
/// to go, plus their inertia bias; momentum is what the swap costs them:
/// - their learned load time (coming back), and the prefill of their context in flight;
/// - their own waiting requests' urgency, and the wait the swap adds to each of them;
/// - the wait of the requests expected to arrive for them during the round trip (arrival
///   rate × round trip, each waiting half of it on average), by their class weight.
///
/// A runtime with requests of its own waiting keeps serving them unless what waits for the
/// other weighs more (interactive over batch) and beats the momentum.
///
/// Commitment: a runtime that still has requests that were waiting for it when it came in
/// does not go. Aging: a model whose oldest request has waited as many of its load times as
/// [`TippingPoint::max_wait_loads`] gives that request's class comes in regardless of
/// momentum (after the commitment), unless requests of a heavier class wait for the runtime
/// it would stop: batch work yields to interactive work, and comes in at its first lull.
pub struct TippingPoint {
    /// Load times a request of each class (interactive, batch, ingestion) may wait.
    pub max_wait_loads: [f64; 3],
}

impl Default for TippingPoint {
    fn default() -> Self {
        TippingPoint {
            max_wait_loads: [2.0, 8.0, 8.0],
        }
    }
}

impl TippingPoint {
    fn max_wait(&self, class: Class) -> f64 {
        self.max_wait_loads[super::queue::class_index(class)]
    }
}

impl TippingPoint {
    /// What bringing `to` in costs the runtimes in `evict`.
    fn momentum_ms(view: &View, to: &ModelName, evict: &[ModelName]) -> f64 {
        evict
            .iter()
            .map(|r| {
                let round_trip = view.load_ms(to) + view.load_ms(r);
                let weight = view.weight(r);
                let expected = view.rate_per_ms(r) * round_trip;
                view.load_ms(r)
                    + view.reprocess_ms(r)
                    + view.profile(r).map_or(0, |p| p.inertia_bias_ms) as f64
                    + view.urgency_ms(r)
                    + weight * view.waiting(r) as f64 * round_trip
                    + weight * expected * round_trip / 2.0
            })
            .sum()
    }
}

impl SwapPolicy for TippingPoint {
    fn name(&self) -> &'static str {
        "tipping-point"
    }

    fn moved_by_time(&self) -> bool {
        true
    }

    fn choose(&self, view: &View) -> Option<ModelName> {
        let to = view
            .wanted()
            .filter(|m| !view.is_resident(m))
            .map(|m| (view.urgency_ms(m), m))
            .max_by(|a, b| a.0.total_cmp(&b.0).then_with(|| b.1.cmp(a.1)))
            .map(|(_, m)| m.clone())?;
        let evict = view.evictions_for(&to)?;
        if evict.is_empty() {
            return Some(to);
        }
        if evict.iter().any(|m| view.committed_left(m) > 0) {
            return None;
        }
        // Overdue: its oldest request has waited its class's bound; it comes in unless what
        // waits for the runtimes it would stop weighs more (batch yields to interactive).
        let overdue = view.oldest_waiting(&to).is_some_and(|w| {
            let waited_ms = view.now.since(w.arrived).as_secs_f64() * 1000.0;
            let yields = evict.iter().any(|m| {
                view.waiting_weight(m)
                    .is_some_and(|heavier| heavier > class_weight(w.request.class))
            });
            waited_ms >= self.max_wait(w.request.class) * view.load_ms(&to) && !yields
        });
        if overdue {
            return Some(to);
        }
        // A runtime with requests of its own waiting keeps serving them, unless what waits
        // for `to` weighs more (interactive over batch) and beats the momentum.
        let busy = evict.iter().any(|m| view.waiting(m) > 0);
        let heavier = evict.iter().all(|m| view.weight(&to) > view.weight(m));
        let worth = view.urgency_ms(&to) > Self::momentum_ms(view, &to, &evict);
        ((!busy || heavier) && worth).then_some(to)
    }
}
