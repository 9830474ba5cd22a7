//! Health probes: TCP connect, HTTP GET, or a command; each bounded by its timeout.

use crate::run_as::RunAs;
use qs_wire::Probe;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Runs one probe against an instance listening on `port` of loopback; an exec probe gets
/// the environment its spec sets (`env`), beside the agent's allow-list. `Err` says why.
pub async fn probe(
    probe: &Probe,
    port: u16,
    env: &BTreeMap<String, String>,
    run_as: Option<&RunAs>,
    timeout: Duration,
) -> Result<(), String> {
    match tokio::time::timeout(timeout, run(probe, port, env, run_as)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
    }
}

async fn run(
    probe: &Probe,
    port: u16,
    env: &BTreeMap<String, String>,
    run_as: Option<&RunAs>,
) -> Result<(), String> {
    match probe {
        Probe::Tcp => TcpStream::connect(("127.0.0.1", port))
            .await
            .map(drop)
            .map_err(|e| format!("tcp 127.0.0.1:{port}: {e}")),
        Probe::Http { path } => http_get(port, path).await,
        Probe::Exec { command } => {
            let command = command.replace("{port}", &port.to_string());
            let env = crate::sandbox::environment(
                std::env::vars(),
                env,
                &[("QS_PORT", port.to_string())],
            );
            // A probe cut short by its timeout takes what it started with it.
            crate::sandbox::run_sh(&command, &env, run_as).await
        }
    }
}

/// A minimal HTTP/1.1 GET: 2xx and 3xx are healthy.
async fn http_get(port: u16, path: &str) -> Result<(), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("http 127.0.0.1:{port}: {e}"))?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("http write: {e}"))?;
    let mut head = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        match s.read(&mut head[n..]).await {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(format!("http read: {e}")),
        }
    }
    let line = String::from_utf8_lossy(&head[..n]);
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("http GET {path}: not an HTTP answer: {line:?}"))?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("http GET {path}: status {code}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    const T: Duration = Duration::from_secs(5);
    const E: BTreeMap<String, String> = BTreeMap::new();

    async fn http_server(status: &'static str) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        port
    }

    #[tokio::test]
    async fn probes_tell_healthy_from_not() {
        let ok = http_server("200 OK").await;
        let bad = http_server("503 Service Unavailable").await;
        let closed = crate::exec::free_port().unwrap();
        let http = Probe::Http {
            path: "/health".into(),
        };
        assert_eq!(probe(&http, ok, &E, None, T).await, Ok(()));
        assert!(
            probe(&http, bad, &E, None, T)
                .await
                .unwrap_err()
                .contains("status 503")
        );
        assert!(probe(&http, closed, &E, None, T).await.is_err());
        assert_eq!(probe(&Probe::Tcp, ok, &E, None, T).await, Ok(()));
        assert!(probe(&Probe::Tcp, closed, &E, None, T).await.is_err());
        let yes = Probe::Exec {
            command: "test {port} -gt 0".into(),
        };
        let no = Probe::Exec {
            command: "echo sad >&2; false".into(),
        };
        assert_eq!(probe(&yes, ok, &E, None, T).await, Ok(()));
        assert!(
            probe(&no, ok, &E, None, T)
                .await
                .unwrap_err()
                .contains("sad")
        );
        let slow = Probe::Exec {
            command: "sleep 5".into(),
        };
        let err = probe(&slow, ok, &E, None, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(err.contains("within 100 ms"), "{err}");
    }

    /// A probe cut short by its timeout ends its whole process group: nothing it started in
    /// the background lives on.
    #[tokio::test]
    async fn a_timed_out_probe_leaves_no_grandchild() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("grandchild");
        let slow = Probe::Exec {
            command: format!("sleep 30 & echo $! > {}; wait", pidfile.display()),
        };
        let err = probe(&slow, 1, &E, None, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(err.contains("within 300 ms"), "{err}");
        let pid: u32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let alive = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| s.rsplit(')').next().map(|r| r.trim().to_owned()))
                .is_some_and(|r| !r.starts_with('Z') && !r.starts_with('X'))
        };
        let start = std::time::Instant::now();
        while alive() && start.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!alive(), "the probe's grandchild {pid} outlived it");
    }
}
