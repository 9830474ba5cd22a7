//! `qs`: the one binary of Quasicrystal. Thin glue from the command line to the crates.

mod bench;
mod cli;
mod render;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    match cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qs: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
