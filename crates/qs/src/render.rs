//! Human-readable text for ledger records, telling each placement's story the way seed 000 §3
//! tells CoreDNS's.

use qs_wire::{Event, ExitOutcome, LocalVerdict, Record, SenseReason};

/// How a client command prints what it got: prose for people, or JSON.
#[derive(Clone, Copy, Debug, clap::ValueEnum, PartialEq, Eq)]
pub enum OutputFormat {
    Text,
    Json,
}

/// One line of prose for an event.
pub fn describe(event: &Event) -> String {
    match event {
        Event::Sensed {
            placement,
            service,
            reason,
        } => match reason {
            SenseReason::Missing { have, want } => {
                format!("[{placement}] sense: {service} has {have} of {want} instances")
            }
            SenseReason::Hot { instance, on } => {
                format!(
                    "[{placement}] sense: {service} instance {instance} on {on} is over its threshold"
                )
            }
        },
        Event::LocalCheck { placement, verdict } => match verdict {
            LocalVerdict::Start { composite } => {
                format!("[{placement}] local check: fits here, starting locally ({composite})")
            }
            LocalVerdict::Compete { composite } => format!(
                "[{placement}] local check: fits, but competes with the fleet ({composite})"
            ),
            LocalVerdict::Refused { reason } => {
                format!("[{placement}] local check: cannot run it here ({reason})")
            }
        },
        Event::QuerySent {
            placement,
            asked,
            live,
            sampled,
        } => {
            let how = if *sampled {
                "a weighted sample of"
            } else {
                "every fitting node of"
            };
            format!(
                "[{placement}] capacity query: who can take it? asked {asked}, {how} {live} live"
            )
        }
        Event::Gathered {
            placement,
            offers,
            declined,
            silent,
        } => {
            // One line per answer, as the seed tells it.
            let mut lines = vec![format!(
                "[{placement}] answers: {} offers, {} declines, {} silent",
                offers.len(),
                declined.len(),
                silent.len()
            )];
            lines.extend(
                offers
                    .iter()
                    .map(|o| format!("  offer from {}: I can take it, {}", o.from, o.composite)),
            );
            lines.extend(
                declined
                    .iter()
                    .map(|d| format!("  {} declines: {}", d.from, d.reason)),
            );
            if !silent.is_empty() {
                let names: Vec<&str> = silent.iter().map(|n| n.as_str()).collect();
                lines.push(format!("  no answer in time from {}", names.join(", ")));
            }
            lines.join("\n")
        }
        Event::GateRefused {
            placement,
            from,
            composite,
        } => {
            format!("[{placement}] gate refuses {from}: {composite} is not above the gate")
        }
        Event::Dispatched {
            placement,
            to,
            instance,
            composite,
        } => {
            format!(
                "[{placement}] dispatch {instance} to {to} (composite {:.3})",
                composite.value
            )
        }
        Event::DispatchRefused {
            placement,
            to,
            reason,
        } => match reason {
            Some(r) => format!("[{placement}] {to} refuses the dispatch at late binding: {r}"),
            None => format!("[{placement}] {to} did not answer the dispatch in time"),
        },
        Event::Placed {
            placement,
            service,
            instance,
            on,
            latency_us,
        } => format!(
            "[{placement}] placed {service} as {instance} on {on} in {:.1} ms",
            *latency_us as f64 / 1000.0
        ),
        Event::Unplaced {
            placement,
            service,
            reason,
            retry,
        } => {
            let then = if *retry {
                "will retry"
            } else {
                "gave up for now"
            };
            format!("[{placement}] could not place {service}: {reason} ({then})")
        }
        Event::InstanceStarted {
            instance,
            service,
            role,
            fencing,
            gpu,
        } => {
            let mut s = format!("started {instance} of {service} ({role:?})");
            if *fencing > 0 {
                s.push_str(&format!(", fencing token {fencing}"));
            }
            if let Some(g) = gpu {
                s.push_str(&format!(", on GPU {g}"));
            }
            s
        }
        Event::InstanceExited {
            instance,
            service,
            outcome,
        } => {
            let how = match outcome {
                ExitOutcome::Completed => "completed".to_owned(),
                ExitOutcome::Crashed { reason } => format!("crashed: {reason}"),
                ExitOutcome::FailedStart { reason } => format!("failed to start: {reason}"),
                ExitOutcome::HealthFailed { reason } => {
                    format!("failed its health check: {reason}")
                }
                ExitOutcome::Stopped { reason } => format!("stopped: {reason}"),
            };
            format!("{instance} of {service} {how}")
        }
        Event::InstanceRestarting {
            instance,
            service,
            attempt,
            delay_ms,
        } => {
            format!(
                "{instance} of {service} restarts in place in {delay_ms} ms (attempt {attempt})"
            )
        }
        Event::InstanceHot {
            instance,
            service,
            cpu_permille,
        } => format!(
            "{instance} of {service} is hot: {:.0} % of its CPU request",
            *cpu_permille as f64 / 10.0
        ),
        Event::PressureRaised {
            service,
            load_bucket,
            pressure_permille,
        } => format!(
            "failure memory: pressure for {service} at load bucket {load_bucket} is now {:.3}",
            *pressure_permille as f64 / 1000.0
        ),
        Event::ScaleIn {
            service,
            instance,
            on,
        } => format!("stop {instance} of {service} on {on} (excess)"),
        Event::PromotionNeedsApproval { service } => {
            format!("{service} lost its primary: promoting a replica needs operator approval")
        }
        Event::Promoted {
            service,
            instance,
            on,
        } => format!("{instance} on {on} becomes the primary of {service}"),
        Event::Claimed {
            instance, fencing, ..
        } => format!("claimed fencing token {fencing} for {instance} in the instances KV"),
        Event::ClaimRefused {
            held_by, fencing, ..
        } => format!("claim refused: {held_by} holds fencing token {fencing}; nothing starts"),
        Event::PeerQuarantined {
            peer,
            reason,
            for_ms,
        } => format!(
            "quarantined {peer} for {:.0} s: it kept sending invalid messages (last: {reason})",
            *for_ms as f64 / 1000.0
        ),
        Event::OrderRefused {
            from,
            order,
            instance,
            service,
            reason,
        } => format!(
            "refused a {order} of {instance} ({}) from {from}: {reason}",
            service.as_ref().map_or("unknown service", |s| s.as_str())
        ),
        Event::SpecRefused { key, field, reason } => {
            format!(
                "refused the spec under key {key:?} in the KV: {field}: {reason}; the last good one stays"
            )
        }
        Event::ModelRefused { key, field, reason } => {
            format!(
                "refused the model under key {key:?} in the KV: {field}: {reason}; the last good one stays"
            )
        }
        Event::ModelRuntime {
            gpu,
            model,
            step,
            took_ms,
            detail,
        } => {
            let mut s = format!("GPU {gpu}: {model} {step:?}");
            if *took_ms > 0 {
                s.push_str(&format!(" in {took_ms} ms"));
            }
            if !detail.is_empty() {
                s.push_str(&format!(": {detail}"));
            }
            s
        }
        Event::Task { task, step, detail } => format!("task {task} {step:?}: {detail}"),
        Event::MeshConflict {
            seq,
            agent,
            cluster,
            class,
            priority,
            strategy,
            escalation,
            escalated_by,
            handed_by,
            detail,
            ..
        } => match (escalated_by, handed_by) {
            (Some(by), _) => format!(
                "mesh conflict {seq}, escalated here by {by}, from agent {agent:016x} of \
                 cluster {cluster}: {class}, priority {priority}, {strategy}: {detail}"
            ),
            (None, Some(by)) => format!(
                "mesh conflict {seq}, handed over by {by}, of agent {agent:016x} of cluster \
                 {cluster}: {class}, priority {priority}, {strategy}: {detail}"
            ),
            (None, None) => format!(
                "mesh conflict {seq} from agent {agent:016x} of cluster {cluster}: {class}, \
                 priority {priority}, {strategy}, escalated to {escalation}: {detail}"
            ),
        },
        Event::MeshConflictResolved {
            seq,
            agent,
            cluster,
            how,
        } => {
            format!("mesh conflict {seq} of agent {agent:016x} (cluster {cluster}) resolved: {how}")
        }
        Event::MeshOperation {
            op,
            mode,
            scope,
            status,
            decision,
            sent,
            ready,
            latency_ms,
            error,
            phases,
        } => match error {
            Some(e) => format!("mesh operation {op} did not run: {e}"),
            None => {
                let phases = match phases.is_empty() {
                    true => String::new(),
                    false => {
                        let ops: Vec<String> = phases.iter().map(u64::to_string).collect();
                        format!(" (phases {})", ops.join(", "))
                    }
                };
                format!(
                    "mesh operation {op} ({mode}, {scope}) ended {status} ({decision}): {ready} \
                     of {sent} ready in {latency_ms} ms{phases}"
                )
            }
        },
        Event::MeshMode {
            from,
            to,
            active_agents,
            total_agents,
        } => format!(
            "the mesh went from {from} to {to}: {active_agents} of {total_agents} agents active"
        ),
        Event::MeshAgentCrashed {
            agent,
            cluster,
            host,
            offline_ms,
            escalated,
        } => match escalated {
            true => format!(
                "mesh agent {agent:016x} (cluster {cluster}, on {host}) crashed again soon \
                 after it came back, offline {offline_ms} ms: its replacement fails too"
            ),
            false => format!(
                "mesh agent {agent:016x} (cluster {cluster}, on {host}) taken for crashed, \
                 offline {offline_ms} ms: its node asked to restart it"
            ),
        },
        Event::MeshAgentQuarantined {
            agent,
            cluster,
            host,
            op,
            disagreements,
            answer,
            majority,
        } => format!(
            "mesh agent {agent:016x} (cluster {cluster}, on {host}) quarantined: it disagreed \
             with a clear majority {disagreements} times more than it agreed, last in \
             operation {op} ({answer:?} where the majority answered {majority:?})"
        ),
        Event::MeshControl {
            action,
            scope,
            nodes,
            confirmed,
            agents_released,
            breakers_closed,
            conflicts_released,
            agents_routed_around,
            agents_reassigned,
        } => {
            let did = match action.as_str() {
                "heal" => format!(
                    ": {agents_released} agents released, {breakers_closed} breakers closed, \
                     {conflicts_released} conflicts released"
                ),
                "route-around" => format!(": {agents_routed_around} agents held out of routing"),
                "reassign" => {
                    format!(": {agents_reassigned} agents' tasks asked back for other workers")
                }
                _ => String::new(),
            };
            format!("mesh {action} of {scope} confirmed by {confirmed} of {nodes} nodes{did}")
        }
    }
}

/// Agents stamp events with Unix time; the simulator with time since its start.
const UNIX_TIME_AFTER_US: u64 = 1_000_000_000_000_000; // 2001-09-09

/// A timestamp: UTC time of day for Unix times, seconds for simulated ones.
pub fn time(at_us: u64) -> String {
    if at_us < UNIX_TIME_AFTER_US {
        return format!("{:>10.3}s", at_us as f64 / 1e6);
    }
    let ms_of_day = (at_us / 1000) % 86_400_000;
    let (h, m) = (ms_of_day / 3_600_000, ms_of_day / 60_000 % 60);
    let (sec, ms) = (ms_of_day / 1000 % 60, ms_of_day % 1000);
    format!("{h:02}:{m:02}:{sec:02}.{ms:03}")
}

/// `seq  time  node  text`.
pub fn line(r: &Record) -> String {
    let head = format!("{:>8}  {}  {:<10} ", r.seq, time(r.at_us), r.node.as_str());
    // An event of several lines keeps its continuation lines under its first.
    let indent = format!("\n{:width$}", "", width = head.chars().count());
    format!("{head}{}", describe(&r.event).replace('\n', &indent))
}

#[cfg(test)]
mod tests {
    use super::{line, time};
    use qs_wire::{
        Composite, DeclineFrom, DeclineReason, Event, NodeId, OfferFrom, PlacementId, Record,
        Resource,
    };

    #[test]
    fn times_read_as_clock_or_seconds() {
        assert_eq!(time(3_059_000), "     3.059s");
        assert_eq!(time(1_795_324_732_346_123), "05:18:52.346");
    }

    #[test]
    fn a_round_of_answers_reads_one_answer_per_line_under_its_head() {
        let n = |s: &str| NodeId::new(s).unwrap();
        let record = Record {
            seq: 12,
            at_us: 3_059_000,
            node: n("msi01"),
            event: Event::Gathered {
                placement: PlacementId {
                    steward: n("msi01"),
                    seq: 1,
                },
                offers: vec![OfferFrom {
                    from: n("forge"),
                    composite: Composite {
                        pressure: 0.2,
                        vram_free: 0.6,
                        cpu_free: 0.7,
                        level_weight: 7.067,
                        value: 2.375,
                    },
                }],
                declined: vec![DeclineFrom {
                    from: n("msclo"),
                    reason: DeclineReason::OverThreshold {
                        resource: Resource::Cpu,
                    },
                }],
                silent: vec![n("lilo")],
            },
        };
        let text = line(&record);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[0].ends_with("[msi01#1] answers: 1 offers, 1 declines, 1 silent"));
        let indent = lines[0].find('[').unwrap();
        assert_eq!(
            lines[1].trim_start(),
            "offer from forge: I can take it, (1 - 0.200) x 0.600 vram x 0.700 cpu x 7.067 level = 2.375"
        );
        for l in &lines[1..] {
            assert_eq!(l.len() - l.trim_start().len(), indent + 2, "{text}");
        }
        assert!(
            lines[2].trim_start().starts_with("msclo declines: "),
            "{text}"
        );
        assert_eq!(lines[3].trim_start(), "no answer in time from lilo");
    }

    /// A conflict reads where it came from: heard here, escalated here, or handed over.
    #[test]
    fn a_mesh_conflict_says_where_it_came_from() {
        let conflict = |escalated_by: Option<&str>, handed_by: Option<&str>| Event::MeshConflict {
            seq: 4,
            op: 1,
            agent: 0xab,
            cluster: 3,
            class: "ValueMismatch".into(),
            priority: 3,
            strategy: "ProvenanceTrace".into(),
            escalation: "Sector".into(),
            due_ms: Some(60_000),
            escalated_by: escalated_by.map(str::to_owned),
            handed_by: handed_by.map(str::to_owned),
            detail: "{}".into(),
        };
        let table = [
            (
                conflict(None, None),
                "from agent 00000000000000ab of cluster 3",
            ),
            (conflict(Some("m2"), None), "escalated here by m2"),
            (conflict(None, Some("m1")), "handed over by m1"),
            (
                Event::MeshConflictResolved {
                    seq: 4,
                    agent: 0xab,
                    cluster: 3,
                    how: "agreed".into(),
                },
                "resolved: agreed",
            ),
            (
                Event::MeshMode {
                    from: "FULL".into(),
                    to: "DEGRADED_MODERATE".into(),
                    active_agents: 700,
                    total_agents: 1_000,
                },
                "from FULL to DEGRADED_MODERATE: 700 of 1000 agents active",
            ),
            (
                Event::MeshOperation {
                    op: 9,
                    mode: "wave".into(),
                    scope: "sector 2".into(),
                    status: "SUCCESS".into(),
                    decision: "PROCEED".into(),
                    sent: 300,
                    ready: 297,
                    latency_ms: 412,
                    error: None,
                    phases: Vec::new(),
                },
                "operation 9 (wave, sector 2) ended SUCCESS (PROCEED): 297 of 300 ready in 412 ms",
            ),
            (
                Event::mesh_operation_not_run(
                    10,
                    "operation 10 waited 600000 ms in the queue".into(),
                ),
                "operation 10 did not run: operation 10 waited",
            ),
            (
                Event::MeshAgentCrashed {
                    agent: 0xa1,
                    cluster: 4,
                    host: "n2".into(),
                    offline_ms: 30_100,
                    escalated: true,
                },
                "mesh agent 00000000000000a1 (cluster 4, on n2) crashed again soon after it \
                 came back, offline 30100 ms: its replacement fails too",
            ),
            (
                Event::MeshAgentQuarantined {
                    agent: 0xb2,
                    cluster: 7,
                    host: "n3".into(),
                    op: 42,
                    disagreements: 3,
                    answer: "e5f6".into(),
                    majority: "a1b2".into(),
                },
                "mesh agent 00000000000000b2 (cluster 7, on n3) quarantined: it disagreed with \
                 a clear majority 3 times more than it agreed, last in operation 42 (\"e5f6\" \
                 where the majority answered \"a1b2\")",
            ),
            (
                Event::MeshControl {
                    action: "heal".into(),
                    scope: "sector 12".into(),
                    nodes: 5,
                    confirmed: 5,
                    agents_released: 3,
                    breakers_closed: 1,
                    conflicts_released: 2,
                    agents_routed_around: 0,
                    agents_reassigned: 0,
                },
                "mesh heal of sector 12 confirmed by 5 of 5 nodes: 3 agents released, 1 \
                 breakers closed, 2 conflicts released",
            ),
            (
                Event::MeshControl {
                    action: "reassign".into(),
                    scope: "cluster 4".into(),
                    nodes: 3,
                    confirmed: 3,
                    agents_released: 0,
                    breakers_closed: 0,
                    conflicts_released: 0,
                    agents_routed_around: 0,
                    agents_reassigned: 2,
                },
                "mesh reassign of cluster 4 confirmed by 3 of 3 nodes: 2 agents' tasks asked \
                 back for other workers",
            ),
        ];
        for (event, want) in table {
            let text = super::describe(&event);
            assert!(text.contains(want), "{want:?} not in {text:?}");
        }
    }
}
