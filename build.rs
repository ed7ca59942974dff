//! Compiles the eBPF programs in `bpf/` with clang into `$OUT_DIR/gate.bpf.o`, which the daemon
//! embeds. The programs use no kernel BTF, so no `vmlinux.h` is needed, only the UAPI headers
//! of linux-libc-dev and the helper headers of libbpf-dev.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_owned());
    let target_arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let multiarch = match target_arch.as_str() {
        "x86_64" => "x86_64-linux-gnu",
        "aarch64" => "aarch64-linux-gnu",
        other => panic!("no eBPF build setup for target architecture {other:?}"),
    };

    for source in ["bpf/gate.bpf.c", "bpf/slicewall.h"] {
        println!("cargo:rerun-if-changed={source}");
    }
    println!("cargo:rerun-if-env-changed=CLANG");

    let object = out_dir.join("gate.bpf.o");
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf"])
        .arg(format!("-I/usr/include/{multiarch}"))
        .args(["-I", "bpf", "-c", "bpf/gate.bpf.c", "-o"])
        .arg(&object)
        .status();
    match status {
        Ok(status) if status.success() => {}
        Ok(status) => panic!("{clang} failed to compile bpf/gate.bpf.c ({status})"),
        Err(error) => panic!(
            "failed to run {clang}: {error}; install clang, libbpf-dev and linux-libc-dev \
             (Debian: apt-get install clang libbpf-dev linux-libc-dev), or set CLANG"
        ),
    }
}
