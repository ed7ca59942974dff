//! The command-line tools as a user meets them: `slicewallctl check` and `hash`, and
//! `slicewalld`'s handling of bad arguments. None of these need root.

mod common;

use std::process::Command;

use common::{slicewallctl, slicewalld, write_rules};

#[test]
fn check_accepts_valid_rules() {
    let root = tempfile::tempdir().unwrap();
    write_rules(
        root.path(),
        "etc",
        "10-web.toml",
        "[[rule]]\naction = \"allow\"\nport = [80, 443]\nprotocol = \"tcp\"\n",
    );
    write_rules(
        root.path(),
        "usr/lib",
        "50-defaults.toml",
        "[[rule]]\naction = \"ask\"\nunit = \"user.slice\"\n",
    );
    let output = Command::new(slicewallctl())
        .arg("check")
        .arg("--root")
        .arg(root.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "check failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("2 rules in 2 files: ok"), "{stdout}");
}

#[test]
fn check_names_the_bad_place() {
    let root = tempfile::tempdir().unwrap();
    let path = write_rules(
        root.path(),
        "etc",
        "20-bad.toml",
        "[[rule]]\naction = \"deny\"\naddress = \"10.0.0.1/8\"\n",
    );
    let output = Command::new(slicewallctl())
        .arg("check")
        .arg("--root")
        .arg(root.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:3:11", path.display())),
        "error without file:line:column: {stderr}"
    );
    assert!(
        stderr.contains("address"),
        "error without the field: {stderr}"
    );
}

#[test]
fn check_names_the_bad_unit_file() {
    let root = tempfile::tempdir().unwrap();
    let good = root
        .path()
        .join("usr/lib/slicewall/units/user-.slice.d/10-web.toml");
    std::fs::create_dir_all(good.parent().unwrap()).unwrap();
    std::fs::write(&good, "[[rule]]\naction = \"allow\"\nport = 443\n").unwrap();

    let check = || {
        Command::new(slicewallctl())
            .arg("check")
            .arg("--root")
            .arg(root.path())
            .output()
            .unwrap()
    };
    let output = check();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains(&good.display().to_string()), "{stdout}");
    assert!(stdout.contains("1 rules in 1 files: ok"), "{stdout}");

    let bad = root
        .path()
        .join("etc/slicewall/units/sshd.service.d/20-ssh.toml");
    std::fs::create_dir_all(bad.parent().unwrap()).unwrap();
    std::fs::write(
        &bad,
        "[[rule]]\naction = \"deny\"\nunit = \"sshd.service\"\n",
    )
    .unwrap();
    let output = check();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}:3:8: field `unit` is not allowed",
            bad.display()
        )),
        "error without file:line:column: {stderr}"
    );
    assert!(stderr.contains("1 error"), "{stderr}");
}

#[test]
fn hash_matches_sha256sum() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("program");
    std::fs::write(&file, b"#!/bin/sh\necho hello\n").unwrap();
    let output = Command::new(slicewallctl())
        .arg("hash")
        .arg(&file)
        .output()
        .unwrap();
    assert!(output.status.success());
    let line = String::from_utf8(output.stdout).unwrap();
    let expected = Command::new("sha256sum")
        .arg(&file)
        .output()
        .expect("sha256sum from coreutils");
    let expected = String::from_utf8(expected.stdout).unwrap();
    assert_eq!(
        line.split_whitespace().next(),
        expected.split_whitespace().next(),
        "{line}"
    );
}

#[test]
fn daemon_rejects_bad_arguments() {
    let output = Command::new(slicewalld())
        .args(["--fail-mode", "sometimes"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--fail-mode"), "{stderr}");
    assert!(stderr.contains("sometimes"), "{stderr}");

    let output = Command::new(slicewalld())
        .args(["--cgroup", "/nonexistent/slicewall-test"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--cgroup /nonexistent/slicewall-test"),
        "{stderr}"
    );
}

/// `slicewallctl units | head` closes the pipe early. The tool must end quietly, as other Unix
/// tools do, not panic with a backtrace on standard error.
#[test]
fn output_to_closed_pipe_ends_quietly() {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;

    let mut fds = [0; 2];
    // SAFETY: pipe writes two new file descriptors into the array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both descriptors were just created and are owned here alone.
    let (reader, writer) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // With the read end closed, every write to the pipe fails with EPIPE.
    drop(reader);

    let output = Command::new(slicewallctl())
        .arg("hash")
        .arg(slicewallctl())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(output.status.signal(), Some(libc::SIGPIPE), "{stderr}");
}

#[test]
fn rules_add_names_a_second_table() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("two.toml");
    std::fs::write(
        &path,
        "[[rule]]\naction = \"allow\"\nport = 80\n\n[[rule]]\naction = \"deny\"\n",
    )
    .unwrap();
    // The file is checked before the daemon is reached, so no bus is needed.
    let output = Command::new(slicewallctl())
        .args(["rules", "add"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:5:1", path.display())),
        "error without file:line:column: {stderr}"
    );
}
