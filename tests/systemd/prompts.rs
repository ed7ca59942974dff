//! Prompt cases of the systemd harness: the real slicewall-agent, as the test user, shows the
//! daemon's prompts on the notification double, which presses buttons on command.
//!
//! They need a slicewalld with the prompt members (`ListPrompts`); `run` checks the daemon's
//! introspection first and prints `skipping: slicewalld has no prompts` otherwise.

use std::time::{Duration, Instant};

use super::{expect_allowed, expect_denied, field, random_suffix, target, wait_for, Lab, USER};

/// App ID whose scopes the `ask` rule covers.
const PROMPT_APP: &str = "org.example.Prompt";
const ASK_RULES_FILE: &str = "/etc/slicewall/rules.d/61-harness-ask.toml";
const ANSWERS_FILE: &str = "/etc/slicewall/rules.d/70-slicewall-answers.toml";
/// The double's record and command files, in a directory the test user owns.
const DOUBLE_DIR: &str = "/run/harness-double";
const RECORD: &str = "/run/harness-double/record.jsonl";
const COMMANDS: &str = "/run/harness-double/commands";
const DOUBLE_UNIT: &str = "harness-double.service";
const AGENT_UNIT: &str = "harness-agent.service";

pub type Case = fn(&Lab) -> Result<(), String>;

pub const PROMPT_CASES: &[(&str, Case)] = &[
    ("prompt_allow_always_writes_rule", allow_always_writes_rule),
    ("prompt_deny_once_fails_fast", deny_once_fails_fast),
    ("prompt_hostile_exe_name", hostile_exe_name),
    ("prompt_without_actions_hints", without_actions_hints),
    ("prompt_notification_latency", notification_latency),
    ("prompt_app_cannot_answer_itself", app_cannot_answer_itself),
    (
        "prompt_answer_applies_beside_a_broken_file",
        answer_applies_beside_a_broken_file,
    ),
    ("prompt_screenshot", screenshot),
];

/// Environment variable naming the PNG file that `prompt_screenshot` writes.
const SCREENSHOT_VARIABLE: &str = "SLICEWALL_SCREENSHOT";
/// X display of the screenshot, inside the container.
const SCREENSHOT_DISPLAY: &str = ":97";

/// Returns why the prompt cases cannot run, if they cannot.
pub fn check_daemon(lab: &Lab) -> Result<(), String> {
    let introspection = lab.container().exec_ok(&[
        "busctl",
        "introspect",
        "--no-pager",
        "org.slicewall.Firewall1",
        "/org/slicewall/Firewall1",
        "org.slicewall.Firewall1",
    ])?;
    if introspection.contains(".ListPrompts") {
        Ok(())
    } else {
        Err("slicewalld has no prompts".into())
    }
}

/// polkit rule of the prompt cases, see [`set_up`].
const POLKIT_RULE: &str = "/etc/polkit-1/rules.d/50-slicewall-harness.rules";

/// Installs the agent, the double and the `ask` rule, starts a session bus for the test user,
/// and starts the double and the agent on it as that user.
pub fn set_up(lab: &Lab) -> Result<(), String> {
    let c = lab.container();
    let uid = lab.uid.to_string();
    c.copy_file(
        std::path::Path::new(env!("CARGO_BIN_EXE_slicewall-agent")),
        "/usr/bin/slicewall-agent",
        0o755,
    )?;
    c.copy_file(
        &super::probe_path().with_file_name("notification-double"),
        "/usr/bin/notification-double",
        0o755,
    )?;
    let rules = format!(
        "# Written by tests/systemd.rs.\n[[rule]]\naction = \"ask\"\napp = \"{PROMPT_APP}\"\naddress = \"127.0.0.1\"\nport = {}\n",
        super::PORT
    );
    c.write_file(ASK_RULES_FILE, rules.as_bytes(), 0o644)?;
    // polkit lets a user answer prompts about their own processes without a password only in an
    // active session, and a container has no seat, so no session of it is ever active. This
    // local rule gives the test user what an active session would, and nothing more.
    let polkit_rule = format!(
        "// Written by tests/systemd.rs.\npolkit.addRule(function(action, subject) {{\n    if (action.id == \"org.slicewall.Firewall1.answer-own\" && subject.user == \"{USER}\") {{\n        return polkit.Result.YES;\n    }}\n}});\n"
    );
    c.write_file(POLKIT_RULE, polkit_rule.as_bytes(), 0o644)?;
    lab.reload_rules()?;
    c.exec_ok(&["install", "-d", "-o", USER, DOUBLE_DIR])?;
    c.exec_ok(&["runuser", "-u", USER, "--", "touch", RECORD, COMMANDS])?;

    // The user's own session bus, as a desktop session would have.
    let bus = format!("unix:path=/run/user/{uid}/harness-bus");
    c.exec_ok(&[
        "systemd-run",
        "--quiet",
        "--uid",
        &uid,
        "--unit",
        "harness-session-bus.service",
        "dbus-daemon",
        "--session",
        "--nofork",
        &format!("--address={bus}"),
    ])?;
    wait_for(Duration::from_secs(10), "the session bus", || {
        Ok(
            c.exec(&["test", "-S", &format!("/run/user/{uid}/harness-bus")])
                .status
                .success(),
        )
    })?;
    start_double(lab, &[])?;
    c.exec_ok(&[
        "systemd-run",
        "--quiet",
        "--uid",
        &uid,
        "--unit",
        AGENT_UNIT,
        &format!("--setenv=DBUS_SESSION_BUS_ADDRESS={bus}"),
        "--setenv=XDG_CONFIG_HOME=/nonexistent",
        "/usr/bin/slicewall-agent",
    ])?;
    wait_for(Duration::from_secs(10), "the agent to register", || {
        let journal = c.exec(&["journalctl", "--no-pager", "-u", AGENT_UNIT]);
        Ok(String::from_utf8_lossy(&journal.stdout).contains("registered as the prompt agent"))
    })
}

/// (Re)starts the double as the test user with extra arguments.
fn start_double(lab: &Lab, args: &[&str]) -> Result<(), String> {
    let c = lab.container();
    let uid = lab.uid.to_string();
    let _ = c.exec(&["systemctl", "stop", DOUBLE_UNIT]);
    let _ = c.exec(&["systemctl", "reset-failed", DOUBLE_UNIT]);
    let mut command = vec![
        "systemd-run".to_owned(),
        "--quiet".into(),
        "--uid".into(),
        uid.clone(),
        "--unit".into(),
        DOUBLE_UNIT.into(),
        format!("--setenv=DBUS_SESSION_BUS_ADDRESS=unix:path=/run/user/{uid}/harness-bus"),
        "/usr/bin/notification-double".into(),
        "--record".into(),
        RECORD.into(),
        "--commands".into(),
        COMMANDS.into(),
    ];
    command.extend(args.iter().map(|arg| (*arg).to_owned()));
    let command: Vec<&str> = command.iter().map(String::as_str).collect();
    c.exec_ok(&command)?;
    wait_for(
        Duration::from_secs(10),
        "the double to own its name",
        || {
            let journal = c.exec(&["journalctl", "--no-pager", "-u", DOUBLE_UNIT]);
            Ok(String::from_utf8_lossy(&journal.stdout).contains("ready"))
        },
    )
}

fn records(lab: &Lab) -> Result<Vec<serde_json::Value>, String> {
    lab.container()
        .exec_ok(&["cat", RECORD])?
        .lines()
        .filter(|line| line.contains("\"Notify\""))
        .map(|line| serde_json::from_str(line).map_err(|error| format!("{error}: {line}")))
        .collect()
}

fn press_next(lab: &Lab, key: &str) -> Result<(), String> {
    lab.container()
        .write_file(COMMANDS, format!("press {key}\n").as_bytes(), 0o666)
}

fn prompt_unit() -> String {
    format!("app-test-{PROMPT_APP}-{}.scope", random_suffix())
}

/// Runs the probe in a new scope of the app and returns its result line and how long it took.
fn probe(lab: &Lab) -> (String, Duration) {
    let started = Instant::now();
    let line = lab.probe_in_user_scope(&prompt_unit());
    (line, started.elapsed())
}

fn allow_always_writes_rule(lab: &Lab) -> Result<(), String> {
    let before = records(lab)?.len();
    press_next(lab, "allow-always")?;
    let (line, _) = probe(lab);
    expect_allowed("the probe after Allow always", &line)
        .map_err(|error| format!("{error}\n{}", agent_journal(lab)))?;

    let records = records(lab)?;
    let record = records
        .get(before)
        .ok_or("the double recorded no notification")?;
    let keys: Vec<&str> = record["actions"]
        .as_array()
        .ok_or("the record has no actions")?
        .iter()
        .filter_map(|pair| pair[0].as_str())
        .collect();
    if keys != ["allow-once", "allow-always", "deny-once", "deny-always"] {
        return Err(format!("unexpected buttons {keys:?}"));
    }
    let summary = field(record, "summary").unwrap_or("");
    if summary != "Prompt wants to connect" {
        return Err(format!("unexpected summary {summary:?}"));
    }
    let body = field(record, "body").unwrap_or("");
    for expected in [
        super::PROBE,
        "127.0.0.1 port 18080/tcp",
        "app-test-org.example.Prompt-",
    ] {
        if !body.contains(expected) {
            return Err(format!("the body lacks {expected:?}: {body:?}"));
        }
    }

    let c = lab.container();
    let answers = c.exec_ok(&["cat", ANSWERS_FILE])?;
    if !answers.contains(super::PROBE) {
        return Err(format!(
            "{ANSWERS_FILE} does not name the probe:\n{answers}"
        ));
    }
    let answered = c.journal_json(&["-t", "slicewalld", "SLICEWALL_REASON=prompt-answer"])?;
    let record = answered.last().ok_or("no prompt-answer record")?;
    if field(record, "SLICEWALL_ANSWERED_BY") != Some(lab.uid.to_string().as_str()) {
        return Err(format!(
            "SLICEWALL_ANSWERED_BY is {:?}, expected {}",
            field(record, "SLICEWALL_ANSWERED_BY"),
            lab.uid
        ));
    }
    let bus_name = field(record, "SLICEWALL_ANSWERED_BUS_NAME").unwrap_or("");
    if !bus_name.starts_with(':') {
        return Err(format!(
            "SLICEWALL_ANSWERED_BUS_NAME is {bus_name:?}, expected a unique bus name"
        ));
    }
    // Later cases need prompts again.
    c.exec_ok(&["rm", "-f", ANSWERS_FILE])?;
    lab.reload_rules()
}

/// A program whose file name holds a newline and TOML is answered "allow always": the answers
/// file must gain that one rule, with the name kept inside its comment.
fn hostile_exe_name(lab: &Lab) -> Result<(), String> {
    let c = lab.container();
    let directory = format!("/tmp/hostile-{}", random_suffix());
    let exe = format!("{directory}/probe\n[[rule]]\naction = \"allow\"\npriority = 1000\n# x");
    c.exec_ok(&["mkdir", "-m", "755", &directory])?;
    c.exec_ok(&["cp", super::PROBE, &exe])?;
    press_next(lab, "allow-always")?;
    let output = c.run_user_scope(USER, lab.uid, &prompt_unit(), &[&exe, "tcp", &target()]);
    let line = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let answers = c.exec_ok(&["cat", ANSWERS_FILE]);
    c.exec_ok(&["rm", "-rf", &directory])?;
    c.exec_ok(&["rm", "-f", ANSWERS_FILE])?;
    lab.reload_rules()?;

    expect_allowed("the hostile probe after Allow always", &line)
        .map_err(|error| format!("{error}\n{}", agent_journal(lab)))?;
    let answers = answers?;
    // The rule's own exe value may hold the name as a multi-line string, so the file is
    // parsed rather than searched for headers.
    let parsed: toml::Table = toml::from_str(&answers)
        .map_err(|error| format!("{ANSWERS_FILE} is not valid TOML: {error}\n{answers}"))?;
    let tables = parsed
        .get("rule")
        .and_then(toml::Value::as_array)
        .map_or(0, Vec::len);
    let comment_escaped = answers
        .lines()
        .any(|line| line.starts_with('#') && line.contains("probe\\n[[rule]]"));
    if tables != 1 || !comment_escaped {
        return Err(format!(
            "{ANSWERS_FILE} has {tables} [[rule]] tables, expected 1 with the name escaped:\n{answers}"
        ));
    }
    Ok(())
}

fn deny_once_fails_fast(lab: &Lab) -> Result<(), String> {
    press_next(lab, "deny-once")?;
    let (line, took) = probe(lab);
    expect_denied("the probe after Deny once", &line)?;
    // The default prompt timeout is 30 s; a denial well before it came from the answer.
    if took > Duration::from_secs(10) {
        return Err(format!(
            "the denial took {:.1} s, as if the prompt timed out",
            took.as_secs_f64()
        ));
    }
    Ok(())
}

fn without_actions_hints(lab: &Lab) -> Result<(), String> {
    start_double(lab, &["--no-actions"])?;
    let result = without_actions_checks(lab);
    start_double(lab, &[]).and(result)
}

fn without_actions_checks(lab: &Lab) -> Result<(), String> {
    let before = records(lab)?.len();
    let unit = prompt_unit();
    let mut child = lab.container().run_user_scope_background(
        USER,
        lab.uid,
        &unit,
        &[super::PROBE, "tcp", &target()],
    )?;
    let mut hint = String::new();
    let waited = wait_for(Duration::from_secs(10), "a notification", || {
        let records = records(lab)?;
        if let Some(record) = records.get(before) {
            hint = field(record, "body").unwrap_or("").to_owned();
            return Ok(true);
        }
        Ok(false)
    });
    // Answer as root with slicewallctl, so the probe ends before the timeout.
    let listed = lab.container().exec_ok(&["slicewallctl", "prompts"]);
    if let Ok(listed) = &listed {
        for id in listed
            .lines()
            .skip(1)
            .filter_map(|line| line.split_whitespace().next()?.parse::<u64>().ok())
        {
            let _ = lab.container().exec(&[
                "slicewallctl",
                "prompts",
                "answer",
                &id.to_string(),
                "deny",
            ]);
        }
    }
    let _ = child.wait();
    waited?;
    if !hint.contains("slicewallctl prompts answer") {
        return Err(format!("the body has no slicewallctl hint: {hint:?}"));
    }
    listed.map(drop)
}

/// Measures the time from starting a probe to the double's record of its notification, over
/// 20 prompts answered with Allow once, and prints the median. It asserts no timing.
fn notification_latency(lab: &Lab) -> Result<(), String> {
    let mut samples = Vec::new();
    for _ in 0..20 {
        let before = records(lab)?.len();
        press_next(lab, "allow-once")?;
        let started = Instant::now();
        let unit = prompt_unit();
        let mut child = lab.container().run_user_scope_background(
            USER,
            lab.uid,
            &unit,
            &[super::PROBE, "tcp", &target()],
        )?;
        let waited = wait_for(Duration::from_secs(10), "a notification", || {
            Ok(records(lab)?.len() > before)
        });
        samples.push(started.elapsed());
        let _ = child.wait();
        waited?;
    }
    samples.sort();
    println!(
        "connect to notification: median {:.0} ms of {} (includes starting the scope and polling the record every 100 ms)",
        samples[samples.len() / 2].as_secs_f64() * 1000.0,
        samples.len()
    );
    Ok(())
}

/// Returns the last lines the agent and the daemon logged, for failure messages.
fn agent_journal(lab: &Lab) -> String {
    let journal = lab.container().exec(&[
        "journalctl",
        "--no-pager",
        "--lines=20",
        "-u",
        AGENT_UNIT,
        "-u",
        "slicewalld.service",
    ]);
    String::from_utf8_lossy(&journal.stdout).into_owned()
}

/// Takes the README's screenshot of a real prompt: stops the double, runs Xvfb and dunst as the
/// test user on the user's session bus, makes a flow that raises a prompt, and captures the
/// screen once the agent has shown it. Runs only when [`SCREENSHOT_VARIABLE`] names the output
/// file, as `scripts/screenshot-prompt.sh` does.
fn screenshot(lab: &Lab) -> Result<(), String> {
    let Some(output) = std::env::var_os(SCREENSHOT_VARIABLE) else {
        println!("  skipping: set {SCREENSHOT_VARIABLE}=FILE to take a screenshot of a prompt");
        return Ok(());
    };
    for tool in ["Xvfb", "dunst", "import"] {
        if super::container::find_in_path(tool).is_none() {
            return Err(format!(
                "{tool} is not installed; scripts/screenshot-prompt.sh installs it"
            ));
        }
    }
    let c = lab.container();
    let _ = c.exec(&["systemctl", "stop", DOUBLE_UNIT]);
    let result = screenshot_steps(lab, std::path::Path::new(&output));
    for unit in ["harness-dunst.service", "harness-xvfb.service"] {
        let _ = c.exec(&["systemctl", "stop", unit]);
    }
    start_double(lab, &[])?;
    result
}

fn screenshot_steps(lab: &Lab, output: &std::path::Path) -> Result<(), String> {
    let c = lab.container();
    let uid = lab.uid.to_string();
    let bus = format!("--setenv=DBUS_SESSION_BUS_ADDRESS=unix:path=/run/user/{uid}/harness-bus");
    let display = format!("--setenv=DISPLAY={SCREENSHOT_DISPLAY}");
    let dunstrc = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/dunstrc");
    c.copy_file(&dunstrc, "/run/harness-dunstrc", 0o644)?;
    c.exec_ok(&[
        "systemd-run",
        "--quiet",
        "--uid",
        &uid,
        "--unit",
        "harness-xvfb.service",
        "Xvfb",
        SCREENSHOT_DISPLAY,
        "-screen",
        "0",
        "1024x400x24",
        "-nolisten",
        "tcp",
    ])?;
    wait_for(Duration::from_secs(10), "Xvfb", || {
        Ok(c.exec(&["test", "-S", "/tmp/.X11-unix/X97"])
            .status
            .success())
    })?;
    c.exec_ok(&[
        "systemd-run",
        "--quiet",
        "--uid",
        &uid,
        "--unit",
        "harness-dunst.service",
        &bus,
        &display,
        "dunst",
        "-config",
        "/run/harness-dunstrc",
    ])?;
    std::thread::sleep(Duration::from_secs(1));

    let mut probe = c.run_user_scope_background(
        USER,
        lab.uid,
        &prompt_unit(),
        &[super::PROBE, "tcp", &target()],
    )?;
    let id = super::wait_for_new_prompt(c, &[])?;
    // dunst draws the notification a moment after the agent sends it.
    std::thread::sleep(Duration::from_millis(1500));
    // The test user can write the double's directory.
    let shot = "/run/harness-double/prompt.png";
    let captured = c.exec(&[
        "runuser",
        "-u",
        USER,
        "--",
        "env",
        &format!("DISPLAY={SCREENSHOT_DISPLAY}"),
        "import",
        "-window",
        "root",
        shot,
    ]);
    let _ = c.exec(&["slicewallctl", "prompts", "answer", &id.to_string(), "deny"]);
    let _ = probe.wait();
    if !captured.status.success() {
        return Err(format!(
            "import failed: {}",
            String::from_utf8_lossy(&captured.stderr)
        ));
    }
    let png = c.exec(&["cat", shot]);
    if !png.status.success() || !png.stdout.starts_with(b"\x89PNG") {
        return Err(format!("{shot} is not a PNG file"));
    }
    std::fs::write(output, &png.stdout)
        .map_err(|error| format!("failed to write {}: {error}", output.display()))?;
    println!("  wrote {}", output.display());
    Ok(())
}

/// Output of the script in `prompt_app_cannot_answer_itself`, in a directory the user owns.
const SELF_ANSWER_LOG: &str = "/run/harness-double/self-answer.log";

/// A program that tries to answer its own prompt, from inside its own scope, is refused: polkit
/// lets the user answer about their own processes without a password, but not from inside the
/// unit the prompt is about.
fn app_cannot_answer_itself(lab: &Lab) -> Result<(), String> {
    let c = lab.container();
    let _ = c.exec(&["rm", "-f", SELF_ANSWER_LOG]);
    let script = format!(
        "{} tcp {} >/dev/null & sleep 1; id=$(slicewallctl prompts | awk 'NR == 2 {{ print $1 }}'); \
         slicewallctl prompts answer \"$id\" allow >/dev/null 2>&1; echo \"exit $?\" > {SELF_ANSWER_LOG}; wait",
        super::PROBE,
        target()
    );
    let mut child =
        c.run_user_scope_background(USER, lab.uid, &prompt_unit(), &["sh", "-c", &script])?;
    let mut log = String::new();
    let waited = wait_for(Duration::from_secs(10), "the self-answer attempt", || {
        log = String::from_utf8_lossy(&c.exec(&["cat", SELF_ANSWER_LOG]).stdout).into_owned();
        Ok(!log.is_empty())
    });
    // End the held probe: root may answer any prompt.
    if let Ok(ids) = super::open_prompt_ids(c) {
        for id in ids {
            let _ = c.exec(&["slicewallctl", "prompts", "answer", &id.to_string(), "deny"]);
        }
    }
    let _ = child.wait();
    waited?;
    // slicewallctl exits with 4 when polkit refuses.
    if log.trim() != "exit 4" {
        return Err(format!(
            "the program answering its own prompt got {:?}, expected exit 4 (not authorized)",
            log.trim()
        ));
    }
    Ok(())
}

/// An "Allow always" answer applies at once even while another rule file has an error, which
/// blocks every reload: repeating the flow does not prompt again.
fn answer_applies_beside_a_broken_file(lab: &Lab) -> Result<(), String> {
    let c = lab.container();
    let broken = "/etc/slicewall/rules.d/64-harness-broken.toml";
    c.write_file(broken, b"[[rule]]\naction = \"perhaps\"\n", 0o644)?;
    let result = (|| {
        press_next(lab, "allow-always")?;
        let (line, _) = probe(lab);
        expect_allowed("the probe answered Allow always", &line)?;
        let before = records(lab)?.len();
        let unit = prompt_unit();
        let again = lab.probe_in_user_scope(&unit);
        expect_allowed("the repeated probe", &again)?;
        let after = records(lab)?.len();
        if after != before {
            return Err(format!(
                "the repeated flow prompted again ({} new notifications)",
                after - before
            ));
        }
        Ok(())
    })();
    c.exec_ok(&["rm", "-f", broken, ANSWERS_FILE])?;
    lab.reload_rules()?;
    result
}
