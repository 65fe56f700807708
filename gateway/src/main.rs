//! The `herald` binary: parse arguments, load config, start tracing, run a mode.
//!
//! Modes: `serve` (control plane + gateway in one process on the embedded store), `control-plane`,
//! `gateway --control-plane ADDR` (several gateways to one control plane), `listen` (a terminal
//! client for people) and `check-config`. Bad arguments or config exit with code 64; an empty or
//! damaged store file 65 (EX_DATAERR), a store that cannot be opened for a system reason 74
//! (EX_IOERR).

use std::process::ExitCode;

use clap::Parser;

mod cli;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's defaults suit short-lived, allocation-heavy programs; a gateway holds many idle
/// connections after a login storm. With the arena committed eagerly, pages freed after the
/// storm stay resident (~2.4 KB of RSS per idle connection at 15,000), and with a purge delay
/// freed memory is still resident when the connections sit idle (~80 B each). Both options are
/// read when the allocator starts, before `main`, so the process re-executes itself once (same
/// pid) with them set, unless the environment already chooses either.
/// Measured with `herald-bench hold --spawn --nodes 1 --conns 15000`.
fn tune_allocator() {
    const VARS: [(&str, &str); 2] = [("MIMALLOC_ARENA_EAGER_COMMIT", "0"), ("MIMALLOC_PURGE_DELAY", "0")];
    if VARS.iter().any(|(k, _)| std::env::var_os(k).is_some()) {
        return;
    }
    let Ok(exe) = std::env::current_exe() else { return };
    use std::os::unix::process::CommandExt;
    // Returns only if the exec failed: then run as we are.
    let _ = std::process::Command::new(exe).args(std::env::args_os().skip(1)).envs(VARS).exec();
}

fn main() -> ExitCode {
    tune_allocator();
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
