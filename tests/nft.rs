//! Table `inet slicewall` on a real kernel: sets and elements, cutting established TCP
//! connections of denied units, per-unit counters, the cgroup a socket keeps when its process
//! moves, repair after outside changes, and the cost of `sync`.
//!
//! Needs root, `nft` and `nsenter`. Every nft command runs through `nsenter --net` inside a
//! network namespace that the test creates, so the machine's own rule set is never touched.
//! nsenter keeps this process's mount namespace, so nft resolves cgroup paths below
//! `/sys/fs/cgroup` as the library computes them, on a hybrid layout as well as on a pure
//! cgroup v2 one. Each test prints `skipping: <reason>` and passes when something is missing.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{Cgroup, Netns};
use slicewall::nft::{Applied, Nft, NftError, NftUnit};

/// Returns why the machine cannot run these tests, if it cannot.
fn missing_requirement() -> Option<String> {
    if let Err(reason) = common::check_privileges() {
        return Some(reason);
    }
    for tool in ["nft", "nsenter"] {
        if Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            return Some(format!("{tool} is not installed"));
        }
    }
    None
}

macro_rules! require_nft_lab {
    () => {
        if let Some(reason) = missing_requirement() {
            println!("skipping: {reason}");
            return;
        }
    };
}

/// A network namespace and a test cgroup with the children `a` and `b`.
struct NftLab {
    // Field order is drop order: processes in the cgroups end before the namespace goes.
    top: Cgroup,
    a: Cgroup,
    b: Cgroup,
    netns: Netns,
}

impl NftLab {
    fn new() -> NftLab {
        let top = Cgroup::new_top("n");
        let a = top.child("a.service");
        let b = top.child("b.service");
        NftLab {
            top,
            a,
            b,
            netns: Netns::new("n"),
        }
    }

    /// Returns an `Nft` whose nft runs inside the lab's namespace.
    fn nft(&self) -> Nft {
        Nft::new().with_command(
            "nsenter",
            [
                format!("--net={}", self.netns.path().display()),
                "nft".into(),
            ],
        )
    }

    /// Runs the nft command line inside the lab's namespace.
    fn nft_cli(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net={}", self.netns.path().display()))
            .arg("nft")
            .args(args)
            .output()
            .expect("run nsenter nft")
    }

    /// Runs the nft command line and returns its standard output, failing the test on error.
    fn nft_ok(&self, args: &[&str]) -> String {
        let output = self.nft_cli(args);
        assert!(
            output.status.success(),
            "nft {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

/// Returns the unit of a test cgroup, at the depth its path gives.
fn unit(cgroup: &Cgroup, deny: bool) -> NftUnit {
    NftUnit {
        cgroup_id: slicewall::cgroup::cgroup_id(&cgroup.path).expect("cgroup ID"),
        path: cgroup.relative.clone(),
        level: cgroup.relative.matches('/').count() as u8,
        deny,
    }
}

/// Fails the test unless `result` is a success that left no unit out.
fn check(result: Result<Applied, NftError>, what: &str) {
    let applied =
        result.unwrap_or_else(|error| panic!("{what}: {}", slicewall::error_chain(&error)));
    assert!(
        applied.skipped.is_empty(),
        "{what} skipped {:?}",
        applied.skipped
    );
}

/// Returns the path by which nft names a test cgroup, which is relative to `/sys/fs/cgroup`.
fn nft_path(cgroup: &Cgroup) -> String {
    let mount = slicewall::cgroup::find_cgroup2_mount().unwrap();
    let root = mount.strip_prefix("/sys/fs/cgroup").unwrap();
    root.join(cgroup.relative.trim_start_matches('/'))
        .to_string_lossy()
        .trim_start_matches('/')
        .to_owned()
}

/// Element values of one set in `nft -j list set inet slicewall NAME`.
fn set_values(lab: &NftLab, set: &str) -> Vec<String> {
    let listing: serde_json::Value =
        serde_json::from_str(&lab.nft_ok(&["-j", "list", "set", "inet", "slicewall", set]))
            .expect("nft prints JSON");
    let objects = listing["nftables"].as_array().expect("nftables array");
    let set = objects
        .iter()
        .filter_map(|object| object.get("set"))
        .find(|object| object["name"] == set)
        .unwrap_or_else(|| panic!("set {set} is missing from {listing}"));
    set["elem"]
        .as_array()
        .map(|elements| {
            elements
                .iter()
                .map(|element| {
                    let value = element.get("elem").map_or(element, |elem| &elem["val"]);
                    value.as_str().expect("string element").to_owned()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A TCP echo server on the loopback interface of a namespace, which echoes every read until
/// the peer closes.
struct EchoServer {
    address: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EchoServer {
    fn start(netns: &Netns) -> EchoServer {
        let listener = netns
            .spawn(|| TcpListener::bind("127.0.0.1:0").expect("bind"))
            .join()
            .unwrap();
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while !thread_stop.load(Ordering::Relaxed) {
                let Ok((mut stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                std::thread::spawn(move || {
                    let _ = stream.set_nonblocking(false);
                    let mut buffer = [0u8; 1024];
                    while let Ok(n) = stream.read(&mut buffer) {
                        if n == 0 || stream.write_all(&buffer[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        EchoServer {
            address,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A `probe tcp-hold` process with one established connection, made in a test cgroup.
struct HeldConnection {
    child: Child,
    stdin: ChildStdin,
    lines: BufReader<ChildStdout>,
}

impl HeldConnection {
    fn open(lab: &NftLab, cgroup: &Cgroup, server: &EchoServer) -> HeldConnection {
        let target = server.address.to_string();
        let mut child = common::spawn_in_with_stdin(
            cgroup,
            &lab.netns,
            &common::probe(),
            &["tcp-hold", &target],
            Stdio::piped(),
        );
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap());
        let mut held = HeldConnection {
            child,
            stdin,
            lines,
        };
        assert_eq!(held.next_line(), "connected");
        held
    }

    fn next_line(&mut self) -> String {
        let mut line = String::new();
        self.lines.read_line(&mut line).expect("read probe output");
        line.trim_end().to_owned()
    }

    /// Makes one round trip and returns `ok` or the error line, after at most about 2 s.
    fn ping(&mut self) -> String {
        self.stdin.write_all(b"\n").expect("write to probe");
        self.stdin.flush().unwrap();
        self.next_line()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for HeldConnection {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn install_lists_sets_and_elements() {
    require_nft_lab!();
    let lab = NftLab::new();
    let mut nft = lab.nft();

    let applied = nft
        .install(&[unit(&lab.a, true), unit(&lab.b, false)])
        .expect("install");
    assert!(applied.skipped.is_empty(), "{:?}", applied.skipped);

    let mut counted = set_values(&lab, "tx");
    counted.sort();
    let mut expected = vec![nft_path(&lab.a), nft_path(&lab.b)];
    expected.sort();
    assert_eq!(counted, expected);
    let mut received = set_values(&lab, "rx");
    received.sort();
    assert_eq!(received, expected);
    assert_eq!(set_values(&lab, "deny"), vec![nft_path(&lab.a)]);

    let chain = lab.nft_ok(&["list", "chain", "inet", "slicewall", "output"]);
    assert!(chain.contains("priority filter - 10"), "{chain}");
    assert!(
        chain.contains("socket cgroupv2 level 2 @deny reject with tcp reset"),
        "{chain}"
    );
    assert!(!chain.contains("level 1"), "{chain}");
    assert!(nft.is_intact().unwrap());
}

#[test]
fn install_skips_replaced_cgroup() {
    require_nft_lab!();
    let lab = NftLab::new();
    let mut nft = lab.nft();
    let mut stale = unit(&lab.b, false);
    stale.cgroup_id += 1_000_000;

    let applied = nft.install(&[unit(&lab.a, false), stale]).expect("install");

    assert_eq!(applied.skipped.len(), 1);
    assert_eq!(applied.skipped[0].path, lab.b.relative);
    assert_eq!(set_values(&lab, "tx"), vec![nft_path(&lab.a)]);
}

#[test]
fn install_rejects_wrong_level() {
    require_nft_lab!();
    let lab = NftLab::new();
    let mut nft = lab.nft();
    let mut wrong = unit(&lab.a, false);
    wrong.level = 3;

    let error = nft
        .install(&[wrong])
        .expect_err("level 3 for a level 2 path");

    let message = error.to_string();
    assert!(message.contains("index 0"), "{message}");
    assert!(message.contains("level 3"), "{message}");
}

#[test]
fn deny_resets_established_connection() {
    require_nft_lab!();
    let lab = NftLab::new();
    let server = EchoServer::start(&lab.netns);
    let mut nft = lab.nft();
    check(
        nft.install(&[unit(&lab.a, false), unit(&lab.b, false)]),
        "install",
    );
    let mut denied = HeldConnection::open(&lab, &lab.a, &server);
    let mut allowed = HeldConnection::open(&lab, &lab.b, &server);
    assert_eq!(denied.ping(), "ok");
    assert_eq!(allowed.ping(), "ok");

    check(nft.sync(&[unit(&lab.a, true), unit(&lab.b, false)]), "sync");
    let start = Instant::now();
    let outcome = denied.ping();
    let elapsed = start.elapsed();

    assert_eq!(outcome, "error: ECONNRESET (errno 104)");
    assert!(
        elapsed < Duration::from_secs(1),
        "the reset took {elapsed:?}"
    );
    assert_eq!(allowed.ping(), "ok");
}

#[test]
fn counters_grow_only_for_active_unit() {
    require_nft_lab!();
    let lab = NftLab::new();
    let server = EchoServer::start(&lab.netns);
    let mut nft = lab.nft();
    check(
        nft.install(&[unit(&lab.a, false), unit(&lab.b, false)]),
        "install",
    );
    let a_id = unit(&lab.a, false).cgroup_id;
    let b_id = unit(&lab.b, false).cgroup_id;

    let mut active = HeldConnection::open(&lab, &lab.a, &server);
    for _ in 0..5 {
        assert_eq!(active.ping(), "ok");
    }
    let first = nft.counters().expect("counters");
    assert_eq!(active.ping(), "ok");
    let second = nft.counters().expect("counters");

    let a = first[&a_id];
    assert!(a.tx_packets >= 5, "{a:?}");
    assert!(a.tx_bytes > a.tx_packets * 40, "{a:?}");
    assert!(a.rx_packets >= 5, "{a:?}");
    assert!(second[&a_id].tx_packets > a.tx_packets);
    assert!(second[&a_id].rx_bytes > a.rx_bytes);
    assert_eq!(second[&b_id], Default::default());
}

#[test]
fn moved_process_judged_by_creation_cgroup() {
    require_nft_lab!();
    let lab = NftLab::new();
    let server = EchoServer::start(&lab.netns);
    let mut nft = lab.nft();
    check(
        nft.install(&[unit(&lab.a, false), unit(&lab.b, false)]),
        "install",
    );
    let mut held = HeldConnection::open(&lab, &lab.a, &server);
    assert_eq!(held.ping(), "ok");

    std::fs::write(lab.b.path.join("cgroup.procs"), held.pid().to_string()).unwrap();
    let now_in = slicewall::cgroup::cgroup_of_pid(held.pid()).unwrap();
    assert_eq!(now_in, lab.b.relative);

    check(
        nft.sync(&[unit(&lab.a, false), unit(&lab.b, true)]),
        "deny the new cgroup",
    );
    assert_eq!(held.ping(), "ok", "a deny of B cut a socket created in A");

    check(
        nft.sync(&[unit(&lab.a, true), unit(&lab.b, false)]),
        "deny the old cgroup",
    );
    assert_eq!(held.ping(), "error: ECONNRESET (errno 104)");
}

#[test]
fn outside_delete_detected_and_repaired() {
    require_nft_lab!();
    let lab = NftLab::new();
    lab.nft_ok(&["add", "table", "inet", "othertest"]);
    lab.nft_ok(&[
        "add",
        "set",
        "inet",
        "othertest",
        "s",
        "{",
        "type",
        "ipv4_addr;",
        "}",
    ]);
    lab.nft_ok(&[
        "add",
        "element",
        "inet",
        "othertest",
        "s",
        "{",
        "192.0.2.9",
        "}",
    ]);
    lab.nft_ok(&[
        "add",
        "chain",
        "inet",
        "othertest",
        "c",
        "{",
        "type",
        "filter",
        "hook",
        "output",
        "priority",
        "0;",
        "}",
    ]);
    lab.nft_ok(&[
        "add",
        "rule",
        "inet",
        "othertest",
        "c",
        "ip",
        "daddr",
        "@s",
        "meta",
        "mark",
        "set",
        "7",
    ]);
    let other = || lab.nft_ok(&["list", "table", "inet", "othertest"]);
    let before = other();
    let mut nft = lab.nft();
    let units = [unit(&lab.a, false), unit(&lab.b, true)];

    check(nft.install(&units), "install");
    assert!(nft.is_intact().unwrap());
    assert_eq!(other(), before, "install changed another table");

    lab.nft_ok(&["delete", "table", "inet", "slicewall"]);
    assert!(
        !nft.is_intact().unwrap(),
        "a deleted table counts as intact"
    );
    check(nft.install(&units), "install again");
    assert!(nft.is_intact().unwrap());

    lab.nft_ok(&["flush", "set", "inet", "slicewall", "deny"]);
    assert!(!nft.is_intact().unwrap(), "a flushed set counts as intact");
    check(nft.install(&units), "install again");
    assert!(nft.is_intact().unwrap());

    // The denied unit swapped for the allowed one: as many elements as before.
    let quoted = |cgroup| format!("\"{}\"", nft_path(cgroup));
    lab.nft_ok(&[
        "delete",
        "element",
        "inet",
        "slicewall",
        "deny",
        "{",
        &quoted(&lab.b),
        "}",
    ]);
    lab.nft_ok(&[
        "add",
        "element",
        "inet",
        "slicewall",
        "deny",
        "{",
        &quoted(&lab.a),
        "}",
    ]);
    assert!(
        !nft.is_intact().unwrap(),
        "a swapped element counts as intact"
    );
    check(nft.install(&units), "install again");
    assert!(nft.is_intact().unwrap());

    check(nft.sync(&[unit(&lab.a, true)]), "sync");
    assert_eq!(other(), before, "sync changed another table");

    nft.remove().expect("remove");
    let listed = lab.nft_cli(&["list", "table", "inet", "slicewall"]);
    assert!(
        !listed.status.success(),
        "table inet slicewall survived remove"
    );
    assert_eq!(other(), before, "remove changed another table");
    nft.remove().expect("remove without a table");
}

#[test]
fn sync_skips_unchanged_and_follows_levels() {
    require_nft_lab!();
    let lab = NftLab::new();
    let deep = lab.a.child("sub");
    let mut nft = lab.nft();
    let units = [unit(&lab.a, false), unit(&lab.b, false)];
    check(nft.install(&units), "install");
    let after_install = nft.transactions();

    check(nft.sync(&units), "sync unchanged");
    assert_eq!(
        nft.transactions(),
        after_install,
        "an unchanged sync ran nft"
    );

    check(
        nft.sync(&[unit(&lab.a, false), unit(&lab.b, false), unit(&deep, true)]),
        "sync with level 3",
    );
    assert_eq!(nft.transactions(), after_install + 1);
    let chain = lab.nft_ok(&["list", "chain", "inet", "slicewall", "input"]);
    assert!(chain.contains("socket cgroupv2 level 3 @rx"), "{chain}");
    assert!(chain.contains("socket cgroupv2 level 2 @rx"), "{chain}");
    assert_eq!(set_values(&lab, "deny"), vec![nft_path(&deep)]);
    assert!(nft.is_intact().unwrap());

    // The cgroup of the level 3 unit goes away before the unit is dropped, so its element can
    // no longer be deleted by path and stays behind.
    drop(deep);
    check(nft.sync(&units), "sync after the cgroup went away");
    let chain = lab.nft_ok(&["list", "chain", "inet", "slicewall", "input"]);
    assert!(!chain.contains("level 3"), "{chain}");
    assert!(nft.is_intact().unwrap());
    assert_eq!(nft.counters().unwrap().len(), 2);
}

#[test]
fn sync_of_1000_units_timed() {
    require_nft_lab!();
    let lab = NftLab::new();
    let cgroups: Vec<Cgroup> = (0..1000)
        .map(|index| lab.top.child(&format!("u{index}.service")))
        .collect();
    let mut units: Vec<NftUnit> = cgroups.iter().map(|cgroup| unit(cgroup, false)).collect();
    let mut nft = lab.nft();
    check(nft.install(&[]), "install");

    let start = Instant::now();
    check(nft.sync(&units), "sync 1000 new units");
    let add_all = start.elapsed();

    for unit in units.iter_mut().take(10) {
        unit.deny = true;
    }
    let start = Instant::now();
    check(nft.sync(&units), "sync 10 deny changes");
    let change_ten = start.elapsed();

    let start = Instant::now();
    check(nft.sync(&units), "sync unchanged");
    let unchanged = start.elapsed();

    let start = Instant::now();
    let counters = nft.counters().expect("counters");
    let read_counters = start.elapsed();

    println!(
        "sync of 1000 units: {add_all:?} to add all (text script, rules for a new level), \
         {change_ten:?} to deny 10 (JSON element batch), {unchanged:?} when unchanged; \
         counters() of 1000 units: {read_counters:?}"
    );
    assert_eq!(counters.len(), 1000);
    assert_eq!(set_values(&lab, "deny").len(), 10);
    assert!(nft.is_intact().unwrap());
}
