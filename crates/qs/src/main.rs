//! `qs`: the one binary of Quasicrystal. Thin glue from the command line to the crates.

mod bench;
mod bench_agents;
mod bench_args;
mod bench_cascade;
mod bench_failover;
mod bench_fleet;
mod bench_gateway;
mod bench_gpu;
mod bench_tasks;
mod check;
mod cli;
mod client;
mod config_file;
mod demo;
mod doctor;
mod fleet;
mod mesh_chat;
mod mesh_client;
mod mesh_console;
mod render;
mod sim;
mod systemd;
mod tasks;
mod trust;
mod up;

use clap::Parser;

/// An agent's hot paths (fleet messages, ledger records) churn small allocations across
/// threads; mimalloc serves them in about a tenth less CPU than glibc's allocator
/// (`qs bench fleet`). Built without transparent huge pages, which would double an idle
/// agent's resident memory.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A panic anywhere (any thread, any task) ends the process with status 70 after the usual
/// report. A tokio task that panics would otherwise end alone and leave the agent half alive:
/// `/health` ok, no heartbeats, children running. Whatever restarts the agent (systemd, a
/// supervisor) then finds its instance files and reaps what ran.
fn exit_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        // The storage engine's panics on damaged pages are caught and become errors.
        if qs_store::panic_is_contained() {
            return;
        }
        eprintln!("qs: a panic ends the process (exit status 70); restart it to recover");
        std::process::exit(70);
    }));
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("QS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    exit_on_panic();
    let cli = cli::Cli::parse();
    // A client command ends quietly when the reader of its output goes away (`| head`), as
    // other Unix tools do. A server ignores SIGPIPE: a peer that closes while an answer is
    // being written (a vectored write takes no MSG_NOSIGNAL) costs that connection an
    // error, never the process.
    let disposition = if cli.serves() {
        libc::SIG_IGN
    } else {
        libc::SIG_DFL
    };
    // SAFETY: setting SIGPIPE's disposition before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, disposition);
    }
    match cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qs: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
