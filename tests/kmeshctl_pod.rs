//! `kmeshctl --pod`: reaching a daemon through `kubectl port-forward`. No
//! Kubernetes cluster exists on these machines, so a stand-in `kubectl` on
//! PATH prints what kubectl prints and records how it was called, and a
//! stand-in admin endpoint answers on loopback. What is tested is kmeshctl's
//! side: the kubectl call, reading the forwarded port, using it, cleaning up.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

/// Answers every request with a `/version`-like JSON body.
fn fake_admin() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten().take(4) {
            let mut stream = stream;
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf);
            let body = r#"{"name":"kmesh","version":"9.9.9","pid":1}"#;
            let _ = write!(
                stream,
                "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

#[test]
fn kmeshctl_reaches_a_pod_through_kubectl_port_forward() {
    let port = fake_admin();
    let dir = tempfile::tempdir().unwrap();
    let calls = dir.path().join("calls");
    let kubectl = dir.path().join("kubectl");
    std::fs::write(
        &kubectl,
        format!(
            "#!/bin/sh\necho \"$@\" >> {}\necho 'Forwarding from 127.0.0.1:{port} -> 15200'\nexec sleep 30\n",
            calls.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&kubectl, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );

    let out = Command::new(env!("CARGO_BIN_EXE_kmeshctl"))
        .args(["--pod", "kmesh-abcde", "version"])
        .env("PATH", &path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("\"9.9.9\""),
        "the forwarded port was used: {stdout}"
    );
    assert_eq!(
        std::fs::read_to_string(&calls).unwrap().trim(),
        "port-forward -n kmesh-system pod/kmesh-abcde :15200"
    );

    // A kubectl that never forwards: a clear error, not a hang.
    std::fs::write(
        &kubectl,
        "#!/bin/sh\necho 'error: pod not found' >&2\nexit 1\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kmeshctl"))
        .args([
            "--pod",
            "nope",
            "--namespace",
            "other",
            "dump",
            "kernel-native",
        ])
        .env("PATH", &path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("port-forward to pod nope in other"),
        "{stderr}"
    );
}
