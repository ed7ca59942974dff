//! A network client for slicewall's tests and trials: makes one kind of outbound flow and
//! prints the kernel's result, so a test can tell an allowed flow from a denied one.
//!
//! ```text
//! probe tcp ADDRESS:PORT       connect() over TCP, then close
//! probe udp-connect ADDRESS:PORT   connect() a UDP socket, then send() one datagram
//! probe udp-sendto ADDRESS:PORT    sendto() one datagram on an unconnected UDP socket
//! ```
//! Prints `ok`, or `error: NAME (errno N)`, and exits 0 or 1. `--repeat N` makes N flows and
//! prints one line each; `--wait-ms N` waits before the first (to race nothing with exec).
//!
//! `--via thread` makes each flow from a new thread, `--via fork` from a forked child that does
//! not exec; the child prints its result followed by `pid N`. `--via parallel` starts every
//! flow at once, each on its own thread.
//!
//! `--exec-after-ms N PROGRAM [ARGS...]` sleeps N milliseconds, then replaces itself with PROGRAM.
//!
//! `probe tcp-hold ADDRESS:PORT` keeps one TCP connection open: it prints `connected`, then for
//! each line read from standard input sends `ping` and waits up to 2 seconds for the reply,
//! printing `ok` or the error as above. It exits at the end of its input.
//!
//! For benchmarks, `loop-tcp` (connect and close) and `loop-udp` (one sendto) with
//! `--repeat N` make N flows as fast as they can and print `N flows in S seconds`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, delay, program, rest @ ..] = args.as_slice() {
        if flag == "--exec-after-ms" {
            std::thread::sleep(Duration::from_millis(delay.parse().unwrap_or(0)));
            let mut command = std::process::Command::new(program);
            command.args(rest);
            // ETXTBSY is transient when the program was just written: a process forked at that
            // moment elsewhere keeps it open for writing until its own exec.
            let mut error = std::os::unix::process::CommandExt::exec(&mut command);
            for _ in 0..100 {
                if error.raw_os_error() != Some(libc::ETXTBSY) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
                error = std::os::unix::process::CommandExt::exec(&mut command);
            }
            eprintln!("probe: failed to exec {program}: {error}");
            return ExitCode::from(2);
        }
    }
    let mut repeat = 1u32;
    let mut wait_ms = 0u64;
    let mut via = String::from("process");
    let mut positional = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--repeat" => {
                repeat = iter
                    .next()
                    .and_then(|value| value.parse().ok())
                    .unwrap_or(1)
            }
            "--wait-ms" => {
                wait_ms = iter
                    .next()
                    .and_then(|value| value.parse().ok())
                    .unwrap_or(0)
            }
            "--via" => via = iter.next().cloned().unwrap_or_default(),
            _ => positional.push(arg.clone()),
        }
    }
    let [kind, target] = positional.as_slice() else {
        eprintln!(
            "usage: probe [--repeat N] [--wait-ms N] tcp|udp-connect|udp-sendto ADDRESS:PORT"
        );
        return ExitCode::from(2);
    };
    let Ok(target) = target.parse::<SocketAddr>() else {
        eprintln!("probe: invalid ADDRESS:PORT {target:?}");
        return ExitCode::from(2);
    };
    std::thread::sleep(Duration::from_millis(wait_ms));

    if kind == "tcp-hold" {
        return hold_tcp(target);
    }
    if let Some(benchmark) = kind.strip_prefix("loop-") {
        return run_loop(benchmark, target, repeat);
    }

    let flow: fn(SocketAddr) -> std::io::Result<()> = match kind.as_str() {
        "tcp" => tcp,
        "udp-connect" => udp_connect,
        "udp-sendto" => udp_sendto,
        other => {
            eprintln!("probe: unknown flow kind {other:?}");
            return ExitCode::from(2);
        }
    };
    let mut failed = false;
    if via == "parallel" {
        // Every flow at once, each from its own thread; results print in the order they end.
        let threads: Vec<_> = (0..repeat)
            .map(|_| std::thread::spawn(move || flow(target)))
            .collect();
        for thread in threads {
            match thread.join().expect("flow thread panicked") {
                Ok(()) => println!("ok"),
                Err(error) => {
                    failed = true;
                    let errno = error.raw_os_error().unwrap_or(0);
                    println!("error: {} (errno {errno})", errno_name(errno));
                }
            }
        }
        return if failed {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        };
    }
    for _ in 0..repeat {
        let result = match via.as_str() {
            "process" => flow(target),
            "thread" => std::thread::spawn(move || flow(target))
                .join()
                .expect("flow thread panicked"),
            "fork" => {
                forked(flow, target);
                continue;
            }
            other => {
                eprintln!("probe: unknown --via {other:?}");
                return ExitCode::from(2);
            }
        };
        match result {
            Ok(()) => println!("ok"),
            Err(error) => {
                failed = true;
                let errno = error.raw_os_error().unwrap_or(0);
                println!("error: {} (errno {errno})", errno_name(errno));
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Makes one flow from a forked child, which prints its own line and PID.
fn forked(flow: fn(SocketAddr) -> std::io::Result<()>, target: SocketAddr) {
    use std::io::Write as _;

    let _ = std::io::stdout().flush();
    // SAFETY: the process is single-threaded here (no flow thread is running), so the child
    // may run ordinary Rust code until it exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let line = match flow(target) {
            Ok(()) => "ok".to_owned(),
            Err(error) => {
                let errno = error.raw_os_error().unwrap_or(0);
                format!("error: {} (errno {errno})", errno_name(errno))
            }
        };
        println!("{line} pid {}", std::process::id());
        let _ = std::io::stdout().flush();
        // SAFETY: _exit ends the child without running the parent's exit handlers twice.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: waits for the child this function forked.
    unsafe { libc::waitpid(pid, &mut status, 0) };
}

/// Closes with a reset instead of the usual handshake, so a loop of thousands of connections
/// leaves no sockets in TIME_WAIT to slow down the choice of local ports.
fn close_with_reset(stream: TcpStream) {
    use std::os::fd::AsRawFd;

    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: the descriptor is open for the duration of the call, and the option value is a
    // valid linger structure of the size given.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::addr_of!(linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// Makes `count` flows back to back and prints how long they took.
fn run_loop(kind: &str, target: SocketAddr, count: u32) -> ExitCode {
    let socket = bind_any(target).expect("bind a UDP socket");
    let start = std::time::Instant::now();
    for _ in 0..count {
        let result = match kind {
            "tcp" => TcpStream::connect(target).map(close_with_reset),
            "udp" => socket.send_to(b"x", target).map(drop),
            other => {
                eprintln!("probe: unknown loop kind {other:?}");
                return ExitCode::from(2);
            }
        };
        if let Err(error) = result {
            eprintln!("probe: {kind} flow to {target} failed: {error}");
            return ExitCode::FAILURE;
        }
    }
    println!(
        "{count} flows in {:.6} seconds",
        start.elapsed().as_secs_f64()
    );
    ExitCode::SUCCESS
}

fn tcp(target: SocketAddr) -> std::io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(10))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(b"ping\n")?;
    let mut reply = [0u8; 5];
    stream.read_exact(&mut reply)?;
    Ok(())
}

/// Keeps one connection and makes one round trip on it per line of standard input.
fn hold_tcp(target: SocketAddr) -> ExitCode {
    use std::io::BufRead;

    let mut stream = match TcpStream::connect_timeout(&target, Duration::from_secs(10)) {
        Ok(stream) => stream,
        Err(error) => {
            print_error(&error);
            return ExitCode::FAILURE;
        }
    };
    println!("connected");
    let _ = std::io::stdout().flush();
    for line in std::io::stdin().lock().lines() {
        if line.is_err() {
            break;
        }
        let result = stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .and_then(|()| stream.write_all(b"ping\n"))
            .and_then(|()| {
                let mut reply = [0u8; 5];
                stream.read_exact(&mut reply)
            });
        match result {
            Ok(()) => println!("ok"),
            Err(error) => print_error(&error),
        }
        let _ = std::io::stdout().flush();
    }
    ExitCode::SUCCESS
}

fn print_error(error: &std::io::Error) {
    let errno = error.raw_os_error().unwrap_or(0);
    println!("error: {} (errno {errno})", errno_name(errno));
}

fn bind_any(target: SocketAddr) -> std::io::Result<UdpSocket> {
    if target.is_ipv4() {
        UdpSocket::bind("0.0.0.0:0")
    } else {
        UdpSocket::bind("[::]:0")
    }
}

fn udp_connect(target: SocketAddr) -> std::io::Result<()> {
    let socket = bind_any(target)?;
    socket.connect(target)?;
    socket.set_read_timeout(Some(Duration::from_secs(5)))?;
    socket.send(b"ping\n")?;
    let mut reply = [0u8; 16];
    socket.recv(&mut reply)?;
    Ok(())
}

fn udp_sendto(target: SocketAddr) -> std::io::Result<()> {
    let socket = bind_any(target)?;
    socket.set_read_timeout(Some(Duration::from_secs(5)))?;
    socket.send_to(b"ping\n", target)?;
    let mut reply = [0u8; 16];
    socket.recv_from(&mut reply)?;
    Ok(())
}

fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::EPERM => "EPERM",
        libc::ECONNABORTED => "ECONNABORTED",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ECONNRESET => "ECONNRESET",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EAGAIN => "EAGAIN",
        libc::ENETUNREACH => "ENETUNREACH",
        _ => "other",
    }
}
