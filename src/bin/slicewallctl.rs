//! The slicewall command line. See slicewalld(8) and slicewall.rules(5).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "slicewallctl",
    version,
    about = "Inspect and check slicewall's rules"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate every rule file as the daemon would load it; exit 1 on any error.
    Check {
        /// Directory that contains etc/, run/ and usr/lib/ with the rule drop-ins.
        #[arg(long, value_name = "DIR", default_value = "/")]
        root: PathBuf,
    },
    /// Print the SHA-256 of executables, for `sha256 =` in rules.
    Hash {
        /// Files to hash.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Check { root } => check(&root),
        Command::Hash { files } => hash(&files),
    }
}

fn check(root: &std::path::Path) -> ExitCode {
    if !root.is_dir() {
        eprintln!(
            "slicewallctl: invalid --root {}: not a directory",
            root.display()
        );
        return ExitCode::from(2);
    }
    match slicewall::rules::load_strict(root) {
        Ok(rule_set) => {
            for file in &rule_set.files {
                println!("{}", file.display());
            }
            println!(
                "{} rules in {} files: ok",
                rule_set.rules.len(),
                rule_set.files.len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for error in &errors {
                eprintln!("{}", slicewall::error_chain(error));
            }
            let count = errors.len();
            eprintln!("{count} {}", if count == 1 { "error" } else { "errors" });
            ExitCode::FAILURE
        }
    }
}

fn hash(files: &[PathBuf]) -> ExitCode {
    let mut status = ExitCode::SUCCESS;
    for file in files {
        match slicewall::exe::hash_file(file) {
            Ok(digest) => println!("{digest}  {}", file.display()),
            Err(error) => {
                eprintln!("slicewallctl: {}", slicewall::error_chain(&error));
                status = ExitCode::FAILURE;
            }
        }
    }
    status
}
