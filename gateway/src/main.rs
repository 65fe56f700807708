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

/// With mimalloc's eagerly committed arena, pages freed after the login storm stay resident:
/// ~2.4 KB of RSS per idle connection at 15,000 (4.2 KB with, 1.8 KB without,
/// `herald-bench hold --spawn --nodes 1 --conns 15000`). The option is read when the allocator
/// starts, before `main`, so the process restarts itself once with it set (unless the
/// environment already chooses).
fn commit_on_use() {
    const VAR: &str = "MIMALLOC_ARENA_EAGER_COMMIT";
    if std::env::var_os(VAR).is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else { return };
    use std::os::unix::process::CommandExt;
    // Returns only if the exec failed: then run as we are.
    let _ = std::process::Command::new(exe).args(std::env::args_os().skip(1)).env(VAR, "0").exec();
}

fn main() -> ExitCode {
    commit_on_use();
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
