//! Identifiers: nodes, services (and jobs), instances, placements and tasks.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid name {name:?}: {why}")]
pub struct NameError {
    pub name: String,
    pub why: &'static str,
}

/// Longest accepted node, service or instance name (a DNS label is 63).
pub const MAX_NAME_LEN: usize = 63;

/// Checks the shared name rule: 1..=63 of `[a-z0-9-]`, not starting or ending with `-`.
/// The rule keeps names valid as DNS labels, NATS subject tokens and KV keys alike.
pub fn check_name(name: &str) -> Result<(), NameError> {
    let refuse = |why| {
        Err(NameError {
            name: name.to_owned(),
            why,
        })
    };
    if name.is_empty() {
        return refuse("empty");
    }
    if name.len() > MAX_NAME_LEN {
        return refuse("longer than 63 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return refuse("only lowercase letters, digits and '-' are allowed");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return refuse("must not start or end with '-'");
    }
    Ok(())
}

/// What the one serde visitor needs of a name type.
trait Named: Sized {
    /// Wraps a name that passed [`check_name`].
    fn from_checked(name: &str) -> Self;
}

struct NameVisitor<T>(std::marker::PhantomData<T>);

impl<T: Named> serde::de::Visitor<'_> for NameVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a name of lowercase letters, digits and '-'")
    }
    fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<T, E> {
        check_name(name).map_err(E::custom)?;
        Ok(T::from_checked(name))
    }
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Arc<str>);

        // By hand rather than through `String`: encoding copies nothing, and decoding
        // allocates once, straight from the input.
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_str(NameVisitor(std::marker::PhantomData))
            }
        }
        impl Named for $name {
            fn from_checked(name: &str) -> Self {
                Self(Arc::from(name))
            }
        }

        impl $name {
            /// Validates and wraps a name.
            pub fn new(name: &str) -> Result<Self, NameError> {
                check_name(name)?;
                Ok(Self::from_checked(name))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                Self::new(&s)
            }
        }
        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0.to_string()
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", &*self.0)
            }
        }
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

name_type!(
    /// A node: one machine running `qs agent` (a "silo" or "tile" in seed 000).
    NodeId
);
name_type!(
    /// A service or job spec; both share one namespace.
    ServiceName
);
name_type!(
    /// One running copy of a service or job.
    InstanceId
);
name_type!(
    /// One durable task (seed 002): the node that took it and its own counter.
    TaskId
);

/// One placement, unique per fleet: the steward that drives it and its own counter.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct PlacementId {
    pub steward: NodeId,
    pub seq: u64,
}

impl fmt::Display for PlacementId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.steward, self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_dns_label_rule() {
        for ok in ["forge", "fleet-dns", "a", "n0-1"] {
            assert!(NodeId::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Forge", "-a", "a-", "a.b", "a b", &"x".repeat(64)] {
            assert!(NodeId::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_refuse_bad_input_when_deserialized() {
        let err = serde_json::from_str::<NodeId>("\"UPPER\"").unwrap_err();
        assert!(err.to_string().contains("lowercase"), "{err}");
    }
}
