//! The slicewall daemon. See slicewalld(8).

use std::process::ExitCode;

use clap::Parser;
use slicewall::daemon::{self, options::Options};
use tracing_subscriber::prelude::*;

fn main() -> ExitCode {
    let options = Options::parse();
    init_logging();

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!("failed to start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(daemon::run(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("slicewalld: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Sends the daemon's own log to the journal when one listens, to standard error otherwise.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLICEWALL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let journald = std::path::Path::new("/run/systemd/journal/socket")
        .exists()
        .then(tracing_journald::layer)
        .and_then(Result::ok);
    match journald {
        Some(layer) => tracing_subscriber::registry()
            .with(filter)
            .with(layer)
            .init(),
        None => tracing_subscriber::registry()
            .with(filter)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
            )
            .init(),
    }
}
