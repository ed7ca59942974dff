//! A throwaway container that boots the machine's own systemd for end-to-end tests.
//!
//! The container's root is an overlay with the machine's root file system as its read-only
//! lower layer and a tmpfs as its upper layer. So every write inside (users, units, rule files)
//! vanishes at teardown, and systemd never runs on the real root. `systemd-nspawn` boots it with
//! a private network namespace, so nftables changes and traffic stay inside, and with a pure
//! cgroup v2 hierarchy at `/sys/fs/cgroup`. The nspawn process lives in a cgroup v2 directory of
//! its own, which nspawn splits into `supervisor` and `payload` (the container's root).
//!
//! Teardown powers the container off, kills it if it does not stop in time, and unmounts and
//! removes everything. It runs once, from whichever comes first: an explicit call, a signal
//! handler or `Drop`.

#![allow(dead_code)]

use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Time the container's systemd gets to reach `running` or `degraded`.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// Time the container gets to power off before it is killed.
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(30);

/// Enabled units that the booted system needs. Every other enabled unit of the machine is
/// masked, so the container starts no database, timer or network service of the machine.
const KEEP_ENABLED: &[&str] = &[
    "dbus",
    "polkit",
    "systemd-journald",
    "systemd-logind",
    "systemd-user-sessions",
];

/// Checks what booting a container needs: root, `systemd-nspawn`, `nsenter`, cgroup v2 and
/// overlayfs. Returns the reason to skip otherwise.
pub fn check_support() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root (overlay mounts, systemd-nspawn, eBPF)".into());
    }
    for tool in ["systemd-nspawn", "nsenter", "mount", "umount", "systemctl"] {
        if find_in_path(tool).is_none() {
            return Err(format!(
                "{tool} is not installed (systemd-nspawn is in Debian's systemd-container)"
            ));
        }
    }
    let mount = slicewall::cgroup::find_cgroup2_mount()
        .map_err(|error| format!("no cgroup v2 mount: {error}"))?;
    if !mount.join("cgroup.procs").exists() {
        return Err(format!(
            "cgroup v2 mount {} has no cgroup.procs",
            mount.display()
        ));
    }
    let filesystems = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !filesystems.lines().any(|line| line.ends_with("\toverlay")) {
        return Err("the kernel has no overlay file system".into());
    }
    Ok(())
}

/// Returns the full path of `program` found in `PATH`.
pub fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// A booted container.
pub struct Container {
    pub name: String,
    /// The tmpfs that contains the overlay's upper and work directories and the merged root.
    dir: PathBuf,
    merged: PathBuf,
    /// The cgroup v2 directory of the nspawn process and, below `payload`, the container.
    cgroup: PathBuf,
    /// PID of the container's systemd in the machine's PID namespace.
    pub leader: u32,
    /// The nspawn process, from its start until teardown.
    nspawn: Mutex<Option<Child>>,
    /// Set by the first teardown.
    torn_down: Mutex<bool>,
}

impl Container {
    /// Builds the overlay, masks the machine's enabled units in it, boots it and waits for
    /// `systemctl is-system-running` to report `running` or `degraded`.
    pub fn boot(name: &str) -> Result<Container, String> {
        let dir = std::env::temp_dir().join(format!("slicewall-{name}-{}", std::process::id()));
        let merged = dir.join("merged");
        let cgroup_mount = slicewall::cgroup::find_cgroup2_mount()
            .map_err(|error| format!("no cgroup v2 mount: {error}"))?;
        let cgroup = cgroup_mount.join(format!("slicewall-{name}-{}", std::process::id()));
        fs::create_dir_all(&dir)
            .map_err(|error| format!("failed to create {}: {error}", dir.display()))?;
        let mut container = Container {
            name: name.to_owned(),
            dir: dir.clone(),
            merged: merged.clone(),
            cgroup: cgroup.clone(),
            leader: 0,
            nspawn: Mutex::new(None),
            torn_down: Mutex::new(false),
        };

        // From here on, a failure tears down what exists so far (Drop).
        run_host("mount", &["-t", "tmpfs", "tmpfs", path_str(&dir)?])?;
        for sub in ["upper", "work", "merged"] {
            fs::create_dir(dir.join(sub))
                .map_err(|error| format!("failed to create {sub} in {}: {error}", dir.display()))?;
        }
        let options = format!(
            "lowerdir=/,upperdir={},workdir={}",
            dir.join("upper").display(),
            dir.join("work").display()
        );
        run_host(
            "mount",
            &[
                "-t",
                "overlay",
                "overlay",
                "-o",
                &options,
                path_str(&merged)?,
            ],
        )?;
        container.mask_enabled_units()?;

        fs::create_dir(&cgroup)
            .map_err(|error| format!("failed to create cgroup {}: {error}", cgroup.display()))?;
        let child = container.spawn_nspawn()?;
        let nspawn_pid = child.id();
        *container.nspawn.lock().unwrap() = Some(child);
        container.leader = container.find_leader(nspawn_pid)?;
        container.wait_until_booted()?;
        Ok(container)
    }

    /// Returns the last `lines` lines of the container's console output so far.
    pub fn console_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(self.dir.join("console.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn mask_enabled_units(&self) -> Result<(), String> {
        let root = format!("--root={}", self.merged.display());
        let listing = run_host(
            "systemctl",
            &[
                &root,
                "list-unit-files",
                "--state=enabled",
                "--no-legend",
                "--no-pager",
            ],
        )?;
        let mask: Vec<&str> = listing
            .lines()
            .filter_map(|line| line.split_whitespace().next())
            .filter(|unit| {
                // Targets only group units; masking one could cut the boot short.
                !unit.ends_with(".target")
                    && !KEEP_ENABLED
                        .iter()
                        .any(|keep| unit.split(['.', '@']).next() == Some(*keep))
            })
            .collect();
        if mask.is_empty() {
            return Ok(());
        }
        let mut args = vec![root.as_str(), "mask"];
        args.extend(mask.iter().copied());
        run_host("systemctl", &args).map(drop)
    }

    fn spawn_nspawn(&self) -> Result<Child, String> {
        let console = fs::File::create(self.dir.join("console.log"))
            .map_err(|error| format!("failed to create the console log: {error}"))?;
        let console_err = console
            .try_clone()
            .map_err(|error| format!("failed to share the console log: {error}"))?;
        let procs = CString::new(self.cgroup.join("cgroup.procs").as_os_str().as_bytes())
            .map_err(|error| error.to_string())?;
        let mut command = Command::new("systemd-nspawn");
        command
            .env("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", "1")
            .arg("-D")
            .arg(&self.merged)
            .args([
                "--register=no",
                "--keep-unit",
                "-M",
                &self.name,
                "--private-network",
                "--capability=CAP_BPF,CAP_PERFMON,CAP_NET_ADMIN",
                "--system-call-filter=bpf perf_event_open",
                "--console=read-only",
                "--boot",
                "--",
                "systemd.firstboot=off",
                "systemd.unit=multi-user.target",
            ])
            .stdin(Stdio::null())
            .stdout(console)
            .stderr(console_err)
            // Its own process group: a Ctrl-C in the terminal reaches the harness, which powers
            // the container off, and not nspawn.
            .process_group(0);
        // SAFETY: the closure runs between fork and exec and only calls async-signal-safe
        // functions (open, write, close) on a path prepared before the fork.
        unsafe {
            command.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if written != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        command
            .spawn()
            .map_err(|error| format!("failed to start systemd-nspawn: {error}"))
    }

    /// Finds the container's systemd: the child of nspawn that is PID 1 of its PID namespace.
    fn find_leader(&self, nspawn_pid: u32) -> Result<u32, String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) =
                self.nspawn.lock().unwrap().as_mut().map(Child::try_wait)
            {
                return Err(format!(
                    "systemd-nspawn exited ({status}) before the container booted:\n{}",
                    self.console_tail(30)
                ));
            }
            for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
                let Ok(status) = fs::read_to_string(entry.path().join("status")) else {
                    continue;
                };
                let field = |name: &str| {
                    status
                        .lines()
                        .find_map(|line| line.strip_prefix(name))
                        .map(str::trim)
                        .unwrap_or("")
                        .to_owned()
                };
                let ns_pids = field("NSpid:");
                if field("PPid:") == nspawn_pid.to_string()
                    && ns_pids.split_whitespace().count() == 2
                    && ns_pids.split_whitespace().last() == Some("1")
                {
                    if let Ok(pid) = field("Pid:").parse() {
                        return Ok(pid);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "timed out waiting for the container's systemd to start:\n{}",
            self.console_tail(30)
        ))
    }

    fn wait_until_booted(&self) -> Result<(), String> {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        let mut state = String::new();
        while Instant::now() < deadline {
            let output = self.exec(&["systemctl", "is-system-running"]);
            state = String::from_utf8_lossy(&output.stdout).trim().to_owned();
            if state == "running" || state == "degraded" {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let failed = self.exec(&["systemctl", "--failed", "--no-legend", "--no-pager"]);
        let jobs = self.exec(&["systemctl", "list-jobs", "--no-legend", "--no-pager"]);
        Err(format!(
            "the container did not finish booting within {} s (state {state:?})\nfailed units:\n{}\njobs:\n{}",
            BOOT_TIMEOUT.as_secs(),
            String::from_utf8_lossy(&failed.stdout),
            String::from_utf8_lossy(&jobs.stdout),
        ))
    }

    fn nsenter(&self, args: &[&str]) -> Command {
        let mut command = Command::new("nsenter");
        command
            .args(["-t", &self.leader.to_string(), "-a", "--"])
            .args(args);
        command
    }

    /// Starts a command in the container without waiting for it, with its standard input and
    /// output piped. The returned child is the `nsenter` process.
    pub fn spawn(&self, args: &[&str]) -> Result<std::process::Child, String> {
        self.nsenter(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|error| format!("failed to start {args:?}: {error}"))
    }

    /// Runs a command in every namespace of the container and returns its output. A command
    /// that cannot be started gives an output with exit status 127 and the error on stderr.
    pub fn exec(&self, args: &[&str]) -> Output {
        self.exec_with_input(args, &[])
    }

    /// Runs a command in the container with `input` on its standard input.
    pub fn exec_with_input(&self, args: &[&str], input: &[u8]) -> Output {
        let spawned = self
            .nsenter(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(error) => return failed_output(&format!("failed to run nsenter: {error}")),
        };
        if let Some(mut stdin) = child.stdin.take() {
            // A command that exits without reading its input closes the pipe; that is fine.
            let _ = stdin.write_all(input);
        }
        child
            .wait_with_output()
            .unwrap_or_else(|error| failed_output(&format!("failed to wait for nsenter: {error}")))
    }

    /// Runs a command in the container and returns its standard output, or an error naming the
    /// command, its exit status and its standard error.
    pub fn exec_ok(&self, args: &[&str]) -> Result<String, String> {
        let output = self.exec(args);
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(format!(
                "{args:?} failed in the container ({}): {}{}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim(),
                String::from_utf8_lossy(&output.stdout).trim()
            ))
        }
    }

    /// Writes a file in the container, creating its directory. It goes through the container's
    /// own mounts, so paths on its tmpfs (`/run`, `/tmp`) work too.
    pub fn write_file(&self, path: &str, contents: &[u8], mode: u32) -> Result<(), String> {
        let mode = format!("{mode:o}");
        let output = self.exec_with_input(
            &[
                "sh",
                "-c",
                "mkdir -p \"$(dirname \"$1\")\" && cat > \"$1\" && chmod \"$2\" \"$1\"",
                "sh",
                path,
                &mode,
            ],
            contents,
        );
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "failed to write {path} in the container: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        }
    }

    /// Copies a file of the machine into the container.
    pub fn copy_file(&self, from: &Path, to: &str, mode: u32) -> Result<(), String> {
        let contents = fs::read(from)
            .map_err(|error| format!("failed to read {}: {error}", from.display()))?;
        self.write_file(to, &contents, mode)
    }

    /// Reads journal records inside the container with `journalctl -o json ARGS`.
    pub fn journal_json(&self, args: &[&str]) -> Result<Vec<serde_json::Value>, String> {
        let mut full = vec!["journalctl", "-o", "json", "--no-pager"];
        full.extend_from_slice(args);
        let text = self.exec_ok(&full)?;
        text.lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                serde_json::from_str(line)
                    .map_err(|error| format!("journalctl printed invalid JSON ({error}): {line}"))
            })
            .collect()
    }

    /// Creates a user and starts its user manager; returns the user ID.
    pub fn add_user(&self, name: &str) -> Result<u32, String> {
        self.exec_ok(&["useradd", "--create-home", name])?;
        let uid: u32 = self
            .exec_ok(&["id", "-u", name])?
            .trim()
            .parse()
            .map_err(|error| format!("invalid user ID of {name}: {error}"))?;
        self.exec_ok(&["systemctl", "start", &format!("user@{uid}.service")])?;
        Ok(uid)
    }

    /// Runs a command as `user` in a new scope `unit` of the user's manager
    /// (`systemd-run --user --scope`), as desktop environments start applications.
    pub fn run_user_scope(&self, user: &str, uid: u32, unit: &str, command: &[&str]) -> Output {
        let args = user_scope_args(user, uid, unit, command);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.exec(&args)
    }

    /// Starts a command as `user` in a new scope `unit` of the user's manager and returns without
    /// waiting for it. The command should end by itself. The returned child is the `nsenter`
    /// process, which the caller waits for or kills.
    pub fn run_user_scope_background(
        &self,
        user: &str,
        uid: u32,
        unit: &str,
        command: &[&str],
    ) -> Result<std::process::Child, String> {
        let args = user_scope_args(user, uid, unit, command);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.nsenter(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|error| format!("failed to start {unit}: {error}"))
    }

    /// Powers the container off, kills it if it does not stop within the timeout, and removes
    /// its mounts and cgroup. Runs once; later calls return at once. Returns what failed.
    pub fn teardown(&self) -> Vec<String> {
        let mut errors = Vec::new();
        let mut torn_down = self.torn_down.lock().unwrap_or_else(|e| e.into_inner());
        if *torn_down {
            return errors;
        }
        *torn_down = true;
        let nspawn = self.nspawn.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(nspawn) = nspawn {
            self.stop(nspawn, &mut errors);
        }
        self.remove_mounts_and_cgroup(&mut errors);
        errors
    }

    fn stop(&self, mut nspawn: Child, errors: &mut Vec<String>) {
        if self.leader != 0 {
            let _ = self
                .nsenter(&["systemctl", "poweroff", "--no-block"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let deadline = Instant::now() + POWEROFF_TIMEOUT;
        let mut exited = false;
        while Instant::now() < deadline {
            if matches!(nspawn.try_wait(), Ok(Some(_)) | Err(_)) {
                exited = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if !exited {
            errors.push(format!(
                "the container did not power off within {} s; killed it",
                POWEROFF_TIMEOUT.as_secs()
            ));
            if self.leader != 0 {
                // SIGKILL to PID 1 of a PID namespace ends every process in it.
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(self.leader as libc::pid_t, libc::SIGKILL) };
            }
            let _ = nspawn.kill();
            let _ = nspawn.wait();
        }
    }

    fn remove_mounts_and_cgroup(&self, errors: &mut Vec<String>) {
        for target in [&self.merged, &self.dir] {
            if !is_mount_point(target) {
                continue;
            }
            let mut unmounted = false;
            for _ in 0..50 {
                if Command::new("umount")
                    .arg(target)
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|status| status.success())
                {
                    unmounted = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if !unmounted {
                errors.push(format!(
                    "{} stayed busy; detached it with umount --lazy",
                    target.display()
                ));
                let _ = Command::new("umount").arg("--lazy").arg(target).status();
            }
        }
        if let Err(error) = fs::remove_dir(&self.dir) {
            if error.kind() != std::io::ErrorKind::NotFound {
                errors.push(format!("failed to remove {}: {error}", self.dir.display()));
            }
        }
        if self.cgroup.exists() {
            let _ = fs::write(self.cgroup.join("cgroup.kill"), "1");
            if let Err(error) = remove_cgroup_tree(&self.cgroup) {
                errors.push(error);
            }
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        for error in self.teardown() {
            eprintln!("teardown: {error}");
        }
    }
}

/// Returns the command line that runs `command` as `user` in a new scope `unit` of the user's
/// manager.
fn user_scope_args(user: &str, uid: u32, unit: &str, command: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "runuser",
        "-u",
        user,
        "--",
        "env",
        &format!("XDG_RUNTIME_DIR=/run/user/{uid}"),
        "systemd-run",
        "--user",
        "--scope",
        "--quiet",
        "-u",
        unit,
        "--",
    ]
    .iter()
    .map(|arg| (*arg).to_owned())
    .collect();
    args.extend(command.iter().map(|arg| (*arg).to_owned()));
    args
}

/// Removes a cgroup directory and its children, deepest first, waiting for their processes to
/// exit.
fn remove_cgroup_tree(path: &Path) -> Result<(), String> {
    if let Ok(entries) = fs::read_dir(path) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                remove_cgroup_tree(&entry.path())?;
            }
        }
    }
    for _ in 0..100 {
        if fs::remove_dir(path).is_ok() || !path.exists() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("failed to remove cgroup {}", path.display()))
}

fn is_mount_point(path: &Path) -> bool {
    let Ok(mountinfo) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let target = path.to_string_lossy();
    mountinfo
        .lines()
        .any(|line| line.split(' ').nth(4) == Some(target.as_ref()))
}

fn path_str(path: &Path) -> Result<&str, String> {
    path.to_str()
        .ok_or_else(|| format!("path {} is not valid UTF-8", path.display()))
}

/// Runs a command on the machine (not in the container) and returns its standard output.
fn run_host(program: &str, args: &[&str]) -> Result<String, String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|error| format!("failed to run {program}: {error}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {args:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

fn failed_output(message: &str) -> Output {
    use std::os::unix::process::ExitStatusExt;

    Output {
        status: std::process::ExitStatus::from_raw(127 << 8),
        stdout: Vec::new(),
        stderr: message.as_bytes().to_vec(),
    }
}
