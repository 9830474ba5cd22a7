//! `qs bench gateway`: the agent's OpenAI-compatible entry point against a fast model double,
//! side by side in one run on loopback: the double called directly, the same double as the
//! agent's managed runtime called through the agent, and (where Debian's nginx is installed)
//! nginx as a plain reverse proxy in front of a double. Each column: requests per second and
//! latency (p50, p99) from `connections` keep-alive clients for `seconds`, non-streaming
//! chat completions of one token; then the added latency of the agent and of nginx over the
//! direct calls, and DESIGN.md's targets.

use crate::bench::{emit, ratio, round_to};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The double's command line: answers at once (prefill and decode as fast as it counts).
fn double_args(port: u16) -> Vec<String> {
    [
        "model-double",
        "--port",
        &port.to_string(),
        "--model",
        "fast",
        "--prefill-tps",
        "100000000",
        "--decode-tps",
        "100000000",
    ]
    .map(str::to_owned)
    .to_vec()
}

fn wait_http(port: u16, path: &str, limit: Duration) -> Result<()> {
    let start = Instant::now();
    let url = format!("http://127.0.0.1:{port}");
    loop {
        if let Ok((200, _)) =
            crate::client::request(&url, "GET", path, None, Duration::from_secs(1))
        {
            return Ok(());
        }
        if start.elapsed() > limit {
            bail!("nothing answered 200 on 127.0.0.1:{port}{path} within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One keep-alive client's request and its answer read whole (a length or chunks).
async fn call(
    stream: &mut BufReader<TcpStream>,
    request: &[u8],
    scratch: &mut Vec<u8>,
) -> Result<()> {
    stream.get_mut().write_all(request).await?;
    let mut line = String::new();
    stream.read_line(&mut line).await?;
    if !line.contains(" 200 ") {
        bail!("answered {line:?}");
    }
    let (mut length, mut chunked) = (None, false);
    loop {
        line.clear();
        stream.read_line(&mut line).await?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse::<usize>().ok();
            } else if k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked") {
                chunked = true;
            }
        }
    }
    if let Some(n) = length {
        scratch.resize(n, 0);
        stream.read_exact(scratch).await?;
    } else if chunked {
        loop {
            line.clear();
            stream.read_line(&mut line).await?;
            let n = usize::from_str_radix(line.trim(), 16).context("a chunk size")?;
            scratch.resize(n + 2, 0);
            stream.read_exact(scratch).await?;
            if n == 0 {
                break;
            }
        }
    } else {
        bail!("an answer without a length");
    }
    Ok(())
}

/// Figures of one column.
struct Column {
    requests_per_s: f64,
    p50_us: f64,
    p99_us: f64,
}

/// A chat completion of one token, as every client sends it.
fn request_bytes(port: u16, token: Option<&str>) -> Vec<u8> {
    let body = r#"{"model":"fast","messages":[{"role":"user","content":"hi"}],"max_tokens":1}"#;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Whether one request to `port` is answered 200.
fn answers(port: u16, token: Option<&str>) -> bool {
    let request = request_bytes(port, token);
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return false;
    };
    rt.block_on(async {
        let mut s = BufReader::new(TcpStream::connect(("127.0.0.1", port)).await?);
        call(&mut s, &request, &mut Vec::new()).await
    })
    .is_ok()
}

/// `connections` clients call `port` for `seconds` after a warm-up second.
fn load(port: u16, token: Option<&str>, connections: usize, seconds: u64) -> Result<Column> {
    let request = request_bytes(port, token);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let lat = rt.block_on(async {
        let warm_until = Instant::now() + Duration::from_secs(1);
        let until = warm_until + Duration::from_secs(seconds);
        let mut tasks = Vec::new();
        for _ in 0..connections {
            let request = request.clone();
            tasks.push(tokio::spawn(async move {
                let mut s = BufReader::new(TcpStream::connect(("127.0.0.1", port)).await?);
                s.get_ref().set_nodelay(true)?;
                let mut scratch = Vec::new();
                let mut lat = Vec::new();
                loop {
                    let t = Instant::now();
                    if t >= until {
                        break;
                    }
                    call(&mut s, &request, &mut scratch).await?;
                    if t >= warm_until {
                        lat.push(t.elapsed().as_micros() as u64);
                    }
                }
                anyhow::Ok(lat)
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await??);
        }
        anyhow::Ok(all)
    })?;
    let mut lat = lat;
    lat.sort_unstable();
    let at = |q: f64| lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1)));
    Ok(Column {
        requests_per_s: lat.len() as f64 / seconds as f64,
        p50_us: at(0.5).copied().unwrap_or(0) as f64,
        p99_us: at(0.99).copied().unwrap_or(0) as f64,
    })
}

/// nginx in front of the double on `upstream`, listening on a free port, if installed.
fn nginx(dir: &Path, upstream: u16) -> Result<Option<(Proc, u16)>> {
    let Some(bin) = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        return Ok(None);
    };
    let port = free_port()?;
    let prefix = dir.join("nginx");
    std::fs::create_dir_all(prefix.join("logs"))?;
    let conf = prefix.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes 1;\ndaemon off;\npid {pid};\nerror_log {err} warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n access_log off;\n \
             upstream double {{ server 127.0.0.1:{upstream}; keepalive 64; }}\n \
             keepalive_requests 100000000;\n keepalive_timeout 600s;\n \
             server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://double; \
             proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_buffering off; }} }}\n}}\n",
            pid = prefix.join("nginx.pid").display(),
            err = prefix.join("logs/error.log").display(),
        ),
    )?;
    let child = Command::new(bin)
        .arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting nginx")?;
    let proc = Proc(child);
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if start.elapsed() > Duration::from_secs(10) {
            bail!("nginx did not listen on 127.0.0.1:{port}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Some((proc, port)))
}

pub fn gateway_suite(connections: usize, seconds: u64) -> Result<()> {
    let qs = std::env::current_exe()?;
    let dir: PathBuf =
        std::env::temp_dir().join(format!("qs-bench-gateway-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let spawn = |args: &[String]| -> Result<Proc> {
        Ok(Proc(
            Command::new(&qs)
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        ))
    };

    // Direct: a double of its own.
    let direct_port = free_port()?;
    let _direct = spawn(&double_args(direct_port))?;
    wait_http(direct_port, "/health", Duration::from_secs(10))?;

    // Through the agent: the same double as its managed runtime.
    std::fs::write(
        dir.join("fleet.toml"),
        "[node.gw]\nlevel = 0\ncpu_cores = 4\nmemory_mib = 8192\ngpus = [{ vram_mib = 24576 }]\n",
    )?;
    let api_port = free_port()?;
    let state = dir.join("state");
    let _agent = spawn(&[
        "up".into(),
        "--fleet".into(),
        dir.join("fleet.toml").display().to_string(),
        "--state-dir".into(),
        state.display().to_string(),
        "--listen".into(),
        format!("127.0.0.1:{api_port}"),
    ])?;
    wait_http(api_port, "/health", Duration::from_secs(30))?;
    let api = format!("http://127.0.0.1:{api_port}");
    let double = double_args(0)[1..]
        .join(" ")
        .replace("--port 0", "--port {port}");
    let spec = format!(
        "[model.fast]\nmax_concurrency = 256\nload_ms = 100\n[[model.fast.tier]]\nname = \"1g\"\nvram_mib = 1024\ncommand = \"{{qs}} model-double {double}\"\n"
    );
    let (status, body) = crate::client::request(
        &api,
        "POST",
        "/v1/specs?file=gateway.toml",
        Some(&spec),
        Duration::from_secs(5),
    )?;
    anyhow::ensure!(status == 200, "applying the model: {body}");
    let token = std::fs::read_to_string(state.join("api.token"))
        .context("the agent's token")?
        .trim()
        .to_owned();
    // The first request brings the runtime in.
    let start = Instant::now();
    loop {
        if answers(api_port, Some(&token)) {
            break;
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(30),
            "the runtime never served"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let direct = load(direct_port, None, connections, seconds)?;
    let agent = load(api_port, Some(&token), connections, seconds)?;
    let nginx_column = match nginx(&dir, direct_port)? {
        Some((_proc, port)) => Some(load(port, None, connections, seconds)?),
        None => {
            eprintln!(
                "qs bench gateway: nginx is not installed (Debian package nginx): its column is left out"
            );
            None
        }
    };
    let line = |name: &str, c: &Column| {
        emit(
            "gateway",
            format!("{name}.requests_per_s"),
            round_to(c.requests_per_s, 0),
            "1/s",
        );
        emit("gateway", format!("{name}.p50_us"), c.p50_us, "us");
        emit("gateway", format!("{name}.p99_us"), c.p99_us, "us");
    };
    line("direct", &direct);
    line("agent", &agent);
    let added_p50 = agent.p50_us - direct.p50_us;
    emit("gateway", "agent.added_p50_us".into(), added_p50, "us");
    emit(
        "gateway",
        "agent.added_p99_us".into(),
        agent.p99_us - direct.p99_us,
        "us",
    );
    let met = |name: &str, value: f64, ok: bool| {
        emit("gateway", format!("target.{name}"), value, "x");
        emit(
            "gateway",
            format!("target.{name}.met"),
            f64::from(u8::from(ok)),
            "bool",
        );
    };
    met("added_p50_under_1ms", added_p50, added_p50 < 1000.0);
    met(
        "requests_per_s_at_least_10000",
        round_to(agent.requests_per_s, 0),
        agent.requests_per_s >= 10_000.0,
    );
    if let Some(n) = &nginx_column {
        line("nginx", n);
        let nginx_added = (n.p50_us - direct.p50_us).max(1.0);
        emit(
            "gateway",
            "nginx.added_p50_us".into(),
            n.p50_us - direct.p50_us,
            "us",
        );
        let r = ratio(added_p50.max(0.0), nginx_added);
        met("added_p50_vs_nginx_at_most_1_5", r, r <= 1.5);
    }
    emit(
        "gateway",
        "connections".into(),
        connections as f64,
        "connections",
    );
    drop(_agent);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
