//! The process's counters, exported on /metrics.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// Process-wide counters, exported on /metrics.
#[derive(Clone, Default)]
pub struct Counters {
    pub messages_sent: Counter,
    pub messages_received: Counter,
    pub ledger_events: Counter,
    pub placements: Counter,
    pub instance_starts: Counter,
    pub instance_failures: Counter,
    /// Peers this process declared dead (silent past `dead_after_ms`).
    pub nodes_declared_dead: Counter,
    /// Specs read from the fleet's KV that broke a rule and were not applied.
    pub specs_refused: Counter,
    /// Model runtime swaps begun (a runtime drained to make room for another).
    pub model_swaps: Counter,
    /// Model runtimes started below the tier they were placed at, or moved back up (tiering).
    pub model_tier_changes: Counter,
    /// Model runtimes that loaded and turned warm.
    pub model_loads: Counter,
    /// Model runtimes the watchdog reset after repeated failed starts (alerts).
    pub model_watchdog_resets: Counter,
    /// Model requests refused (stasis full, runtime failed, withdrawn), by status.
    pub model_requests_refused: Counter,
    /// The entry point's figures per model and class.
    pub models: crate::model_metrics::ModelMetrics,
    /// Orders (dispatch, stop, promote) not obeyed, by reason: `not_steward`,
    /// `unknown_service`.
    pub orders_refused: Family<Vec<(String, String)>, Counter>,
}
