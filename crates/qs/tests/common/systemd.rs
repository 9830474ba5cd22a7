//! A real systemd for the tests of the systemd executor: a user manager (`systemd --user`)
//! of a runtime directory of the test's own, run in a mount namespace of its own where
//! `/run/systemd/system` exists (systemd refuses to run as a user manager on a machine not
//! booted with it, as these sandboxes are not); `systemctl --user` reaches it through that
//! directory's socket. Dropped, the manager stops its units and exits.

use super::*;
use std::process::Stdio;

pub struct SystemdUser {
    child: Child,
    /// `XDG_RUNTIME_DIR` of the manager, for `systemctl --user` and the agent.
    pub runtime_dir: PathBuf,
}

impl SystemdUser {
    /// Starts the manager under `dir` and waits until it answers.
    pub fn start(dir: &std::path::Path) -> SystemdUser {
        let systemd = ["/lib/systemd/systemd", "/usr/lib/systemd/systemd"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect(
                "systemd is missing: install Debian's systemd package (scripts/test does, as root)",
            );
        let runtime_dir = dir.join("xdg");
        std::fs::create_dir_all(&runtime_dir).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&runtime_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let script = format!(
            "mkdir -p /run/systemd && mount -t tmpfs tmpfs /run/systemd && \
             mkdir /run/systemd/system && exec {systemd} --user"
        );
        let log = std::fs::File::create(dir.join("systemd-user.log")).unwrap();
        // As root, a mount namespace; otherwise a user namespace that maps us to root in it.
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let userns: &[&str] = if root {
            &[]
        } else {
            &["--user", "--map-root-user"]
        };
        let child = Command::new("unshare")
            .args(userns)
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .env("XDG_RUNTIME_DIR", &runtime_dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("unshare (util-linux) runs the manager in its own mount namespace");
        let manager = SystemdUser { child, runtime_dir };
        let start = Instant::now();
        while manager.systemctl(&["show", "-p", "Version"]).is_err() {
            assert!(
                start.elapsed() < LIMIT,
                "the systemd user manager did not answer: {}",
                std::fs::read_to_string(dir.join("systemd-user.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        manager
    }

    /// `systemctl --user ARGS`: its output, or its error.
    pub fn systemctl(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("systemctl")
            .arg("--user")
            .args(args)
            .env("XDG_RUNTIME_DIR", &self.runtime_dir)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// A property of `unit` (`ActiveState`, `MainPID`, ...).
    pub fn property(&self, unit: &str, name: &str) -> String {
        self.systemctl(&["show", "-p", name, "--value", unit])
            .unwrap_or_default()
            .trim()
            .to_owned()
    }
}

impl Drop for SystemdUser {
    fn drop(&mut self) {
        let _ = self.systemctl(&["exit"]);
        let start = Instant::now();
        while start.elapsed() < LIMIT {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
