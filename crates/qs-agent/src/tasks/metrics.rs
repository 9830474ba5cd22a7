//! The durable tasks' figures for `/metrics`: how many tasks each queue holds (and how many
//! run, completed, failed, were cancelled), the workers disconnected for misuse, and the
//! news the bus dropped.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use qs_core::tasks::QueueCounts;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabel {
    queue: &'static str,
}

/// See the module docs.
#[derive(Clone, Default)]
pub struct TaskMetrics {
    tasks: Family<QueueLabel, Gauge>,
    workers_disconnected: Gauge,
    news_dropped: Gauge,
}

impl TaskMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "tasks",
            "Durable tasks by queue (inbound, refinement, outbound) or state (running, \
             completed, failed, cancelled: those remembered)",
            self.tasks.clone(),
        );
        r.register(
            "task_workers_disconnected",
            "Task workers disconnected since start for speaking the worker protocol wrongly",
            self.workers_disconnected.clone(),
        );
        r.register(
            "task_news_dropped",
            "Completions and fleet events not published since start: the bus was behind",
            self.news_dropped.clone(),
        );
    }

    /// Sets the figures from the queues' `counts` and the host's counters.
    pub fn set(&self, c: QueueCounts, workers_disconnected: u64, news_dropped: u64) {
        for (queue, n) in [
            ("inbound", c.inbound),
            ("running", c.running),
            ("refinement", c.refinement),
            ("outbound", c.outbound),
            ("completed", c.completed),
            ("failed", c.failed),
            ("cancelled", c.cancelled),
        ] {
            self.tasks
                .get_or_create(&QueueLabel { queue })
                .set(n as i64);
        }
        self.workers_disconnected.set(workers_disconnected as i64);
        self.news_dropped.set(news_dropped as i64);
    }
}
