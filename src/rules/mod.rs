//! Rules: the model, rule files, and which rule decides a flow.
//!
//! Rule files are TOML files named `*.toml` in three drop-in directories, searched like
//! systemd's own configuration (see [`dropin`] for overriding and masking):
//! `<root>/etc/slicewall/rules.d/` over `<root>/run/slicewall/rules.d/` over
//! `<root>/usr/lib/slicewall/rules.d/`. Per-unit drop-in directories such as
//! `<root>/etc/slicewall/units/sshd.service.d/` hold rule files whose unit selector comes from
//! the directory name (see [`unit_dropin`]). Each file contains zero or more rules:
//!
//! ```toml
//! [[rule]]
//! action = "deny"                          # required: "allow", "deny" or "ask"
//! unit = "app-*-org.example.Tracker-*.scope"
//! app = "org.example.Tracker"              # application ID, globs allowed
//! exe = "/usr/bin/curl"                    # resolved absolute path of the executable
//! sha256 = "…64 hexadecimal digits…"
//! user = 1000                              # uid, or a user name
//! address = ["192.0.2.0/24", "2001:db8::/32", "198.51.100.7"]
//! port = [80, "8000-8099"]
//! protocol = "tcp"                         # "tcp", "udp" or "any" (the default)
//! priority = 10                            # -1000 to 1000, default 0
//! comment = "free text, ignored"
//! ```
//!
//! Every field but `action` is optional, and a missing field matches anything. `address` and
//! `port` take one value or a list. [`parse`] describes the accepted values, and
//! [`precedence`] which of several matching rules wins.

use std::io;
use std::path::PathBuf;

pub mod dropin;
pub mod model;
pub mod parse;
pub mod precedence;
pub mod unit_dropin;

pub use dropin::{load, load_strict, rule_directories, unit_directories, RuleSet};
pub use model::{
    Action, Destination, DestinationMatch, Flow, GlobPattern, InvalidDigest, Origin, PortRange,
    Protocol, Rule, Selectors, Sha256Digest, Subject, UnitSelector,
};
pub use parse::{parse_file, ParseErrorKind};
pub use precedence::{decide, rank};

/// Error from reading or parsing rule files.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("failed to list rule directory {}", path.display())]
    ListDirectory {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("failed to read rule file {}", path.display())]
    ReadFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("{}: invalid per-unit drop-in directory name, {reason}", path.display())]
    InvalidDirectory { path: PathBuf, reason: String },

    /// Invalid content at a 1-based line and column. The column counts characters.
    #[error("{}:{line}:{column}: {kind}", file.display())]
    Invalid {
        file: PathBuf,
        line: u32,
        column: u32,
        kind: ParseErrorKind,
    },
}
