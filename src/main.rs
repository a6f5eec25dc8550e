//! nixfly: push Nix-built container images to an OCI registry and roll them out on Fly Machines.

use clap::Parser;
use nixfly::{cli, error, progress};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cli = match cli::Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(err) => return ExitCode::from(cli::usage_error(&err, &args)),
    };
    let reporter = progress::Reporter::new(cli.global.output, cli.global.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(error::EXIT_FAILURE);
        }
    };
    let result = runtime.block_on(cli::run(cli, reporter.clone()));
    // A push stopped by an error or a signal may leave a blocking reader behind (one waiting on
    // a stream script's pipe that a stray grandchild holds open): nixfly does not wait for it.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => {
            reporter.finish();
            ExitCode::SUCCESS
        }
        Err(err) => {
            // The whole chain, once: every layer of context names what it was doing.
            let code = error::exit_code(&err);
            reporter.fail(&err, code);
            ExitCode::from(code)
        }
    }
}
