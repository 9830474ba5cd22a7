//! Who a child (an instance, its exec probe) runs as.
//!
//! An agent running as root never hands a child its own identity: the child runs as the user
//! its spec names (`user = "..."`), or else as the unprivileged [`DEFAULT_USER`], with root's
//! supplementary groups dropped, its home as working directory, and so without the right to
//! read the agent's keys or API token (mode 0600, root's). An agent that is not root cannot
//! change identity: its children share it, which it says at start; a spec naming another user
//! is then refused when its instance starts.

use std::ffi::{CStr, CString};
use std::path::PathBuf;

/// The user a child of a root agent runs as when its spec names none.
pub const DEFAULT_USER: &str = "nobody";

/// A user a child runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

impl RunAs {
    /// The child's working directory: its home when there is one, else `/`.
    pub fn workdir(&self) -> PathBuf {
        if self.home.is_dir() {
            self.home.clone()
        } else {
            PathBuf::from("/")
        }
    }
}

/// The identity for a spec's `user`: `Ok(None)` for the agent's own (it is not root, or the
/// spec asks for root and `allowed` names it), the user to switch to, or why the instance
/// cannot start. A root agent switches only to users `allowed` names (the config's
/// `child_users`), [`DEFAULT_USER`] when the spec names none.
pub fn for_spec(user: Option<&str>, allowed: &[String]) -> Result<Option<RunAs>, String> {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    let euid = unsafe { libc::geteuid() };
    match (euid == 0, user) {
        (false, None) => Ok(None),
        (false, Some(name)) => {
            let who = lookup(name)?;
            if who.uid == euid {
                Ok(None)
            } else {
                Err(format!(
                    "cannot run it as {name}: the agent is not root, so its instances run as \
                     its own user (uid {euid})"
                ))
            }
        }
        (true, Some(name)) if !allowed.iter().any(|a| a == name) => Err(format!(
            "cannot run it as {name}: the agent's child_users ({}) do not name that user",
            allowed.join(", ")
        )),
        (true, name) => {
            let who = lookup(name.unwrap_or(DEFAULT_USER))?;
            Ok((who.uid != 0).then_some(who))
        }
    }
}

/// Looks a user up in the password database (getpwnam_r).
fn lookup(name: &str) -> Result<RunAs, String> {
    let c_name = CString::new(name).map_err(|_| format!("user {name:?}: not a user name"))?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: a zeroed passwd is a valid out-parameter; getpwnam_r writes into it and `buf`.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call, `buf` for `buf.len()` bytes.
    let rc = unsafe {
        libc::getpwnam_r(
            c_name.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 || found.is_null() {
        return Err(format!("user {name:?} does not exist on this machine"));
    }
    let home = if pwd.pw_dir.is_null() {
        PathBuf::from("/")
    } else {
        // SAFETY: getpwnam_r succeeded: pw_dir points at a NUL-terminated string in `buf`.
        PathBuf::from(
            unsafe { CStr::from_ptr(pwd.pw_dir) }
                .to_string_lossy()
                .into_owned(),
        )
    };
    Ok(RunAs {
        name: name.to_owned(),
        uid: pwd.pw_uid,
        gid: pwd.pw_gid,
        home,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_looked_up_and_unknown_ones_refused() {
        let root = lookup("root").unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        let e = lookup("no-such-user-for-qs").unwrap_err();
        assert!(e.contains("does not exist"), "{e}");
        // SAFETY: geteuid(2) cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            let nobody = for_spec(None, &[]).unwrap().expect("a root agent switches");
            assert_eq!(nobody.name, DEFAULT_USER);
            assert_ne!(nobody.uid, 0);
            let e = for_spec(Some("root"), &["nobody".into()]).unwrap_err();
            assert!(e.contains("child_users"), "{e}");
            assert_eq!(for_spec(Some("root"), &["root".into()]).unwrap(), None);
        } else {
            assert_eq!(for_spec(None, &[]).unwrap(), None);
            assert!(for_spec(Some("root"), &["root".into()]).is_err());
        }
    }
}
