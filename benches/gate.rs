//! Benchmark of the gate: connections per second of a TCP connect/close loop and of a UDP
//! sendto loop, from a cgroup slicewalld does not guard (no firewall) and from one it guards,
//! with 10 rules and with 100,000 rules, plus the daemon's resident memory.
//!
//! Run as root: `cargo bench --bench gate`. Rounds alternate between the two cgroups, so the
//! ratio holds when the machine's speed drifts; the medians and their ratio are printed.

#[path = "../tests/common/mod.rs"]
mod common;

use std::fmt::Write as _;
use std::net::{TcpListener, UdpSocket};
use std::time::Instant;

use common::{Cgroup, Lab};

const ROUNDS: usize = 7;
const TCP_FLOWS: u32 = 5_000;
const UDP_FLOWS: u32 = 100_000;

fn main() {
    if let Err(reason) = common::check_privileges() {
        println!("skipping: {reason}");
        return;
    }
    // cargo bench builds no examples, and the loops run in the probe example.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = std::process::Command::new(cargo)
        .args(["build", "--release", "--example", "probe"])
        .status();
    assert!(
        built.is_ok_and(|status| status.success()),
        "failed to build the probe example"
    );

    let mut lab = Lab::new(&ten_rules());
    let unguarded = Cgroup::new_top("nofw");
    let guarded = lab.cgroup.child("bench.service");
    let (tcp_port, udp_port) = start_sinks(&lab);
    let tcp_target = format!("127.0.0.1:{tcp_port}");
    let udp_target = format!("127.0.0.1:{udp_port}");

    lab.start(&[]);
    let mut report = String::new();
    measure(
        &lab,
        &unguarded,
        &guarded,
        &tcp_target,
        &udp_target,
        "10 rules",
        &mut report,
    );

    common::write_rules(lab.root.path(), "etc", "60-many.toml", &many_rules(100_000));
    let started = Instant::now();
    let outcome = lab.reload();
    assert!(outcome.contains("reloaded"), "{outcome}");
    let reload_seconds = started.elapsed().as_secs_f64();
    measure(
        &lab,
        &unguarded,
        &guarded,
        &tcp_target,
        &udp_target,
        "100,010 rules",
        &mut report,
    );
    let rss = resident_kib(lab.daemon().pid());

    println!("{report}");
    println!(
        "reload of 100,010 rules: {reload_seconds:.2} s; slicewalld resident memory: {rss} KiB"
    );
}

fn ten_rules() -> String {
    let mut text = String::new();
    for index in 0..10 {
        let _ = write!(
            text,
            "[[rule]]\naction = \"deny\"\naddress = \"198.18.{index}.0/24\"\nport = 443\n\n"
        );
    }
    text
}

/// Rules that deny single addresses of the benchmarking range 198.18.0.0/15, none of which the
/// loops connect to, so every flow is checked against all of them and allowed.
fn many_rules(count: u32) -> String {
    let mut text = String::with_capacity(count as usize * 60);
    for index in 0..count {
        let _ = write!(
            text,
            "[[rule]]\naction = \"deny\"\naddress = \"198.{}.{}.{}\"\n\n",
            18 + (index >> 16),
            (index >> 8) & 0xff,
            index & 0xff
        );
    }
    text
}

/// Starts a TCP listener that accepts and closes, and a UDP socket that drops what it receives,
/// on the client namespace's loopback.
fn start_sinks(lab: &Lab) -> (u16, u16) {
    lab.network
        .client
        .spawn(|| {
            // A deep accept queue: with the default of 128 a fast loop overflows it, and the
            // dropped SYNs are retried only after a second.
            let socket =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            socket
                .bind(
                    &"127.0.0.1:0"
                        .parse::<std::net::SocketAddr>()
                        .unwrap()
                        .into(),
                )
                .unwrap();
            socket.listen(4096).unwrap();
            let tcp: TcpListener = socket.into();
            let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
            let ports = (
                tcp.local_addr().unwrap().port(),
                udp.local_addr().unwrap().port(),
            );
            std::thread::spawn(move || {
                for stream in tcp.incoming() {
                    drop(stream);
                }
            });
            std::thread::spawn(move || {
                let mut buffer = [0u8; 64];
                while udp.recv(&mut buffer).is_ok() {}
            });
            ports
        })
        .join()
        .unwrap()
}

fn measure(
    lab: &Lab,
    unguarded: &Cgroup,
    guarded: &Cgroup,
    tcp: &str,
    udp: &str,
    label: &str,
    report: &mut String,
) {
    for (kind, target, flows) in [("loop-tcp", tcp, TCP_FLOWS), ("loop-udp", udp, UDP_FLOWS)] {
        let mut baseline = Vec::new();
        let mut gated = Vec::new();
        let mut ratios = Vec::new();
        for _ in 0..ROUNDS {
            let free = rate(lab, unguarded, kind, target, flows);
            let fenced = rate(lab, guarded, kind, target, flows);
            baseline.push(free);
            gated.push(fenced);
            ratios.push(fenced / free);
        }
        let _ = writeln!(
            report,
            "{label:>14} {kind:>8}: no firewall {:>9.0}/s, slicewalld {:>9.0}/s, ratio {:.3} (min {:.3}, max {:.3})",
            median(&mut baseline),
            median(&mut gated),
            median(&mut ratios),
            ratios.iter().copied().fold(f64::MAX, f64::min),
            ratios.iter().copied().fold(0.0, f64::max),
        );
    }
}

fn rate(lab: &Lab, cgroup: &Cgroup, kind: &str, target: &str, flows: u32) -> f64 {
    let output = common::run_in(
        cgroup,
        &lab.network.client,
        &common::probe(),
        &[
            "--wait-ms",
            "300",
            "--repeat",
            &flows.to_string(),
            kind,
            target,
        ],
    );
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{kind} loop failed: {text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seconds: f64 = text
        .split_whitespace()
        .nth(3)
        .and_then(|value| value.parse().ok())
        .expect("loop output");
    f64::from(flows) / seconds
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0)
}
