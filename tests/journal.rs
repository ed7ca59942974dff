//! End-to-end test of the audit path: a flow that a rule denies is recorded by a real
//! systemd-journald, with the fields that name the rule, the unit and the executable.
//!
//! The test re-runs its own binary under `unshare --mount --propagation private`. The re-run
//! mounts a tmpfs on /run and /var/log/journal, starts journald there through
//! systemd-socket-activate, and starts slicewalld without `--audit-stderr`, so the daemon finds
//! /run/systemd/journal/socket in that namespace and sends its audit records to that journald.
//! Journald gets its native socket passed in because, started without sockets, journald 252
//! would also open the kernel audit socket and enable auditing for the whole machine.
//!
//! The parent creates the lab cgroup and removes it after the re-run, so a re-run that is killed
//! leaves no cgroup behind. Everything else (journald, daemon, bpf file system, network
//! namespaces) exists only in the private mount namespace. The re-run's guards stop and remove
//! it on return and on panic, and PR_SET_PDEATHSIG kills journald and the daemon when the re-run
//! is killed, which frees the namespace with its mounts.

mod common;

use std::fs;
use std::io::Read;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::Ordering;
use std::thread::{sleep, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use slicewall::audit::message_id;

use common::{
    probe, probe_lines, slicewalld, spawn_in, write_rules, BpfFs, Cgroup, Network, SERVER_V4,
};

const TEST_NAME: &str = "deny_decision_reaches_journald";
/// Environment variable of the re-run, set to the parent's mount namespace.
const PARENT_NAMESPACE_ENV: &str = "SLICEWALL_TEST_JOURNAL_PARENT_MNT_NS";
/// Environment variable of the re-run, set to the path of the lab cgroup that the parent created.
const CGROUP_ENV: &str = "SLICEWALL_TEST_JOURNAL_CGROUP";
/// Printed by the re-run after its last check, so the parent can tell that the checks ran.
const DONE_MARKER: &str = "journal records checked";
/// Time the whole re-run may take, daemon start and journal reads included.
const RERUN_TIMEOUT: Duration = Duration::from_secs(180);

const EPERM: &str = "error: EPERM (errno 1)";
const RULE_FILE: &str = "50-journal.toml";
/// Lets the daemon identify the probe's executable before its flow, so the gate in the kernel
/// decides the flow by the rule instead of holding it for the daemon.
const SETTLE_MS: &str = "300";
/// Attempts at the denied flow. When the daemon has not identified a new probe process within
/// `SETTLE_MS`, as on a loaded machine, the gate holds the flow for the daemon, which then
/// aborts it, so the probe prints ECONNABORTED and the attempt is made again.
const DENIED_FLOW_ATTEMPTS: u32 = 3;

const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";
const JOURNAL_DIR: &str = "/run/log/journal";
const JOURNALD_PATHS: [&str; 2] = [
    "/lib/systemd/systemd-journald",
    "/usr/lib/systemd/systemd-journald",
];
const JOURNALD_CONFIG: &str = "\
[Journal]
Storage=volatile
ReadKMsg=no
ForwardToSyslog=no
ForwardToKMsg=no
ForwardToConsole=no
ForwardToWall=no
";

/// One journal entry as `journalctl -o json` prints it.
type Entry = Map<String, Value>;

#[test]
fn deny_decision_reaches_journald() {
    if let Some(parent_namespace) = std::env::var_os(PARENT_NAMESPACE_ENV) {
        let cgroup =
            std::env::var_os(CGROUP_ENV).unwrap_or_else(|| panic!("{CGROUP_ENV} is not set"));
        run_in_private_namespace(&parent_namespace.to_string_lossy(), Path::new(&cgroup));
        return;
    }

    require_lab!();
    if let Err(reason) = check_journal_tools() {
        println!("skipping: {reason}");
        return;
    }
    // Fails here rather than in the re-run when the example is not built.
    probe();

    let lab_cgroup = Cgroup::new_top("j");
    let mut command = Command::new("unshare");
    command
        .args(["--mount", "--propagation", "private", "--"])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
        .env(
            PARENT_NAMESPACE_ENV,
            mount_namespace("self").expect("own mount namespace"),
        )
        .env(CGROUP_ENV, &lab_cgroup.path);
    let rerun = output_with_timeout(&mut command, RERUN_TIMEOUT);

    let status = rerun.status.unwrap_or_else(|| {
        panic!(
            "re-run timed out after {RERUN_TIMEOUT:?}:\n{}\n{}",
            rerun.stdout, rerun.stderr
        )
    });
    assert!(
        status.success(),
        "re-run failed ({status}):\n{}\n{}",
        rerun.stdout,
        rerun.stderr
    );
    assert!(
        rerun.stdout.contains(DONE_MARKER),
        "re-run did not check the journal:\n{}\n{}",
        rerun.stdout,
        rerun.stderr
    );
    println!("re-run output:\n{}\n{}", rerun.stdout, rerun.stderr);
}

/// Sets up journald and the lab inside the private mount namespace, makes an allowed and a denied
/// flow, and checks what the journal recorded. Panics on the first failed check.
fn run_in_private_namespace(parent_namespace: &str, cgroup_path: &Path) {
    prepare_private_run(parent_namespace);
    // Declared first so it is dropped last, because the daemon's failure report reads the journal.
    let _journald = start_journald();

    let mount = slicewall::cgroup::find_cgroup2_mount().expect("cgroup v2 mount");
    let relative = cgroup_path
        .strip_prefix(&mount)
        .expect("lab cgroup inside the cgroup v2 mount");
    // The parent removes this cgroup as well, in case this process is killed before the drop.
    let lab_cgroup = Cgroup {
        path: cgroup_path.to_owned(),
        relative: format!("/{}", relative.display()),
    };
    let network = Network::new();
    let bpffs = BpfFs::new();
    let root = tempfile::tempdir().unwrap();
    write_rules(
        root.path(),
        "etc",
        RULE_FILE,
        &format!("[[rule]]\naction = \"deny\"\naddress = \"{SERVER_V4}/32\"\n"),
    );

    let mut daemon = JournalDaemon::start(root.path(), &lab_cgroup, &bpffs);
    let app = lab_cgroup.child("probe.service");
    // A private copy, because a concurrent `cargo build` replaces the built example, which
    // would change the hash between the daemon's read and the test's.
    let bins = tempfile::tempdir().unwrap();
    let probe_path = bins.path().join("probe");
    fs::copy(probe(), &probe_path).unwrap();
    let daemon_pid = daemon.pid().to_string();

    // An allowed flow first: the daemon hashes the probe's executable for it, so later probe
    // processes are identified from its cache, and allow decisions are checked on the way.
    let loopback = format!("127.0.0.1:{}", network.loopback4.port);
    let (first_pid, lines) = run_probe(
        &probe_path,
        &app,
        &network,
        &["--wait-ms", SETTLE_MS, "tcp", &loopback],
    );
    assert_eq!(lines, vec!["ok".to_owned()], "probe to {loopback}");
    let is_first_allow = |entry: &Entry| {
        field(entry, "MESSAGE_ID") == Some(message_id::DECISION_ALLOW)
            && field(entry, "SLICEWALL_PID") == Some(&first_pid)
    };
    let entries = wait_for_entries("the allow record of the first probe", |entries| {
        entries.iter().any(is_first_allow)
    });
    let allow = entries.iter().find(|entry| is_first_allow(entry)).unwrap();
    assert_eq!(
        field(allow, "_PID"),
        Some(daemon_pid.as_str()),
        "allow record {allow:?}"
    );
    assert_eq!(
        field(allow, "SLICEWALL_VERDICT"),
        Some("allow"),
        "allow record {allow:?}"
    );
    assert_eq!(
        field(allow, "SLICEWALL_ADDRESS"),
        Some("127.0.0.1"),
        "allow record {allow:?}"
    );

    let target = format!("{SERVER_V4}:{}", network.veth4.port);
    let mut attempt = 1;
    let (probe_pid, lines) = loop {
        let (pid, lines) = run_probe(
            &probe_path,
            &app,
            &network,
            &["--wait-ms", SETTLE_MS, "tcp", &target],
        );
        let was_held = lines.len() == 1 && lines[0].starts_with("error: ECONNABORTED");
        if !was_held || attempt == DENIED_FLOW_ATTEMPTS {
            break (pid, lines);
        }
        println!("attempt {attempt}: the gate held the flow because the daemon had not identified the probe yet");
        attempt += 1;
    };
    assert_eq!(lines, vec![EPERM.to_owned()], "probe to {target}");
    assert_eq!(
        network.veth4.received.load(Ordering::SeqCst),
        0,
        "the denied flow reached the server"
    );

    let is_deny = |entry: &Entry| {
        field(entry, "MESSAGE_ID") == Some(message_id::DECISION_DENY)
            && field(entry, "SLICEWALL_PID") == Some(&probe_pid)
    };
    let is_started = |entry: &Entry| field(entry, "MESSAGE_ID") == Some(message_id::STARTED);
    let entries = wait_for_entries(
        "the started record and the probe's deny record",
        |entries| entries.iter().any(is_deny) && entries.iter().any(is_started),
    );

    let denials: Vec<&Entry> = entries.iter().filter(|entry| is_deny(entry)).collect();
    assert_eq!(
        denials.len(),
        1,
        "deny records of the probe's one flow: {denials:?}"
    );
    let deny = denials[0];
    let probe_bytes = fs::read(&probe_path).unwrap();
    let expected = [
        ("_PID", daemon_pid.clone()),
        ("SYSLOG_IDENTIFIER", "slicewalld".to_owned()),
        ("PRIORITY", "5".to_owned()),
        ("SLICEWALL_VERDICT", "deny".to_owned()),
        ("SLICEWALL_REASON", "rule".to_owned()),
        ("SLICEWALL_UNIT", "probe.service".to_owned()),
        ("SLICEWALL_CGROUP", app.relative.clone()),
        (
            "SLICEWALL_EXE",
            probe_path.canonicalize().unwrap().display().to_string(),
        ),
        (
            "SLICEWALL_SHA256",
            hex::encode(Sha256::digest(&probe_bytes)),
        ),
        ("SLICEWALL_COMM", "probe".to_owned()),
        ("SLICEWALL_UID", "0".to_owned()),
        ("SLICEWALL_PROTOCOL", "tcp".to_owned()),
        ("SLICEWALL_ADDRESS", SERVER_V4.to_owned()),
        ("SLICEWALL_PORT", network.veth4.port.to_string()),
    ];
    for (name, value) in &expected {
        assert_eq!(
            field(deny, name),
            Some(value.as_str()),
            "field {name} of the deny record {deny:?}"
        );
    }
    let rule =
        field(deny, "SLICEWALL_RULE").unwrap_or_else(|| panic!("no SLICEWALL_RULE in {deny:?}"));
    assert!(
        rule.ends_with(&format!("/{RULE_FILE}:1")),
        "SLICEWALL_RULE {rule:?} does not name {RULE_FILE}:1"
    );

    let started = entries.iter().find(|entry| is_started(entry)).unwrap();
    assert_eq!(
        field(started, "_PID"),
        Some(daemon_pid.as_str()),
        "started record {started:?}"
    );
    assert_eq!(
        field(started, "SYSLOG_IDENTIFIER"),
        Some("slicewalld"),
        "started record {started:?}"
    );
    assert_eq!(
        field(started, "PRIORITY"),
        Some("6"),
        "started record {started:?}"
    );
    let message = field(started, "MESSAGE").unwrap_or_default();
    let guarding = format!("slicewalld started: guarding {}", lab_cgroup.path.display());
    assert!(
        message.starts_with(&guarding),
        "MESSAGE of the started record: {message:?}"
    );
    assert!(
        !message.contains("degraded"),
        "the daemon skipped a rule file: {message:?}"
    );

    let status = daemon.stop().expect("daemon running");
    assert!(
        status.success(),
        "slicewalld exited with {status} after SIGTERM"
    );
    let entries = wait_for_entries("the stopped record", |entries| {
        entries
            .iter()
            .any(|entry| field(entry, "MESSAGE_ID") == Some(message_id::STOPPED))
    });
    let stopped = entries
        .iter()
        .find(|entry| field(entry, "MESSAGE_ID") == Some(message_id::STOPPED))
        .unwrap();
    assert_eq!(
        field(stopped, "_PID"),
        Some(daemon_pid.as_str()),
        "stopped record {stopped:?}"
    );

    // The stream falls back to stderr for each record the journal rejects.
    let stderr = daemon.stderr();
    assert!(
        !stderr.contains("message_id="),
        "audit records went to stderr instead of the journal:\n{stderr}"
    );

    println!("{DONE_MARKER}");
}

/// Runs `program` in `cgroup` and the client namespace, and returns its PID and result lines.
fn run_probe(
    program: &Path,
    cgroup: &Cgroup,
    network: &Network,
    args: &[&str],
) -> (String, Vec<String>) {
    let client = spawn_in(cgroup, &network.client, program, args);
    let pid = client.id().to_string();
    let output = client.wait_with_output().expect("wait for the probe");
    (pid, probe_lines(&output))
}

/// Returns why the journal tools cannot run here, if they cannot.
fn check_journal_tools() -> Result<(), String> {
    if !JOURNALD_PATHS.iter().any(|path| Path::new(path).exists()) {
        return Err(format!(
            "systemd-journald not installed (looked for {})",
            JOURNALD_PATHS.join(", ")
        ));
    }
    for (program, args) in [
        ("journalctl", &["--version"][..]),
        ("systemd-socket-activate", &["--version"][..]),
        (
            "unshare",
            &["--mount", "--propagation", "private", "true"][..],
        ),
    ] {
        let works = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !works {
            return Err(format!("`{program} {}` failed", args.join(" ")));
        }
    }
    Ok(())
}

/// Returns the mount namespace of `pid`, like "mnt:[4026531841]", or `None` if it cannot be read
/// (PID 1 can be hidden from root in a sandbox).
fn mount_namespace(pid: &str) -> Option<String> {
    let link = fs::read_link(format!("/proc/{pid}/ns/mnt")).ok()?;
    Some(link.to_string_lossy().into_owned())
}

/// Mounts a tmpfs on /run and /var/log/journal, after checking that this process has a mount
/// namespace of its own, and configures journald there to keep its journal in memory and
/// forward nothing.
fn prepare_private_run(parent_namespace: &str) {
    // Mounting over /run in the machine's own namespace would break the machine, so check first.
    let own_namespace = mount_namespace("self").expect("own mount namespace");
    assert_ne!(
        own_namespace, parent_namespace,
        "not in a mount namespace of its own"
    );
    assert_ne!(
        Some(&own_namespace),
        mount_namespace("1").as_ref(),
        "in the mount namespace of PID 1"
    );

    mount_tmpfs("/run");
    if Path::new("/var/log/journal").is_dir() {
        mount_tmpfs("/var/log/journal");
    }
    fs::create_dir_all("/run/systemd/journald.conf.d").unwrap();
    fs::write(
        "/run/systemd/journald.conf.d/50-slicewall-test.conf",
        JOURNALD_CONFIG,
    )
    .unwrap();
    fs::create_dir_all("/run/systemd/journal").unwrap();
}

fn mount_tmpfs(target: &str) {
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "mode=0755", "slicewall-test", target])
        .status()
        .unwrap();
    assert!(status.success(), "mount tmpfs on {target}: {status}");
}

/// Makes the kernel send SIGKILL to the process when the thread that started it exits, also
/// when the test process is killed before any guard runs.
fn kill_with_parent(command: &mut Command) {
    // SAFETY: the closure runs between fork and exec and only calls prctl(), which is
    // async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A process that is killed and reaped on drop.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts journald on the native socket, passed in as systemd would pass it. Journald's own log
/// goes to this process's stderr.
fn start_journald() -> KillOnDrop {
    let journald = JOURNALD_PATHS
        .iter()
        .find(|path| Path::new(path).exists())
        .unwrap();
    let mut command = Command::new("systemd-socket-activate");
    command
        .args([
            "--datagram",
            "--listen",
            JOURNAL_SOCKET,
            "--setenv=SYSTEMD_LOG_TARGET=console",
            journald,
        ])
        .env("SYSTEMD_LOG_TARGET", "console")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    kill_with_parent(&mut command);
    let mut journald = KillOnDrop(
        command
            .spawn()
            .expect("failed to start systemd-socket-activate"),
    );

    let deadline = Instant::now() + Duration::from_secs(10);
    while !Path::new(JOURNAL_SOCKET).exists() {
        if let Some(status) = journald.0.try_wait().unwrap() {
            panic!("systemd-socket-activate exited ({status}) before {JOURNAL_SOCKET} existed");
        }
        assert!(
            Instant::now() < deadline,
            "{JOURNAL_SOCKET} missing after 10 s"
        );
        sleep(Duration::from_millis(20));
    }
    journald
}

/// A slicewalld that writes its audit records and its log to the journal. Dropping it stops the
/// daemon and removes its pins.
struct JournalDaemon {
    child: Option<Child>,
    pin_dir: PathBuf,
    stderr_path: PathBuf,
    _logs: tempfile::TempDir,
}

impl JournalDaemon {
    /// Starts the daemon and waits until it reports READY=1 (or panics after 30 s).
    fn start(root: &Path, cgroup: &Cgroup, bpffs: &BpfFs) -> JournalDaemon {
        let logs = tempfile::tempdir().unwrap();
        let stderr_path = logs.path().join("slicewalld.stderr");
        let notify_path = logs.path().join("notify");
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();

        let mut command = Command::new(slicewalld());
        command
            .arg("--root")
            .arg(root)
            .arg("--cgroup")
            .arg(&cgroup.path)
            .arg("--pin-dir")
            .arg(bpffs.pin_dir())
            .args(["--nftables", "off"])
            .env("NOTIFY_SOCKET", &notify_path)
            .env("SLICEWALL_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&stderr_path).unwrap());
        kill_with_parent(&mut command);
        let child = command.spawn().expect("failed to start slicewalld");
        let mut daemon = JournalDaemon {
            child: Some(child),
            pin_dir: bpffs.pin_dir(),
            stderr_path,
            _logs: logs,
        };

        let deadline = Instant::now() + Duration::from_secs(30);
        let mut buffer = [0u8; 4096];
        loop {
            if let Ok(n) = notify.recv(&mut buffer) {
                if String::from_utf8_lossy(&buffer[..n])
                    .lines()
                    .any(|line| line == "READY=1")
                {
                    return daemon;
                }
            }
            if let Some(status) = daemon.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("slicewalld exited before it was ready ({status})");
            }
            assert!(Instant::now() < deadline, "slicewalld not ready after 30 s");
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon running").id()
    }

    /// Stops the daemon with SIGTERM, or SIGKILL after 10 s, and returns its exit status, or
    /// `None` if it was already stopped.
    fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: kill with a PID this process started and has not reaped, and a valid signal.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().ok();
            }
            sleep(Duration::from_millis(10));
        }
    }

    /// Returns what the daemon wrote to stderr.
    fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for JournalDaemon {
    fn drop(&mut self) {
        self.stop();
        let cleanup = Command::new(slicewalld())
            .arg("--cleanup")
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .output();
        if !cleanup.as_ref().is_ok_and(|output| output.status.success()) {
            eprintln!(
                "slicewalld --cleanup --pin-dir {} failed: {cleanup:?}",
                self.pin_dir.display()
            );
        }
        if std::thread::panicking() {
            eprintln!("--- slicewalld stderr ---\n{}", self.stderr());
            eprintln!("--- journal ---\n{}", journal_text());
        }
    }
}

/// Returns the value of a journal field whose value is one printable string.
fn field<'a>(entry: &'a Entry, name: &str) -> Option<&'a str> {
    entry.get(name).and_then(Value::as_str)
}

/// Reads every entry in the journal of this namespace.
fn read_journal() -> Vec<Entry> {
    let output = Command::new("journalctl")
        .args(["-D", JOURNAL_DIR, "-o", "json", "--no-pager"])
        .stdin(Stdio::null())
        .output()
        .expect("failed to run journalctl");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|error| panic!("invalid journalctl JSON {line:?}: {error}"))
        })
        .collect()
}

/// Returns the journal as text, with each entry's fields, for failure messages.
fn journal_text() -> String {
    Command::new("journalctl")
        .args(["-D", JOURNAL_DIR, "-o", "verbose", "--no-pager"])
        .stdin(Stdio::null())
        .output()
        .map(|output| {
            format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )
        })
        .unwrap_or_else(|error| format!("failed to run journalctl: {error}"))
}

/// Reads the journal until `predicate` holds for its entries, or panics after 10 s.
fn wait_for_entries(what: &str, predicate: impl Fn(&[Entry]) -> bool) -> Vec<Entry> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let entries = read_journal();
        if predicate(&entries) {
            return entries;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after 10 s waiting for {what} in the journal"
        );
        sleep(Duration::from_millis(100));
    }
}

/// Output of a process run with [`output_with_timeout`], where `status` is `None` if it was killed.
struct TimedOutput {
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
}

/// Runs `command` with its stdout and stderr captured, and kills it after `timeout`.
fn output_with_timeout(command: &mut Command, timeout: Duration) -> TimedOutput {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("failed to start the re-run");
    let stdout = read_in_background(child.stdout.take().unwrap());
    let stderr = read_in_background(child.stderr.take().unwrap());

    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        sleep(Duration::from_millis(50));
    };
    TimedOutput {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

fn read_in_background(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}
