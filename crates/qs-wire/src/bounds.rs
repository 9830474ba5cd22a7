//! The one check of a message, whatever way it came in (the bus, the in-memory fabric, a
//! fuzzer): every count, size and number a receiver acts on is bounded, and a heartbeat
//! speaks only for its sender. An authenticated message that fails it is the sender's own
//! misbehaviour, the one thing that may quarantine it.

use crate::envelope::Envelope;
use crate::message::{Demand, Message, NodeStatus, Offer};
use crate::resources::Resources;
use crate::spec::{InvalidField, MAX_LEVEL, check_labels};

/// Largest fencing token accepted (2^53): a token grows by one per claim, so no genuine one
/// comes near, and one more than it never wraps.
pub const MAX_FENCING: u64 = 1 << 53;
/// Most instances (and recently completed ones) one heartbeat may list.
pub const MAX_INSTANCES_PER_NODE: usize = 10_000;
/// Most models one heartbeat may list.
pub const MAX_MODELS_PER_NODE: usize = 1_024;
pub use crate::spec::MAX_GPUS;
/// Largest CPU (millicores) and memory or VRAM (bytes) a node or a demand may name.
pub const MAX_MILLICORES: u64 = 4096 * 1000;
pub const MAX_BYTES: u64 = 64 << 40;
/// Longest free text (a stop's reason).
pub const MAX_REASON_BYTES: usize = 1024;

/// Cuts `s` to at most `max` bytes, at a character boundary (text from the outside may put
/// a multi-byte character across the bound).
pub fn clip(s: &mut String, max: usize) {
    let mut cut = s.len().min(max);
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
}
/// Largest composite weight an offer may claim (γ₁ / 1 with everything free, with room).
pub const MAX_COMPOSITE: f64 = 1.0e6;

fn bad<T>(field: &str, reason: impl Into<String>) -> Result<T, InvalidField> {
    Err(InvalidField {
        field: field.to_owned(),
        reason: reason.into(),
    })
}

fn at_most(field: &str, v: u64, max: u64) -> Result<(), InvalidField> {
    if v <= max {
        Ok(())
    } else {
        bad(field, format!("{v} is more than {max}"))
    }
}

fn fraction(field: &str, v: f64) -> Result<(), InvalidField> {
    // Sensors may overshoot 1.0 by rounding; nothing else is a utilisation.
    if v.is_finite() && (0.0..=1.01).contains(&v) {
        Ok(())
    } else {
        bad(field, format!("{v} is not a fraction in 0..=1"))
    }
}

fn count(field: &str, n: usize, max: usize) -> Result<(), InvalidField> {
    if n <= max {
        Ok(())
    } else {
        bad(field, format!("{n} entries; at most {max}"))
    }
}

fn resources(field: &str, r: &Resources) -> Result<(), InvalidField> {
    at_most(
        &format!("{field}.cpu_millicores"),
        r.cpu_millicores,
        MAX_MILLICORES,
    )?;
    at_most(&format!("{field}.memory_bytes"), r.memory_bytes, MAX_BYTES)?;
    at_most(&format!("{field}.vram_bytes"), r.vram_bytes, MAX_BYTES)
}

fn demand(d: &Demand) -> Result<(), InvalidField> {
    resources("demand.need", &d.need)?;
    check_labels("demand.labels", &d.labels)?;
    // The same bound as a spec's (a steward sends what its spec says).
    let max = crate::spec::MAX_REPLICAS as u32;
    if d.max_per_node == 0 || d.max_per_node > max {
        return bad("demand.max_per_node", format!("must be in 1..={max}"));
    }
    Ok(())
}

fn status(s: &NodeStatus) -> Result<(), InvalidField> {
    if s.level > MAX_LEVEL {
        return bad("level", format!("{} is more than {MAX_LEVEL}", s.level));
    }
    check_labels("labels", &s.labels)?;
    let c = &s.capacity;
    at_most("capacity.cpu_millicores", c.cpu_millicores, MAX_MILLICORES)?;
    at_most("capacity.memory_bytes", c.memory_bytes, MAX_BYTES)?;
    count("capacity.gpus", c.gpus.len(), MAX_GPUS)?;
    for g in &c.gpus {
        at_most("capacity.gpus.vram_bytes", g.vram_bytes, MAX_BYTES)?;
    }
    let m = &s.committed;
    at_most("committed.cpu_millicores", m.cpu_millicores, MAX_MILLICORES)?;
    at_most("committed.memory_bytes", m.memory_bytes, MAX_BYTES)?;
    count("committed.gpu_vram_bytes", m.gpu_vram_bytes.len(), MAX_GPUS)?;
    for v in &m.gpu_vram_bytes {
        at_most("committed.gpu_vram_bytes", *v, MAX_BYTES)?;
    }
    fraction("load.cpu_util", s.load.cpu_util)?;
    at_most(
        "load.memory_used_bytes",
        s.load.memory_used_bytes,
        MAX_BYTES,
    )?;
    count("load.gpus", s.load.gpus.len(), MAX_GPUS)?;
    for g in &s.load.gpus {
        fraction("load.gpus.util", g.util)?;
        at_most("load.gpus.vram_used_bytes", g.vram_used_bytes, MAX_BYTES)?;
    }
    count("instances", s.instances.len(), MAX_INSTANCES_PER_NODE)?;
    count("completed", s.completed.len(), MAX_INSTANCES_PER_NODE)?;
    for i in &s.instances {
        at_most("instances.fencing", i.fencing, MAX_FENCING)?;
    }
    count("models", s.models.len(), MAX_MODELS_PER_NODE)?;
    for m in &s.models {
        at_most("models.vram_bytes", m.vram_bytes, MAX_BYTES)?;
    }
    if let Some(a) = s.address {
        // Where others send a service's traffic: an address one machine can be reached at.
        // Link-local addresses are left out too: 169.254.169.254 is a cloud's metadata
        // service, which no node may point the fleet's forwarders at.
        let unusable = a.is_unspecified()
            || a.is_multicast()
            || match a {
                core::net::IpAddr::V4(v4) => v4.is_broadcast() || v4.is_link_local(),
                core::net::IpAddr::V6(v6) => v6.is_unicast_link_local(),
            };
        if unusable {
            return bad(
                "address",
                format!("{a} is not an address a machine is reached at"),
            );
        }
    }
    Ok(())
}

fn offer(o: &Offer) -> Result<(), InvalidField> {
    let c = &o.composite;
    for (f, v) in [
        ("offer.composite.pressure", c.pressure),
        ("offer.composite.vram_free", c.vram_free),
        ("offer.composite.cpu_free", c.cpu_free),
    ] {
        fraction(f, v)?;
    }
    for (f, v) in [
        ("offer.composite.level_weight", c.level_weight),
        ("offer.composite.value", c.value),
    ] {
        if !(v.is_finite() && (0.0..=MAX_COMPOSITE).contains(&v)) {
            return bad(f, format!("{v} is not in 0..={MAX_COMPOSITE}"));
        }
    }
    if o.gpu.is_some_and(|g| g as usize >= MAX_GPUS) {
        return bad("offer.gpu", format!("a GPU index under {MAX_GPUS}"));
    }
    at_most("offer.vram_free_bytes", o.vram_free_bytes, MAX_BYTES)
}

impl Envelope<Message> {
    /// Every rule a message must keep (see the module docs); the field that breaks one.
    pub fn validate(&self) -> Result<(), InvalidField> {
        match &self.payload {
            Message::Heartbeat(s) => {
                if s.node != self.sender {
                    return bad(
                        "heartbeat.node",
                        format!("{} sent a heartbeat about {}", self.sender, s.node),
                    );
                }
                status(s).map_err(|f| InvalidField {
                    field: format!("heartbeat.{}", f.field),
                    reason: f.reason,
                })
            }
            Message::CapacityQuery { demand: d, .. } => demand(d),
            Message::Dispatch {
                demand: d, fencing, ..
            } => {
                demand(d)?;
                at_most("fencing", *fencing, MAX_FENCING)
            }
            Message::Offer { offer: o, .. } => offer(o),
            Message::Stop { reason, .. } if reason.len() > MAX_REASON_BYTES => bad(
                "reason",
                format!("{} bytes; at most {MAX_REASON_BYTES}", reason.len()),
            ),
            _ => Ok(()),
        }
    }
}

/// Whether a number is zero: a field left out of the wire then (`skip_serializing_if`).
pub fn is_zero<T: Default + PartialEq>(n: &T) -> bool {
    *n == T::default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::NodeId;
    use crate::message::{ModelState, ModelSummary};

    fn beat(f: impl FnOnce(&mut NodeStatus)) -> Result<(), InvalidField> {
        let node = NodeId::new("n").unwrap();
        let mut s = NodeStatus::idle(node.clone(), 1);
        f(&mut s);
        Envelope::new(
            node,
            1,
            1,
            crate::envelope::MessageId(1),
            Message::Heartbeat(s),
        )
        .validate()
    }

    #[test]
    fn a_heartbeat_says_an_address_others_may_send_to_and_few_enough_models() {
        let ip = |s: &str| Some(s.parse::<core::net::IpAddr>().unwrap());
        for ok in ["10.0.0.7", "127.0.0.1", "2001:db8::7"] {
            assert_eq!(beat(|s| s.address = ip(ok)), Ok(()), "{ok}");
        }
        for bad in [
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "169.254.169.254",
            "fe80::1",
            "::",
        ] {
            let e = beat(|s| s.address = ip(bad)).unwrap_err();
            assert_eq!(e.field, "heartbeat.address", "{bad}");
        }
        let model = ModelSummary {
            model: crate::ids::ServiceName::new("m").unwrap(),
            state: ModelState::Warm,
            in_flight: 0,
            waiting: 0,
            vram_bytes: 1 << 30,
        };
        let many = vec![model.clone(); MAX_MODELS_PER_NODE + 1];
        assert_eq!(
            beat(|s| s.models = many).unwrap_err().field,
            "heartbeat.models"
        );
        let huge = ModelSummary {
            vram_bytes: MAX_BYTES + 1,
            ..model
        };
        let e = beat(|s| s.models = vec![huge]).unwrap_err();
        assert_eq!(e.field, "heartbeat.models.vram_bytes");
    }
}
