//! API keys of the OpenAI-compatible entry point: a secret file, named by the config's
//! `[models] keys_file`, gives each client its own key, the priority class its requests get
//! at most, and the models it may use. A request to the entry point that carries one of
//! these keys needs no operator token; one whose key is unknown is refused (401).
//!
//! ```toml
//! [key.alice]
//! secret = "…"                 # 32 to 256 visible ASCII characters
//! class = "batch"              # at most: interactive (the default), batch or ingestion
//! models = ["code", "conv"]    # the models it may use; all when absent
//! ```
//!
//! The file is untrusted input like any spec: bounded in size and count, every error named
//! by file, line, column and field; and a secret: refused when others may read it.

use qs_core::gpu::Class;
use qs_wire::{ServiceName, SpecError, spec::line_column};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use toml::Spanned;

/// Largest keys file read.
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// Most keys a file may hold.
pub const MAX_KEYS: usize = 1024;
/// Most models one key may name.
pub const MAX_MODELS_PER_KEY: usize = 256;
const MIN_SECRET: usize = 32;
const MAX_SECRET: usize = 256;

/// What a key grants a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub name: String,
    /// The highest priority its requests get: a header may ask for less, never more.
    pub class: Class,
    /// The models it may use; `None`: all.
    pub models: Option<BTreeSet<ServiceName>>,
}

impl Grant {
    /// The class a request gets: the one it asked for, unless that is above the key's.
    pub fn class_for(&self, asked: Class) -> Class {
        // Classes are ordered by priority, interactive first: the later of the two.
        asked.max(self.class)
    }

    pub fn may_use(&self, model: &ServiceName) -> bool {
        self.models.as_ref().is_none_or(|m| m.contains(model))
    }
}

/// The keys of a keys file.
pub struct ApiKeys {
    keys: Vec<(String, Grant)>,
}

impl std::fmt::Debug for ApiKeys {
    // Never printed with their secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} keys)", self.keys.len())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    key: BTreeMap<String, Spanned<RawKey>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    secret: Spanned<String>,
    class: Option<Spanned<String>>,
    models: Option<Spanned<Vec<String>>>,
}

impl ApiKeys {
    /// Reads `path`: refused when others may read it, when it is too large, or when any of
    /// it is wrong.
    pub fn read(path: &Path) -> Result<ApiKeys, String> {
        use std::os::unix::fs::PermissionsExt;
        let shown = path.display().to_string();
        let meta = std::fs::metadata(path).map_err(|e| format!("{shown}: {e}"))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(format!(
                "{shown}: a secret file that others may read (mode {:o}): chmod 600 it",
                meta.permissions().mode() & 0o777
            ));
        }
        if meta.len() > MAX_FILE_BYTES {
            return Err(format!(
                "{shown}: {} bytes, more than the {MAX_FILE_BYTES} a keys file may have",
                meta.len()
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: {e}"))?;
        ApiKeys::parse(&shown, &text).map_err(|e| e.to_string())
    }

    /// Checks a keys file's text; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<ApiKeys, SpecError> {
        let at = |offset: usize, field: &str, message: String| {
            let (line, column) = line_column(text, offset);
            SpecError {
                file: file.to_owned(),
                line,
                column,
                field: field.to_owned(),
                message,
            }
        };
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start).min(text.len());
            at(offset, "", e.message().trim().to_owned())
        })?;
        if raw.key.len() > MAX_KEYS {
            return Err(at(0, "key", format!("more than {MAX_KEYS} keys")));
        }
        let mut keys = Vec::new();
        for (name, spanned) in raw.key {
            let start = spanned.span().start;
            let k = spanned.into_inner();
            let field = |f: &str| format!("key.{name}.{f}");
            if ServiceName::new(&name).is_err() {
                return Err(at(
                    start,
                    &format!("key.{name}"),
                    "a key's name is a DNS label (letters, digits, '-')".into(),
                ));
            }
            let secret = k.secret.get_ref();
            let visible = secret.bytes().all(|b| b.is_ascii_graphic());
            if !(MIN_SECRET..=MAX_SECRET).contains(&secret.len()) || !visible {
                return Err(at(
                    k.secret.span().start,
                    &field("secret"),
                    format!("{MIN_SECRET} to {MAX_SECRET} visible ASCII characters"),
                ));
            }
            if keys.iter().any(|(s, _): &(String, Grant)| s == secret) {
                return Err(at(
                    k.secret.span().start,
                    &field("secret"),
                    "another key has the same secret".into(),
                ));
            }
            let class = match &k.class {
                None => Class::Interactive,
                Some(c) => Class::named(c.get_ref()).ok_or_else(|| {
                    at(
                        c.span().start,
                        &field("class"),
                        format!("{:?} is not interactive, batch or ingestion", c.get_ref()),
                    )
                })?,
            };
            let models = match &k.models {
                None => None,
                Some(list) => {
                    if list.get_ref().len() > MAX_MODELS_PER_KEY {
                        return Err(at(
                            list.span().start,
                            &field("models"),
                            format!("more than {MAX_MODELS_PER_KEY} models"),
                        ));
                    }
                    let mut set = BTreeSet::new();
                    for m in list.get_ref() {
                        let name = ServiceName::new(m).map_err(|e| {
                            at(list.span().start, &field("models"), format!("{m:?}: {e}"))
                        })?;
                        set.insert(name);
                    }
                    Some(set)
                }
            };
            keys.push((
                secret.clone(),
                Grant {
                    name,
                    class,
                    models,
                },
            ));
        }
        Ok(ApiKeys { keys })
    }

    /// The grant of the key `presented` is, compared in time that does not depend on where
    /// it differs from any key.
    pub fn find(&self, presented: &str) -> Option<&Grant> {
        let mut found = None;
        for (secret, grant) in &self.keys {
            let (a, b) = (secret.as_bytes(), presented.as_bytes());
            let same =
                a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0;
            if same {
                found = Some(grant);
            }
        }
        found
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET_A: &str = "sk-alice-0123456789abcdef0123456789abcdef";
    const SECRET_B: &str = "sk-bob-0123456789abcdef0123456789abcdef00";

    fn file() -> String {
        format!(
            "[key.alice]\nsecret = \"{SECRET_A}\"\nclass = \"batch\"\nmodels = [\"code\"]\n\n\
             [key.bob]\nsecret = \"{SECRET_B}\"\n"
        )
    }

    #[test]
    fn keys_grant_their_class_at_most_and_their_models() {
        let keys = ApiKeys::parse("keys.toml", &file()).unwrap();
        assert_eq!(keys.len(), 2);
        let alice = keys.find(SECRET_A).unwrap();
        assert_eq!(alice.name, "alice");
        assert_eq!(alice.class_for(Class::Interactive), Class::Batch, "capped");
        assert_eq!(
            alice.class_for(Class::Ingestion),
            Class::Ingestion,
            "less is fine"
        );
        let code = ServiceName::new("code").unwrap();
        let conv = ServiceName::new("conv").unwrap();
        assert!(alice.may_use(&code) && !alice.may_use(&conv));
        let bob = keys.find(SECRET_B).unwrap();
        assert!(bob.may_use(&conv) && bob.class_for(Class::Interactive) == Class::Interactive);
        assert!(keys.find("sk-nobody").is_none());
        assert!(keys.find(&SECRET_A[..SECRET_A.len() - 1]).is_none());
        assert_eq!(format!("{keys:?}"), "ApiKeys(2 keys)", "no secret printed");
    }

    #[test]
    fn a_bad_keys_file_is_refused_with_its_location() {
        let cases = [
            (
                file().replace("batch", "urgent"),
                "keys.toml:3:9: key.alice.class: \"urgent\" is not interactive, batch or ingestion",
            ),
            (
                "[key.alice]\nsecret = \"short\"\n".to_owned(),
                "keys.toml:2:10: key.alice.secret: 32 to 256 visible ASCII characters",
            ),
            (
                file().replace(SECRET_B, SECRET_A),
                "keys.toml:7:10: key.bob.secret: another key has the same secret",
            ),
            (
                file().replace("[\"code\"]", "[\"Not A Label\"]"),
                "keys.toml:4:10: key.alice.models:",
            ),
            (
                "[key.alice]\nsecret = \"x\"\nrole = \"admin\"\n".to_owned(),
                "keys.toml:3:1",
            ),
        ];
        for (text, want) in cases {
            let err = ApiKeys::parse("keys.toml", &text).unwrap_err().to_string();
            assert!(err.starts_with(want), "{err}\nwanted: {want}");
        }
    }
}
