//! What the entry point measures, per model and class, for `/metrics`: how long a request
//! waited for its runtime (live stasis), its time to first token, the tokens per second of a
//! stream, and how each request ended. Labels name only models a host has, so a client
//! cannot grow them.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::time::{Duration, Instant};

/// A model and a class.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelClass {
    pub model: String,
    pub class: String,
}

/// A model, a class and how a request ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub model: String,
    pub class: String,
    /// `ok`, `too_many` (429), `unavailable` (503), `forbidden`, `runtime_error`, `cut`,
    /// `client_gone`.
    pub outcome: &'static str,
}

type Histograms = Family<ModelClass, Histogram, fn() -> Histogram>;

fn seconds() -> Histogram {
    // 1 ms to about 9 minutes.
    Histogram::new(exponential_buckets(0.001, 2.0, 20))
}

fn rates() -> Histogram {
    // 1 to about 16,000 tokens per second.
    Histogram::new(exponential_buckets(1.0, 2.0, 15))
}

/// The entry point's figures. Cheap to clone; clones share them.
#[derive(Clone)]
pub struct ModelMetrics {
    pub queue_wait_s: Histograms,
    pub ttft_s: Histograms,
    pub tokens_per_s: Histograms,
    pub outcomes: Family<Outcome, Counter>,
}

impl Default for ModelMetrics {
    fn default() -> Self {
        ModelMetrics {
            queue_wait_s: Family::new_with_constructor(seconds),
            ttft_s: Family::new_with_constructor(seconds),
            tokens_per_s: Family::new_with_constructor(rates),
            outcomes: Family::default(),
        }
    }
}

impl ModelMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "model_queue_wait_seconds",
            "How long a model request waited for its runtime, by model and class",
            self.queue_wait_s.clone(),
        );
        r.register(
            "model_time_to_first_token_seconds",
            "From a model request's arrival to the first bytes of its answer, by model and class",
            self.ttft_s.clone(),
        );
        r.register(
            "model_tokens_per_second",
            "Tokens per second of a streamed answer (its events after the first), by model and class",
            self.tokens_per_s.clone(),
        );
        r.register(
            "model_requests",
            "Model requests by model, class and how they ended",
            self.outcomes.clone(),
        );
    }

    /// Counts how a request for `model` of `class` ended.
    pub fn outcome(&self, model: &str, class: &str, outcome: &'static str) {
        self.outcomes
            .get_or_create(&Outcome {
                model: model.to_owned(),
                class: class.to_owned(),
                outcome,
            })
            .inc();
    }
}

/// One routed request's clock, carried by its answer's body: the first bytes (time to first
/// token), the events of a stream, and how it ended, recorded when it is dropped.
pub struct Meter {
    pub metrics: ModelMetrics,
    pub labels: ModelClass,
    pub arrived: Instant,
    first: Option<Instant>,
    last: Option<Instant>,
    events: u64,
    ended: Option<&'static str>,
}

impl Meter {
    pub fn new(metrics: ModelMetrics, labels: ModelClass, arrived: Instant) -> Meter {
        Meter {
            metrics,
            labels,
            arrived,
            first: None,
            last: None,
            events: 0,
            ended: None,
        }
    }

    /// A frame of the answer came: `events` server-sent events in it.
    pub fn frame(&mut self, events: u64) {
        let now = Instant::now();
        if self.first.is_none() {
            self.first = Some(now);
            self.metrics
                .ttft_s
                .get_or_create(&self.labels)
                .observe(now.duration_since(self.arrived).as_secs_f64());
        }
        self.last = Some(now);
        self.events += events;
    }

    /// How it ended (the first word counts).
    pub fn end(&mut self, outcome: &'static str) {
        self.ended.get_or_insert(outcome);
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        // Dropped before its end: the client went away.
        let outcome = self.ended.unwrap_or("client_gone");
        self.metrics
            .outcome(&self.labels.model, &self.labels.class, outcome);
        if let (Some(first), Some(last)) = (self.first, self.last) {
            let span = last.duration_since(first);
            // A stream's events after the first, over the time they took.
            if self.events >= 2 && span > Duration::from_millis(1) {
                let rate = (self.events - 1) as f64 / span.as_secs_f64();
                self.metrics
                    .tokens_per_s
                    .get_or_create(&self.labels)
                    .observe(rate);
            }
        }
    }
}
