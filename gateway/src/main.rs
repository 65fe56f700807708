//! The `herald` binary: parse arguments, load config, start tracing, run a mode.
//!
//! Modes: `serve` (control plane + gateway in one process on the embedded store), `control-plane`,
//! `gateway --control-plane ADDR` (several gateways to one control plane), `listen` (a terminal
//! client for people) and `check-config`. Bad arguments or config exit with code 64.

use std::process::ExitCode;

use clap::Parser;

mod cli;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = match cli::Cli::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let usage = e.use_stderr();
            let _ = e.print();
            return if usage { ExitCode::from(cli::EXIT_USAGE) } else { ExitCode::SUCCESS };
        }
    };
    cli::run(args)
}
