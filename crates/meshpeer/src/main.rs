//! `meshpeer`: one binary, several roles. See `meshpeer --help`.

mod cli;
mod cmd;
mod log_writer;

use std::process::ExitCode;

use clap::Parser;

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
