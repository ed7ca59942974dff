//! Destroys real TCP sockets with `destroy_tcp_socket` while the test's main thread stays in the
//! machine's network namespace and the sockets live in a namespace that each test creates.
//!
//! Needs root, `ip` from iproute2, and `nft` for the tests that hold a SYN. Each test prints
//! `skipping: <reason>` and passes when one is missing. All traffic stays on the loopback
//! interface of the test's own namespace.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use slicewall::kernel::destroy::{destroy_tcp_socket, DestroyError, HeldSocket};
use socket2::{Domain, Protocol, SockRef, Socket, Type};

/// Upper bound for every wait in these tests, far above what loopback needs.
const WAIT_LIMIT: Duration = Duration::from_secs(10);

/// A network namespace created with `ip netns add`, with `lo` up and a `sleep` process inside it
/// whose pid stands for the process that owns the sockets. Dropping it, also during a panic, ends
/// that process and deletes the namespace.
struct TestNamespace {
    name: String,
    holder: Option<Child>,
}

impl TestNamespace {
    /// Creates the namespace `slicewall-destroy-<pid>-<case>`, or returns why the test must skip.
    fn create(case: &str) -> Result<Self, String> {
        // SAFETY: geteuid() has no preconditions and only reads the process credentials.
        if unsafe { libc::geteuid() } != 0 {
            return Err("needs root to create network namespaces".to_owned());
        }

        let name = format!("slicewall-destroy-{}-{case}", std::process::id());
        let added = Command::new("ip").args(["netns", "add", &name]).output();
        match added {
            Err(error) => return Err(format!("cannot run ip: {error}")),
            Ok(output) if !output.status.success() => {
                let stderr = String::from_utf8_lossy(&output.stderr);
                return Err(format!("ip netns add {name} failed: {}", stderr.trim()));
            }
            Ok(_) => {}
        }
        // From here on, Drop deletes the namespace even if a step below panics.
        let mut namespace = TestNamespace { name, holder: None };

        namespace.ip(&["link", "set", "lo", "up"]);
        let holder = Command::new("ip")
            .args(["netns", "exec", &namespace.name, "sleep", "300"])
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn sleep inside the test namespace");
        namespace.holder = Some(holder);
        namespace.wait_for_holder();
        Ok(namespace)
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    fn holder_pid(&self) -> u32 {
        self.holder.as_ref().expect("holder process").id()
    }

    /// Runs `ip -n <namespace> <args>` and panics on failure.
    fn ip(&self, args: &[&str]) {
        let status = Command::new("ip")
            .args(["-n", &self.name])
            .args(args)
            .status()
            .expect("run ip");
        assert!(
            status.success(),
            "ip -n {} {} failed: {status}",
            self.name,
            args.join(" ")
        );
    }

    /// Waits until `ip netns exec` has moved the holder into the namespace and exec'd `sleep`.
    fn wait_for_holder(&self) {
        let namespace_inode = fs::metadata(self.path()).expect("stat namespace").ino();
        let holder_namespace = format!("/proc/{}/ns/net", self.holder_pid());
        let started = Instant::now();
        loop {
            let inode = fs::metadata(&holder_namespace).map(|metadata| metadata.ino());
            if inode.ok() == Some(namespace_inode) {
                return;
            }
            assert!(
                started.elapsed() < WAIT_LIMIT,
                "holder never entered namespace {}",
                self.name
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Loads an nftables ruleset into the namespace, or returns why the test must skip.
    fn load_nft_ruleset(&self, ruleset: &str) -> Result<(), String> {
        let spawned = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut nft = spawned.map_err(|error| format!("cannot run ip netns exec nft: {error}"))?;
        nft.stdin
            .take()
            .expect("nft stdin")
            .write_all(ruleset.as_bytes())
            .expect("write nft ruleset");
        let output = nft.wait_with_output().expect("wait for nft");
        if output.status.success() {
            Ok(())
        } else {
            let stderr = String::from_utf8_lossy(&output.stderr);
            Err(format!(
                "nft failed in namespace {}: {}",
                self.name,
                stderr.trim()
            ))
        }
    }

    /// Runs `task` on a thread that has entered the namespace, so sockets it creates live there.
    fn run<T: Send>(&self, task: impl FnOnce() -> T + Send) -> T {
        let namespace = File::open(self.path()).expect("open namespace");
        thread::scope(|scope| {
            let worker = scope.spawn(|| {
                // SAFETY: setns() only reads the descriptor, which `namespace` keeps open, and it
                // moves this short-lived thread alone.
                let result = unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(result, 0, "setns: {}", io::Error::last_os_error());
                task()
            });
            worker
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if let Some(mut holder) = self.holder.take() {
            let _ = holder.kill();
            let _ = holder.wait();
        }
        let deleted = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
        if !matches!(deleted, Ok(status) if status.success()) {
            eprintln!(
                "failed to delete network namespace {}: {deleted:?}",
                self.name
            );
        }
    }
}

/// Creates the test namespace, or prints why the test skips and returns `None`.
fn namespace_or_skip(case: &str) -> Option<TestNamespace> {
    match TestNamespace::create(case) {
        Ok(namespace) => Some(namespace),
        Err(reason) => {
            eprintln!("skipping: {reason}");
            None
        }
    }
}

fn thread_namespace_inode() -> u64 {
    fs::metadata("/proc/thread-self/ns/net")
        .expect("stat own namespace")
        .ino()
}

fn held_socket(namespace: &TestNamespace, client: &TcpStream) -> HeldSocket {
    HeldSocket {
        pid: namespace.holder_pid(),
        cookie: SockRef::from(client).cookie().expect("SO_COOKIE"),
        source: client.local_addr().expect("client local address"),
        destination: client.peer_addr().expect("client peer address"),
    }
}

/// Starts a listener on `listen_on` inside the namespace and connects to it at the address of
/// `connect_to` with the listener's port. Returns the accepted server side and the client.
fn connect_in_namespace(
    namespace: &TestNamespace,
    listen_on: SocketAddr,
    connect_to: SocketAddr,
) -> (TcpStream, TcpStream) {
    let (listener, client) = namespace.run(|| {
        let listener = TcpListener::bind(listen_on).expect("bind listener");
        let port = listener.local_addr().expect("listener address").port();
        let client = TcpStream::connect(SocketAddr::new(connect_to.ip(), port)).expect("connect");
        (listener, client)
    });
    let (server, _) = listener.accept().expect("accept");
    (server, client)
}

/// Destroys an established connection from the main thread and checks that the client's next
/// read fails with ECONNABORTED.
fn check_established_is_aborted(case: &str, listen_on: SocketAddr, connect_to: SocketAddr) {
    let Some(namespace) = namespace_or_skip(case) else {
        return;
    };
    let (_server, mut client) = connect_in_namespace(&namespace, listen_on, connect_to);
    let held = held_socket(&namespace, &client);
    let own_namespace = thread_namespace_inode();

    destroy_tcp_socket(&held).unwrap_or_else(|error| panic!("destroy {held}: {error:?}"));

    client
        .set_read_timeout(Some(WAIT_LIMIT))
        .expect("set read timeout");
    let mut buffer = [0; 16];
    let read = client.read(&mut buffer);
    let errno = read.as_ref().err().and_then(io::Error::raw_os_error);
    assert_eq!(
        errno,
        Some(libc::ECONNABORTED),
        "read after destroy returned {read:?}"
    );
    assert_eq!(
        thread_namespace_inode(),
        own_namespace,
        "caller's namespace changed"
    );
}

#[test]
fn destroy_aborts_established_v4() {
    let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    check_established_is_aborted("est4", loopback, loopback);
}

#[test]
fn destroy_aborts_established_v6() {
    let loopback = SocketAddr::from((Ipv6Addr::LOCALHOST, 0));
    check_established_is_aborted("est6", loopback, loopback);
}

#[test]
fn destroy_aborts_established_v4_mapped() {
    // An IPv6 client socket connecting to ::ffff:127.0.0.1 reaches an IPv4 listener.
    let listen_on = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let connect_to = SocketAddr::from((Ipv4Addr::LOCALHOST.to_ipv6_mapped(), 0));
    check_established_is_aborted("mapped", listen_on, connect_to);
}

#[test]
fn destroy_wrong_cookie_is_not_found() {
    let Some(namespace) = namespace_or_skip("cookie") else {
        return;
    };
    let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let (mut server, mut client) = connect_in_namespace(&namespace, loopback, loopback);
    let held = held_socket(&namespace, &client);
    let wrong_cookie = HeldSocket {
        cookie: held.cookie + 1,
        ..held
    };

    let result = destroy_tcp_socket(&wrong_cookie);
    assert!(
        matches!(result, Err(DestroyError::NotFound { .. })),
        "{result:?}"
    );

    // The connection with the real cookie must still carry data.
    client
        .write_all(b"ping")
        .expect("write after rejected destroy");
    server
        .set_read_timeout(Some(WAIT_LIMIT))
        .expect("set read timeout");
    let mut received = [0; 4];
    server
        .read_exact(&mut received)
        .expect("read after rejected destroy");
    assert_eq!(&received, b"ping");
}

#[test]
fn destroy_twice_is_not_found() {
    let Some(namespace) = namespace_or_skip("twice") else {
        return;
    };
    let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let (_server, client) = connect_in_namespace(&namespace, loopback, loopback);
    let held = held_socket(&namespace, &client);

    destroy_tcp_socket(&held).unwrap_or_else(|error| panic!("destroy {held}: {error:?}"));

    let again = destroy_tcp_socket(&held);
    assert!(
        matches!(again, Err(DestroyError::NotFound { .. })),
        "{again:?}"
    );
}

#[test]
fn destroy_unknown_addresses_is_not_found() {
    let Some(namespace) = namespace_or_skip("unknown") else {
        return;
    };
    // The namespace has no sockets at all.
    let held = HeldSocket {
        pid: namespace.holder_pid(),
        cookie: 1,
        source: SocketAddr::from((Ipv4Addr::LOCALHOST, 40000)),
        destination: SocketAddr::from((Ipv4Addr::LOCALHOST, 40001)),
    };

    let result = destroy_tcp_socket(&held);
    assert!(
        matches!(result, Err(DestroyError::NotFound { .. })),
        "{result:?}"
    );
}

#[test]
fn destroy_missing_pid_fails_to_open_namespace() {
    // Linux pids stay below 2^22, so this process cannot exist.
    let held = HeldSocket {
        pid: u32::MAX,
        cookie: 1,
        source: SocketAddr::from((Ipv4Addr::LOCALHOST, 40000)),
        destination: SocketAddr::from((Ipv4Addr::LOCALHOST, 40001)),
    };

    let result = destroy_tcp_socket(&held);
    assert!(
        matches!(result, Err(DestroyError::OpenNamespace { .. })),
        "{result:?}"
    );
}

/// Holds a connection in SYN_SENT, as slicewall's egress program does, by dropping its SYN with
/// nftables inside the namespace. Destroys it from the main thread while another thread blocks in
/// `connect()`, and checks that `connect()` fails with ECONNABORTED.
fn check_held_connect_is_aborted(case: &str, loopback: SocketAddr) {
    let Some(namespace) = namespace_or_skip(case) else {
        return;
    };

    let (listener, socket) = namespace.run(|| {
        let listener = TcpListener::bind(loopback).expect("bind listener");
        let socket = Socket::new(
            Domain::for_address(loopback),
            Type::STREAM,
            Some(Protocol::TCP),
        )
        .expect("create client socket");
        (listener, socket)
    });
    let destination = listener.local_addr().expect("listener address");
    let ruleset = format!(
        "table inet slicewall_test {{\n\
         \tchain output {{\n\
         \t\ttype filter hook output priority 0; policy accept;\n\
         \t\ttcp dport {} tcp flags & (syn | ack) == syn drop\n\
         \t}}\n\
         }}\n",
        destination.port()
    );
    if let Err(reason) = namespace.load_nft_ruleset(&ruleset) {
        eprintln!("skipping: {reason}");
        return;
    }

    // The send timeout bounds the blocking connect() in case the destroy does not work.
    socket
        .set_write_timeout(Some(WAIT_LIMIT))
        .expect("set send timeout");
    let observer = socket.try_clone().expect("duplicate client socket");

    thread::scope(|scope| {
        let started = Instant::now();
        let connecting = scope.spawn(|| socket.connect(&destination.into()));

        // connect() binds the source port before it sends the SYN.
        let source = loop {
            let local = observer.local_addr().expect("client local address");
            let local = local.as_socket().expect("inet address");
            if local.port() != 0 {
                break local;
            }
            assert!(
                started.elapsed() < WAIT_LIMIT,
                "connect() never bound a source port"
            );
            thread::sleep(Duration::from_millis(10));
        };
        thread::sleep(Duration::from_millis(100));
        assert!(
            !connecting.is_finished(),
            "connect() returned although its SYN was dropped"
        );

        let held = HeldSocket {
            pid: namespace.holder_pid(),
            cookie: observer.cookie().expect("SO_COOKIE"),
            source,
            destination,
        };
        destroy_tcp_socket(&held).unwrap_or_else(|error| panic!("destroy {held}: {error:?}"));

        let connected = connecting.join().expect("connect thread");
        let errno = connected.as_ref().err().and_then(io::Error::raw_os_error);
        assert_eq!(
            errno,
            Some(libc::ECONNABORTED),
            "connect() after destroy returned {connected:?}"
        );
        assert!(
            started.elapsed() < WAIT_LIMIT,
            "connect() failed only after its timeout"
        );
    });
}

#[test]
fn destroy_aborts_held_connect_v4() {
    check_held_connect_is_aborted("syn4", SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
}

#[test]
fn destroy_aborts_held_connect_v6() {
    check_held_connect_is_aborted("syn6", SocketAddr::from((Ipv6Addr::LOCALHOST, 0)));
}
