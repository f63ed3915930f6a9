//! A real DNS server for tests: dnsmasq on its own 127.0.0.x address and a
//! free port, answering only from a hosts directory the test writes (no
//! upstream, no /etc/hosts). Records change at run time by rewriting a file
//! in that directory; dnsmasq re-reads it through inotify. Killed by PID on
//! drop.
//!
//! Standalone (std, nix, tempfile) so that any test binary can include it,
//! with `mod common;` or `#[path = "common/dnsmasq.rs"] mod dnsmasq;`.

#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Domain the server is authoritative for: an unknown name under it gets
/// NXDOMAIN and a known name without the asked type gets NODATA, instead of
/// REFUSED (dnsmasq's answer when it has no upstream to forward to). A name
/// outside it (see [`REFUSING_DOMAIN`]) gets REFUSED for the record types it
/// lacks: how tests make one address family fail while the other answers.
pub const DOMAIN: &str = "test";

/// A domain the server is not authoritative for: its names answer the
/// records the hosts directory gives them, and REFUSED for the other type.
pub const REFUSING_DOMAIN: &str = "example";

const START_TIMEOUT: Duration = Duration::from_secs(10);

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The dnsmasq binary, or why tests that need it cannot run. Under `CI=true`
/// a missing dnsmasq panics (CI must not pass by skipping); elsewhere it
/// prints a SKIP line and returns `None`.
pub fn dnsmasq_or_skip() -> Option<PathBuf> {
    if let Some(path) = find_dnsmasq() {
        return Some(path);
    }
    let test = thread::current().name().unwrap_or("<unnamed>").to_string();
    let why = "dnsmasq is not installed (Debian dnsmasq-base; scripts/install-deps.sh installs it)";
    let ci = std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
    if ci {
        panic!("{test}: {why}");
    }
    eprintln!("SKIP {test}: {why} (set CI=true to make this a failure)");
    None
}

/// PATH first, then the sbin directories a non-login shell may lack.
fn find_dnsmasq() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join("dnsmasq"))
        .find(|p| p.is_file())
}

pub struct Dnsmasq {
    binary: PathBuf,
    /// Where the server listens (UDP and TCP).
    pub addr: SocketAddr,
    local_ttl: u32,
    /// Holds `hosts/` (watched by dnsmasq) and the staging files written
    /// before they are renamed into it.
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Dnsmasq {
    /// Starts dnsmasq with `hosts` (hosts-file lines) as its only records,
    /// served with TTL `local_ttl` seconds.
    pub fn start(binary: &Path, local_ttl: u32, hosts: &str) -> Dnsmasq {
        let mut server = Self::unstarted(binary, local_ttl, hosts);
        server.spawn();
        server
    }

    /// As [`Dnsmasq::start`], but not running yet: the address is chosen
    /// (a daemon can be pointed at it) and [`Dnsmasq::restart`] starts it.
    pub fn unstarted(binary: &Path, local_ttl: u32, hosts: &str) -> Dnsmasq {
        let dir = tempfile::Builder::new()
            .prefix("kmesh-dnsmasq-")
            .tempdir()
            .unwrap();
        // dnsmasq started as root drops to an unprivileged user before it
        // reads the hosts directory: it must be world-readable.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let hosts_dir = dir.path().join("hosts");
        fs::create_dir(&hosts_dir).unwrap();
        fs::set_permissions(&hosts_dir, fs::Permissions::from_mode(0o755)).unwrap();
        let server = Dnsmasq {
            binary: binary.to_path_buf(),
            addr: free_addr(),
            local_ttl,
            dir,
            child: None,
        };
        server.set_hosts(hosts);
        server
    }

    /// Replaces the records. The file is written beside the watched directory
    /// and renamed into it, so dnsmasq never reads a half-written file.
    pub fn set_hosts(&self, hosts: &str) {
        let staging = self.dir.path().join("records.tmp");
        fs::write(&staging, hosts).unwrap();
        fs::set_permissions(&staging, fs::Permissions::from_mode(0o644)).unwrap();
        fs::rename(&staging, self.dir.path().join("hosts").join("records")).unwrap();
    }

    /// Stops the server (SIGTERM to its PID, then waits for it).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let _ = child.wait();
        }
    }

    /// Starts the server (again) on its address, with the current records.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    fn spawn(&mut self) {
        let hosts_dir = self.dir.path().join("hosts");
        let child = Command::new(&self.binary)
            .args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--pid-file=",
                "--log-facility=-",
                &format!("--listen-address={}", self.addr.ip()),
                &format!("--port={}", self.addr.port()),
                &format!("--hostsdir={}", hosts_dir.display()),
                &format!("--local=/{DOMAIN}/"),
                &format!("--local-ttl={}", self.local_ttl),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.binary.display()));
        self.child = Some(child);
        self.wait_listening();
    }

    /// Up once it answers a query (any answer: the probe name does not
    /// exist). dnsmasq reads the hosts directory before it serves, so the
    /// records are in by then.
    fn wait_listening(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        let bind = if self.addr.is_ipv4() {
            "127.0.0.1:0"
        } else {
            "[::1]:0"
        };
        let socket = UdpSocket::bind(bind).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let probe = probe_query();
        let mut reply = [0u8; 512];
        loop {
            if socket.send_to(&probe, self.addr).is_ok() {
                if let Ok((n, from)) = socket.recv_from(&mut reply) {
                    if from == self.addr && n >= 2 && reply[..2] == probe[..2] {
                        return;
                    }
                }
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("dnsmasq on {} exited at start: {status}", self.addr);
            }
            assert!(
                Instant::now() < deadline,
                "dnsmasq on {} did not start",
                self.addr
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A DNS query for `ready-probe.<DOMAIN>` A: header (id 0x6b6d, RD set, one
/// question), the name as labels, type A, class IN.
fn probe_query() -> Vec<u8> {
    let mut q = vec![0x6b, 0x6d, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["ready-probe", DOMAIN] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A 127.0.0.x address of its own (x from 100 up, one per server this process
/// starts) and a port free there for UDP and TCP.
fn free_addr() -> SocketAddr {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 100 + (n % 150) as u8));
    for _ in 0..100 {
        let udp = UdpSocket::bind((ip, 0)).unwrap();
        let addr = udp.local_addr().unwrap();
        if TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
    panic!("no port free for both UDP and TCP on {ip}");
}
