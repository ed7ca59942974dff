//! Command-line options of `slicewalld`.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// Verdict for flows that need the daemon while no daemon runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FailMode {
    /// Deny them.
    Closed,
    /// Allow them.
    Open,
}

impl FailMode {
    pub fn as_str(self) -> &'static str {
        match self {
            FailMode::Closed => "closed",
            FailMode::Open => "open",
        }
    }
}

/// The verdict an `ask` rule gives while no prompt can be shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AskFallback {
    Allow,
    Deny,
}

impl AskFallback {
    pub fn as_str(self) -> &'static str {
        match self {
            AskFallback::Allow => "allow",
            AskFallback::Deny => "deny",
        }
    }
}

/// Whether the daemon keeps the nftables table `inet slicewall`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Nftables {
    /// When systemd is the init system, whose units fill the table's sets.
    Auto,
    On,
    Off,
}

impl Nftables {
    /// Checks whether the daemon keeps the table, given whether systemd is the init system.
    pub fn enabled(self, systemd_booted: bool) -> bool {
        match self {
            Nftables::Auto => systemd_booted,
            Nftables::On => true,
            Nftables::Off => false,
        }
    }
}

#[derive(Clone, Debug, Parser)]
#[command(
    name = "slicewalld",
    version,
    about = "slicewall daemon: gates every new outbound flow by the systemd unit, executable and user that makes it"
)]
pub struct Options {
    /// Directory that contains etc/, run/ and usr/lib/ with the rule drop-ins (as systemd tools' --root).
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,

    /// Directory of the cgroup v2 subtree to guard [default: the whole cgroup v2 hierarchy].
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,

    /// Directory on a bpf file system where the gate's maps and program links are pinned.
    #[arg(long, value_name = "DIR", default_value = "/sys/fs/bpf/slicewall")]
    pub pin_dir: PathBuf,

    /// Verdict for flows that need the daemon while no daemon runs.
    #[arg(long, value_enum, default_value_t = FailMode::Closed)]
    pub fail_mode: FailMode,

    /// Verdict of `ask` rules until prompts are available. Allow keeps the vendor defaults, which
    /// ask about everything in user.slice, from cutting off users' sessions.
    #[arg(long, value_enum, default_value_t = AskFallback::Allow)]
    pub ask_fallback: AskFallback,

    /// Keep table `inet slicewall` in nftables, which cuts the established connections of units
    /// denied as a whole and counts each unit's traffic. `auto` keeps it when systemd is the init
    /// system, because the units systemd reports fill the table.
    #[arg(long, value_enum, default_value_t = Nftables::Auto)]
    pub nftables: Nftables,

    /// Write audit records to standard error even when the journal is available.
    #[arg(long)]
    pub audit_stderr: bool,

    /// Detach the gate, remove every pin under --pin-dir, and exit.
    #[arg(long)]
    pub cleanup: bool,
}
