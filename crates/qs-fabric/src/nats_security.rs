//! How an agent proves itself to its NATS servers (user and password, an nkey seed, a
//! credentials file) and checks them (TLS with a CA, a client certificate for mutual TLS):
//! what `[nats]` says, applied to async-nats's connect options. Secrets never reach a log.

use crate::FabricError;

/// How an agent proves itself to its NATS servers, and checks them.
#[derive(Clone, Default)]
pub struct NatsSecurity {
    pub user: Option<UserPassword>,
    /// An nkey seed (`SU...`).
    pub nkey_seed: Option<String>,
    /// A NATS credentials file's text (a user JWT and its seed).
    pub creds: Option<String>,
    /// A CA certificate (PEM file) that signed the servers' certificates.
    pub tls_ca: Option<std::path::PathBuf>,
    /// A client certificate, for servers that verify clients.
    pub tls_client: Option<ClientCertificate>,
    pub tls_required: bool,
}

/// A user and its password.
#[derive(Clone)]
pub struct UserPassword {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for NatsSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |set: bool| if set { "<hidden>" } else { "none" };
        f.debug_struct("NatsSecurity")
            .field("user", &self.user)
            .field("nkey_seed", &hidden(self.nkey_seed.is_some()))
            .field("creds", &hidden(self.creds.is_some()))
            .field("tls_ca", &self.tls_ca)
            .field("tls_client", &self.tls_client)
            .field("tls_required", &self.tls_required)
            .finish()
    }
}

impl std::fmt::Debug for UserPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "UserPassword {{ user: {:?}, password: <hidden> }}",
            self.user
        )
    }
}

/// A client certificate and its key (PEM files).
#[derive(Clone, Debug)]
pub struct ClientCertificate {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

impl NatsSecurity {
    pub(crate) fn apply(
        &self,
        mut o: async_nats::ConnectOptions,
    ) -> Result<async_nats::ConnectOptions, FabricError> {
        if let Some(u) = &self.user {
            o = o.user_and_password(u.user.clone(), u.password.clone());
        }
        if let Some(seed) = &self.nkey_seed {
            o = o.nkey(seed.trim().to_owned());
        }
        if let Some(creds) = &self.creds {
            o = o.credentials(creds).map_err(|e| FabricError::Setting {
                what: "NATS credentials",
                detail: e.to_string(),
            })?;
        }
        if let Some(ca) = &self.tls_ca {
            o = o.add_root_certificates(ca.clone());
        }
        if let Some(c) = &self.tls_client {
            o = o.add_client_certificate(c.cert.clone(), c.key.clone());
        }
        if self.tls_required || self.tls_ca.is_some() || self.tls_client.is_some() {
            o = o.require_tls(true);
        }
        Ok(o)
    }
}
