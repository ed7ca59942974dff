//! End-to-end tests of slicewalld under a real systemd.
//!
//! Boots one throwaway container with the machine's own systemd (see `systemd/container.rs`).
//! Installs the built `slicewalld`, `slicewallctl`, the unit, the catalog and the vendor rules
//! into it and starts `slicewalld.service`. Each case then runs real units: transient services,
//! system scopes and user scopes of a user manager. Clients connect to a listener on the
//! container's own loopback, inside its private network namespace.
//!
//! Runs without libtest (`harness = false`): it prints one line per case, always tears the
//! container down (also after a panic, SIGINT or SIGTERM), and exits 1 if any case failed.
//! Arguments that do not start with `-` select the cases whose names contain them.

#[path = "systemd/container.rs"]
mod container;
#[path = "systemd/prompts.rs"]
mod prompts;

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use container::Container;

/// Port of the listener inside the container.
const PORT: u16 = 18080;
/// File in the container where the listener appends one line per accepted connection.
const ACCEPTS: &str = "/run/harness/accepts";
/// The harness's own rule file in the container.
const RULES_FILE: &str = "/etc/slicewall/rules.d/60-harness.toml";
/// The probe example, installed in the container.
const PROBE: &str = "/usr/bin/slicewall-probe";
/// Test user and the application ID its scopes carry.
const USER: &str = "slicewalltest";
const APP_ID: &str = "org.example.App";

/// Rules of the harness. The vendor rules stay installed: they allow loopback and system.slice,
/// and each rule here names a unit or an app, which outranks them.
const RULES: &str = r#"# Written by tests/systemd.rs.
[[rule]]
action = "deny"
unit = "svc-deny.service"
address = "127.0.0.1"
port = 18080

[[rule]]
action = "deny"
unit = "svc-loop.service"
address = "127.0.0.1"
port = 18080

[[rule]]
action = "deny"
unit = "harness-deny.scope"
address = "127.0.0.1"
port = 18080

[[rule]]
action = "deny"
app = "org.example.App"
address = "127.0.0.1"
port = 18080
"#;

/// Active container, for the signal handler's teardown.
static ACTIVE: Mutex<Option<Arc<Container>>> = Mutex::new(None);
/// Set when SIGINT or SIGTERM arrived, after which no further case starts.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

type Case = fn(&Lab) -> Result<(), String>;

const CASES: &[(&str, Case)] = &[
    ("daemon_runs_under_systemd", daemon_runs_under_systemd),
    (
        "unit_rule_survives_unit_restart",
        unit_rule_survives_unit_restart,
    ),
    (
        "app_rule_applies_to_user_scopes",
        app_rule_applies_to_user_scopes,
    ),
    ("system_scope_is_its_own_unit", system_scope_is_its_own_unit),
    (
        "audit_records_name_unit_app_rule",
        audit_records_name_unit_app_rule,
    ),
    (
        "daemon_restart_lets_nothing_through",
        daemon_restart_lets_nothing_through,
    ),
    (
        "prefix_dropin_covers_app_scopes",
        prefix_dropin_covers_app_scopes,
    ),
    (
        "slice_dropin_covers_its_units",
        slice_dropin_covers_its_units,
    ),
    ("status_and_units_over_dbus", status_and_units_over_dbus),
    (
        "unit_deny_cuts_established_tcp",
        unit_deny_cuts_established_tcp,
    ),
    ("nftables_table_is_restored", nftables_table_is_restored),
    (
        "rejected_reload_degrades_status",
        rejected_reload_degrades_status,
    ),
    ("bus_call_starts_daemon", bus_call_starts_daemon),
    ("prompts_answered_over_dbus", prompts_answered_over_dbus),
    (
        "slicewallctl_answers_and_manages",
        slicewallctl_answers_and_manages,
    ),
];

/// MESSAGE_ID of the daemon's rules-rejected records.
const RULES_REJECTED_ID: &str = "12072fc6f38d445399e24e1268586854";

/// MESSAGE_ID of the daemon's rules-loaded records.
const RULES_LOADED_ID: &str = "32dc7c991f764cb6852204a892137fe1";

fn main() -> ExitCode {
    // cargo passes libtest's options through; they are ignored, with the values of those that
    // take a separate one.
    let mut filters = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if [
            "--test-threads",
            "--skip",
            "--color",
            "--format",
            "--logfile",
            "-Z",
        ]
        .contains(&arg.as_str())
        {
            args.next();
        } else if !arg.starts_with('-') {
            filters.push(arg);
        }
    }
    if std::env::args().any(|arg| arg == "--list") {
        for (name, _) in CASES.iter().chain(prompts::PROMPT_CASES) {
            println!("{name}: test");
        }
        return ExitCode::SUCCESS;
    }
    let matches =
        |name: &str| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()));
    let selected: Vec<(&str, Case)> = CASES
        .iter()
        .copied()
        .filter(|(name, _)| matches(name))
        .collect();
    let prompt_cases: Vec<(&str, Case)> = prompts::PROMPT_CASES
        .iter()
        .copied()
        .filter(|(name, _)| matches(name))
        .collect();
    if selected.is_empty() && prompt_cases.is_empty() {
        println!("no case matches {filters:?}");
        return ExitCode::SUCCESS;
    }
    if let Err(reason) = container::check_support().and_then(|()| check_tools()) {
        println!("skipping: {reason}");
        return ExitCode::SUCCESS;
    }
    handle_signals();

    let started = Instant::now();
    println!("booting the container");
    let container = match Container::boot("harness") {
        Ok(container) => Arc::new(container),
        Err(error) => {
            println!("FAILED: boot: {error}");
            return ExitCode::FAILURE;
        }
    };
    *ACTIVE.lock().unwrap() = Some(Arc::clone(&container));
    println!("booted in {:.1} s", started.elapsed().as_secs_f64());

    let mut failed = 0;
    match std::panic::catch_unwind(AssertUnwindSafe(|| Lab::set_up(Arc::clone(&container)))) {
        Ok(Ok(lab)) => {
            failed += run_cases(&lab, &selected);
            // The prompt cases start the test user's desktop agent, after which the vendor
            // rules' `ask` for user.slice prompts instead of giving the ask fallback, so they run
            // after the other cases.
            if !prompt_cases.is_empty() {
                match prompts::check_daemon(&lab).and_then(|()| prompts::set_up(&lab)) {
                    Ok(()) => failed += run_cases(&lab, &prompt_cases),
                    Err(reason) if reason == "slicewalld has no prompts" => {
                        println!("skipping: {reason}");
                    }
                    Err(error) => {
                        failed += 1;
                        println!("FAILED: prompt setup: {error}");
                    }
                }
            }
        }
        Ok(Err(error)) => {
            failed += 1;
            println!("FAILED: setup: {error}");
        }
        Err(panic) => {
            failed += 1;
            println!("FAILED: setup panicked: {}", panic_message(&panic));
        }
    }

    ACTIVE.lock().unwrap().take();
    for error in container.teardown() {
        println!("teardown: {error}");
    }
    println!(
        "harness: {} cases, {failed} failed, {:.1} s from boot to teardown",
        selected.len() + prompt_cases.len(),
        started.elapsed().as_secs_f64()
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs cases in order, printing one line each, and returns how many failed.
fn run_cases(lab: &Lab, cases: &[(&str, Case)]) -> usize {
    let mut failed = 0;
    for (name, case) in cases {
        if INTERRUPTED.load(Ordering::SeqCst) {
            break;
        }
        let case_started = Instant::now();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| case(lab)))
            .unwrap_or_else(|panic| Err(panic_message(&panic)));
        let seconds = case_started.elapsed().as_secs_f64();
        match result {
            Ok(()) => println!("test {name} ... ok ({seconds:.1} s)"),
            Err(reason) => {
                failed += 1;
                println!("test {name} ... FAILED ({seconds:.1} s): {reason}");
            }
        }
    }
    failed
}

/// Tools the cases run inside the container, which shares the machine's files.
fn check_tools() -> Result<(), String> {
    for tool in ["socat", "useradd", "runuser", "journalctl", "systemd-run"] {
        if container::find_in_path(tool).is_none() {
            return Err(format!("{tool} is not installed"));
        }
    }
    if !probe_path().with_file_name("notification-double").exists() {
        return Err(format!(
            "{} is missing; build it with `cargo build --example notification-double`",
            probe_path().with_file_name("notification-double").display()
        ));
    }
    if !probe_path().exists() {
        return Err(format!(
            "{} is missing; build it with `cargo build --example probe`",
            probe_path().display()
        ));
    }
    Ok(())
}

/// Returns the path of the probe example, which cargo builds next to the test binaries' deps
/// directory.
fn agent_path() -> std::path::PathBuf {
    probe_path().with_file_name("agent")
}

fn probe_path() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let target = exe
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("."));
    target.join("examples").join("probe")
}

/// Tears the container down on SIGINT or SIGTERM, then exits.
fn handle_signals() {
    std::thread::spawn(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("failed to build the signal runtime");
        let signal = runtime.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let mut interrupt = signal(SignalKind::interrupt()).expect("failed to handle SIGINT");
            let mut terminate = signal(SignalKind::terminate()).expect("failed to handle SIGTERM");
            tokio::select! {
                _ = interrupt.recv() => "SIGINT",
                _ = terminate.recv() => "SIGTERM",
            }
        });
        INTERRUPTED.store(true, Ordering::SeqCst);
        println!("{signal}: tearing the container down");
        let container = ACTIVE.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(container) = container {
            for error in container.teardown() {
                println!("teardown: {error}");
            }
        }
        std::process::exit(if signal == "SIGINT" { 130 } else { 143 });
    });
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    let text = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|text| (*text).to_owned()))
        .unwrap_or_else(|| "unknown panic".into());
    format!("panicked: {text}")
}

/// The container with slicewalld running in it, a listener and a test user.
struct Lab {
    container: Arc<Container>,
    uid: u32,
}

impl Lab {
    fn set_up(container: Arc<Container>) -> Result<Lab, String> {
        let c = &container;
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        c.copy_file(
            Path::new(env!("CARGO_BIN_EXE_slicewalld")),
            "/usr/bin/slicewalld",
            0o755,
        )?;
        c.copy_file(
            Path::new(env!("CARGO_BIN_EXE_slicewallctl")),
            "/usr/bin/slicewallctl",
            0o755,
        )?;
        c.copy_file(&probe_path(), PROBE, 0o755)?;
        c.copy_file(
            &root.join("units/slicewalld.service"),
            "/usr/lib/systemd/system/slicewalld.service",
            0o644,
        )?;
        c.copy_file(
            &root.join("units/slicewall.catalog"),
            "/usr/lib/systemd/catalog/slicewall.catalog",
            0o644,
        )?;
        let rules_dir = root.join("units/rules.d");
        let rules = std::fs::read_dir(&rules_dir)
            .map_err(|error| format!("failed to read {}: {error}", rules_dir.display()))?;
        for entry in rules.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".toml") {
                c.copy_file(
                    &entry.path(),
                    &format!("/usr/lib/slicewall/rules.d/{name}"),
                    0o644,
                )?;
            }
        }
        c.copy_file(
            &root.join("tests/systemd/slicewall-bpf.mount"),
            "/etc/systemd/system/run-slicewall\\x2dbpf.mount",
            0o644,
        )?;
        c.copy_file(
            &root.join("tests/systemd/pin-dir.conf"),
            "/etc/systemd/system/slicewalld.service.d/pin-dir.conf",
            0o644,
        )?;
        c.copy_file(
            &root.join("dbus/org.slicewall.Firewall1.conf"),
            "/usr/share/dbus-1/system.d/org.slicewall.Firewall1.conf",
            0o644,
        )?;
        c.copy_file(
            &root.join("dbus/org.slicewall.Firewall1.service"),
            "/usr/share/dbus-1/system-services/org.slicewall.Firewall1.service",
            0o644,
        )?;
        c.copy_file(
            &root.join("dbus/org.slicewall.Firewall1.xml"),
            "/usr/share/dbus-1/interfaces/org.slicewall.Firewall1.xml",
            0o644,
        )?;
        c.exec_ok(&[
            "busctl",
            "call",
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "ReloadConfig",
        ])?;
        c.copy_file(
            &root.join("polkit/org.slicewall.Firewall1.policy"),
            "/usr/share/polkit-1/actions/org.slicewall.Firewall1.policy",
            0o644,
        )?;
        c.exec_ok(&["systemctl", "start", "polkit.service"])?;
        c.write_file(RULES_FILE, RULES.as_bytes(), 0o644)?;
        c.exec_ok(&["journalctl", "--update-catalog"])?;
        c.exec_ok(&["systemctl", "daemon-reload"])?;
        let security = c.exec(&[
            "systemd-analyze",
            "security",
            "--no-pager",
            "slicewalld.service",
        ]);
        let security = String::from_utf8_lossy(&security.stdout);
        if let Some(line) = security
            .lines()
            .find(|line| line.contains("Overall exposure level"))
        {
            println!(
                "systemd-analyze security: {}",
                line.trim_start_matches(['→', ' '])
            );
        }

        c.exec_ok(&["mkdir", "-p", "/run/harness"])?;
        c.exec_ok(&["touch", ACCEPTS])?;
        let listen = format!("TCP-LISTEN:{PORT},bind=127.0.0.1,reuseaddr,fork");
        let serve = format!("SYSTEM:echo >> {ACCEPTS}; exec cat");
        c.exec_ok(&[
            "systemd-run",
            "--quiet",
            "--unit",
            "harness-listen.service",
            "socat",
            &listen,
            &serve,
        ])?;

        let started = Instant::now();
        c.exec_ok(&["systemctl", "start", "slicewalld.service"])?;
        println!(
            "slicewalld.service started in {:.2} s",
            started.elapsed().as_secs_f64()
        );
        let uid = c.add_user(USER)?;
        let lab = Lab { container, uid };
        // The harness's own commands run outside the container's cgroups, so the gate leaves
        // them alone; this one waits for the listener.
        wait_for(Duration::from_secs(10), "the listener to accept", || {
            let output = lab.container.exec(&[PROBE, "tcp", &target()]);
            Ok(String::from_utf8_lossy(&output.stdout).trim() == "ok")
        })?;
        Ok(lab)
    }

    fn container(&self) -> &Container {
        &self.container
    }

    fn accepts(&self) -> Result<usize, String> {
        Ok(self.container().exec_ok(&["cat", ACCEPTS])?.lines().count())
    }

    /// Runs the probe once in a new transient service and returns its result line.
    fn probe_in_service(&self, unit: &str) -> Result<String, String> {
        Ok(self.probe_with(&["--wait", "--pipe", "--unit", unit]))
    }

    /// Runs the probe once in a new scope of the system manager.
    fn probe_in_system_scope(&self, unit: &str) -> String {
        self.probe_with(&["--scope", "-u", unit])
    }

    /// Runs the probe once with `systemd-run` and these options, and returns its result line.
    fn probe_with(&self, options: &[&str]) -> String {
        let target = target();
        let mut args = vec!["systemd-run", "--quiet"];
        args.extend_from_slice(options);
        args.extend([PROBE, "tcp", target.as_str()]);
        let output = self.container().exec(&args);
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// Runs the probe once in a new scope of the test user's manager.
    fn probe_in_user_scope(&self, unit: &str) -> String {
        let output =
            self.container()
                .run_user_scope(USER, self.uid, unit, &[PROBE, "tcp", &target()]);
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// Status of a unit and the daemon's last log lines, for failure messages.
    fn diagnostics(&self, unit: &str) -> String {
        let status =
            self.container()
                .exec(&["systemctl", "status", "--no-pager", "--lines=5", unit]);
        let journal = self.container().exec(&[
            "journalctl",
            "--no-pager",
            "--lines=15",
            "-u",
            "slicewalld.service",
            "-u",
            unit,
        ]);
        format!(
            "{}\n{}",
            String::from_utf8_lossy(&status.stdout),
            String::from_utf8_lossy(&journal.stdout)
        )
    }

    /// Stops a unit and resets its failed state, so that its name can be used again.
    fn remove_unit(&self, unit: &str) {
        let _ = self.container().exec(&["systemctl", "stop", unit]);
        let _ = self.container().exec(&["systemctl", "reset-failed", unit]);
    }

    /// Reloads the daemon's rules and waits for its rules-loaded record.
    fn reload_rules(&self) -> Result<(), String> {
        let count = || -> Result<usize, String> {
            let matcher = format!("MESSAGE_ID={RULES_LOADED_ID}");
            Ok(self.container().journal_json(&[&matcher])?.len())
        };
        let before = count()?;
        self.container()
            .exec_ok(&["systemctl", "reload", "slicewalld.service"])?;
        wait_for(Duration::from_secs(10), "the rules-loaded record", || {
            Ok(count()? > before)
        })
    }

    /// Writes a per-unit drop-in file and reloads the rules.
    fn add_dropin(&self, directory: &str, contents: &str) -> Result<String, String> {
        let path = format!("/etc/slicewall/units/{directory}/50-harness.toml");
        self.container()
            .write_file(&path, contents.as_bytes(), 0o644)?;
        self.reload_rules()?;
        Ok(path)
    }

    /// Removes a file written by [`Lab::add_dropin`] and reloads the rules.
    fn remove_dropin(&self, path: &str) -> Result<(), String> {
        self.container().exec_ok(&["rm", "-f", path])?;
        self.reload_rules()
    }

    /// Runs the probe once in a new transient service in `slice`.
    fn probe_in_slice(&self, slice: &str, unit: &str) -> String {
        self.probe_with(&["--wait", "--pipe", "--slice", slice, "--unit", unit])
    }

    fn main_pid(&self) -> Result<String, String> {
        Ok(self
            .container()
            .exec_ok(&["systemctl", "show", "-P", "MainPID", "slicewalld.service"])?
            .trim()
            .to_owned())
    }
}

fn target() -> String {
    format!("127.0.0.1:{PORT}")
}

/// Checks a probe line for a denial: EPERM when the gate decided in the kernel, ECONNABORTED when
/// it held the connect and the daemon denied it.
fn is_denied(line: &str) -> bool {
    line == "error: EPERM (errno 1)" || line == "error: ECONNABORTED (errno 103)"
}

fn expect_denied(what: &str, line: &str) -> Result<(), String> {
    if is_denied(line) {
        Ok(())
    } else {
        Err(format!(
            "{what}: expected a denial, the probe printed {line:?}"
        ))
    }
}

fn expect_allowed(what: &str, line: &str) -> Result<(), String> {
    if line == "ok" {
        Ok(())
    } else {
        Err(format!("{what}: expected ok, the probe printed {line:?}"))
    }
}

/// Returns a random suffix like the ones desktop environments give application scopes.
fn random_suffix() -> u32 {
    fastrand::u32(1000..1_000_000)
}

/// Calls `check` until it returns true or `timeout` passes.
fn wait_for(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<bool, String>,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if check()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "timed out after {} s waiting for {what}",
                timeout.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Line of the `[[rule]]` header of the `index`th rule (from 0) in [`RULES`], as audit records
/// cite it.
fn rule_line(index: usize) -> usize {
    RULES
        .lines()
        .enumerate()
        .filter(|(_, line)| line.trim() == "[[rule]]")
        .nth(index)
        .map(|(number, _)| number + 1)
        .expect("RULES has that many rules")
}

fn field<'a>(record: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    record.get(name).and_then(serde_json::Value::as_str)
}

/// Waits for a denial record of slicewalld for `unit` and returns it.
fn find_denial(lab: &Lab, unit: &str) -> Result<serde_json::Value, String> {
    let mut found = None;
    wait_for(
        Duration::from_secs(5),
        &format!("a denial record for {unit}"),
        || {
            let records = lab.container().journal_json(&[
                "-t",
                "slicewalld",
                "SLICEWALL_VERDICT=deny",
                &format!("SLICEWALL_UNIT={unit}"),
            ])?;
            found = records.into_iter().last();
            Ok(found.is_some())
        },
    )?;
    Ok(found.expect("wait_for returned after a record was found"))
}

fn daemon_runs_under_systemd(lab: &Lab) -> Result<(), String> {
    let c = lab.container();
    let active = c.exec(&["systemctl", "is-active", "slicewalld.service"]);
    let active = String::from_utf8_lossy(&active.stdout).trim().to_owned();
    if active != "active" {
        return Err(format!("slicewalld.service is {active:?}, expected active"));
    }
    // Type=notify reaches active only after READY=1; the status text comes with it.
    let status = c.exec_ok(&[
        "systemctl",
        "show",
        "-P",
        "StatusText",
        "slicewalld.service",
    ])?;
    if !status.contains("slicewalld started: guarding") {
        return Err(format!("unexpected StatusText after start: {status:?}"));
    }

    let pid = lab.main_pid()?;
    c.exec_ok(&["systemctl", "reload", "slicewalld.service"])?;
    wait_for(
        Duration::from_secs(5),
        "StatusText to report the reload",
        || {
            let status = c.exec_ok(&[
                "systemctl",
                "show",
                "-P",
                "StatusText",
                "slicewalld.service",
            ])?;
            Ok(status.starts_with("reloaded "))
        },
    )?;
    let after = lab.main_pid()?;
    if after != pid {
        return Err(format!(
            "reload restarted the daemon: MainPID {pid} became {after}"
        ));
    }
    let loaded = c.journal_json(&[
        "-t",
        "slicewalld",
        "MESSAGE_ID=32dc7c991f764cb6852204a892137fe1",
    ])?;
    if loaded.is_empty() {
        return Err("no rules-loaded record in the journal after the reload".into());
    }
    let check = c.exec_ok(&["slicewallctl", "check"])?;
    if !check.contains(RULES_FILE) {
        return Err(format!(
            "slicewallctl check does not list {RULES_FILE}: {check}"
        ));
    }
    Ok(())
}

fn unit_rule_survives_unit_restart(lab: &Lab) -> Result<(), String> {
    lab.remove_unit("svc-deny.service");
    let result = unit_restart_checks(lab);
    lab.remove_unit("svc-deny.service");
    result
}

fn unit_restart_checks(lab: &Lab) -> Result<(), String> {
    let c = lab.container();
    let accepts = lab.accepts()?;
    let log = "/run/harness/svc-deny.log";
    // RemainAfterExit keeps the unit loaded after the probe exits, so it can be restarted. Each
    // start runs it in a new cgroup, whose ID the script prints before the probe.
    let script = format!(
        "stat -c 'cgroup %i' /sys/fs/cgroup$(sed -n 's/^0:://p' /proc/self/cgroup); exec {PROBE} tcp {}",
        target()
    );
    let output = format!("StandardOutput=append:{log}");
    c.exec_ok(&[
        "systemd-run",
        "--quiet",
        "--unit",
        "svc-deny.service",
        "-p",
        "RemainAfterExit=yes",
        "-p",
        &output,
        "sh",
        "-c",
        &script,
    ])?;
    let read_log = || -> Result<Vec<String>, String> {
        Ok(c.exec_ok(&["cat", log])?
            .lines()
            .map(str::to_owned)
            .collect())
    };
    wait_for(
        Duration::from_secs(15),
        "the first run of svc-deny.service",
        || Ok(read_log()?.len() >= 2),
    )?;
    c.exec_ok(&["systemctl", "restart", "svc-deny.service"])?;
    wait_for(
        Duration::from_secs(15),
        "the restarted svc-deny.service",
        || Ok(read_log()?.len() >= 4),
    )?;
    let lines = read_log()?;
    if lines[0] == lines[2] {
        return Err(format!("the restart kept the cgroup: {lines:?}"));
    }
    expect_denied("svc-deny.service, first run", &lines[1])?;
    expect_denied("svc-deny.service after a restart", &lines[3])?;
    if lab.accepts()? != accepts {
        return Err("the listener accepted a connection from svc-deny.service".into());
    }

    let allowed = lab.probe_in_service("svc-allow.service")?;
    expect_allowed("svc-allow.service", &allowed)?;
    if lab.accepts()? != accepts + 1 {
        return Err("the listener did not count the connection of svc-allow.service".into());
    }
    Ok(())
}

fn app_rule_applies_to_user_scopes(lab: &Lab) -> Result<(), String> {
    let accepts = lab.accepts()?;
    for run in ["first scope", "second scope (a restart of the app)"] {
        let unit = format!("app-test-{APP_ID}-{}.scope", random_suffix());
        let line = lab.probe_in_user_scope(&unit);
        expect_denied(&format!("{unit}, {run}"), &line)?;
    }
    if lab.accepts()? != accepts {
        return Err(format!("the listener accepted a connection from {APP_ID}"));
    }
    let other = format!("app-test-org.example.Other-{}.scope", random_suffix());
    expect_allowed(&other, &lab.probe_in_user_scope(&other))?;
    Ok(())
}

fn system_scope_is_its_own_unit(lab: &Lab) -> Result<(), String> {
    let accepts = lab.accepts()?;
    expect_denied(
        "harness-deny.scope",
        &lab.probe_in_system_scope("harness-deny.scope"),
    )?;
    expect_allowed(
        "harness-allow.scope",
        &lab.probe_in_system_scope("harness-allow.scope"),
    )?;
    if lab.accepts()? != accepts + 1 {
        return Err("the listener did not count exactly the allowed scope's connection".into());
    }
    let record = find_denial(lab, "harness-deny.scope")?;
    let cgroup = field(&record, "SLICEWALL_CGROUP");
    if cgroup != Some("/system.slice/harness-deny.scope") {
        return Err(format!("the denial names cgroup {cgroup:?}"));
    }
    Ok(())
}

fn audit_records_name_unit_app_rule(lab: &Lab) -> Result<(), String> {
    lab.remove_unit("svc-deny.service");
    expect_denied(
        "svc-deny.service",
        &lab.probe_in_service("svc-deny.service")?,
    )?;
    let record = find_denial(lab, "svc-deny.service")?;
    let rule = format!("{RULES_FILE}:{}", rule_line(0));
    for (name, expected) in [
        ("SLICEWALL_RULE", rule.as_str()),
        ("SLICEWALL_REASON", "rule"),
        ("SLICEWALL_EXE", PROBE),
        ("SLICEWALL_ADDRESS", "127.0.0.1"),
        ("SLICEWALL_PORT", "18080"),
        ("SLICEWALL_PROTOCOL", "tcp"),
        ("SLICEWALL_CGROUP", "/system.slice/svc-deny.service"),
    ] {
        if field(&record, name) != Some(expected) {
            return Err(format!(
                "svc-deny.service record: {name} is {:?}, expected {expected:?}",
                field(&record, name)
            ));
        }
    }

    let unit = format!("app-test-{APP_ID}-{}.scope", random_suffix());
    expect_denied(&unit, &lab.probe_in_user_scope(&unit))?;
    let record = find_denial(lab, &unit)?;
    let rule = format!("{RULES_FILE}:{}", rule_line(3));
    let uid = lab.uid.to_string();
    for (name, expected) in [
        ("SLICEWALL_APP", APP_ID),
        ("SLICEWALL_RULE", rule.as_str()),
        ("SLICEWALL_UID", uid.as_str()),
        ("SLICEWALL_EXE", PROBE),
    ] {
        if field(&record, name) != Some(expected) {
            return Err(format!(
                "{unit} record: {name} is {:?}, expected {expected:?}",
                field(&record, name)
            ));
        }
    }
    Ok(())
}

fn daemon_restart_lets_nothing_through(lab: &Lab) -> Result<(), String> {
    lab.remove_unit("svc-loop.service");
    let result = restart_checks(lab);
    lab.remove_unit("svc-loop.service");
    result
}

fn restart_checks(lab: &Lab) -> Result<(), String> {
    let c = lab.container();
    let accepts = lab.accepts()?;
    let log = "/run/harness/svc-loop.log";
    // A new probe process for every attempt, so attempts during the restart are programs the
    // gate has not identified yet as well as known ones.
    let script = format!("while :; do {PROBE} tcp {}; sleep 0.01; done", target());
    let output = format!("StandardOutput=append:{log}");
    c.exec_ok(&[
        "systemd-run",
        "--quiet",
        "--unit",
        "svc-loop.service",
        "-p",
        &output,
        "sh",
        "-c",
        &script,
    ])?;
    let attempts = || -> Result<usize, String> { Ok(c.exec_ok(&["cat", log])?.lines().count()) };
    wait_for(Duration::from_secs(10), "the loop's first attempts", || {
        Ok(attempts()? >= 5)
    })
    .map_err(|error| {
        format!(
            "{error}\n{}\n{}",
            lab.diagnostics("svc-loop.service"),
            c.exec_ok(&["cat", log]).unwrap_or_default()
        )
    })?;

    let pid = lab.main_pid()?;
    let before = attempts()?;
    c.exec_ok(&["systemctl", "restart", "slicewalld.service"])?;
    let after_restart = attempts()?;
    let new_pid = lab.main_pid()?;
    std::thread::sleep(Duration::from_millis(500));
    c.exec_ok(&["systemctl", "stop", "svc-loop.service"])?;
    // The new daemon must have identified the loop's programs again and decided by the rule.
    let after = c.journal_json(&[
        "-t",
        "slicewalld",
        &format!("_PID={new_pid}"),
        "SLICEWALL_UNIT=svc-loop.service",
    ])?;
    if !after
        .iter()
        .any(|record| field(record, "SLICEWALL_REASON") == Some("rule"))
    {
        return Err(format!(
            "the restarted daemon (pid {new_pid}) wrote no rule decision for svc-loop.service"
        ));
    }

    let lines: Vec<String> = c
        .exec_ok(&["cat", log])?
        .lines()
        .map(str::to_owned)
        .collect();
    if new_pid == pid {
        return Err(format!("slicewalld kept MainPID {pid} across the restart"));
    }
    if after_restart <= before {
        return Err("the loop made no attempt while slicewalld restarted".into());
    }
    if let Some(line) = lines.iter().find(|line| !is_denied(line)) {
        return Err(format!(
            "an attempt of svc-loop.service was not denied: {line:?} ({} attempts)",
            lines.len()
        ));
    }
    let gained = lab.accepts()? - accepts;
    if gained != 0 {
        return Err(format!(
            "the listener accepted {gained} connections of svc-loop.service"
        ));
    }
    println!(
        "  {} attempts in all, {} during the restart, none got through",
        lines.len(),
        after_restart - before
    );
    Ok(())
}

/// Rule of the drop-in cases: no `unit` key, the directory names the units.
const DROPIN_DENY: &str = "[[rule]]\naction = \"deny\"\naddress = \"127.0.0.1\"\nport = 18080\n";

fn prefix_dropin_covers_app_scopes(lab: &Lab) -> Result<(), String> {
    // Before the drop-in, a scope of another application is allowed.
    let other = format!("app-harness-org.example.Other-{}.scope", random_suffix());
    expect_allowed(
        "app scope before the drop-in",
        &lab.probe_in_user_scope(&other),
    )?;

    let path = lab.add_dropin("app-.scope.d", DROPIN_DENY)?;
    let result = prefix_dropin_checks(lab);
    lab.remove_dropin(&path)?;
    result?;

    let after = format!("app-harness-org.example.Other-{}.scope", random_suffix());
    expect_allowed(
        "app scope after removing the drop-in",
        &lab.probe_in_user_scope(&after),
    )
}

fn prefix_dropin_checks(lab: &Lab) -> Result<(), String> {
    let scope = format!("app-harness-org.example.Other-{}.scope", random_suffix());
    expect_denied(
        "app scope under app-.scope.d",
        &lab.probe_in_user_scope(&scope),
    )?;
    let record = find_denial(lab, &scope)?;
    let rule = field(&record, "SLICEWALL_RULE").unwrap_or_default();
    if !rule.starts_with("/etc/slicewall/units/app-.scope.d/50-harness.toml:") {
        return Err(format!(
            "the denial names rule {rule:?}, expected the drop-in file"
        ));
    }
    // A user scope whose name does not start with "app-" is not covered.
    let plain = format!("run-harness-{}.scope", random_suffix());
    expect_allowed("run- scope", &lab.probe_in_user_scope(&plain))
}

fn slice_dropin_covers_its_units(lab: &Lab) -> Result<(), String> {
    let path = lab.add_dropin("harness.slice.d", DROPIN_DENY)?;
    let result = (|| {
        let inside = format!("svc-slice-{}.service", random_suffix());
        let line = lab.probe_in_slice("harness.slice", &inside);
        lab.remove_unit(&inside);
        expect_denied("service in harness.slice", &line)?;

        let outside = format!("svc-slice-{}.service", random_suffix());
        let line = lab.probe_in_slice("system.slice", &outside);
        lab.remove_unit(&outside);
        expect_allowed("service in system.slice", &line)
    })();
    lab.remove_dropin(&path)?;
    result
}

fn status_and_units_over_dbus(lab: &Lab) -> Result<(), String> {
    let c = lab.container();
    // The daemon reaches the system bus a moment after it starts.
    let mut status = c.exec(&["slicewallctl", "status"]);
    let _ = wait_for(Duration::from_secs(5), "a healthy status", || {
        status = c.exec(&["slicewallctl", "status"]);
        Ok(status.status.code() == Some(0))
    });
    let text = String::from_utf8_lossy(&status.stdout);
    if status.status.code() != Some(0) || !text.contains(": healthy") {
        return Err(format!(
            "slicewallctl status exited with {:?}: {text}{}",
            status.status.code(),
            String::from_utf8_lossy(&status.stderr)
        ));
    }
    if !text.contains("following systemd: yes") {
        return Err(format!(
            "slicewallctl status does not follow systemd: {text}"
        ));
    }

    // A running user scope with an app ID, and a running service that a rule denies as a whole.
    let scope = format!("app-harness-org.example.Listed-{}.scope", random_suffix());
    let mut scope_process = c.run_user_scope_background(USER, lab.uid, &scope, &["sleep", "20"])?;
    c.write_file(
        "/etc/slicewall/rules.d/61-harness-units.toml",
        b"[[rule]]\naction = \"deny\"\nunit = \"svc-listed.service\"\n",
        0o644,
    )?;
    lab.reload_rules()?;
    c.exec_ok(&[
        "systemd-run",
        "--quiet",
        "--unit",
        "svc-listed.service",
        "sleep",
        "30",
    ])?;
    let result = (|| {
        let mut listing = String::new();
        wait_for(
            Duration::from_secs(5),
            "both units in slicewallctl units",
            || {
                listing = c.exec_ok(&["slicewallctl", "units"])?;
                Ok(listing.contains(&scope) && listing.contains("svc-listed.service"))
            },
        )
        .map_err(|error| {
            format!(
                "{error}: {listing}\n{}",
                lab.diagnostics("svc-listed.service")
            )
        })?;
        let scope_line = listing
            .lines()
            .find(|line| line.contains(&scope))
            .unwrap_or_default();
        let columns: Vec<&str> = scope_line.split_whitespace().collect();
        if columns.get(1) != Some(&format!("user@{}.service", lab.uid).as_str())
            || columns.get(2) != Some(&"org.example.Listed")
        {
            return Err(format!("unexpected row for the user scope: {scope_line:?}"));
        }
        let service_line = listing
            .lines()
            .find(|line| line.contains("svc-listed.service"))
            .unwrap_or_default();
        let columns: Vec<&str> = service_line.split_whitespace().collect();
        if columns.get(1) != Some(&"system") || columns.get(3) != Some(&"deny") {
            return Err(format!(
                "unexpected row for the denied service: {service_line:?}"
            ));
        }

        // The same rows over busctl, and the cgroup ID follows a restart.
        let id_before = listed_cgroup_id(c, "svc-listed.service")?;
        c.exec_ok(&["systemctl", "restart", "svc-listed.service"])?;
        wait_for(
            Duration::from_secs(5),
            "a new cgroup ID in ListUnits",
            || Ok(listed_cgroup_id(c, "svc-listed.service")? != id_before),
        )?;
        let on_disk = c.exec_ok(&[
            "stat",
            "-c",
            "%i",
            "/sys/fs/cgroup/system.slice/svc-listed.service",
        ])?;
        let listed = listed_cgroup_id(c, "svc-listed.service")?;
        if on_disk.trim() != listed.to_string() {
            return Err(format!(
                "ListUnits says cgroup {listed}, the cgroup file system {on_disk}"
            ));
        }

        // The introspection data the daemon serves has every member of the shipped XML.
        let live = c.exec_ok(&[
            "busctl",
            "introspect",
            "--xml-interface",
            "org.slicewall.Firewall1",
            "/org/slicewall/Firewall1",
        ])?;
        let shipped = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("dbus/org.slicewall.Firewall1.xml"),
        )
        .map_err(|error| error.to_string())?;
        for member in shipped
            .split("name=\"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .filter(|name| name.chars().next().is_some_and(char::is_uppercase))
        {
            if !live.contains(&format!("name=\"{member}\"")) {
                return Err(format!("the daemon does not serve {member}"));
            }
        }
        Ok(())
    })();
    lab.remove_unit("svc-listed.service");
    let _ = scope_process.kill();
    let _ = scope_process.wait();
    c.exec_ok(&["rm", "-f", "/etc/slicewall/rules.d/61-harness-units.toml"])?;
    lab.reload_rules()?;
    result
}

/// Returns the cgroup ID that `ListUnits` reports for a system unit.
fn listed_cgroup_id(c: &Container, unit: &str) -> Result<u64, String> {
    let reply = c.exec_ok(&[
        "busctl",
        "call",
        "--json=short",
        "org.slicewall.Firewall1",
        "/org/slicewall/Firewall1",
        "org.slicewall.Firewall1",
        "ListUnits",
    ])?;
    let reply: serde_json::Value =
        serde_json::from_str(&reply).map_err(|error| format!("invalid busctl output: {error}"))?;
    let rows = reply["data"][0].as_array().cloned().unwrap_or_default();
    rows.iter()
        .find(|row| row[0] == unit && row[1] == "system")
        .and_then(|row| row[5].as_u64())
        .ok_or_else(|| format!("ListUnits has no row for {unit}: {reply}"))
}

/// Output of the long-lived connection in the cut case.
const CUT_LOG: &str = "/run/harness/cut.log";
/// The drop-in of the cut case, as [`Lab::add_dropin`] writes it.
const CUT_DROPIN: &str = "/etc/slicewall/units/svc-cut.service.d/50-harness.toml";

fn unit_deny_cuts_established_tcp(lab: &Lab) -> Result<(), String> {
    let c = lab.container();
    // One connection, pinged five times a second, from a service that starts out allowed.
    let script = format!(
        "while true; do echo; sleep 0.2; done | {PROBE} tcp-hold {} > {CUT_LOG}",
        target()
    );
    c.exec_ok(&[
        "systemd-run",
        "--quiet",
        "--unit",
        "svc-cut.service",
        "sh",
        "-c",
        &script,
    ])?;
    let result = cut_checks(lab);
    lab.remove_unit("svc-cut.service");
    if result.is_err() {
        // The checks remove their drop-in, unless they failed before they could.
        let _ = lab.remove_dropin(CUT_DROPIN);
    }
    result
}

fn cut_checks(lab: &Lab) -> Result<(), String> {
    let c = lab.container();
    // The service's shell creates the log a moment after it starts, so a missing log counts as
    // no answer yet.
    let oks = || -> Result<usize, String> {
        let log = c.exec(&["cat", CUT_LOG]);
        Ok(String::from_utf8_lossy(&log.stdout)
            .lines()
            .filter(|line| *line == "ok")
            .count())
    };
    wait_for(
        Duration::from_secs(5),
        "the connection to answer pings",
        || Ok(oks()? >= 3),
    )
    .map_err(|error| {
        let log = c.exec(&["cat", CUT_LOG]);
        format!(
            "{error}; the probe printed {:?}\n{}",
            String::from_utf8_lossy(&log.stdout),
            lab.diagnostics("svc-cut.service")
        )
    })?;

    // nftables counts the unit's traffic; the daemon reads the counters every five seconds.
    let mut row = String::new();
    wait_for(
        Duration::from_secs(12),
        "packets counted for svc-cut.service",
        || {
            let listing = c.exec_ok(&["slicewallctl", "units"])?;
            row = listing
                .lines()
                .find(|line| line.starts_with("svc-cut.service"))
                .unwrap_or_default()
                .to_owned();
            let packets: u64 = row
                .split_whitespace()
                .nth(5)
                .and_then(|text| text.parse().ok())
                .unwrap_or(0);
            Ok(packets > 0)
        },
    )
    .map_err(|error| {
        let ruleset = c.exec(&["nft", "list", "table", "inet", "slicewall"]);
        format!(
            "{error}: row {row:?}\n{}\n{}",
            String::from_utf8_lossy(&ruleset.stdout),
            lab.diagnostics("svc-cut.service")
        )
    })?;

    // A rule that denies the whole unit; the connection was allowed when it was made.
    let path = lab.add_dropin("svc-cut.service.d", "[[rule]]\naction = \"deny\"\n")?;
    let cut_started = Instant::now();
    let mut log = String::new();
    let cut = wait_for(
        Duration::from_secs(5),
        "the established connection to be cut",
        || {
            log = c.exec_ok(&["cat", CUT_LOG])?;
            Ok(log
                .lines()
                .any(|line| line.starts_with("error: ECONNRESET")))
        },
    );
    let seconds = cut_started.elapsed().as_secs_f64();
    lab.remove_dropin(&path)?;
    cut.map_err(|error| format!("{error}; the probe printed: {log}"))?;
    println!("  the connection was reset {seconds:.2} s after the reload was requested");

    let ruleset = c.exec_ok(&["nft", "list", "table", "inet", "slicewall"])?;
    if !ruleset.contains("socket cgroupv2 level") {
        return Err(format!("unexpected table inet slicewall: {ruleset}"));
    }
    Ok(())
}

fn nftables_table_is_restored(lab: &Lab) -> Result<(), String> {
    let c = lab.container();
    c.exec_ok(&["nft", "add", "table", "inet", "harness_other"])?;
    c.exec_ok(&["nft", "delete", "table", "inet", "slicewall"])?;
    wait_for(
        Duration::from_secs(12),
        "table inet slicewall to be restored",
        || {
            Ok(c.exec(&["nft", "list", "table", "inet", "slicewall"])
                .status
                .success())
        },
    )?;
    let records = c.journal_json(&["MESSAGE_ID=1de1248fc59342299b82548b9f897c99"])?;
    if records.is_empty() {
        return Err("no nftables-restored record in the journal".into());
    }
    // The daemon never touches another table.
    let other = c.exec(&["nft", "list", "table", "inet", "harness_other"]);
    c.exec_ok(&["nft", "delete", "table", "inet", "harness_other"])?;
    if !other.status.success() {
        return Err("table inet harness_other is gone".into());
    }
    Ok(())
}

fn rejected_reload_degrades_status(lab: &Lab) -> Result<(), String> {
    let c = lab.container();
    let bad = "/etc/slicewall/rules.d/62-harness-bad.toml";
    let matcher = format!("MESSAGE_ID={RULES_REJECTED_ID}");
    let rejected_before = c.journal_json(&[&matcher])?.len();
    c.write_file(bad, b"[[rule]]\naction = \"maybe\"\n", 0o644)?;
    c.exec_ok(&["systemctl", "reload", "slicewalld.service"])?;
    let result = wait_for(Duration::from_secs(10), "the rules-rejected record", || {
        Ok(c.journal_json(&[&matcher])?.len() > rejected_before)
    })
    .and_then(|()| {
        let status = c.exec(&["slicewallctl", "status"]);
        let text = String::from_utf8_lossy(&status.stdout).into_owned();
        if status.status.code() != Some(1) {
            return Err(format!(
                "status exited with {:?}: {text}",
                status.status.code()
            ));
        }
        if !text.contains("rejected the reload") || !text.contains(bad) {
            return Err(format!("status does not name the rejected file: {text}"));
        }
        Ok(())
    });
    c.exec_ok(&["rm", "-f", bad])?;
    lab.reload_rules()?;
    result?;

    let status = c.exec(&["slicewallctl", "status"]);
    if status.status.code() != Some(0) {
        return Err(format!(
            "status after a good reload exited with {:?}: {}",
            status.status.code(),
            String::from_utf8_lossy(&status.stdout)
        ));
    }
    Ok(())
}

/// The test agent, installed in the container.
const AGENT: &str = "/usr/bin/slicewall-test-agent";
/// Rule file of the prompt case: scopes named harness-ask-*.scope are asked about.
const ASK_RULES_FILE: &str = "/etc/slicewall/rules.d/62-harness-ask.toml";
const ANSWERS_FILE: &str = "/etc/slicewall/rules.d/70-slicewall-answers.toml";
/// A port nothing listens on, for flows that are denied.
const CLOSED_PORT: u16 = 18099;
/// Port of the listener that the answer-to-established timing connects to.
const TIMING_PORT: u16 = 18081;

fn busctl_call(c: &Container, method: &str, signature: &[&str]) -> std::process::Output {
    let mut args = vec![
        "busctl",
        "--json=short",
        "call",
        "org.slicewall.Firewall1",
        "/org/slicewall/Firewall1",
        "org.slicewall.Firewall1",
        method,
    ];
    args.extend_from_slice(signature);
    c.exec(&args)
}

fn busctl_ok(c: &Container, method: &str, signature: &[&str]) -> Result<serde_json::Value, String> {
    let output = busctl_call(c, method, signature);
    if !output.status.success() {
        return Err(format!(
            "busctl call {method} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    if output.stdout.iter().all(u8::is_ascii_whitespace) {
        // A method without output arguments prints nothing.
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_slice(&output.stdout)
        .map_err(|error| format!("busctl call {method} printed invalid JSON: {error}"))
}

/// Returns the ids of the open prompts as root sees them.
fn open_prompt_ids(c: &Container) -> Result<Vec<u64>, String> {
    let reply = busctl_ok(c, "ListPrompts", &[])?;
    Ok(reply["data"][0]
        .as_array()
        .map(|rows| rows.iter().filter_map(|row| row[0].as_u64()).collect())
        .unwrap_or_default())
}

/// Starts the probe in a new system scope matching the ask rule; it connects to `port`.
fn spawn_asking_probe(c: &Container, port: u16) -> Result<std::process::Child, String> {
    let unit = format!("harness-ask-{}.scope", random_suffix());
    let target = format!("127.0.0.1:{port}");
    c.spawn(&[
        "systemd-run",
        "--quiet",
        "--scope",
        "-u",
        &unit,
        PROBE,
        "tcp",
        &target,
    ])
}

/// Waits for a prompt that is not in `known` and returns its id.
fn wait_for_new_prompt(c: &Container, known: &[u64]) -> Result<u64, String> {
    let mut found = None;
    wait_for(Duration::from_secs(10), "a new prompt", || {
        found = open_prompt_ids(c)?
            .into_iter()
            .find(|id| !known.contains(id));
        Ok(found.is_some())
    })?;
    Ok(found.unwrap_or_default())
}

fn probe_result(child: std::process::Child) -> String {
    child
        .wait_with_output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn prompts_answered_over_dbus(lab: &Lab) -> Result<(), String> {
    let c = lab.container();
    c.copy_file(&agent_path(), AGENT, 0o755)?;
    let rule = "[[rule]]
action = \"ask\"
unit = \"harness-ask-*.scope\"
address = \"127.0.0.1\"
";
    c.write_file(ASK_RULES_FILE, rule.as_bytes(), 0o644)?;
    lab.reload_rules()?;

    let mut agent = c.spawn(&[AGENT])?;
    let mut agent_lines =
        std::io::BufReader::new(agent.stdout.take().ok_or("agent has no stdout")?);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut agent_lines, &mut line)
        .map_err(|error| format!("failed to read the agent: {error}"))?;
    if line.trim() != "registered" {
        let _ = agent.kill();
        return Err(format!("the agent printed {line:?} instead of registered"));
    }
    let result = prompt_checks(lab);
    let _ = agent.kill();
    let _ = agent.wait();
    lab.remove_unit("harness-timing-listen.service");
    let _ = c.exec(&["rm", "-f", ASK_RULES_FILE, ANSWERS_FILE]);
    lab.reload_rules()?;
    result
}

fn prompt_checks(lab: &Lab) -> Result<(), String> {
    let c = lab.container();

    // Another user may not answer root's prompt, and does not see it.
    let probe = spawn_asking_probe(c, PORT)?;
    let id = wait_for_new_prompt(c, &[])?;
    let user_list = c.exec(&[
        "runuser",
        "-u",
        USER,
        "--",
        "busctl",
        "--json=short",
        "call",
        "org.slicewall.Firewall1",
        "/org/slicewall/Firewall1",
        "org.slicewall.Firewall1",
        "ListPrompts",
    ]);
    let user_list = String::from_utf8_lossy(&user_list.stdout).into_owned();
    if user_list.contains(&format!("[{id},")) {
        return Err(format!("user {USER} sees root's prompt: {user_list}"));
    }
    let id_text = id.to_string();
    let refused = c.exec(&[
        "runuser",
        "-u",
        USER,
        "--",
        "busctl",
        "call",
        "org.slicewall.Firewall1",
        "/org/slicewall/Firewall1",
        "org.slicewall.Firewall1",
        "AnswerPrompt",
        "tsss",
        &id_text,
        "allow",
        "once",
        "destination",
    ]);
    let refusal = String::from_utf8_lossy(&refused.stderr).into_owned();
    if refused.status.success()
        || !refusal.contains("NotAuthorized") && !refusal.contains("not authorize")
    {
        return Err(format!("user {USER} answered root's prompt: {refusal}"));
    }

    // Root answers "allow forever": the connection completes and the rule is written.
    busctl_ok(
        c,
        "AnswerPrompt",
        &["tsss", &id_text, "allow", "forever", "destination"],
    )?;
    expect_allowed("connection answered allow forever", &probe_result(probe))?;
    let answers = c.exec_ok(&["cat", ANSWERS_FILE])?;
    if !answers.contains("answer by uid 0") || !answers.contains("action = \"allow\"") {
        return Err(format!("{ANSWERS_FILE} lacks the answer:\n{answers}"));
    }
    // Repeating the connection never prompts again.
    let started = Instant::now();
    expect_allowed(
        "repeated connection",
        &probe_result(spawn_asking_probe(c, PORT)?),
    )?;
    if !open_prompt_ids(c)?.is_empty() || started.elapsed() > Duration::from_secs(5) {
        return Err("the repeated connection prompted again".to_owned());
    }

    // "deny once" fails the connect at once.
    let probe = spawn_asking_probe(c, CLOSED_PORT)?;
    let id = wait_for_new_prompt(c, &[])?;
    let started = Instant::now();
    busctl_ok(
        c,
        "AnswerPrompt",
        &["tsss", &id.to_string(), "deny", "once", "destination"],
    )?;
    expect_denied("connection answered deny once", &probe_result(probe))?;
    let deny_time = started.elapsed();
    println!(
        "deny once: connect failed {:.0} ms after the answer",
        deny_time.as_secs_f64() * 1000.0
    );
    if deny_time > Duration::from_secs(1) {
        return Err(format!("deny once took {deny_time:?}"));
    }

    // Answer-to-established, median over 20 late answers ("once", so each one prompts), to a
    // listener of this case's own: the answer "allow forever" above covers the main listener.
    let listen = format!("TCP-LISTEN:{TIMING_PORT},bind=127.0.0.1,reuseaddr,fork");
    c.exec_ok(&[
        "systemd-run",
        "--quiet",
        "--unit",
        "harness-timing-listen.service",
        "socat",
        &listen,
        "EXEC:cat",
    ])?;
    let mut times = Vec::new();
    let mut known = Vec::new();
    for _ in 0..20 {
        let probe = spawn_asking_probe(c, TIMING_PORT)?;
        let id = wait_for_new_prompt(c, &known)?;
        known.push(id);
        // Late answers at random points of the retransmission cycle: the held SYN has backed
        // off to the bounded maximum RTO.
        std::thread::sleep(Duration::from_millis(1500 + fastrand::u64(0..3000)));
        let started = Instant::now();
        busctl_ok(
            c,
            "AnswerPrompt",
            &["tsss", &id.to_string(), "allow", "once", "destination"],
        )?;
        let result = probe_result(probe);
        times.push(started.elapsed());
        // The probe prints "ok" once the connection to the listener is established.
        if result != "ok" {
            return Err(format!("an allowed connection printed {result:?}"));
        }
    }
    times.sort();
    println!(
        "answer to established connection over 20 late answers (1.5 to 4.5 s after the connect): median {:.0} ms, max {:.0} ms",
        times[10].as_secs_f64() * 1000.0,
        times[19].as_secs_f64() * 1000.0
    );

    // Every other method, as root (polkit lets root do all).
    let rules = busctl_ok(c, "ListRules", &[])?;
    if !rules.to_string().contains("70-slicewall-answers.toml") {
        return Err(format!("ListRules lacks the answer rule: {rules}"));
    }
    // Root's answer names user 0, so another user does not see it.
    let user_rules = c.exec(&[
        "runuser",
        "-u",
        USER,
        "--",
        "busctl",
        "--json=short",
        "call",
        "org.slicewall.Firewall1",
        "/org/slicewall/Firewall1",
        "org.slicewall.Firewall1",
        "ListRules",
    ]);
    let user_rules = String::from_utf8_lossy(&user_rules.stdout).into_owned();
    if !user_rules.contains("50-defaults.toml") || user_rules.contains("70-slicewall-answers.toml")
    {
        return Err(format!(
            "user {USER} should see the vendor rules and not root's answer: {user_rules}"
        ));
    }
    let added = busctl_ok(
        c,
        "AddRule",
        &[
            "ss",
            "[[rule]]\naction = \"deny\"\nunit = \"nothing.service\"\n",
            "memory",
        ],
    )?;
    let added_id = added["data"][0].as_str().unwrap_or_default().to_owned();
    if added_id != "memory:1" {
        return Err(format!("AddRule returned {added}"));
    }
    busctl_ok(c, "RemoveRule", &["s", &added_id])?;
    let missing = busctl_call(c, "RemoveRule", &["s", "memory:1"]);
    if !String::from_utf8_lossy(&missing.stderr).contains("NoSuchRule") && missing.status.success()
    {
        return Err("RemoveRule of a removed rule succeeded".to_owned());
    }
    busctl_ok(c, "Reload", &[])?;
    busctl_ok(c, "SetMode", &["s", "silent-allow"])?;
    let mode = c.exec_ok(&[
        "busctl",
        "get-property",
        "org.slicewall.Firewall1",
        "/org/slicewall/Firewall1",
        "org.slicewall.Firewall1",
        "Mode",
    ])?;
    if mode.trim() != "s \"silent-allow\"" {
        return Err(format!("Mode is {mode}"));
    }
    busctl_ok(c, "SetMode", &["s", "alert"])?;
    let invalid = busctl_call(c, "SetMode", &["s", "loud"]);
    if !String::from_utf8_lossy(&invalid.stderr).contains("mode") || invalid.status.success() {
        return Err("SetMode accepted an invalid mode".to_owned());
    }
    for property in ["PromptTimeoutSec", "OpenPrompts"] {
        c.exec_ok(&[
            "busctl",
            "get-property",
            "org.slicewall.Firewall1",
            "/org/slicewall/Firewall1",
            "org.slicewall.Firewall1",
            property,
        ])?;
    }
    busctl_ok(c, "UnregisterAgent", &[])?;
    busctl_ok(c, "RegisterAgent", &[])?;
    Ok(())
}

fn bus_call_starts_daemon(lab: &Lab) -> Result<(), String> {
    let c = lab.container();
    c.exec_ok(&["systemctl", "stop", "slicewalld.service"])?;
    let version = c.exec(&[
        "busctl",
        "get-property",
        "org.slicewall.Firewall1",
        "/org/slicewall/Firewall1",
        "org.slicewall.Firewall1",
        "Version",
    ]);
    let active = c.exec(&["systemctl", "is-active", "slicewalld.service"]);
    let active = String::from_utf8_lossy(&active.stdout).trim().to_owned();
    if active != "active" {
        // Leave the daemon running for the cases after this one.
        c.exec_ok(&["systemctl", "start", "slicewalld.service"])?;
        return Err(format!("a bus call left slicewalld.service {active:?}"));
    }
    if !version.status.success() {
        return Err(format!(
            "Version failed after activation: {}",
            String::from_utf8_lossy(&version.stderr)
        ));
    }
    Ok(())
}

/// Rule file of the slicewallctl case: scopes named harness-ctl-*.scope are asked about.
const CTL_RULES_FILE: &str = "/etc/slicewall/rules.d/63-harness-ctl.toml";

fn slicewallctl_answers_and_manages(lab: &Lab) -> Result<(), String> {
    let c = lab.container();
    c.copy_file(&agent_path(), AGENT, 0o755)?;
    let rule =
        "[[rule]]\naction = \"ask\"\nunit = \"harness-ctl-*.scope\"\naddress = \"127.0.0.1\"\n";
    c.write_file(CTL_RULES_FILE, rule.as_bytes(), 0o644)?;
    lab.reload_rules()?;
    let result = slicewallctl_checks(lab);
    let _ = c.exec(&["slicewallctl", "mode", "alert"]);
    c.exec_ok(&["rm", "-f", CTL_RULES_FILE])?;
    lab.reload_rules()?;
    result
}

/// Starts a probe in a new system scope that the slicewallctl case's rule asks about.
fn spawn_ctl_probe(c: &Container) -> Result<std::process::Child, String> {
    let unit = format!("harness-ctl-{}.scope", random_suffix());
    c.spawn(&[
        "systemd-run",
        "--quiet",
        "--scope",
        "-u",
        &unit,
        PROBE,
        "tcp",
        &target(),
    ])
}

/// Reads lines of a child's standard output on a thread of its own, so a test can wait for one
/// with a timeout.
fn line_reader(
    child: &mut std::process::Child,
) -> Result<std::sync::mpsc::Receiver<String>, String> {
    let stdout = child.stdout.take().ok_or("the child has no stdout")?;
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    Ok(receiver)
}

/// Waits for a line that starts with `prefix` and returns the lines read so far.
fn wait_for_line(
    lines: &std::sync::mpsc::Receiver<String>,
    prefix: &str,
) -> Result<Vec<String>, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                let found = line.starts_with(prefix);
                seen.push(line);
                if found {
                    return Ok(seen);
                }
            }
            Err(_) => return Err(format!("no line starting with {prefix:?} in {seen:?}")),
        }
    }
}

fn slicewallctl_checks(lab: &Lab) -> Result<(), String> {
    let c = lab.container();

    // The terminal agent shows the prompt and takes "a" (allow once) from its input.
    let mut agent = c.spawn(&["slicewallctl", "agent"])?;
    let lines = line_reader(&mut agent)?;
    wait_for_line(&lines, "registered as the prompt agent")?;
    let probe = spawn_ctl_probe(c)?;
    let shown = wait_for_line(&lines, "  to: ")?;
    if !shown.iter().any(|line| line.contains(PROBE)) {
        return Err(format!(
            "the terminal agent did not show the program: {shown:?}"
        ));
    }
    {
        use std::io::Write;
        let stdin = agent.stdin.as_mut().ok_or("the agent has no stdin")?;
        stdin
            .write_all(b"a\n")
            .map_err(|error| format!("failed to answer in the terminal agent: {error}"))?;
    }
    expect_allowed("probe answered in the terminal agent", &probe_result(probe))?;
    wait_for_line(&lines, "answered prompt")?;
    // End of input ends the agent, which unregisters.
    drop(agent.stdin.take());
    let status = agent.wait().map_err(|error| error.to_string())?;
    if !status.success() {
        return Err(format!("slicewallctl agent exited with {status}"));
    }

    // Listing and answering without a terminal, while a silent agent keeps the prompt open.
    let mut silent = c.spawn(&[AGENT])?;
    let silent_lines = line_reader(&mut silent)?;
    wait_for_line(&silent_lines, "registered")?;
    let probe = spawn_ctl_probe(c)?;
    let id = wait_for_new_prompt(c, &[])?;
    let listed = c.exec_ok(&["slicewallctl", "prompts"])?;
    if !listed.contains(&id.to_string()) || !listed.contains("127.0.0.1") {
        let _ = silent.kill();
        return Err(format!(
            "slicewallctl prompts does not list prompt {id}: {listed}"
        ));
    }
    let answered = c.exec(&["slicewallctl", "prompts", "answer", &id.to_string(), "deny"]);
    let _ = silent.kill();
    let _ = silent.wait();
    if !answered.status.success() {
        return Err(format!(
            "slicewallctl prompts answer failed: {}",
            String::from_utf8_lossy(&answered.stderr)
        ));
    }
    expect_denied("probe answered deny", &probe_result(probe))?;

    // Rules: add in memory, list, remove.
    let added = c.exec_with_input(
        &["slicewallctl", "rules", "add", "-", "--lifetime", "memory"],
        b"[[rule]]\naction = \"deny\"\nunit = \"harness-ctl-added.scope\"\n",
    );
    let id = String::from_utf8_lossy(&added.stdout).trim().to_owned();
    if !added.status.success() || id.is_empty() {
        return Err(format!(
            "slicewallctl rules add failed: {}",
            String::from_utf8_lossy(&added.stderr)
        ));
    }
    let listed = c.exec_ok(&["slicewallctl", "rules", "list"])?;
    if !listed.contains(&format!("# {id} ")) || !listed.contains("harness-ctl-added.scope") {
        return Err(format!("slicewallctl rules list lacks {id}: {listed}"));
    }
    c.exec_ok(&["slicewallctl", "rules", "remove", &id])?;
    let listed = c.exec_ok(&["slicewallctl", "rules", "list"])?;
    if listed.contains("harness-ctl-added.scope") {
        return Err(format!(
            "rule {id} is still listed after its removal: {listed}"
        ));
    }

    // Modes: silent-deny answers an ask at once, without an agent or a prompt.
    c.exec_ok(&["slicewallctl", "mode", "silent-deny"])?;
    let mode = c.exec_ok(&["slicewallctl", "mode"])?;
    if mode.trim() != "silent-deny" {
        return Err(format!(
            "slicewallctl mode prints {mode:?}, expected silent-deny"
        ));
    }
    let started = Instant::now();
    expect_denied(
        "probe in silent-deny mode",
        &probe_result(spawn_ctl_probe(c)?),
    )?;
    if started.elapsed() > Duration::from_secs(5) {
        return Err("the silent-deny answer was not given at once".into());
    }
    c.exec_ok(&["slicewallctl", "mode", "alert"])?;
    let reloaded = c.exec_ok(&["slicewallctl", "reload"])?;
    if reloaded.trim() != "reloaded" {
        return Err(format!("slicewallctl reload printed {reloaded:?}"));
    }
    Ok(())
}
