//! The agent's `[trust]` and `[nats]` settings: how long certificates live and when they
//! renew, whether directed messages are encrypted and how often their sessions are re-keyed;
//! and how the agent proves itself to its NATS servers (user and password, an nkey seed, a
//! credentials file) and checks them (TLS with a CA, a client certificate for mutual TLS).
//! Plain data with their checks; the shell reads the files they name.

use serde::{Deserialize, Serialize};

/// The shortest certificate lifetime an authority issues: renewal must have room.
pub const MIN_CERTIFICATE_LIFETIME_MS: u64 = 2_000;

/// `[trust]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrustConfig {
    /// How long a certificate the authority issues is valid (default 24 hours).
    pub certificate_lifetime_ms: u64,
    /// A node asks for a new certificate once this share of its lifetime has passed, in
    /// percent (default 66).
    pub renew_at_percent: u8,
    /// Encrypt directed messages (ChaCha20-Poly1305 under hybrid X25519 + ML-KEM-768
    /// session keys); off, they are only authenticated (HMAC).
    pub encrypt: bool,
    /// A session key is replaced after this long (default 5 minutes) ...
    pub rekey_after_ms: u64,
    /// ... or this many messages (default 2^20), whichever comes first.
    pub rekey_after_messages: u64,
}

impl Default for TrustConfig {
    fn default() -> Self {
        TrustConfig {
            certificate_lifetime_ms: 24 * 3600 * 1000,
            renew_at_percent: 66,
            encrypt: true,
            rekey_after_ms: 5 * 60 * 1000,
            rekey_after_messages: 1 << 20,
        }
    }
}

impl TrustConfig {
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let lifetime = self.certificate_lifetime_ms;
        if !(MIN_CERTIFICATE_LIFETIME_MS..=qs_wire::trust::MAX_VALIDITY_MS).contains(&lifetime) {
            return Err((
                "trust.certificate_lifetime_ms",
                format!(
                    "must be {MIN_CERTIFICATE_LIFETIME_MS} to {}, got {lifetime}",
                    qs_wire::trust::MAX_VALIDITY_MS
                ),
            ));
        }
        if !(10..=95).contains(&self.renew_at_percent) {
            return Err((
                "trust.renew_at_percent",
                format!("must be 10 to 95, got {}", self.renew_at_percent),
            ));
        }
        if self.rekey_after_ms < 100 || self.rekey_after_messages == 0 {
            return Err((
                "trust.rekey_after_ms",
                "a session must last at least 100 ms and one message".into(),
            ));
        }
        Ok(())
    }

    /// When a certificate valid from `not_before_ms` to `not_after_ms` is renewed.
    pub fn renew_at_ms(&self, not_before_ms: u64, not_after_ms: u64) -> u64 {
        let span = not_after_ms.saturating_sub(not_before_ms);
        not_before_ms + span / 100 * u64::from(self.renew_at_percent)
    }
}

/// `[nats]`: at most one way to authenticate, and TLS.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    pub user: Option<String>,
    /// The password of `user`, or better, a file that holds it (`password_file`).
    pub password: Option<String>,
    pub password_file: Option<String>,
    /// A file holding an nkey seed (`SU...`).
    pub nkey_seed_file: Option<String>,
    /// A NATS credentials file (a user JWT and its nkey seed).
    pub creds_file: Option<String>,
    /// The CA that signed the servers' certificates; setting it requires TLS.
    pub tls_ca: Option<String>,
    /// A client certificate and its key, for servers that verify clients (mutual TLS).
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    /// Require TLS even without `tls_ca` (the system's roots then verify the server).
    pub tls_required: bool,
}

impl NatsConfig {
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let ways = [
            self.user.is_some(),
            self.nkey_seed_file.is_some(),
            self.creds_file.is_some(),
        ]
        .iter()
        .filter(|w| **w)
        .count();
        if ways > 1 {
            return Err((
                "nats.user",
                "give one of user (with a password), nkey_seed_file or creds_file".into(),
            ));
        }
        if self.user.is_some() == (self.password.is_none() && self.password_file.is_none())
            && (self.user.is_some() || self.password.is_some() || self.password_file.is_some())
        {
            return Err((
                "nats.password",
                "user and a password (password or password_file) go together".into(),
            ));
        }
        if self.password.is_some() && self.password_file.is_some() {
            return Err((
                "nats.password",
                "give password or password_file, not both".into(),
            ));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err((
                "nats.tls_cert",
                "a client certificate needs its key (tls_cert and tls_key)".into(),
            ));
        }
        Ok(())
    }

    /// Whether the connection must be TLS.
    pub fn tls(&self) -> bool {
        self.tls_required || self.tls_ca.is_some() || self.tls_cert.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_settings_that_do_not_go_together_are_named() {
        let cases: Vec<(NatsConfig, Option<&str>)> = vec![
            (NatsConfig::default(), None),
            (
                NatsConfig {
                    user: Some("a".into()),
                    password_file: Some("p".into()),
                    ..Default::default()
                },
                None,
            ),
            (
                NatsConfig {
                    user: Some("a".into()),
                    ..Default::default()
                },
                Some("nats.password"),
            ),
            (
                NatsConfig {
                    password: Some("p".into()),
                    ..Default::default()
                },
                Some("nats.password"),
            ),
            (
                NatsConfig {
                    user: Some("a".into()),
                    password: Some("p".into()),
                    creds_file: Some("c".into()),
                    ..Default::default()
                },
                Some("nats.user"),
            ),
            (
                NatsConfig {
                    tls_cert: Some("c".into()),
                    ..Default::default()
                },
                Some("nats.tls_cert"),
            ),
        ];
        for (c, want) in cases {
            assert_eq!(c.check().err().map(|e| e.0), want, "{c:?}");
        }
    }

    #[test]
    fn renewal_falls_at_its_share_of_the_lifetime() {
        let t = TrustConfig::default();
        assert_eq!(t.renew_at_ms(1000, 1000 + 300_000), 1000 + 198_000);
        assert!(
            TrustConfig {
                renew_at_percent: 99,
                ..t
            }
            .check()
            .is_err()
        );
    }
}
