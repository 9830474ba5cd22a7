//! The operator API's bearer token: created at first start in the state directory (mode
//! 0600), read back at every later start, and compared in constant time.

use crate::AgentError;
use qs_store::{StateDir, StateFile, StoreError};
use std::fmt;

/// Random bytes in a token (hex-encoded, so the file holds twice as many characters).
const TOKEN_BYTES: usize = 32;

/// A token as the file and the `Authorization: Bearer` header carry it: 64 lowercase hex
/// characters.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(String);

impl fmt::Debug for ApiToken {
    // Never printed: a log line must not hand out the fleet.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken(..)")
    }
}

impl ApiToken {
    /// Checks a token's text (from the file, a flag or the environment).
    pub fn parse(text: &str) -> Option<ApiToken> {
        let t = text.trim();
        let hex = t.len() == 2 * TOKEN_BYTES
            && t.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        hex.then(|| ApiToken(t.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this token, in time that does not depend on where they differ.
    pub fn matches(&self, presented: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), presented.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    /// The token of this state directory: read back, or created (mode 0600) at first start.
    /// A file that holds no token is an error naming it: a new token would lock out every
    /// client that has the old one, so that is the operator's call (delete the file).
    pub fn load_or_create(state: &StateDir) -> Result<ApiToken, AgentError> {
        let path = state.path(StateFile::ApiToken);
        if let Some(bytes) = state.read(StateFile::ApiToken)? {
            // Loosened by hand (or copied without its mode): made private again, and said.
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(&path)
                && meta.permissions().mode() & 0o077 != 0
            {
                tracing::warn!(
                    "{}: readable by others (mode {:o}); set to 0600",
                    path.display(),
                    meta.permissions().mode() & 0o777
                );
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(
                    |source| StoreError::Io {
                        path: path.clone(),
                        source,
                    },
                )?;
            }
            let text = String::from_utf8_lossy(&bytes);
            return ApiToken::parse(&text).ok_or_else(|| {
                AgentError::Store(StoreError::Unreadable {
                    path: path.clone(),
                    what: StateFile::ApiToken.what(),
                    line: 1,
                    column: 1,
                    detail: format!(
                        "not {} hex characters; delete the file for a new token",
                        2 * TOKEN_BYTES
                    ),
                })
            });
        }
        let mut raw = [0u8; TOKEN_BYTES];
        getrandom::getrandom(&mut raw).map_err(|e| {
            AgentError::Store(StoreError::Io {
                path: path.clone(),
                source: std::io::Error::other(format!("no randomness for a token: {e}")),
            })
        })?;
        let token = ApiToken(raw.iter().map(|b| format!("{b:02x}")).collect());
        let mut body = token.0.clone();
        body.push('\n');
        state.write(StateFile::ApiToken, body.as_bytes(), Some(0o600))?;
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_created_once_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let first = ApiToken::load_or_create(&state).unwrap();
        let again = ApiToken::load_or_create(&state).unwrap();
        assert_eq!(first, again);
        assert!(first.matches(first.as_str()));
        assert!(!first.matches(&first.as_str().replace(&first.as_str()[..1], "x")));
        assert!(!first.matches(""));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(state.path(StateFile::ApiToken))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(format!("{first:?}"), "ApiToken(..)");
    }

    #[test]
    fn a_file_without_a_token_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        std::fs::write(state.path(StateFile::ApiToken), "not a token").unwrap();
        let e = ApiToken::load_or_create(&state).unwrap_err().to_string();
        assert!(e.contains("api.token") && e.contains("API token"), "{e}");
    }
}
