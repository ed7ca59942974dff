//! slicewall: a per-application firewall for Linux that decides each new outbound flow by who
//! makes it (systemd unit, executable and user), not only by address and port.
//!
//! The crate is split by where privilege starts:
//! - pure policy code with no I/O: [`rules`] (rule model, files, precedence), [`unit`]
//!   (systemd unit names and app IDs) and [`policy`] (rules compiled into the tables the kernel
//!   gate reads);
//! - the host layer: [`exe`] (executable identity from `/proc`), [`cgroup`] (cgroup v2 mount
//!   and IDs), [`audit`] (the journal stream) and [`kernel`] (eBPF programs and maps);
//! - [`daemon`], which ties them together for `slicewalld`.

pub mod agent;
pub mod audit;
pub mod cgroup;
pub mod control;
pub mod daemon;
pub mod exe;
pub mod kernel;
pub mod nft;
pub mod policy;
pub mod prompt;
pub mod rules;
pub mod systemd;
pub mod unit;

/// Formats an error with every cause in its source chain, as `error: cause: cause`. The error
/// types of this crate name the object in their own message and leave the cause to `source()`.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
