//! The daemon's D-Bus interface on the system bus: `org.slicewall.Firewall1` at
//! `/org/slicewall/Firewall1`, described in `dbus/org.slicewall.Firewall1.xml`.
//!
//! The interface replies from a [`Status`] that the daemon's main loop keeps up to date, so a
//! slow or hostile client never delays a decision. Every member here only reads.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use zbus::interface;

/// Well-known name of the daemon on the system bus.
pub const BUS_NAME: &str = "org.slicewall.Firewall1";
/// Object path of the firewall object.
pub const OBJECT_PATH: &str = "/org/slicewall/Firewall1";
/// Interface name.
pub const INTERFACE: &str = "org.slicewall.Firewall1";
/// Wait between attempts to reach the system bus, which starts after the daemon at boot.
const BUS_RETRY: Duration = Duration::from_secs(2);

/// One row of `ListUnits`: unit name, manager (`system` or `user@UID.service`), description,
/// application ID, cgroup path, cgroup ID, main executable, policy, number of rules naming the
/// unit, packets and bytes counted by nftables. Empty strings and zeros stand for unknown.
pub type UnitRow = (
    String,
    String,
    String,
    String,
    String,
    u64,
    String,
    String,
    u32,
    u64,
    u64,
);

/// State that the D-Bus interface reports, kept current by the daemon.
#[derive(Debug, Clone, Default)]
pub struct Status {
    pub fail_mode: String,
    pub ask_fallback: String,
    /// Reasons the daemon works with less than its full configuration, empty when healthy.
    pub degraded_reasons: Vec<String>,
    pub rule_count: u32,
    pub rule_files: Vec<String>,
    /// Whether the daemon follows the system manager now.
    pub following_systemd: bool,
    pub units: Vec<UnitRow>,
}

pub type SharedStatus = Arc<Mutex<Status>>;

/// One open prompt, as `ListPrompts` returns it and `PromptAdded` carries it unpacked: ID, UID
/// of the process that made the flow, unit, app ID, display name, executable, its SHA-256, host
/// name, address, port, protocol (`tcp` or `udp`), cgroup path, and the deadline in
/// `CLOCK_REALTIME` microseconds. Empty strings stand for unknown.
pub type PromptRow = (
    u64,
    u32,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    u16,
    String,
    String,
    u64,
);

/// One row of `ListRules`: rule ID (`file:line` or `memory:N`), lifetime, origin and the rule as
/// a `[[rule]]` TOML table.
pub type RuleRow = (String, String, String, String);

/// D-Bus error names of the interface, shared by the daemon and its clients.
pub mod errors {
    pub const INVALID_ARGUMENT: &str = "org.slicewall.Firewall1.Error.InvalidArgument";
    pub const NOT_AUTHORIZED: &str = "org.slicewall.Firewall1.Error.NotAuthorized";
    pub const POLKIT_UNAVAILABLE: &str = "org.slicewall.Firewall1.Error.PolkitUnavailable";
    pub const NO_SUCH_PROMPT: &str = "org.slicewall.Firewall1.Error.NoSuchPrompt";
    pub const NO_SUCH_RULE: &str = "org.slicewall.Firewall1.Error.NoSuchRule";
    pub const FAILED: &str = "org.slicewall.Firewall1.Error.Failed";
}

struct Firewall {
    status: SharedStatus,
}

impl Firewall {
    fn read<T>(&self, read: impl FnOnce(&Status) -> T) -> T {
        // A poisoned lock only means a writer panicked half way; the fields are still valid.
        let status = self
            .status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        read(&status)
    }
}

#[interface(name = "org.slicewall.Firewall1")]
impl Firewall {
    /// Lists the units the daemon follows, sorted by manager and name.
    #[zbus(name = "ListUnits")]
    fn list_units(&self) -> Vec<UnitRow> {
        self.read(|status| status.units.clone())
    }

    #[zbus(property(emits_changed_signal = "false"), name = "Version")]
    fn version(&self) -> String {
        env!("CARGO_PKG_VERSION").to_owned()
    }

    #[zbus(property(emits_changed_signal = "false"), name = "FailMode")]
    fn fail_mode(&self) -> String {
        self.read(|status| status.fail_mode.clone())
    }

    #[zbus(property(emits_changed_signal = "false"), name = "AskFallback")]
    fn ask_fallback(&self) -> String {
        self.read(|status| status.ask_fallback.clone())
    }

    #[zbus(property(emits_changed_signal = "false"), name = "Degraded")]
    fn degraded(&self) -> bool {
        self.read(|status| !status.degraded_reasons.is_empty())
    }

    #[zbus(property(emits_changed_signal = "false"), name = "DegradedReasons")]
    fn degraded_reasons(&self) -> Vec<String> {
        self.read(|status| status.degraded_reasons.clone())
    }

    #[zbus(property(emits_changed_signal = "false"), name = "RuleCount")]
    fn rule_count(&self) -> u32 {
        self.read(|status| status.rule_count)
    }

    #[zbus(property(emits_changed_signal = "false"), name = "RuleFiles")]
    fn rule_files(&self) -> Vec<String> {
        self.read(|status| status.rule_files.clone())
    }

    #[zbus(property(emits_changed_signal = "false"), name = "FollowingSystemd")]
    fn following_systemd(&self) -> bool {
        self.read(|status| status.following_systemd)
    }
}

/// Serves the interface on the system bus for as long as the daemon runs. The bus may not exist
/// yet (the daemon starts before `dbus.service`), so this retries until it does, and again if
/// the bus daemon restarts.
pub fn serve(status: SharedStatus) {
    tokio::spawn(async move {
        let mut last_error = String::new();
        loop {
            match connect(status.clone()).await {
                Ok(connection) => {
                    tracing::info!("serving {BUS_NAME} on the system bus");
                    last_error.clear();
                    wait_for_disconnect(&connection).await;
                    tracing::warn!("lost the system bus; reconnecting");
                }
                Err(error) => {
                    let text = crate::error_chain(&error);
                    if text != last_error {
                        tracing::info!("the system bus is not available yet: {text}");
                        last_error = text;
                    }
                }
            }
            tokio::time::sleep(BUS_RETRY).await;
        }
    });
}

async fn connect(status: SharedStatus) -> zbus::Result<zbus::Connection> {
    zbus::connection::Builder::system()?
        .name(BUS_NAME)?
        .serve_at(OBJECT_PATH, Firewall { status })?
        .build()
        .await
}

async fn wait_for_disconnect(connection: &zbus::Connection) {
    use futures_util::StreamExt;
    let mut messages = zbus::MessageStream::from(connection);
    while let Some(message) = messages.next().await {
        if message.is_err() {
            break;
        }
    }
}

/// Client side of the interface, for `slicewallctl`.
#[zbus::proxy(
    interface = "org.slicewall.Firewall1",
    default_service = "org.slicewall.Firewall1",
    default_path = "/org/slicewall/Firewall1"
)]
pub trait Firewall1 {
    #[zbus(name = "ListUnits")]
    fn list_units(&self) -> zbus::Result<Vec<UnitRow>>;

    #[zbus(property, name = "Version")]
    fn version(&self) -> zbus::Result<String>;

    #[zbus(property, name = "FailMode")]
    fn fail_mode(&self) -> zbus::Result<String>;

    #[zbus(property, name = "AskFallback")]
    fn ask_fallback(&self) -> zbus::Result<String>;

    #[zbus(property, name = "DegradedReasons")]
    fn degraded_reasons(&self) -> zbus::Result<Vec<String>>;

    #[zbus(property, name = "RuleCount")]
    fn rule_count(&self) -> zbus::Result<u32>;

    #[zbus(property, name = "RuleFiles")]
    fn rule_files(&self) -> zbus::Result<Vec<String>>;

    #[zbus(property, name = "FollowingSystemd")]
    fn following_systemd(&self) -> zbus::Result<bool>;

    /// Lists open prompts: all of them for root, the caller's own for other users.
    #[zbus(name = "ListPrompts")]
    fn list_prompts(&self) -> zbus::Result<Vec<PromptRow>>;

    /// Answers a prompt. `action` is `allow` or `deny`; `lifetime` is `once`,
    /// `until-app-quits`, `until-logout`, `until-reboot` or `forever`; `scope` is
    /// `destination`, `domain` or `any`.
    #[zbus(name = "AnswerPrompt")]
    fn answer_prompt(&self, id: u64, action: &str, lifetime: &str, scope: &str)
        -> zbus::Result<()>;

    /// Makes the caller's unique bus name the prompt agent of the caller's UID.
    #[zbus(name = "RegisterAgent")]
    fn register_agent(&self) -> zbus::Result<()>;

    #[zbus(name = "UnregisterAgent")]
    fn unregister_agent(&self) -> zbus::Result<()>;

    #[zbus(name = "ListRules")]
    fn list_rules(&self) -> zbus::Result<Vec<RuleRow>>;

    /// Adds a rule given as a `[[rule]]` TOML table; `lifetime` is `forever`, `until-reboot` or
    /// `memory`. Returns the new rule's ID.
    #[zbus(name = "AddRule")]
    fn add_rule(&self, toml: &str, lifetime: &str) -> zbus::Result<String>;

    #[zbus(name = "RemoveRule")]
    fn remove_rule(&self, id: &str) -> zbus::Result<()>;

    #[zbus(name = "Reload")]
    fn reload(&self) -> zbus::Result<()>;

    /// Sets the mode: `alert`, `silent-allow` or `silent-deny`.
    #[zbus(name = "SetMode")]
    fn set_mode(&self, mode: &str) -> zbus::Result<()>;

    #[zbus(property, name = "Mode")]
    fn mode(&self) -> zbus::Result<String>;

    #[zbus(property, name = "PromptTimeoutSec")]
    fn prompt_timeout_sec(&self) -> zbus::Result<u32>;

    #[zbus(property, name = "OpenPrompts")]
    fn open_prompts(&self) -> zbus::Result<u32>;

    /// Sent to the registered agent of `uid` (unicast) for each new prompt, and again for every
    /// open prompt when an agent registers.
    #[zbus(signal, name = "PromptAdded")]
    #[allow(clippy::too_many_arguments)]
    fn prompt_added(
        &self,
        id: u64,
        uid: u32,
        unit: &str,
        app_id: &str,
        app_name: &str,
        exe: &str,
        sha256: &str,
        host: &str,
        address: &str,
        port: u16,
        protocol: &str,
        cgroup: &str,
        deadline_usec: u64,
    ) -> zbus::Result<()>;

    /// Sent to the same agent when a prompt closes; `outcome` is `allow`, `deny`, `timeout`,
    /// `no-agent` or `gone`.
    #[zbus(signal, name = "PromptClosed")]
    fn prompt_closed(&self, id: u64, outcome: &str) -> zbus::Result<()>;

    #[zbus(signal, name = "RulesChanged")]
    fn rules_changed(&self) -> zbus::Result<()>;
}
