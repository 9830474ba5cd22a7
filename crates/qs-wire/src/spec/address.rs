//! A service's stable address (`address = { port = 5353, protocol = "udp" }`) and the
//! publishing of its serving instances (`publish = { file = "...", command = "..." }`), with
//! their one check.
//!
//! Every agent listens on an address's port and forwards to the service's healthy instances
//! wherever they run, so a client keeps one address across scale-out, scale-in and failover.
//! A stateful-read service may add `primary_port`, which reaches only its primary. An HTTP
//! address may be shared by several services, each told apart by `host` or `path`.

use super::validate::{InvalidField, MAX_LABEL_BYTES, bad, command};
use super::{HaPattern, WorkloadSpec};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest path prefix of an HTTP address, and longest publish file path.
pub const MAX_ADDRESS_PATH_BYTES: usize = 1024;
/// Longest path of a publish file.
pub const MAX_PUBLISH_FILE_BYTES: usize = 4096;

/// How an address's traffic is forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// Each TCP connection to one healthy instance.
    Tcp,
    /// Each client's datagrams to one healthy instance, its answers back.
    Udp,
    /// Each HTTP request to one healthy instance of the service its `Host` or path names.
    Http,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Http => "http",
        })
    }
}

/// A service's stable address.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceAddress {
    /// The port every agent listens on for it.
    pub port: u16,
    pub protocol: Protocol,
    /// Stateful-read only: a second port that reaches only the primary (writes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_port: Option<u16>,
    /// HTTP only: requests whose `Host` (without its port) is this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// HTTP only: requests whose path starts with this (a `/`, then whole segments).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// How a publish file lists the serving instances.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PublishFormat {
    /// One JSON object: the service, its instances with node, address and role.
    #[default]
    Json,
    /// One `host:port` per line.
    Lines,
}

/// Where the set of a service's serving instances goes whenever it changes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Publish {
    /// An absolute path every agent rewrites atomically on its own machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(default)]
    pub format: PublishFormat,
    /// A command the service's steward runs with the new list (`QS_ENDPOINTS`, one
    /// `host:port` per line; `QS_PRIMARY`; `QS_SERVICE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
}

/// The address's and the publishing's rules, part of [`WorkloadSpec::validate`].
pub(super) fn check(spec: &WorkloadSpec) -> Result<(), InvalidField> {
    if let Some(a) = &spec.address {
        if spec.is_job() {
            return bad("address", "only services have a stable address");
        }
        if a.port == 0 {
            return bad("address.port", "must be in 1..=65535, got 0");
        }
        match a.primary_port {
            Some(_) if spec.pattern != HaPattern::StatefulRead => {
                return bad(
                    "address.primary_port",
                    "only stateful-read services have a primary to reach",
                );
            }
            Some(0) => return bad("address.primary_port", "must be in 1..=65535, got 0"),
            Some(p) if p == a.port => {
                return bad("address.primary_port", "must differ from address.port");
            }
            _ => {}
        }
        if a.protocol != Protocol::Http && (a.host.is_some() || a.path.is_some()) {
            return bad("address", "`host` and `path` go with protocol = \"http\"");
        }
        if let Some(h) = &a.host {
            host(h)?;
        }
        if let Some(p) = &a.path {
            let ok = p.starts_with('/')
                && p.len() <= MAX_ADDRESS_PATH_BYTES
                && !p
                    .chars()
                    .any(|c| c.is_control() || c == ' ' || c == '?' || c == '#');
            if !ok {
                return bad(
                    "address.path",
                    format!(
                        "a path starting with '/', of at most {MAX_ADDRESS_PATH_BYTES} bytes, without spaces, '?' or '#'"
                    ),
                );
            }
        }
    }
    if let Some(p) = &spec.publish {
        if p.file.is_none() && p.command.is_none() {
            return bad("publish", "names a `file`, a `command` or both");
        }
        if let Some(f) = &p.file {
            let ok = f.starts_with('/')
                && !f.ends_with('/')
                && f.len() <= MAX_PUBLISH_FILE_BYTES
                && !f.contains('\0');
            if !ok {
                return bad(
                    "publish.file",
                    format!("an absolute file path of at most {MAX_PUBLISH_FILE_BYTES} bytes"),
                );
            }
        }
        if let Some(c) = &p.command {
            command("publish.command", c)?;
        }
    }
    Ok(())
}

/// A host name as the `Host` header carries it: DNS labels, lowercase.
fn host(h: &str) -> Result<(), InvalidField> {
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if h.len() > MAX_LABEL_BYTES || !h.split('.').all(label_ok) {
        return bad(
            "address.host",
            format!(
                "{h:?} is not a lowercase host name (DNS labels, at most {MAX_LABEL_BYTES} bytes)"
            ),
        );
    }
    Ok(())
}
