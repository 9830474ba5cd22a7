//! What a child of the agent (an instance, or its exec probe) starts with: a clean
//! environment, its own process group, and a group kill when it must end early.
//!
//! Children inherit nothing of the agent's environment but a short allow-list (the search
//! path, the locale, the home directory, the time zone), what the spec sets, and
//! `QS_PORT`/`QS_INSTANCE`; tokens, credentials or proxies the agent was started with stay
//! with the agent. A child of a root agent runs as another user ([`crate::run_as`]); it may
//! not be able to reach the `qs` executable's path (under root's home, say), so `{qs}` in its
//! command names an open descriptor of it instead ([`qs_exe`]).

use crate::run_as::RunAs;
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

/// What a workload's spec says of its children's setting: its environment and its user.
#[derive(Clone, Debug, Default)]
pub struct ChildSetting {
    pub env: BTreeMap<String, String>,
    pub run_as: Option<RunAs>,
}

/// The descriptor number a child finds the `qs` executable at, when it runs as another user.
const QS_EXE_FD: libc::c_int = 199;

/// The `qs` executable, opened once by the agent (so a child that runs as another user can
/// execute it through its descriptor even where it could not reach its path).
fn qs_exe_file() -> Option<&'static std::fs::File> {
    static EXE: std::sync::OnceLock<Option<std::fs::File>> = std::sync::OnceLock::new();
    EXE.get_or_init(|| std::fs::File::open(std::env::current_exe().ok()?).ok())
        .as_ref()
}

/// What `{qs}` in a command becomes: the executable's path, or for a child that runs as
/// another user the descriptor [`confine`] gives it.
pub fn qs_exe(run_as: Option<&RunAs>) -> String {
    match (run_as, qs_exe_file()) {
        (Some(_), Some(_)) => format!("/proc/self/fd/{QS_EXE_FD}"),
        _ => std::env::current_exe().map_or_else(|_| "qs".to_owned(), |p| p.display().to_string()),
    }
}

/// Sets up `cmd` as a child of the agent: `env` only, in a process group of its own, and as
/// `run_as` when given (its user and group, no supplementary groups, its home as working
/// directory and `HOME`/`USER`/`LOGNAME`, and the `qs` executable at [`QS_EXE_FD`]).
pub fn confine(
    cmd: &mut tokio::process::Command,
    env: &BTreeMap<String, String>,
    run_as: Option<&RunAs>,
) {
    cmd.env_clear().envs(env).process_group(0);
    let Some(who) = run_as else {
        return;
    };
    let path = env.get("PATH").map_or(DEFAULT_PATH, String::as_str);
    cmd.env("PATH", path_for(path, who))
        .env("HOME", &who.home)
        .env("USER", &who.name)
        .env("LOGNAME", &who.name)
        .current_dir(who.workdir())
        .uid(who.uid)
        .gid(who.gid);
    if let Some(exe) = qs_exe_file() {
        use std::os::fd::AsRawFd;
        let fd = exe.as_raw_fd();
        // SAFETY: runs in the forked child before exec; dup2(2) is async-signal-safe and
        // touches no memory of the parent. The copy has no close-on-exec flag, so the
        // command's shell, and the `qs` it runs, find the executable there.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(fd, QS_EXE_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

/// The entries of a search path that `who` can reach (every directory on the way lets it
/// through), so a command it cannot run is "not found" rather than "permission denied" in a
/// directory under the agent's home; the default path if none is left.
fn path_for(path: &str, who: &RunAs) -> String {
    let kept: Vec<&str> = path
        .split(':')
        .filter(|dir| reachable(std::path::Path::new(dir), who))
        .collect();
    if kept.is_empty() {
        DEFAULT_PATH.to_owned()
    } else {
        kept.join(":")
    }
}

/// Whether `who` may search `dir` and every directory above it (by their mode bits).
fn reachable(dir: &std::path::Path, who: &RunAs) -> bool {
    use std::os::unix::fs::MetadataExt;
    dir.is_absolute()
        && dir.ancestors().all(|d| {
            std::fs::metadata(d).is_ok_and(|m| {
                let bit = if m.uid() == who.uid {
                    0o100
                } else if m.gid() == who.gid {
                    0o010
                } else {
                    0o001
                };
                m.is_dir() && m.mode() & bit != 0
            })
        })
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

/// Runs `command` with `sh -c` as a confined child ([`confine`]: `env` only, its own process
/// group, `run_as`), its output dropped but for its error stream: `Ok` when it exits 0, else
/// its status and what it said. Dropped before its end (a timeout around it), it takes its
/// whole process group with it.
pub async fn run_sh(
    command: &str,
    env: &BTreeMap<String, String>,
    run_as: Option<&RunAs>,
) -> Result<(), String> {
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(command)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    confine(&mut cmd, env, run_as);
    let child = cmd.spawn().map_err(|e| format!("`{command}`: {e}"))?;
    let mut group = GroupKill::new(child.id());
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| format!("`{command}`: {e}"))?;
    group.disarm();
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(format!("`{command}` {}: {}", out.status, err.trim()))
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

    #[test]
    fn another_user_keeps_only_the_path_entries_it_can_reach() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let closed = dir.path().join("closed");
        std::fs::create_dir(&closed).unwrap();
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
        let stranger = RunAs {
            name: "stranger".into(),
            uid: 4_000_000,
            gid: 4_000_000,
            home: "/".into(),
        };
        let path = format!("{}/bin:/usr/bin:/bin:relative", closed.display());
        assert_eq!(path_for(&path, &stranger), "/usr/bin:/bin");
        assert_eq!(
            path_for(&format!("{}/bin", closed.display()), &stranger),
            DEFAULT_PATH
        );
    }
}
