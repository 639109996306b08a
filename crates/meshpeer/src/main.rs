//! `meshpeer`: one binary, several roles. See `meshpeer --help`.

mod cli;
mod cmd;
mod log_writer;

use std::process::ExitCode;

use clap::Parser;

/// mimalloc rather than glibc's malloc: the data plane allocates and frees
/// small buffers on every worker for every request and connection (hyper's
/// heads, header maps, log lines), where glibc's per-arena locks and
/// consolidation showed up in the L7 profile (BENCHMARKS.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    meshpeer_identity::install_default_provider();
    let cli = cli::Cli::parse();
    let code = match cmd::run(cli) {
        Ok(code) => code,
        Err(e) => {
            log_writer::flush();
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    };
    log_writer::flush();
    code
}
