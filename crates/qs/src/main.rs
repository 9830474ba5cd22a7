//! `qs`: the one binary of Quasicrystal. Thin glue from the command line to the crates.

mod bench;
mod bench_fleet;
mod cli;
mod client;
mod demo;
mod fleet;
mod render;
mod up;

use clap::Parser;

/// An agent's hot paths (fleet messages, ledger records) churn small allocations across
/// threads; mimalloc serves them in about a tenth less CPU than glibc's allocator
/// (`qs bench fleet`). Built without transparent huge pages, which would double an idle
/// agent's resident memory.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // Like other Unix tools, end quietly when the reader of our output goes away (`| head`).
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("QS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = cli::Cli::parse();
    match cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qs: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
