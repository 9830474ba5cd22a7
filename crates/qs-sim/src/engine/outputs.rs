//! Carrying out a node's outputs in the simulated world: messages onto the simulated
//! network, starts and stops as simulated processes with their exits scheduled, claims
//! against the simulated KV, records into the ledger.

use super::*;

impl Sim {
    /// Carries out everything node `i` asked for.
    pub(super) fn drain(&mut self, i: usize) {
        while let Some(out) = self.nodes[i].core.poll() {
            let now = self.now;
            match out {
                Output::Send { to, msg } => self.send(i, to, msg),
                Output::Ack { target, nonce } => {
                    if self.detector.as_ref().is_some_and(|(me, _)| *me == i) {
                        self.detect(DetectorInput::Ack { target, nonce });
                    }
                }
                Output::Heartbeat(status) => {
                    self.push(now + micros(self.net.kv_us), Ev::Observe(Box::new(status)));
                }
                Output::Start(order) => {
                    self.counters.starts += 1;
                    let job = self
                        .registry
                        .spec(&order.service)
                        .filter(|s| matches!(s.kind, WorkloadKind::Job { .. }))
                        .map(|_| self.job_ms.get(&order.service).copied().unwrap_or(1000));
                    let n = &mut self.nodes[i];
                    n.procs.insert(
                        order.instance.clone(),
                        Proc {
                            need: order.need,
                            gpu: order.gpu,
                            util: 0.4,
                        },
                    );
                    let (instance, node) = (order.instance, i);
                    let broken = n.broken_starts;
                    // The simulated process stays up: its probe passes.
                    let serving = Box::new(Input::Probe {
                        instance: instance.clone(),
                        result: Ok(()),
                    });
                    self.push(
                        now + micros(SENSE_DELAY_US),
                        Ev::Local {
                            to: node,
                            input: serving,
                        },
                    );
                    if broken {
                        let outcome = ExitOutcome::FailedStart {
                            reason: "simulated broken start".into(),
                        };
                        self.push(
                            now + micros(START_FAIL_US),
                            Ev::Exit {
                                node,
                                instance,
                                outcome,
                            },
                        );
                    } else if let Some(ms) = job {
                        let outcome = ExitOutcome::Completed;
                        self.push(
                            now + micros(ms * 1000),
                            Ev::Exit {
                                node,
                                instance,
                                outcome,
                            },
                        );
                    }
                    self.sense_soon(i);
                }
                Output::Stop { instance, reason } => {
                    let outcome = ExitOutcome::Stopped { reason };
                    self.push(
                        now + micros(STOP_GRACE_US),
                        Ev::Exit {
                            node: i,
                            instance,
                            outcome,
                        },
                    );
                }
                Output::Record(event) => self.on_record(i, event),
                // The simulator has no disk and its nodes do not restart: nothing to keep.
                Output::SaveFailures(_) => {}
                Output::Claim { service, claim } => {
                    let result = qs_core::judge_claim(self.claims.get(&service), &claim);
                    let instance = claim.instance.clone();
                    if result.is_ok() {
                        self.claims.insert(service.clone(), claim);
                    }
                    let input = Box::new(Input::Claimed {
                        service,
                        instance,
                        result,
                    });
                    self.push(now + micros(self.net.kv_us), Ev::Local { to: i, input });
                }
            }
        }
    }
}
