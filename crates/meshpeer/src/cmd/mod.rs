//! One module per subcommand.

mod certs;
mod check;
mod common;
mod controller;
mod demo;
mod explain;
mod gateway;
mod links;
mod proxy;
mod render;
mod status;

use std::process::ExitCode;

use crate::cli::{Cli, Command};

pub(crate) fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Render(args) => render::run(&args),
        Command::Expose(args) => links::expose(&args),
        Command::Link(args) => links::link(&args),
        Command::Unlink(args) => links::unlink(&args),
        Command::Controller(args) => controller::run(*args),
        Command::Proxy(args) => proxy::run(*args),
        Command::Gateway(args) => gateway::run(*args),
        Command::Status(args) => status::run(&args),
        Command::Certs(c) => certs::run(c),
        Command::Check(args) => check::run(&args),
        Command::Explain(args) => explain::run(&args),
        Command::Demo(args) => demo::run(args),
    }
}
