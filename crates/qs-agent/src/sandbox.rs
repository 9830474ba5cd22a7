//! What a child of the agent (an instance, or its exec probe) starts with: a clean
//! environment, its own process group, and a group kill when it must end early.
//!
//! Children inherit nothing of the agent's environment but a short allow-list (the search
//! path, the locale, the home directory, the time zone), what the spec sets, and
//! `QS_PORT`/`QS_INSTANCE`; tokens, credentials or proxies the agent was started with stay
//! with the agent.

use std::collections::BTreeMap;

/// The agent's variables a child keeps, by name.
const ALLOWED: [&str; 9] = [
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM",
];

/// The search path when the agent has none.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

fn allowed(name: &str) -> bool {
    ALLOWED.contains(&name) || name.starts_with("LC_")
}

/// The environment of a child: the allowed part of the agent's (`agent`, from
/// `std::env::vars()`), then `spec` (a spec cannot set `QS_*`: its validation refuses it),
/// then `own` (the agent's variables for it).
pub fn environment(
    agent: impl Iterator<Item = (String, String)>,
    spec: &BTreeMap<String, String>,
    own: &[(&str, String)],
) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = agent.filter(|(k, _)| allowed(k)).collect();
    env.entry("PATH".into())
        .or_insert_with(|| DEFAULT_PATH.into());
    env.extend(spec.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.extend(own.iter().map(|(k, v)| (k.to_string(), v.clone())));
    env
}

/// Sets up `cmd` as a child of the agent: `env` only, in a process group of its own.
pub fn confine(cmd: &mut tokio::process::Command, env: &BTreeMap<String, String>) {
    cmd.env_clear().envs(env).process_group(0);
}

/// Kills a child's whole process group when dropped, unless [`GroupKill::disarm`]ed: a probe
/// that times out takes its grandchildren with it.
pub struct GroupKill(Option<u32>);

impl GroupKill {
    pub fn new(pid: Option<u32>) -> GroupKill {
        GroupKill(pid.filter(|p| *p > 1))
    }

    /// The child ended by itself and was reaped: nothing to kill.
    pub fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            // SAFETY: kill(2) on the process group of a child we started and have not reaped
            // (so its pid, the group's id, cannot have been reused).
            unsafe {
                libc::kill(-(pid as libc::pid_t), libc::SIGKILL);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_keeps_only_the_allow_list_and_what_it_is_given() {
        let agent = [
            ("QS_TOKEN", "hunter2"),
            ("AWS_SECRET_ACCESS_KEY", "hunter3"),
            ("LC_ALL", "C"),
            ("HOME", "/root"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let spec = BTreeMap::from([("MODEL".to_owned(), "llama".to_owned())]);
        let env = environment(agent.into_iter(), &spec, &[("QS_PORT", "8080".into())]);
        assert!(!env.contains_key("QS_TOKEN") && !env.contains_key("AWS_SECRET_ACCESS_KEY"));
        assert_eq!(env.get("HOME").map(String::as_str), Some("/root"));
        assert_eq!(env.get("LC_ALL").map(String::as_str), Some("C"));
        assert_eq!(env.get("MODEL").map(String::as_str), Some("llama"));
        assert_eq!(env.get("QS_PORT").map(String::as_str), Some("8080"));
        assert!(env.contains_key("PATH"));
    }
}
