//! Prompts end to end in the lab: a real slicewalld on a private D-Bus system bus (a
//! dbus-daemon of the test's own, with the project's bus policy), with test agents that
//! register and never answer. polkit is absent there, so calls that need it are rejected.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Lab, DENIED, SERVER_V4};
use futures_util::StreamExt;

/// Lets the daemon identify the probe before its first flow.
const SETTLE: &str = "300";

/// A private dbus-daemon with the system bus policy of slicewalld, stopped on drop.
struct Bus {
    child: Child,
    address: String,
    _directory: tempfile::TempDir,
}

impl Bus {
    fn start() -> Result<Bus, String> {
        if Command::new("dbus-daemon")
            .arg("--version")
            .output()
            .is_err()
        {
            return Err("dbus-daemon is not installed".to_owned());
        }
        let directory = tempfile::tempdir().unwrap();
        let socket = directory.path().join("bus");
        let policy =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("dbus/org.slicewall.Firewall1.conf");
        let config = directory.path().join("bus.conf");
        std::fs::write(
            &config,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
  </policy>
  <include>{}</include>
</busconfig>
"#,
                socket.display(),
                policy.display()
            ),
        )
        .unwrap();
        let child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .arg("--nofork")
            .arg("--nopidfile")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|error| format!("failed to start dbus-daemon: {error}"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            if Instant::now() > deadline {
                return Err("dbus-daemon did not create its socket in 10 s".to_owned());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Bus {
            child,
            address: format!("unix:path={}", socket.display()),
            _directory: directory,
        })
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn connect(address: &str) -> zbus::Connection {
    zbus::connection::Builder::address(address)
        .unwrap()
        .build()
        .await
        .unwrap()
}

async fn call<B, R>(connection: &zbus::Connection, method: &str, body: &B) -> zbus::Result<R>
where
    B: serde::Serialize + zbus::zvariant::DynamicType,
    R: for<'d> serde::Deserialize<'d> + zbus::zvariant::Type,
{
    let reply = connection
        .call_method(
            Some("org.slicewall.Firewall1"),
            "/org/slicewall/Firewall1",
            Some("org.slicewall.Firewall1"),
            method,
            body,
        )
        .await?;
    reply.body().deserialize()
}

type PromptRow = (
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

/// Waits until the daemon is on the bus, so that `ask` rules prompt.
fn wait_for_daemon(address: &str) {
    runtime().block_on(async {
        let connection = connect(address).await;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let result: zbus::Result<Vec<PromptRow>> = call(&connection, "ListPrompts", &()).await;
            if result.is_ok() {
                return;
            }
            if let Err(error) = result {
                assert!(
                    Instant::now() < deadline,
                    "slicewalld did not come on the bus: {error}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    // The daemon sets the gate to prompt when its main loop learns of the bus.
    std::thread::sleep(Duration::from_millis(200));
}

/// An agent that registers and never answers. It runs on its own thread and records the
/// signals it receives.
struct Agent {
    signals: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Agent {
    fn register(address: &str) -> Agent {
        let signals = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_sender, ready) = std::sync::mpsc::channel();
        let address = address.to_owned();
        let recorded = signals.clone();
        let thread = std::thread::spawn(move || {
            runtime().block_on(async move {
                let connection = connect(&address).await;
                let mut messages = zbus::MessageStream::from(&connection);
                let () = call(&connection, "RegisterAgent", &()).await.unwrap();
                ready_sender.send(()).unwrap();
                let mut stopped = stopped;
                loop {
                    tokio::select! {
                        _ = &mut stopped => break,
                        Some(Ok(message)) = messages.next() => {
                            let header = message.header();
                            if header.message_type() != zbus::message::Type::Signal {
                                continue;
                            }
                            let member = header.member().map(ToString::to_string).unwrap_or_default();
                            let detail = match member.as_str() {
                                "PromptAdded" => message.body().deserialize::<PromptRow>().map(|row| row.0.to_string()).unwrap_or_default(),
                                "PromptClosed" => message.body().deserialize::<(u64, String)>().map(|(id, outcome)| format!("{id} {outcome}")).unwrap_or_default(),
                                _ => String::new(),
                            };
                            recorded.lock().unwrap().push((member, detail));
                        }
                    }
                }
            });
        });
        ready
            .recv_timeout(Duration::from_secs(10))
            .expect("agent registered");
        // RegisterAgent returns before the daemon's main loop has taken the registration.
        std::thread::sleep(Duration::from_millis(100));
        Agent {
            signals,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn signals(&self, member: &str) -> Vec<String> {
        self.signals
            .lock()
            .unwrap()
            .iter()
            .filter(|(name, _)| name == member)
            .map(|(_, detail)| detail.clone())
            .collect()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn ask_rules() -> String {
    format!("[[rule]]\naction = \"ask\"\nunit = \"app.service\"\naddress = \"{SERVER_V4}\"\n")
}

fn reason_count(lab: &Lab, reason: &str) -> usize {
    lab.daemon()
        .audit_records()
        .iter()
        .filter(|record| record.get("SLICEWALL_REASON").map(String::as_str) == Some(reason))
        .count()
}

fn wait_for_reason(lab: &Lab, reason: &str) -> HashMap<String, String> {
    let records = lab.daemon().wait_for_audit(
        Duration::from_secs(10),
        &format!("a {reason} record"),
        |records| {
            records
                .iter()
                .any(|record| record.get("SLICEWALL_REASON").map(String::as_str) == Some(reason))
        },
    );
    records
        .into_iter()
        .find(|record| record["SLICEWALL_REASON"] == reason)
        .unwrap()
}

/// Starts a lab with the ask rule on a private bus.
fn start_on_bus(extra: &[&str]) -> Option<(Lab, Bus)> {
    if let Err(reason) = common::check_privileges() {
        println!("skipping: {reason}");
        return None;
    }
    let bus = match Bus::start() {
        Ok(bus) => bus,
        Err(reason) => {
            println!("skipping: {reason}");
            return None;
        }
    };
    let mut lab = Lab::new(&ask_rules());
    lab.start_with_env(extra, &[("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)]);
    wait_for_daemon(&bus.address);
    Some((lab, bus))
}

#[test]
fn ask_rules_in_silent_modes() {
    require_lab!();
    let mut lab = Lab::new(&ask_rules());
    lab.start(&["--mode", "silent-allow", "--ask-fallback", "deny"]);
    let app = lab.cgroup.child("app.service");
    let target = format!("{SERVER_V4}:{}", lab.network.veth4.port);
    for kind in ["tcp", "udp-sendto"] {
        assert_eq!(
            lab.probe(&app, &["--wait-ms", SETTLE, kind, &target]),
            vec!["ok"],
            "{kind} in mode silent-allow"
        );
    }
    let record = wait_for_reason(&lab, "silent-allow");
    assert_eq!(record["SLICEWALL_VERDICT"], "allow");

    lab.daemon_mut()
        .restart(&["--mode", "silent-deny", "--ask-fallback", "allow"]);
    for kind in ["tcp", "udp-sendto"] {
        assert_eq!(
            lab.probe(&app, &["--wait-ms", SETTLE, kind, &target]),
            vec![DENIED],
            "{kind} in mode silent-deny"
        );
    }
    let record = wait_for_reason(&lab, "silent-deny");
    assert_eq!(record["SLICEWALL_VERDICT"], "deny");
}

#[test]
fn no_agent_answer_applies_at_once() {
    let Some((lab, _bus)) = start_on_bus(&["--no-agent-answer", "deny", "--prompt-timeout", "20"])
    else {
        return;
    };
    let app = lab.cgroup.child("app.service");
    let target = format!("{SERVER_V4}:{}", lab.network.veth4.port);
    let started = Instant::now();
    assert_eq!(
        lab.probe(&app, &["--wait-ms", SETTLE, "tcp", &target]),
        vec![DENIED]
    );
    let elapsed = started.elapsed();
    // Far below the prompt timeout of 20 s: no prompt was opened.
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    let record = wait_for_reason(&lab, "no-agent");
    assert_eq!(record["SLICEWALL_VERDICT"], "deny");
}

#[test]
fn one_prompt_for_many_connections_then_timeout() {
    let Some((lab, bus)) = start_on_bus(&["--prompt-timeout", "4", "--timeout-answer", "deny"])
    else {
        return;
    };
    let agent = Agent::register(&bus.address);
    let app = lab.cgroup.child("app.service");
    let target = format!("{SERVER_V4}:{}", lab.network.veth4.port);

    let probe = common::spawn_in(
        &app,
        &lab.network.client,
        &common::probe(),
        &[
            "--wait-ms",
            SETTLE,
            "--via",
            "parallel",
            "--repeat",
            "200",
            "tcp",
            &target,
        ],
    );
    std::thread::sleep(Duration::from_millis(1500));
    let prompts: Vec<PromptRow> = runtime().block_on(async {
        let connection = connect(&bus.address).await;
        call(&connection, "ListPrompts", &()).await.unwrap()
    });
    let ids: Vec<u64> = prompts.iter().map(|prompt| prompt.0).collect();
    assert_eq!(prompts.len(), 1, "open prompts: {ids:?}");
    let prompt = &prompts[0];
    assert_eq!(prompt.1, 0, "uid");
    assert_eq!(prompt.8, SERVER_V4, "address");
    assert_eq!(prompt.9, lab.network.veth4.port, "port");
    assert_eq!(prompt.10, "tcp", "protocol");
    assert!(prompt.5.ends_with("/probe"), "exe {}", prompt.5);
    assert_eq!(prompt.6.len(), 64, "sha256 {}", prompt.6);

    let output = probe.wait_with_output().unwrap();
    let lines = common::probe_lines(&output);
    assert_eq!(lines.len(), 200);
    for line in &lines {
        assert_eq!(common::outcome(line), DENIED, "a connection got {line}");
    }
    assert_eq!(
        lab.network
            .veth4
            .received
            .load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a held connection reached the server"
    );
    let record = wait_for_reason(&lab, "timeout");
    assert_eq!(record["SLICEWALL_VERDICT"], "deny");
    assert_eq!(reason_count(&lab, "timeout"), 200);
    assert_eq!(agent.signals("PromptAdded"), vec![prompt.0.to_string()]);
    assert_eq!(
        agent.signals("PromptClosed"),
        vec![format!("{} timeout", prompt.0)]
    );
}

#[test]
fn per_user_bound_applies_the_timeout_answer() {
    let Some((lab, bus)) = start_on_bus(&[
        "--prompt-timeout",
        "3",
        "--timeout-answer",
        "deny",
        "--max-prompts-per-user",
        "1",
    ]) else {
        return;
    };
    let _agent = Agent::register(&bus.address);
    let app = lab.cgroup.child("app.service");
    let first = format!("{SERVER_V4}:{}", lab.network.veth4.port);
    let second = format!("{SERVER_V4}:{}", lab.network.veth4.port + 1);
    let waiting = common::spawn_in(
        &app,
        &lab.network.client,
        &common::probe(),
        &["--wait-ms", SETTLE, "tcp", &first],
    );
    std::thread::sleep(Duration::from_millis(1000));
    let started = Instant::now();
    assert_eq!(lab.probe(&app, &["tcp", &second]), vec![DENIED]);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "the second prompt waited {:?}",
        started.elapsed()
    );
    let record = wait_for_reason(&lab, "prompt-limit");
    assert_eq!(record["SLICEWALL_VERDICT"], "deny");
    let output = waiting.wait_with_output().unwrap();
    assert_eq!(
        common::probe_lines(&output)
            .iter()
            .map(|line| common::outcome(line))
            .collect::<Vec<_>>(),
        vec![DENIED]
    );
}

#[test]
fn answer_without_polkit_is_rejected() {
    let Some((lab, bus)) = start_on_bus(&["--prompt-timeout", "5"]) else {
        return;
    };
    let _agent = Agent::register(&bus.address);
    let app = lab.cgroup.child("app.service");
    let target = format!("{SERVER_V4}:{}", lab.network.veth4.port);
    let waiting = common::spawn_in(
        &app,
        &lab.network.client,
        &common::probe(),
        &["--wait-ms", SETTLE, "tcp", &target],
    );
    std::thread::sleep(Duration::from_millis(1000));
    runtime().block_on(async {
        let connection = connect(&bus.address).await;
        let prompts: Vec<PromptRow> = call(&connection, "ListPrompts", &()).await.unwrap();
        assert_eq!(prompts.len(), 1);
        let id = prompts[0].0;

        let invalid: zbus::Result<()> = call(
            &connection,
            "AnswerPrompt",
            &(id, "maybe", "once", "destination"),
        )
        .await;
        let error = invalid.unwrap_err().to_string();
        assert!(
            error.contains("InvalidArgument") && error.contains("action"),
            "{error}"
        );

        let invalid: zbus::Result<()> = call(
            &connection,
            "AnswerPrompt",
            &(id, "allow", "always", "destination"),
        )
        .await;
        let error = invalid.unwrap_err().to_string();
        assert!(
            error.contains("InvalidArgument") && error.contains("lifetime"),
            "{error}"
        );

        let missing: zbus::Result<()> = call(
            &connection,
            "AnswerPrompt",
            &(id + 1000, "allow", "once", "destination"),
        )
        .await;
        let error = missing.unwrap_err().to_string();
        assert!(error.contains("NoSuchPrompt"), "{error}");

        let refused: zbus::Result<()> = call(
            &connection,
            "AnswerPrompt",
            &(id, "allow", "once", "destination"),
        )
        .await;
        let error = refused.unwrap_err().to_string();
        assert!(
            error.contains("org.slicewall.Firewall1.Error.PolkitUnavailable"),
            "{error}"
        );
        for (method, result) in [
            ("Reload", call::<_, ()>(&connection, "Reload", &()).await),
            (
                "SetMode",
                call::<_, ()>(&connection, "SetMode", &("silent-deny",)).await,
            ),
            (
                "RemoveRule",
                call::<_, ()>(&connection, "RemoveRule", &("memory:1",)).await,
            ),
        ] {
            let error = result.unwrap_err().to_string();
            assert!(error.contains("PolkitUnavailable"), "{method}: {error}");
        }
        let added: zbus::Result<String> = call(
            &connection,
            "AddRule",
            &("[[rule]]\naction = \"allow\"\n", "memory"),
        )
        .await;
        assert!(added.unwrap_err().to_string().contains("PolkitUnavailable"));
        let rules: Vec<(String, String, String, String)> =
            call(&connection, "ListRules", &()).await.unwrap();
        assert_eq!(rules.len(), 1, "{rules:?}");
        assert!(rules[0].0.ends_with("50-test.toml:1"), "{rules:?}");
        assert_eq!(rules[0].1, "file");
        assert!(rules[0].3.contains("action = \"ask\""), "{rules:?}");
    });
    // The prompt stays open and times out: the refused answer decided nothing.
    let output = waiting.wait_with_output().unwrap();
    assert_eq!(common::outcome(&common::probe_lines(&output)[0]), DENIED);
    wait_for_reason(&lab, "timeout");
}

#[test]
fn replaced_agent_closes_its_prompts() {
    let Some((lab, bus)) = start_on_bus(&["--prompt-timeout", "4", "--timeout-answer", "deny"])
    else {
        return;
    };
    let first = Agent::register(&bus.address);
    let app = lab.cgroup.child("app.service");
    let target = format!("{SERVER_V4}:{}", lab.network.veth4.port);
    let probe = common::spawn_in(
        &app,
        &lab.network.client,
        &common::probe(),
        &["--wait-ms", SETTLE, "tcp", &target],
    );
    std::thread::sleep(Duration::from_millis(1000));
    let added = first.signals("PromptAdded");
    assert_eq!(added.len(), 1, "the first agent got {added:?}");

    let second = Agent::register(&bus.address);
    std::thread::sleep(Duration::from_millis(500));

    assert_eq!(
        first.signals("PromptClosed"),
        vec![format!("{} agent-replaced", added[0])]
    );
    assert_eq!(second.signals("PromptAdded"), added);
    let _ = probe.wait_with_output();
}
