//! The slicewall command line. See slicewalld(8) and slicewall.rules(5).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use slicewall::agent::describe_error;
use slicewall::prompt::{Answer, Lifetime, Scope, Verdict};

#[path = "slicewallctl/prompts.rs"]
mod prompts;
#[path = "slicewallctl/rules.rs"]
mod rules;

#[derive(Parser)]
#[command(
    name = "slicewallctl",
    version,
    about = "Inspect slicewall's daemon, units and rules"
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
    /// Print whether the daemon runs and is healthy or degraded, and why. Exit 0 when healthy,
    /// 1 when degraded, 3 when the daemon is not running.
    Status,
    /// List the systemd units the daemon follows, with their app ID, policy, rule count and
    /// traffic counters.
    Units {
        /// Also list units that are not running (no cgroup).
        #[arg(long)]
        all: bool,
    },
    /// Print the SHA-256 of executables, for `sha256 =` in rules.
    Hash {
        /// Files to hash.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// List open prompts (yours, or all for root), or answer one.
    Prompts {
        #[command(subcommand)]
        command: Option<PromptsCommand>,
    },
    /// Answer prompts in this terminal: registers as your prompt agent, prints each prompt and
    /// reads the answer. Ctrl-C or the end of input unregisters.
    Agent,
    /// List, add or remove rules of the running daemon.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// Make the daemon read its rule files again, as SIGHUP does.
    Reload,
    /// Print the daemon's mode, or set it.
    Mode {
        /// alert (ask rules raise prompts), silent-allow or silent-deny (ask rules give that
        /// verdict without a prompt).
        #[arg(value_parser = ["alert", "silent-allow", "silent-deny"])]
        mode: Option<String>,
    },
}

#[derive(Subcommand)]
enum PromptsCommand {
    /// Answer one prompt.
    Answer {
        /// Prompt ID, as `slicewallctl prompts` lists it.
        id: u64,
        /// allow or deny.
        verdict: Verdict,
        /// How long the answer lasts: once, until-app-quits, until-logout, until-reboot or
        /// forever.
        #[arg(long, default_value = "once")]
        lifetime: Lifetime,
        /// Which destinations it covers: destination (address, port and protocol), domain (the
        /// host's domain if known, else the address) or any.
        #[arg(long, default_value = "destination")]
        scope: Scope,
    },
}

#[derive(Subcommand)]
enum RulesCommand {
    /// List every rule in force, with its ID, lifetime and origin.
    List,
    /// Add rules from a TOML file of `[[rule]]` tables (`-` or nothing: standard input). The
    /// file is checked here first, so errors name FILE:LINE:COLUMN.
    Add {
        #[arg(value_name = "FILE")]
        file: Option<PathBuf>,
        /// forever (written under /etc/slicewall/rules.d/), until-reboot (under
        /// /run/slicewall/rules.d/) or memory (until the daemon stops).
        #[arg(long, default_value = "forever", value_parser = ["forever", "until-reboot", "memory"])]
        lifetime: String,
    },
    /// Remove an answer or in-memory rule by its ID, as `rules list` prints it.
    Remove {
        #[arg(value_name = "ID")]
        id: String,
    },
}

fn main() -> ExitCode {
    // Rust ignores SIGPIPE, so println! panics once a reader such as `head` has closed the
    // pipe. The default action ends the tool quietly, as it ends other Unix tools.
    // SAFETY: no other thread exists yet, and SIG_DFL is a valid disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    match Cli::parse().command {
        Command::Check { root } => check(&root),
        Command::Hash { files } => hash(&files),
        Command::Status => with_daemon(status),
        Command::Units { all } => with_daemon(move |proxy| units(proxy, all)),
        Command::Prompts { command: None } => with_daemon(prompts::list),
        Command::Prompts {
            command:
                Some(PromptsCommand::Answer {
                    id,
                    verdict,
                    lifetime,
                    scope,
                }),
        } => with_daemon(move |proxy| {
            prompts::answer(
                proxy,
                id,
                Answer {
                    verdict,
                    lifetime,
                    scope,
                },
            )
        }),
        Command::Agent => with_daemon(prompts::terminal_agent),
        Command::Rules {
            command: RulesCommand::List,
        } => with_daemon(rules::list),
        Command::Rules {
            command: RulesCommand::Add { file, lifetime },
        } => match rules::read_and_check(file.as_deref()) {
            Ok(text) => with_daemon(move |proxy| rules::add(proxy, text, lifetime)),
            Err(code) => code,
        },
        Command::Rules {
            command: RulesCommand::Remove { id },
        } => with_daemon(move |proxy| rules::remove(proxy, id)),
        Command::Reload => with_daemon(|proxy| async move {
            proxy.reload().await?;
            println!("reloaded");
            Ok(ExitCode::SUCCESS)
        }),
        Command::Mode { mode } => with_daemon(move |proxy| async move {
            match mode {
                Some(mode) => proxy.set_mode(&mode).await?,
                None => println!("{}", proxy.mode().await?),
            }
            Ok(ExitCode::SUCCESS)
        }),
    }
}

/// Exit status when the daemon is not on the system bus, as `systemctl status` uses for a unit
/// that is not running.
const NOT_RUNNING: u8 = 3;
/// Exit status for invalid arguments, from clap or the daemon's InvalidArgument.
const INVALID_ARGUMENT: u8 = 2;
/// Exit status when polkit did not authorize the call or could not answer.
const NOT_AUTHORIZED: u8 = 4;
/// Exit status when the prompt or rule does not exist (any more).
const NOT_FOUND: u8 = 5;

/// Connects to the daemon on the system bus and runs `command` against it.
fn with_daemon<F, Fut>(command: F) -> ExitCode
where
    F: FnOnce(slicewall::control::Firewall1Proxy<'static>) -> Fut,
    Fut: std::future::Future<Output = Result<ExitCode, zbus::Error>>,
{
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("slicewallctl: failed to start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let connection = match zbus::Connection::system().await {
            Ok(connection) => connection,
            Err(error) => {
                eprintln!("slicewallctl: cannot reach the system bus: {error}");
                return ExitCode::from(NOT_RUNNING);
            }
        };
        let proxy = match slicewall::control::Firewall1Proxy::new(&connection).await {
            Ok(proxy) => proxy,
            Err(error) => {
                eprintln!("slicewallctl: {error}");
                return ExitCode::FAILURE;
            }
        };
        match command(proxy).await {
            Ok(code) => code,
            Err(zbus::Error::MethodError(name, _, _))
                if name.as_str() == "org.freedesktop.DBus.Error.ServiceUnknown"
                    || name.as_str() == "org.freedesktop.DBus.Error.NameHasNoOwner" =>
            {
                eprintln!(
                    "slicewallctl: slicewalld is not running ({} has no owner on the system bus)",
                    slicewall::control::BUS_NAME
                );
                ExitCode::from(NOT_RUNNING)
            }
            Err(error) => report_error(&error),
        }
    })
}

/// Prints a failed call with its D-Bus error name and message, and returns the exit status
/// that slicewallctl(1) documents for it.
fn report_error(error: &zbus::Error) -> ExitCode {
    use slicewall::control::errors;

    eprintln!("slicewallctl: {}", describe_error(error));
    let name = match error {
        zbus::Error::MethodError(name, _, _) => name.as_str(),
        _ => "",
    };
    match name {
        errors::INVALID_ARGUMENT => ExitCode::from(INVALID_ARGUMENT),
        errors::NOT_AUTHORIZED
        | errors::POLKIT_UNAVAILABLE
        | "org.freedesktop.DBus.Error.AccessDenied" => ExitCode::from(NOT_AUTHORIZED),
        errors::NO_SUCH_PROMPT | errors::NO_SUCH_RULE => ExitCode::from(NOT_FOUND),
        "org.freedesktop.DBus.Error.UnknownMethod" => {
            eprintln!("slicewallctl: this slicewalld is too old for the command");
            ExitCode::FAILURE
        }
        _ => ExitCode::FAILURE,
    }
}

async fn status(
    proxy: slicewall::control::Firewall1Proxy<'static>,
) -> Result<ExitCode, zbus::Error> {
    let version = proxy.version().await?;
    let reasons = proxy.degraded_reasons().await?;
    let health = if reasons.is_empty() {
        "healthy"
    } else {
        "degraded"
    };
    println!("slicewalld {version}: {health}");
    println!(
        "  fail mode: {}, ask fallback: {}",
        proxy.fail_mode().await?,
        proxy.ask_fallback().await?
    );
    println!(
        "  rules: {} from {} files",
        proxy.rule_count().await?,
        proxy.rule_files().await?.len()
    );
    let following = if proxy.following_systemd().await? {
        "yes"
    } else {
        "no"
    };
    println!("  following systemd: {following}");
    for reason in &reasons {
        println!("  degraded: {reason}");
    }
    Ok(if reasons.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn units(
    proxy: slicewall::control::Firewall1Proxy<'static>,
    all: bool,
) -> Result<ExitCode, zbus::Error> {
    let rows = proxy.list_units().await?;
    let header = [
        "UNIT", "MANAGER", "APP ID", "POLICY", "RULES", "PACKETS", "BYTES",
    ];
    let mut table: Vec<[String; 7]> = vec![header.map(str::to_owned)];
    for (
        name,
        manager,
        _description,
        app_id,
        _cgroup,
        cgroup_id,
        _exe,
        policy,
        rules,
        packets,
        bytes,
    ) in rows
    {
        if cgroup_id == 0 && !all {
            continue;
        }
        let app_id = if app_id.is_empty() {
            "-".to_owned()
        } else {
            app_id
        };
        table.push([
            name,
            manager,
            app_id,
            policy,
            rules.to_string(),
            packets.to_string(),
            bytes.to_string(),
        ]);
    }
    let mut widths = [0usize; 7];
    for row in &table {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in &table {
        let mut line = String::new();
        for (index, (cell, width)) in row.iter().zip(widths).enumerate() {
            // Text columns are left-aligned, numbers right-aligned.
            if index < 4 {
                line.push_str(&format!("{cell:<width$}  "));
            } else {
                line.push_str(&format!("{cell:>width$}  "));
            }
        }
        println!("{}", line.trim_end());
    }
    println!("\n{} units listed", table.len() - 1);
    Ok(ExitCode::SUCCESS)
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
