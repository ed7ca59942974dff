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

/// What `ask` rules do while the daemon runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Ask the user's agent over D-Bus; `--ask-fallback` applies while the daemon has no bus.
    Alert,
    /// Allow without asking, audited with reason silent-allow.
    SilentAllow,
    /// Deny without asking, audited with reason silent-deny.
    SilentDeny,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Alert => "alert",
            Mode::SilentAllow => "silent-allow",
            Mode::SilentDeny => "silent-deny",
        }
    }

    pub fn parse(text: &str) -> Option<Mode> {
        match text {
            "alert" => Some(Mode::Alert),
            "silent-allow" => Some(Mode::SilentAllow),
            "silent-deny" => Some(Mode::SilentDeny),
            _ => None,
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

    /// What `ask` rules do: prompt the user (alert), or allow or deny without asking.
    #[arg(long, value_enum, default_value_t = Mode::Alert)]
    pub mode: Mode,

    /// Seconds a prompt stays open before --timeout-answer applies. At most 120, because a held
    /// connect retransmits its SYN at most 127 times.
    #[arg(long, value_name = "SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u32).range(1..=120))]
    pub prompt_timeout: u32,

    /// Answer applied when a prompt times out.
    #[arg(long, value_enum, default_value_t = AskFallback::Deny)]
    pub timeout_answer: AskFallback,

    /// Answer applied at once when the user who made the flow has no agent registered. Allow
    /// keeps the vendor defaults, which ask about everything in user.slice, from cutting off
    /// sessions without an agent, such as SSH logins.
    #[arg(long, value_enum, default_value_t = AskFallback::Allow)]
    pub no_agent_answer: AskFallback,

    /// Open prompts per user; beyond it --timeout-answer applies at once (reason prompt-limit).
    #[arg(long, value_name = "N", default_value_t = 32,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_prompts_per_user: u32,

    /// Do not serve the D-Bus interface, so `ask` rules never prompt (for tests).
    #[arg(long, hide = true)]
    pub no_bus: bool,

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
