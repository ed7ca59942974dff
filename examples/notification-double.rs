//! notification-double: a scripted test double of a desktop notification server, for tests of
//! slicewall-agent. It owns `org.freedesktop.Notifications` on the session bus (or `--address`),
//! records every call as one JSON line, and presses action buttons on command.
//!
//! ```text
//! notification-double --record FILE [--no-actions] [--press KEY]... [--commands FILE]
//!                     [--press-delay-ms N] [--address ADDRESS]
//! ```
//! - `--record FILE`: appends `{"call":"Notify","id":..,"app_name":..,"icon":..,"summary":..,
//!   "body":..,"actions":[[KEY,LABEL],..],"hints":{NAME:VALUE},"expire_timeout":..}` per
//!   notification and `{"call":"CloseNotification","id":..}` per close.
//! - `--no-actions`: GetCapabilities leaves out "actions".
//! - `--press KEY`: presses action KEY on the next notification that has not been pressed yet
//!   (repeatable, in order). `--commands FILE`: when no `--press` is left, each notification
//!   takes the first line of FILE, `press KEY`, and removes it from the file.
//! - A press waits `--press-delay-ms` (default 300) so the client can subscribe to the signals
//!   after Notify returns, then emits `ActionInvoked(id, KEY)` and `NotificationClosed(id, 2)`.
//!
//! It prints `ready` once it owns the name, and runs until killed.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use zbus::object_server::SignalEmitter;
use zbus::zvariant::OwnedValue;

struct Settings {
    record: PathBuf,
    actions: bool,
    presses: Mutex<VecDeque<String>>,
    commands: Option<PathBuf>,
    press_delay: Duration,
}

struct Server {
    settings: Arc<Settings>,
    next_id: Mutex<u32>,
}

impl Server {
    fn record(&self, line: serde_json::Value) {
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.settings.record)
            .and_then(|mut file| writeln!(file, "{line}"));
        if let Err(error) = written {
            eprintln!(
                "notification-double: failed to write {}: {error}",
                self.settings.record.display()
            );
        }
    }

    /// Takes the next press: from `--press`, else the first `press KEY` line of the command file.
    fn next_press(&self) -> Option<String> {
        if let Some(key) = self.settings.presses.lock().unwrap().pop_front() {
            return Some(key);
        }
        let path = self.settings.commands.as_ref()?;
        let text = std::fs::read_to_string(path).ok()?;
        let mut lines = text.lines();
        let first = lines.next()?;
        let rest: Vec<&str> = lines.collect();
        let _ = std::fs::write(path, rest.join("\n"));
        match first.trim().strip_prefix("press ") {
            Some(key) => Some(key.trim().to_owned()),
            None => {
                eprintln!("notification-double: ignored command {first:?}: expected \"press KEY\"");
                None
            }
        }
    }
}

#[zbus::interface(name = "org.freedesktop.Notifications")]
impl Server {
    #[zbus(name = "GetCapabilities")]
    fn get_capabilities(&self) -> Vec<String> {
        let mut capabilities = vec!["body".to_owned()];
        if self.settings.actions {
            capabilities.push("actions".to_owned());
        }
        capabilities
    }

    #[zbus(name = "GetServerInformation")]
    fn get_server_information(&self) -> (String, String, String, String) {
        (
            "notification-double".into(),
            "slicewall tests".into(),
            "1".into(),
            "1.2".into(),
        )
    }

    #[zbus(name = "Notify")]
    #[allow(clippy::too_many_arguments)]
    fn notify(
        &self,
        app_name: String,
        replaces_id: u32,
        icon: String,
        summary: String,
        body: String,
        actions: Vec<String>,
        hints: HashMap<String, OwnedValue>,
        expire_timeout: i32,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> u32 {
        let id = if replaces_id != 0 {
            replaces_id
        } else {
            let mut next = self.next_id.lock().unwrap();
            *next += 1;
            *next
        };
        let pairs: Vec<[String; 2]> = actions
            .chunks(2)
            .map(|pair| [pair[0].clone(), pair.get(1).cloned().unwrap_or_default()])
            .collect();
        let hints: serde_json::Map<String, serde_json::Value> = hints
            .iter()
            .map(|(name, value)| (name.clone(), format!("{}", **value).into()))
            .collect();
        self.record(serde_json::json!({
            "call": "Notify",
            "id": id,
            "app_name": app_name,
            "replaces_id": replaces_id,
            "icon": icon,
            "summary": summary,
            "body": body,
            "actions": pairs,
            "hints": hints,
            "expire_timeout": expire_timeout,
        }));
        if let Some(key) = self.next_press() {
            let emitter = emitter.to_owned();
            let delay = self.settings.press_delay;
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                if let Err(error) = Server::action_invoked(&emitter, id, &key).await {
                    eprintln!("notification-double: failed to emit ActionInvoked: {error}");
                }
                // Reason 2: dismissed by the user.
                let _ = Server::notification_closed(&emitter, id, 2).await;
            });
        }
        id
    }

    #[zbus(name = "CloseNotification")]
    async fn close_notification(
        &self,
        id: u32,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) {
        self.record(serde_json::json!({"call": "CloseNotification", "id": id}));
        // Reason 3: closed by a call to CloseNotification.
        let _ = Server::notification_closed(&emitter, id, 3).await;
    }

    #[zbus(signal, name = "ActionInvoked")]
    async fn action_invoked(emitter: &SignalEmitter<'_>, id: u32, key: &str) -> zbus::Result<()>;

    #[zbus(signal, name = "NotificationClosed")]
    async fn notification_closed(
        emitter: &SignalEmitter<'_>,
        id: u32,
        reason: u32,
    ) -> zbus::Result<()>;
}

fn usage(message: &str) -> ! {
    eprintln!("notification-double: {message}");
    eprintln!(
        "usage: notification-double --record FILE [--no-actions] [--press KEY]... [--commands FILE] [--press-delay-ms N] [--address ADDRESS]"
    );
    std::process::exit(2);
}

fn main() {
    let mut record = None;
    let mut actions = true;
    let mut presses = VecDeque::new();
    let mut commands = None;
    let mut press_delay = Duration::from_millis(300);
    let mut address = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{arg} needs a value")))
        };
        match arg.as_str() {
            "--record" => record = Some(PathBuf::from(value())),
            "--no-actions" => actions = false,
            "--press" => presses.push_back(value()),
            "--commands" => commands = Some(PathBuf::from(value())),
            "--press-delay-ms" => {
                let text = value();
                let millis = text.parse().unwrap_or_else(|_| {
                    usage(&format!(
                        "invalid --press-delay-ms {text:?}: expected milliseconds"
                    ))
                });
                press_delay = Duration::from_millis(millis);
            }
            "--address" => address = Some(value()),
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    let Some(record) = record else {
        usage("--record is missing")
    };
    let settings = Arc::new(Settings {
        record,
        actions,
        presses: Mutex::new(presses),
        commands,
        press_delay,
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("failed to start the runtime");
    runtime.block_on(async move {
        let server = Server {
            settings,
            next_id: Mutex::new(0),
        };
        let builder = match address {
            Some(address) => zbus::connection::Builder::address(address.as_str()),
            None => zbus::connection::Builder::session(),
        };
        let connection = builder
            .and_then(|builder| builder.name("org.freedesktop.Notifications"))
            .and_then(|builder| builder.serve_at("/org/freedesktop/Notifications", server));
        let connection = match connection {
            Ok(builder) => builder.build().await,
            Err(error) => Err(error),
        };
        match connection {
            Ok(_connection) => {
                println!("ready");
                let _ = std::io::stdout().flush();
                std::future::pending::<()>().await;
            }
            Err(error) => {
                eprintln!(
                    "notification-double: failed to own org.freedesktop.Notifications: {error}"
                );
                std::process::exit(1);
            }
        }
    });
}
