//! The `qs agent` processes a bench starts (`qs bench failover`, the agent's memory figure of
//! `qs bench`), and the bounded wait on what they show.

/// One `qs agent` process of a bench (SIGTERM on drop).
pub(crate) struct BenchAgent {
    pub(crate) node: String,
    pub(crate) api: String,
    args: Vec<std::ffi::OsString>,
    pub(crate) child: Option<std::process::Child>,
}

impl BenchAgent {
    /// `qs agent --node NODE` on a free port with its state in `dir/NODE`, plus `extra`.
    pub(crate) fn start(
        node: &str,
        dir: &std::path::Path,
        extra: &[std::ffi::OsString],
    ) -> anyhow::Result<BenchAgent> {
        let port = qs_agent::exec::free_port()?;
        let mut args: Vec<std::ffi::OsString> = vec![
            "agent".into(),
            "--node".into(),
            node.into(),
            "--listen".into(),
            format!("127.0.0.1:{port}").into(),
            "--state-dir".into(),
            dir.join(node).into(),
        ];
        args.extend_from_slice(extra);
        let mut a = BenchAgent {
            node: node.to_owned(),
            api: format!("http://127.0.0.1:{port}"),
            args,
            child: None,
        };
        a.spawn()?;
        Ok(a)
    }

    pub(crate) fn spawn(&mut self) -> anyhow::Result<()> {
        let child = std::process::Command::new(std::env::current_exe()?)
            .args(&self.args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    pub(crate) fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Option<T> {
        crate::client::try_get(&self.api, path)
    }

    /// Instances of `service` this agent runs and that serve: (instance, pid).
    pub(crate) fn serving(&self, service: &str) -> Vec<(String, u32)> {
        let all: Vec<qs_agent::v1::Instance> = self.get("/v1/instances").unwrap_or_default();
        all.into_iter()
            .filter(|i| i.service.as_str() == service && i.serving)
            .filter_map(|i| Some((i.instance.to_string(), i.pid?)))
            .collect()
    }

    /// Nodes alive in this agent's registry.
    pub(crate) fn live(&self) -> Vec<String> {
        let nodes: Vec<qs_wire::NodeStatus> = self.get("/v1/nodes").unwrap_or_default();
        nodes.into_iter().map(|n| n.node.to_string()).collect()
    }

    pub(crate) fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for BenchAgent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child: SIGTERM, so it stops its instances.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }
}

pub(crate) fn wait_until(
    what: &str,
    limit: std::time::Duration,
    mut done: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    while !done() {
        anyhow::ensure!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Ok(())
}
