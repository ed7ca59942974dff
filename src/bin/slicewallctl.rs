//! The slicewall command line. See slicewalld(8) and slicewall.rules(5).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    }
}

/// Exit status when the daemon is not on the system bus, as `systemctl status` uses for a unit
/// that is not running.
const NOT_RUNNING: u8 = 3;

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
            Err(error) => {
                eprintln!("slicewallctl: {error}");
                ExitCode::FAILURE
            }
        }
    })
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
