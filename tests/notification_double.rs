//! Tests of the notification test double (`examples/notification-double.rs`) against notify-rust,
//! and of `slicewall-agent --preview` against the double, each on a private session bus.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A private `dbus-daemon --session` and a notification double on it, both ended on drop.
struct Bus {
    dir: tempfile::TempDir,
    address: String,
    daemon: Child,
    double: Option<Child>,
}

impl Bus {
    /// Starts the bus and the double with `args`; `None` when dbus-daemon is missing.
    fn start(args: &[&str]) -> Option<Bus> {
        let dir = tempfile::tempdir().unwrap();
        let address = format!("unix:path={}", dir.path().join("bus").display());
        let daemon = match Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--print-address"])
            .arg(format!("--address={address}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(daemon) => daemon,
            Err(error) => {
                println!("skipping: dbus-daemon cannot run: {error}");
                return None;
            }
        };
        let mut bus = Bus {
            dir,
            address,
            daemon,
            double: None,
        };
        // dbus-daemon prints its address once it listens.
        let mut line = String::new();
        BufReader::new(bus.daemon.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("unix:"), "dbus-daemon printed {line:?}");

        let mut double = Command::new(example("notification-double"))
            .args(["--record", bus.record().to_str().unwrap(), "--address"])
            .arg(&bus.address)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("failed to start the notification double");
        let mut ready = String::new();
        BufReader::new(double.stdout.take().unwrap())
            .read_line(&mut ready)
            .unwrap();
        assert_eq!(ready.trim(), "ready");
        bus.double = Some(double);
        Some(bus)
    }

    fn record(&self) -> PathBuf {
        self.dir.path().join("record.jsonl")
    }

    /// Waits for `count` records and returns them.
    fn wait_for_records(&self, count: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(self.record()).unwrap_or_default();
            let records: Vec<serde_json::Value> = text
                .lines()
                .map(|line| serde_json::from_str(line).unwrap())
                .collect();
            if records.len() >= count || Instant::now() > deadline {
                return records;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn agent(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_slicewall-agent"));
        command
            .arg("--preview")
            .env("DBUS_SESSION_BUS_ADDRESS", &self.address)
            .env("XDG_CONFIG_HOME", self.dir.path().join("config"))
            .env_remove("SLICEWALL_LOG");
        command
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        if let Some(double) = &mut self.double {
            let _ = double.kill();
            let _ = double.wait();
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

/// Path of an example, which `cargo test` builds next to the test binaries' deps directory.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .and_then(Path::parent)
        .unwrap()
        .join("examples")
        .join(name)
}

fn actions(record: &serde_json::Value) -> Vec<String> {
    record["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pair| pair[0].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn double_serves_notify_rust() {
    let Some(bus) = Bus::start(&["--press", "second", "--press-delay-ms", "200"]) else {
        return;
    };
    // notify-rust reads the session bus address from the environment. The other tests here give
    // the address to child processes only, so none of them depends on this variable.
    std::env::set_var("DBUS_SESSION_BUS_ADDRESS", &bus.address);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut notification = notify_rust::Notification::new();
        notification
            .appname("tester")
            .summary("hello")
            .body("world")
            .icon("dialog-information")
            .action("first", "First")
            .action("second", "Second");
        let handle = notification.show_async().await.unwrap();
        let mut pressed = None;
        tokio::time::timeout(
            Duration::from_secs(10),
            handle.wait_for_action_async(|response| pressed = Some(response.clone())),
        )
        .await
        .expect("no action within 10 s");
        assert_eq!(
            pressed,
            Some(notify_rust::NotificationResponse::Action("second".into()))
        );

        let records = bus.wait_for_records(1);
        let record = &records[0];
        assert_eq!(record["call"], "Notify");
        assert_eq!(record["app_name"], "tester");
        assert_eq!(record["summary"], "hello");
        assert_eq!(record["body"], "world");
        assert_eq!(record["icon"], "dialog-information");
        assert_eq!(actions(record), ["first", "second"]);
        assert_eq!(record["actions"][1][1], "Second");

        // A notification with no press left stays until it is closed.
        let handle = notify_rust::Notification::new()
            .summary("second one")
            .show_async()
            .await
            .unwrap();
        let id = handle.id();
        handle.close_async().await;
        let records = bus.wait_for_records(3);
        assert_eq!(records[2]["call"], "CloseNotification");
        assert_eq!(records[2]["id"], id);
    });
}

#[test]
fn agent_preview_maps_allow_always() {
    let Some(bus) = Bus::start(&["--press", "allow-always"]) else {
        return;
    };
    let output = bus.agent().output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.contains("answer: allow forever destination"),
        "{stdout}"
    );
    let records = bus.wait_for_records(1);
    let record = &records[0];
    assert_eq!(
        actions(record),
        ["allow-once", "allow-always", "deny-once", "deny-always"]
    );
    assert_eq!(record["summary"], "firefox wants to connect");
    let body = record["body"].as_str().unwrap();
    assert!(body.contains("/usr/lib/firefox-esr/firefox-esr"), "{body}");
    assert!(body.contains("example.org"), "{body}");
    assert!(body.contains("port 443/tcp"), "{body}");
}

#[test]
fn agent_preview_follows_config() {
    let Some(bus) = Bus::start(&["--press", "deny:until-logout:any"]) else {
        return;
    };
    let config = bus.dir.path().join("config/slicewall/agent.toml");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(
        &config,
        "always-scope = \"domain\"\nextra-actions = [\"deny until-logout any\"]\n",
    )
    .unwrap();
    let output = bus.agent().output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("answer: deny until-logout any"), "{stdout}");
    let records = bus.wait_for_records(1);
    assert_eq!(actions(&records[0]).len(), 5);
    assert_eq!(records[0]["actions"][1][1], "Allow always, this domain");
}

#[test]
fn agent_rejects_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, "always-lifetime = \"soon\"\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_slicewall-agent"))
        .arg("--config")
        .arg(&config)
        .arg("--preview")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("{}:1:19: invalid lifetime", config.display())),
        "{stderr}"
    );
}

#[test]
fn server_without_actions_gets_hint() {
    let Some(bus) = Bus::start(&["--no-actions"]) else {
        return;
    };
    let mut agent = bus.agent().stdout(Stdio::null()).spawn().unwrap();
    let records = bus.wait_for_records(1);
    let _ = agent.kill();
    let _ = agent.wait();
    assert_eq!(records.len(), 1, "no notification recorded");
    assert!(actions(&records[0]).is_empty());
    let body = records[0]["body"].as_str().unwrap();
    assert!(
        body.contains("slicewallctl prompts answer 1 allow|deny"),
        "{body}"
    );
}
