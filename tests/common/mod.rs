//! Shared harness of the privileged integration tests.
//!
//! Every test builds its own lab: a cgroup v2 subtree that its own `slicewalld` guards, a
//! private bpf file system for the pins, a client network namespace (loopback listeners) and a
//! server namespace behind a veth pair (192.0.2.0/24 and 2001:db8::/64, documentation ranges
//! that exist only inside the lab). Guards remove everything on drop, also when a test fails.
//! A test that lacks root or a kernel feature prints `skipping: <reason>` and returns.

#![allow(dead_code)]

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Returns from the test, printing why, when the machine cannot run privileged tests.
#[macro_export]
macro_rules! require_lab {
    () => {
        if let Err(reason) = $crate::common::check_privileges() {
            println!("skipping: {reason}");
            return;
        }
    };
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique(tag: &str) -> String {
    format!(
        "sw{}{}{}",
        std::process::id() % 100_000,
        tag,
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// Checks root, cgroup v2, a bpf file system and the tools the lab needs.
pub fn check_privileges() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root (eBPF, cgroups and network namespaces)".into());
    }
    let mount = slicewall::cgroup::find_cgroup2_mount()
        .map_err(|error| format!("no cgroup v2 mount: {error}"))?;
    if !mount.join("cgroup.procs").exists() {
        return Err(format!(
            "cgroup v2 mount {} has no cgroup.procs",
            mount.display()
        ));
    }
    for tool in ["ip", "mount", "umount"] {
        if Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
            && Command::new(tool)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_err()
        {
            return Err(format!("{tool} is not installed"));
        }
    }
    Ok(())
}

pub fn run(program: &str, args: &[&str]) {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("failed to run {program}: {error}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A network namespace created with `ip netns add`, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = unique(tag);
        run("ip", &["netns", "add", &name]);
        let netns = Netns { name };
        netns.ip(&["link", "set", "lo", "up"]);
        netns
    }

    pub fn ip(&self, args: &[&str]) {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full);
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs `f` on a thread that has entered this namespace; sockets it creates stay in it.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
        let file = fs::File::open(self.path()).expect("open netns");
        std::thread::spawn(move || {
            // SAFETY: setns on this thread only, with a valid namespace descriptor.
            let result = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(result, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

/// A cgroup directory under the cgroup v2 mount; its processes are killed and it is removed on
/// drop, children first.
pub struct Cgroup {
    pub path: PathBuf,
    /// Path relative to the cgroup v2 mount, as unit names are parsed from.
    pub relative: String,
}

impl Cgroup {
    pub fn new_top(tag: &str) -> Cgroup {
        let mount = slicewall::cgroup::find_cgroup2_mount().unwrap();
        // A slice, so units below it parse as they would under systemd.
        let name = format!("slicewalltest{}.slice", unique(tag));
        let path = mount.join(&name);
        fs::create_dir(&path).unwrap();
        Cgroup {
            path,
            relative: format!("/{name}"),
        }
    }

    pub fn child(&self, name: &str) -> Cgroup {
        let path = self.path.join(name);
        fs::create_dir_all(&path).unwrap();
        Cgroup {
            path,
            relative: format!("{}/{name}", self.relative),
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        remove_cgroup_tree(&self.path);
    }
}

fn remove_cgroup_tree(path: &Path) {
    if !path.exists() {
        return;
    }
    if let Ok(entries) = fs::read_dir(path) {
        for entry in entries.flatten() {
            if entry.file_type().map(|kind| kind.is_dir()).unwrap_or(false) {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
    let _ = fs::write(path.join("cgroup.kill"), "1");
    for _ in 0..100 {
        if fs::remove_dir(path).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A private bpf file system for one daemon's pins, unmounted on drop.
pub struct BpfFs {
    pub dir: tempfile::TempDir,
}

impl BpfFs {
    pub fn new() -> BpfFs {
        let dir = tempfile::tempdir().unwrap();
        run("mount", &["-t", "bpf", "bpf", dir.path().to_str().unwrap()]);
        BpfFs { dir }
    }

    pub fn pin_dir(&self) -> PathBuf {
        self.dir.path().join("slicewall")
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Echo servers for TCP and UDP on one address, in whatever namespace the caller picks.
pub struct Echo {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    pub port: u16,
    /// TCP connections accepted and UDP datagrams received.
    pub received: Arc<AtomicU32>,
}

impl Echo {
    /// Serves TCP and UDP echo on `address` (port 0 picks one) inside `netns`.
    pub fn start(netns: &Netns, address: &str) -> Echo {
        let address: SocketAddr = address.parse().unwrap();
        let (tcp, udp) = netns
            .spawn(move || {
                let tcp = TcpListener::bind(address).expect("bind tcp");
                let port = tcp.local_addr().unwrap().port();
                let udp = UdpSocket::bind(SocketAddr::new(address.ip(), port)).expect("bind udp");
                (tcp, udp)
            })
            .join()
            .unwrap();
        let port = tcp.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        tcp.set_nonblocking(true).unwrap();
        udp.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();

        let received = Arc::new(AtomicU32::new(0));
        let tcp_received = Arc::clone(&received);
        let udp_received = Arc::clone(&received);
        let tcp_stop = Arc::clone(&stop);
        let tcp_thread = std::thread::spawn(move || {
            while !tcp_stop.load(Ordering::Relaxed) {
                match tcp.accept() {
                    Ok((mut stream, _)) => {
                        tcp_received.fetch_add(1, Ordering::SeqCst);
                        std::thread::spawn(move || {
                            let _ = stream.set_nonblocking(false);
                            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                            let mut buffer = [0u8; 1024];
                            if let Ok(n) = stream.read(&mut buffer) {
                                if buffer[..n].starts_with(b"GET ") {
                                    let _ = stream.write_all(
                                        b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n",
                                    );
                                } else {
                                    let _ = stream.write_all(&buffer[..n]);
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        let udp_stop = Arc::clone(&stop);
        let udp_thread = std::thread::spawn(move || {
            let mut buffer = [0u8; 1024];
            while !udp_stop.load(Ordering::Relaxed) {
                if let Ok((n, peer)) = udp.recv_from(&mut buffer) {
                    udp_received.fetch_add(1, Ordering::SeqCst);
                    let _ = udp.send_to(&buffer[..n], peer);
                }
            }
        });
        Echo {
            stop,
            threads: vec![tcp_thread, udp_thread],
            port,
            received,
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A running `slicewalld`, stopped and cleaned up on drop.
pub struct Daemon {
    child: Option<Child>,
    pub stderr_path: PathBuf,
    pub pin_dir: PathBuf,
    pub root: PathBuf,
    pub cgroup: PathBuf,
    /// Environment variables the daemon gets on top of the test's.
    pub env: Vec<(String, String)>,
    _logs: tempfile::TempDir,
}

pub fn slicewalld() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_slicewalld"))
}

pub fn slicewallctl() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_slicewallctl"))
}

impl Daemon {
    /// Starts the daemon and waits until it reports READY=1 (or fails the test after 30 s).
    pub fn start(root: &Path, cgroup: &Cgroup, bpffs: &BpfFs, extra: &[&str]) -> Daemon {
        let logs = tempfile::tempdir().unwrap();
        let stderr_path = logs.path().join("slicewalld.log");
        let mut daemon = Daemon {
            child: None,
            stderr_path,
            pin_dir: bpffs.pin_dir(),
            root: root.to_owned(),
            cgroup: cgroup.path.clone(),
            env: Vec::new(),
            _logs: logs,
        };
        daemon.launch(extra);
        daemon
    }

    fn launch(&mut self, extra: &[&str]) {
        let notify_path = self
            ._logs
            .path()
            .join(format!("notify-{}", COUNTER.fetch_add(1, Ordering::SeqCst)));
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let stderr = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr_path)
            .unwrap();
        let child = Command::new(slicewalld())
            .arg("--root")
            .arg(&self.root)
            .arg("--cgroup")
            .arg(&self.cgroup)
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--audit-stderr")
            // The lab's cgroups are not systemd units, and nftables must stay out of the
            // machine's own network namespace.
            .args(["--nftables", "off"])
            .args(extra)
            .env("NOTIFY_SOCKET", &notify_path)
            .env("SLICEWALL_LOG", "info")
            .envs(self.env.iter().map(|(name, value)| (name, value)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("failed to start slicewalld");
        self.child = Some(child);

        let deadline = Instant::now() + Duration::from_secs(30);
        let mut buffer = [0u8; 4096];
        loop {
            if let Ok(n) = notify.recv(&mut buffer) {
                if String::from_utf8_lossy(&buffer[..n])
                    .lines()
                    .any(|line| line == "READY=1")
                {
                    break;
                }
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "slicewalld exited before it was ready ({status}):\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "slicewalld not ready after 30 s:\n{}",
                self.log()
            );
        }
        let _ = fs::remove_file(&notify_path);
    }

    /// Stops the daemon with SIGTERM and waits for it; the pinned gate stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill with a PID we own and a valid signal.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// Starts a new daemon process on the same pins, as `systemctl restart` would.
    pub fn restart(&mut self, extra: &[&str]) {
        self.stop();
        self.launch(extra);
    }

    pub fn signal(&self, signal: i32) {
        let pid = self.child.as_ref().expect("daemon running").id();
        // SAFETY: kill with a PID we own and a valid signal.
        unsafe { libc::kill(pid as i32, signal) };
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon running").id()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Audit records written so far, each as its fields.
    pub fn audit_records(&self) -> Vec<HashMap<String, String>> {
        self.log().lines().filter_map(parse_audit_line).collect()
    }

    /// Waits until `predicate` holds for the audit records, or fails after `timeout`.
    pub fn wait_for_audit(
        &self,
        timeout: Duration,
        what: &str,
        predicate: impl Fn(&[HashMap<String, String>]) -> bool,
    ) -> Vec<HashMap<String, String>> {
        let deadline = Instant::now() + timeout;
        loop {
            let records = self.audit_records();
            if predicate(&records) {
                return records;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; daemon log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        let _ = Command::new(slicewalld())
            .arg("--cleanup")
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .output();
        if std::thread::panicking() {
            eprintln!("--- slicewalld log ---\n{}", self.log());
        }
    }
}

/// Parses one audit record written to standard error: `key=value` pairs, where a value is bare or
/// double-quoted with backslash escapes. Keys come back as journal field names
/// (`verdict` as `SLICEWALL_VERDICT`); lines that are not decisions give `None`.
pub fn parse_audit_line(line: &str) -> Option<HashMap<String, String>> {
    if !line.contains(" verdict=") {
        return None;
    }
    let rest = line;
    let mut fields = HashMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek() == Some(&' ') {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ' ' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() && chars.peek().is_none() {
            break;
        }
        if chars.next() != Some('=') {
            continue;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '"' => break,
                    '\\' => {
                        if let Some(escaped) = chars.next() {
                            value.push(escaped);
                        }
                    }
                    other => value.push(other),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ' ' {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        let key = match key.as_str() {
            "priority" | "message_id" | "message" => key.to_ascii_uppercase(),
            _ => format!("SLICEWALL_{}", key.to_ascii_uppercase()),
        };
        fields.insert(key, value);
    }
    Some(fields)
}

/// The client and server namespaces of a lab, with echo servers on loopback and on the veth.
pub struct Network {
    pub client: Netns,
    pub server: Netns,
    pub loopback4: Echo,
    pub loopback6: Echo,
    pub veth4: Echo,
    pub veth6: Echo,
}

pub const CLIENT_V4: &str = "192.0.2.1";
pub const SERVER_V4: &str = "192.0.2.2";
pub const CLIENT_V6: &str = "2001:db8::1";
pub const SERVER_V6: &str = "2001:db8::2";

impl Network {
    pub fn new() -> Network {
        let client = Netns::new("c");
        let server = Netns::new("s");
        let veth = format!("v{}", unique(""));
        let peer = format!("{veth}p");
        client.ip(&[
            "link",
            "add",
            &veth,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
            "netns",
            &server.name,
        ]);
        client.ip(&["addr", "add", &format!("{CLIENT_V4}/24"), "dev", &veth]);
        client.ip(&[
            "addr",
            "add",
            &format!("{CLIENT_V6}/64"),
            "dev",
            &veth,
            "nodad",
        ]);
        client.ip(&["link", "set", &veth, "up"]);
        server.ip(&["addr", "add", &format!("{SERVER_V4}/24"), "dev", &peer]);
        server.ip(&[
            "addr",
            "add",
            &format!("{SERVER_V6}/64"),
            "dev",
            &peer,
            "nodad",
        ]);
        server.ip(&["link", "set", &peer, "up"]);
        let loopback4 = Echo::start(&client, "127.0.0.1:0");
        let loopback6 = Echo::start(&client, "[::1]:0");
        let veth4 = Echo::start(&server, &format!("{SERVER_V4}:0"));
        let veth6 = Echo::start(&server, &format!("[{SERVER_V6}]:0"));
        Network {
            client,
            server,
            loopback4,
            loopback6,
            veth4,
            veth6,
        }
    }
}

/// Runs `program` inside `cgroup` and the client namespace, and returns its output.
pub fn run_in(cgroup: &Cgroup, netns: &Netns, program: &Path, args: &[&str]) -> Output {
    spawn_in(cgroup, netns, program, args)
        .wait_with_output()
        .expect("wait for client")
}

/// Starts `program` inside `cgroup` and `netns`; it joins both before exec, so its first
/// instruction already runs there.
pub fn spawn_in(cgroup: &Cgroup, netns: &Netns, program: &Path, args: &[&str]) -> Child {
    spawn_in_with_stdin(cgroup, netns, program, args, Stdio::null())
}

/// Like [`spawn_in`], with the given standard input, such as `Stdio::piped()`.
pub fn spawn_in_with_stdin(
    cgroup: &Cgroup,
    netns: &Netns,
    program: &Path,
    args: &[&str],
    stdin: Stdio,
) -> Child {
    let procs = cgroup.path.join("cgroup.procs");
    let netns_file = fs::File::open(netns.path()).unwrap();
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let netns_fd = netns_file.as_raw_fd();
    let procs_c = std::ffi::CString::new(procs.to_str().unwrap()).unwrap();
    // SAFETY: the closure runs in the child between fork and exec and only makes async-signal-
    // safe system calls (setns, open, write, close) on data prepared before the fork.
    unsafe {
        command.pre_exec(move || {
            if libc::setns(netns_fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let fd = libc::open(procs_c.as_ptr(), libc::O_WRONLY);
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
    // A test that has just written an executable can see ETXTBSY: a process that another test
    // thread forked at that moment keeps the file open for writing until it calls exec.
    for _ in 0..100 {
        match command.spawn() {
            Err(error) if error.raw_os_error() == Some(libc::ETXTBSY) => {
                std::thread::sleep(Duration::from_millis(10));
            }
            result => {
                drop(netns_file);
                return result.expect("failed to start client");
            }
        }
    }
    panic!("{} stayed busy (ETXTBSY) for a second", program.display());
}

pub fn probe() -> PathBuf {
    // Examples are built next to the test binaries' deps directory.
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let path = dir.join("examples").join("probe");
    assert!(
        path.exists(),
        "{} is missing; build it with `cargo build --example probe`",
        path.display()
    );
    path
}

/// A probe line with either kind of denial written as `denied`: EPERM when the gate decided in
/// the kernel, ECONNABORTED when it held the connect and the daemon denied it. Which one a flow
/// gets depends on whether the daemon identified a just-started program before its first flow.
pub const DENIED: &str = "denied";

pub fn outcome(line: &str) -> String {
    for denial in ["error: EPERM (errno 1)", "error: ECONNABORTED (errno 103)"] {
        if let Some(rest) = line.strip_prefix(denial) {
            return format!("{DENIED}{rest}");
        }
    }
    line.to_owned()
}

/// Result lines a probe printed.
pub fn probe_lines(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Writes a rule file under `root`'s `dir` ("etc", "run" or "usr/lib").
pub fn write_rules(root: &Path, dir: &str, name: &str, text: &str) -> PathBuf {
    let rules_dir = root.join(dir).join("slicewall/rules.d");
    fs::create_dir_all(&rules_dir).unwrap();
    let path = rules_dir.join(name);
    fs::write(&path, text).unwrap();
    path
}

/// Reads lines from a child's stdout as they come.
pub fn lines_of(child: &mut Child) -> impl Iterator<Item = String> {
    BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
}

/// Everything one test needs: rules root, guarded cgroup, pins, network and daemon.
pub struct Lab {
    // Field order is drop order: the daemon goes first, then what it guarded.
    pub daemon: Option<Daemon>,
    pub network: Network,
    pub cgroup: Cgroup,
    pub bpffs: BpfFs,
    pub root: tempfile::TempDir,
}

impl Lab {
    /// Builds a lab whose rule root contains `rules` as etc/slicewall/rules.d/50-test.toml (none if
    /// empty), without starting the daemon.
    pub fn new(rules: &str) -> Lab {
        let root = tempfile::tempdir().unwrap();
        if !rules.is_empty() {
            write_rules(root.path(), "etc", "50-test.toml", rules);
        }
        Lab {
            daemon: None,
            network: Network::new(),
            cgroup: Cgroup::new_top("t"),
            bpffs: BpfFs::new(),
            root,
        }
    }

    /// Starts the daemon and checks that it loaded every rule file.
    pub fn start(&mut self, extra: &[&str]) -> &mut Daemon {
        let daemon = self.start_degraded(extra);
        let log = daemon.log();
        assert!(
            !log.contains("degraded"),
            "a rule file of the test was rejected:\n{log}"
        );
        daemon
    }

    /// Starts the daemon with extra environment variables, such as the address of a system bus.
    pub fn start_with_env(&mut self, extra: &[&str], env: &[(&str, &str)]) -> &mut Daemon {
        let logs = tempfile::tempdir().unwrap();
        let mut daemon = Daemon {
            child: None,
            stderr_path: logs.path().join("slicewalld.log"),
            pin_dir: self.bpffs.pin_dir(),
            root: self.root.path().to_owned(),
            cgroup: self.cgroup.path.clone(),
            env: env
                .iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                .collect(),
            _logs: logs,
        };
        daemon.launch(extra);
        self.daemon.insert(daemon)
    }

    /// Starts the daemon, which may skip bad rule files.
    pub fn start_degraded(&mut self, extra: &[&str]) -> &mut Daemon {
        let daemon = Daemon::start(self.root.path(), &self.cgroup, &self.bpffs, extra);
        self.daemon.insert(daemon)
    }

    pub fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().expect("daemon started")
    }

    pub fn daemon_mut(&mut self) -> &mut Daemon {
        self.daemon.as_mut().expect("daemon started")
    }

    /// Runs the probe in `cgroup` and returns the outcome of each flow, see [`outcome`].
    pub fn probe(&self, cgroup: &Cgroup, args: &[&str]) -> Vec<String> {
        self.probe_with(&probe(), cgroup, args)
    }

    pub fn probe_with(&self, program: &Path, cgroup: &Cgroup, args: &[&str]) -> Vec<String> {
        self.probe_raw(program, cgroup, args)
            .iter()
            .map(|line| outcome(line))
            .collect()
    }

    /// Runs `program` in `cgroup` and returns the lines it printed, unchanged.
    pub fn probe_raw(&self, program: &Path, cgroup: &Cgroup, args: &[&str]) -> Vec<String> {
        let output = run_in(cgroup, &self.network.client, program, args);
        probe_lines(&output)
    }

    /// Reloads the rules with SIGHUP and waits for the daemon to report the outcome.
    pub fn reload(&self) -> String {
        let daemon = self.daemon();
        let before = daemon.log().len();
        daemon.signal(libc::SIGHUP);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = daemon.log();
            let tail = &log[before.min(log.len())..];
            if tail.contains("reloaded") || tail.contains("rejected the reload") {
                return tail.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no reload outcome in the log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
