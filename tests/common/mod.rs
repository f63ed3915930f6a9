//! Shared helpers for the end-to-end tests: real kernel, real sockets, root.
//!
//! Every resource a test makes is a guard whose `Drop` removes it, and every
//! name carries the test process's PID and a counter, so tests run in parallel
//! (and next to a developer's own experiments) without colliding.
//!
//! Network rule: a client that dials a service VIP runs in a [`NetNs`] with only
//! `lo` up, so a connect the eBPF redirect misses fails with ENETUNREACH and no
//! packet leaves the machine.

// Each test binary uses a subset of these helpers.
#![allow(dead_code)]
// Test helpers report failure by panicking, with context in the message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

/// A real DNS server (dnsmasq on 127.0.0.x) whose records the test changes.
pub mod dnsmasq;
pub mod workload_yaml;
pub mod yaml;

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::statfs::{statfs, BPF_FS_MAGIC};
use nix::unistd::Pid;
use serde::Deserialize;
use tempfile::NamedTempFile;

pub mod delta_server;
pub mod envoy;
pub mod xds_server;

/// Where tests put their pins. Each test gets its own directory below it.
pub const BPF_FS_ROOT: &str = "/sys/fs/bpf";
/// Preferred cgroup2 mount (a hybrid hierarchy, as on the dev and CI machines).
pub const CGROUP2_DEFAULT_ROOT: &str = "/sys/fs/cgroup/unified";

pub const TRAFFIC_BIN: &str = env!("CARGO_BIN_EXE_kmesh-traffic");
pub const DAEMON_BIN: &str = env!("CARGO_BIN_EXE_kmesh-daemon");

/// How long a helper waits for a child to come up or go away before failing.
const START_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_GRACE: Duration = Duration::from_secs(10);

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// `<prefix>-<pid>-<n>`, unique within this machine while this process lives.
/// The prefix is reduced to `[a-z0-9-]` because it ends up in netns, cgroup and
/// bpffs names.
pub fn unique_name(prefix: &str) -> String {
    let clean: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(24)
        .collect();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{clean}-{}-{n}", std::process::id())
}

// ---------------------------------------------------------------------------
// Environment check
// ---------------------------------------------------------------------------

/// True when this machine can run end-to-end tests: root, `ip`, a cgroup2
/// mount, bpffs at /sys/fs/bpf (mounted here if missing) and a kernel that
/// loads `cgroup/connect` programs.
///
/// Otherwise: under `CI=true` it panics, because CI must never pass by skipping
/// the tests that matter; elsewhere it prints a `SKIP` line and returns false,
/// and the test should return early.
pub fn require_root() -> bool {
    match environment_problem() {
        None => true,
        Some(why) => {
            let test = thread::current().name().unwrap_or("<unnamed>").to_string();
            if is_ci() {
                panic!(
                    "{test}: end-to-end test cannot run: {why}. CI must run as root on a \
                     kernel with BPF, cgroup2 and bpffs (scripts/install-deps.sh prepares them)"
                );
            }
            eprintln!("SKIP {test}: {why} (set CI=true to make this a failure)");
            false
        }
    }
}

pub fn is_ci() -> bool {
    matches!(
        std::env::var("CI")
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Ok("true" | "1")
    )
}

/// The first reason end-to-end tests cannot run here, if any.
pub fn environment_problem() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not running as root".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(out) if out.status.success() => {}
        _ => return Some("the `ip` command (iproute2) is missing".into()),
    }
    if let Err(why) = cgroup2_root() {
        return Some(why);
    }
    if let Err(why) = ensure_bpffs() {
        return Some(why);
    }
    // SAFETY: a pure query; libbpf loads a tiny program of this type and
    // reports 1 if the kernel accepts it. NULL opts is documented as allowed.
    let probe = unsafe {
        libbpf_rs::libbpf_sys::libbpf_probe_bpf_prog_type(
            libbpf_rs::libbpf_sys::BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
            std::ptr::null(),
        )
    };
    if probe != 1 {
        return Some(format!(
            "the kernel does not load cgroup_sock_addr BPF programs (probe returned {probe})"
        ));
    }
    None
}

/// The cgroup2 mount to create test cgroups under: /sys/fs/cgroup/unified if
/// it is a cgroup2 mount, else the first cgroup2 mount in /proc/self/mounts.
pub fn cgroup2_root() -> Result<PathBuf, String> {
    let mounts = fs::read_to_string("/proc/self/mounts")
        .map_err(|e| format!("reading /proc/self/mounts: {e}"))?;
    let cgroup2: Vec<&str> = mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_src, target, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "cgroup2").then_some(target)
        })
        .collect();
    if cgroup2.contains(&CGROUP2_DEFAULT_ROOT) {
        return Ok(PathBuf::from(CGROUP2_DEFAULT_ROOT));
    }
    cgroup2
        .first()
        .map(PathBuf::from)
        .ok_or_else(|| "no cgroup2 filesystem is mounted".to_string())
}

/// Makes sure /sys/fs/bpf is a bpffs, mounting one if it is not.
pub fn ensure_bpffs() -> Result<(), String> {
    let root = Path::new(BPF_FS_ROOT);
    if is_bpffs(root) {
        return Ok(());
    }
    nix::mount::mount(
        Some("bpf"),
        root,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| format!("mounting bpffs at {BPF_FS_ROOT}: {e}"))?;
    if is_bpffs(root) {
        Ok(())
    } else {
        Err(format!("{BPF_FS_ROOT} is not a bpffs even after mounting"))
    }
}

fn is_bpffs(path: &Path) -> bool {
    statfs(path).is_ok_and(|s| s.filesystem_type() == BPF_FS_MAGIC)
}

// ---------------------------------------------------------------------------
// Network namespace
// ---------------------------------------------------------------------------

/// A named network namespace (`ip netns add kmt-<prefix>-<pid>-<n>`) with only
/// `lo` up. Deleted on drop.
pub struct NetNs {
    name: String,
}

impl NetNs {
    pub fn new(prefix: &str) -> NetNs {
        let name = format!("kmt-{}", unique_name(prefix));
        run_checked(Command::new("ip").args(["netns", "add", &name]));
        // Guard exists from here on, so a failure below still deletes the netns.
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind-mounted namespace file, for `setns` or `nsenter --net=`.
    pub fn path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.name)
    }

    /// Adds an address (with prefix length, e.g. `fd00::2/128`) to `lo`.
    /// IPv6 addresses skip duplicate address detection, so they are usable at
    /// once instead of "tentative" for a moment.
    pub fn add_addr(&self, cidr: &str) {
        let mut args = vec!["addr", "add", cidr, "dev", "lo"];
        if cidr.contains(':') {
            args.push("nodad");
        }
        self.ip(&args);
    }

    /// Runs `ip -n NAME ARGS...`, panicking with its stderr on failure.
    pub fn ip(&self, args: &[&str]) -> String {
        let out = run_checked(Command::new("ip").args(["-n", &self.name]).args(args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        match Command::new("ip")
            .args(["netns", "delete", &self.name])
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "warning: ip netns delete {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => eprintln!("warning: ip netns delete {}: {e}", self.name),
        }
    }
}

// ---------------------------------------------------------------------------
// cgroup2
// ---------------------------------------------------------------------------

/// A child cgroup `kmesh-test-<prefix>-<pid>-<n>` of the cgroup2 root.
/// Removed on drop; every process moved into it must have exited by then.
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    pub fn new(prefix: &str) -> Cgroup {
        let root = cgroup2_root().unwrap_or_else(|e| panic!("no cgroup2: {e}"));
        let path = root.join(format!("kmesh-test-{}", unique_name(prefix)));
        fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Cgroup { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// PIDs currently in the cgroup.
    pub fn procs(&self) -> Vec<u32> {
        let procs = self.path.join("cgroup.procs");
        fs::read_to_string(&procs)
            .unwrap_or_else(|e| panic!("reading {}: {e}", procs.display()))
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // rmdir fails with EBUSY for a short while after the last process
        // exits if the kernel has not finished tearing it down; retry briefly.
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return,
                Err(e) if Instant::now() < deadline && e.raw_os_error() == Some(libc::EBUSY) => {
                    thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    eprintln!("warning: rmdir {}: {e}", self.path.display());
                    return;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// bpffs
// ---------------------------------------------------------------------------

/// A directory `kmesh-test-<prefix>-<pid>-<n>` under /sys/fs/bpf for one test's
/// pins. Removed recursively on drop, which also releases pinned links (and so
/// detaches their programs) unless something else still holds them.
pub struct BpfFsDir {
    path: PathBuf,
}

impl BpfFsDir {
    pub fn new(prefix: &str) -> BpfFsDir {
        ensure_bpffs().unwrap_or_else(|e| panic!("{e}"));
        let path = Path::new(BPF_FS_ROOT).join(format!("kmesh-test-{}", unique_name(prefix)));
        fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        BpfFsDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for BpfFsDir {
    fn drop(&mut self) {
        match fs::remove_dir_all(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => eprintln!("warning: removing {}: {e}", self.path.display()),
        }
    }
}

// ---------------------------------------------------------------------------
// Ports, files, processes
// ---------------------------------------------------------------------------

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let sock = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    sock.local_addr().expect("local_addr").port()
}

/// A temporary file holding `contents` (e.g. an xDS file), deleted on drop.
pub fn temp_file(suffix: &str, contents: &str) -> NamedTempFile {
    let mut file = tempfile::Builder::new()
        .prefix("kmesh-test-")
        .suffix(suffix)
        .tempfile()
        .expect("creating temp file");
    file.write_all(contents.as_bytes())
        .expect("writing temp file");
    file.flush().expect("flushing temp file");
    file
}

/// Replaces `path`'s contents atomically (write a sibling, rename it over),
/// as editors do: a watcher never reads a half-written file.
pub fn replace_file(path: &Path, contents: &str) {
    let staging = path.with_extension("new");
    fs::write(&staging, contents).expect("writing the staging file");
    fs::rename(&staging, path).expect("renaming the staging file into place");
}

/// Runs a command to completion, panicking with its output if it fails.
pub fn run_checked(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    out
}

/// Waits for `child` to exit, for at most `timeout`.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            Ok(None) => return None,
            Err(e) => panic!("waiting for pid {}: {e}", child.id()),
        }
    }
}

/// SIGTERM, then SIGKILL if the child is still there after `grace`. Only ever
/// signals this child's own PID. Returns the exit status.
pub fn terminate(child: &mut Child, grace: Duration) -> ExitStatus {
    if let Ok(Some(status)) = child.try_wait() {
        return status;
    }
    // The PID is ours and unreaped, so it cannot have been reused.
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    if let Some(status) = wait_timeout(child, grace) {
        return status;
    }
    eprintln!(
        "warning: pid {} ignored SIGTERM for {grace:?}; killing",
        child.id()
    );
    let _ = child.kill();
    child.wait().expect("waiting for a killed child")
}

// ---------------------------------------------------------------------------
// Backends and client (kmesh-traffic)
// ---------------------------------------------------------------------------

/// `kmesh-traffic serve` running named backends, optionally inside a netns.
/// Killed (by PID) on drop.
pub struct Backends {
    child: Child,
    stderr: NamedTempFile,
}

impl Backends {
    /// Starts backends, e.g. `&["127.0.0.2:8080=b1", "[fd00::2]:8080=b2"]`,
    /// and returns once every listener is bound.
    pub fn start(netns: Option<&NetNs>, listeners: &[&str]) -> Backends {
        Backends::start_with(netns, listeners, &[])
    }

    /// [`Backends::start`] with extra `kmesh-traffic serve` flags
    /// (`--client-closes-first`).
    pub fn start_with(netns: Option<&NetNs>, listeners: &[&str], extra: &[&str]) -> Backends {
        let stderr = NamedTempFile::new().expect("creating temp file");
        let mut cmd = Command::new(TRAFFIC_BIN);
        cmd.arg("serve");
        if let Some(ns) = netns {
            cmd.args(["--netns", ns.name()]);
        }
        cmd.args(extra)
            .args(listeners)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr.reopen().expect("reopening temp file"));
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let mut backends = Backends { child, stderr };

        // Read stdout on a thread so a wedged server turns into a timeout here.
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(l) if l.trim() == "ready" => {
                        let _ = tx.send(());
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        if rx.recv_timeout(START_TIMEOUT).is_err() {
            let status = terminate(&mut backends.child, Duration::from_secs(1));
            panic!(
                "kmesh-traffic serve {listeners:?} did not become ready ({status}): {}",
                backends.stderr_text()
            );
        }
        backends
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stderr_text(&self) -> String {
        fs::read_to_string(self.stderr.path()).unwrap_or_default()
    }
}

impl Drop for Backends {
    fn drop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(5));
    }
}

/// The JSON report printed by `kmesh-traffic dial`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
pub struct DialReport {
    /// Backend name -> connections it answered.
    pub backends: BTreeMap<String, u64>,
    /// errno name (`ENETUNREACH`, `ECONNREFUSED`, ...), `timeout` or `eof` -> count.
    pub errors: BTreeMap<String, u64>,
    /// The client's getpeername() after connect -> count.
    pub peer_names: BTreeMap<String, u64>,
    /// Connections whose connect() succeeded.
    pub connected: u64,
    /// `dst=` of a `serve --proxy-protocol` backend's line (the destination
    /// its PROXY header carried) -> count.
    #[serde(default)]
    pub proxy_dsts: BTreeMap<String, u64>,
    /// Connections whose echo came back identical (`--expect-echo`).
    #[serde(default)]
    pub echoed: u64,
    /// Blocking reads that failed with EAGAIN long before their timeout
    /// (each is also an error `spurious-eagain`).
    #[serde(default)]
    pub spurious_eagain: u64,
}

impl DialReport {
    pub fn total_errors(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn total_answered(&self) -> u64 {
        self.backends.values().sum()
    }

    pub fn backend(&self, name: &str) -> u64 {
        self.backends.get(name).copied().unwrap_or(0)
    }

    pub fn error(&self, key: &str) -> u64 {
        self.errors.get(key).copied().unwrap_or(0)
    }
}

/// `count` sequential connections to `target` (e.g. `10.96.0.1:80`,
/// `[fd00::1]:80`) from a client inside `netns`, moved into `cgroup` first if
/// given (in a child process, so the test process stays where it is).
pub fn dial(netns: &NetNs, cgroup: Option<&Cgroup>, target: &str, count: u32) -> DialReport {
    dial_with(Some(netns), cgroup, target, count, &[])
}

/// [`dial`] with extra `kmesh-traffic dial` flags (`--interval-ms`,
/// `--timeout-ms`, `--hold-ms`). `netns: None` dials from the host namespace:
/// only for loopback targets.
pub fn dial_with(
    netns: Option<&NetNs>,
    cgroup: Option<&Cgroup>,
    target: &str,
    count: u32,
    extra: &[&str],
) -> DialReport {
    let mut cmd = Command::new(TRAFFIC_BIN);
    cmd.arg("dial");
    if let Some(ns) = netns {
        cmd.args(["--netns", ns.name()]);
    }
    if let Some(cg) = cgroup {
        cmd.arg("--cgroup").arg(cg.path());
    }
    cmd.args(["--count", &count.to_string()])
        .args(extra)
        .arg(target)
        .stdin(Stdio::null());
    let out = run_checked(&mut cmd);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{cmd:?} printed no valid report ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Dial `count` connections from `netns` (in `cgroup`) until `pred` holds for
/// the report; returns how long it took. Panics after `within`, with the last
/// report and `context()` (e.g. the daemon's log).
pub fn dial_until(
    netns: &NetNs,
    cgroup: &Cgroup,
    target: &str,
    count: u32,
    within: Duration,
    pred: impl Fn(&DialReport) -> bool,
    context: impl Fn() -> String,
) -> Duration {
    let start = Instant::now();
    loop {
        let report = dial(netns, Some(cgroup), target, count);
        if pred(&report) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "not reached within {within:?}; last report {report:?}\nlog:\n{}",
            context()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Program IDs attached to a cgroup, from bpftool.
pub fn attached_prog_ids(cgroup: &Path) -> Vec<u64> {
    let out = Command::new("bpftool")
        .args(["-j", "cgroup", "show"])
        .arg(cgroup)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bpftool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return vec![];
    }
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_u64().unwrap())
        .collect()
}

pub fn prog_exists(id: u64) -> bool {
    Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string()])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// `promtool check metrics` (Debian prometheus) must accept `text`.
pub fn promtool_check(text: &str) {
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian prometheus) is installed by scripts/install-deps.sh");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------
// HTTP (admin endpoint)
// ---------------------------------------------------------------------------

/// A minimal HTTP/1.0 GET: enough for the admin endpoint, which answers and
/// closes. Returns (status, body).
pub fn try_http_get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    // One write: a server may answer and close after the first segment it reads.
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no end of HTTP headers"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad status line in {head:?}"),
            )
        })?;
    Ok((status, body.to_string()))
}

/// [`try_http_get`] that panics on a transport error.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    try_http_get(addr, path).unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"))
}

// ---------------------------------------------------------------------------
// The daemon
// ---------------------------------------------------------------------------

/// `kmesh-daemon` (kernel-native unless started as dual-engine) attached to one test's cgroup and
/// bpffs directory, admin on a free loopback port, output kept in a temp file.
/// Stopped on drop; on a failing test its log is printed then.
pub struct Daemon {
    child: Option<Child>,
    admin: SocketAddr,
    metrics: SocketAddr,
    log: NamedTempFile,
    bpf_fs_path: PathBuf,
    cgroup2_path: PathBuf,
}

impl Daemon {
    pub fn start(xds_file: &Path, bpf_fs: &BpfFsDir, cgroup: &Cgroup) -> Daemon {
        Daemon::start_with_args(xds_file, bpf_fs, cgroup, &[])
    }

    /// Like [`Daemon::start`], with extra flags appended.
    pub fn start_with_args(
        xds_file: &Path,
        bpf_fs: &BpfFsDir,
        cgroup: &Cgroup,
        extra: &[&str],
    ) -> Daemon {
        let source = ["--xds-file".to_string(), xds_file.display().to_string()];
        Daemon::spawn(&source, bpf_fs, cgroup, extra)
    }

    /// A daemon following an ADS control plane at `xds_url` (`http://...`).
    pub fn start_ads(xds_url: &str, bpf_fs: &BpfFsDir, cgroup: &Cgroup, extra: &[&str]) -> Daemon {
        let source = ["--xds-address".to_string(), xds_url.to_string()];
        Daemon::spawn(&source, bpf_fs, cgroup, extra)
    }

    /// `--mode dual-engine` on an xDS file of workload API resources.
    pub fn start_dual_engine(
        xds_file: &Path,
        bpf_fs: &BpfFsDir,
        cgroup: &Cgroup,
        extra: &[&str],
    ) -> Daemon {
        let source = [
            "--mode".to_string(),
            "dual-engine".to_string(),
            "--xds-file".to_string(),
            xds_file.display().to_string(),
        ];
        Daemon::spawn(&source, bpf_fs, cgroup, extra)
    }

    /// `--mode dual-engine` following a delta ADS control plane at `xds_url`.
    pub fn start_dual_engine_ads(
        xds_url: &str,
        bpf_fs: &BpfFsDir,
        cgroup: &Cgroup,
        extra: &[&str],
    ) -> Daemon {
        let source = [
            "--mode".to_string(),
            "dual-engine".to_string(),
            "--xds-address".to_string(),
            xds_url.to_string(),
        ];
        Daemon::spawn(&source, bpf_fs, cgroup, extra)
    }

    /// `source` may start with `--mode X`; kernel-native otherwise.
    fn spawn(source: &[String], bpf_fs: &BpfFsDir, cgroup: &Cgroup, extra: &[&str]) -> Daemon {
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = NamedTempFile::new().expect("creating daemon log file");
        // One open file description for both streams: a shared offset keeps
        // stdout and stderr lines from overwriting each other.
        let stdout = log.as_file().try_clone().expect("cloning log handle");
        let stderr = log.as_file().try_clone().expect("cloning log handle");
        let mut cmd = Command::new(DAEMON_BIN);
        if source.first().map(String::as_str) != Some("--mode") {
            cmd.args(["--mode", "kernel-native"]);
        }
        cmd.args(source)
            .arg("--bpf-fs-path")
            .arg(bpf_fs.path())
            .arg("--cgroup2-path")
            .arg(cgroup.path())
            .args(["--admin-address", &admin.to_string()])
            .args(["--metrics-address", &metrics.to_string()])
            .args(["--log-level", "debug"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        Daemon {
            child: Some(child),
            admin,
            metrics,
            log,
            bpf_fs_path: bpf_fs.path().to_path_buf(),
            cgroup2_path: cgroup.path().to_path_buf(),
        }
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// Where `/status/metric` is served.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the daemon printed so far (stdout and stderr interleaved).
    pub fn logs(&self) -> String {
        fs::read_to_string(self.log.path()).unwrap_or_else(|e| format!("<log unreadable: {e}>"))
    }

    /// `GET /debug/ready` answered 200.
    pub fn is_ready(&self) -> bool {
        matches!(try_http_get(self.admin, "/debug/ready"), Ok((200, _)))
    }

    /// Polls `/debug/ready` until 200; errors (with the log) on timeout or if
    /// the daemon exits first.
    pub fn try_wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.is_ready() {
                // Make sure the port is ours: a parallel test's daemon could
                // have taken the "free" port first.
                let pid = try_http_get(self.admin, "/version")
                    .ok()
                    .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
                    .and_then(|v| v["pid"].as_u64());
                if pid == self.pid().map(u64::from) {
                    return Ok(());
                }
                return Err(format!(
                    "admin port {} answered for pid {pid:?}, not our daemon {:?}; log:\n{}",
                    self.admin,
                    self.pid(),
                    self.logs()
                ));
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!(
                        "kmesh-daemon exited ({status}) before it was ready; log:\n{}",
                        self.logs()
                    ));
                }
            } else {
                return Err("kmesh-daemon was stopped".into());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "kmesh-daemon not ready after {timeout:?}; log:\n{}",
                    self.logs()
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// [`Daemon::try_wait_ready`], panicking with the log on failure.
    pub fn wait_ready(&mut self, timeout: Duration) {
        if let Err(e) = self.try_wait_ready(timeout) {
            panic!("{e}");
        }
    }

    /// GET an admin path, e.g. `/debug/config_dump/kernel-native`.
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(self.admin, path)
    }

    /// The kernel-native config dump as JSON; panics unless it is 200 + JSON.
    pub fn config_dump(&self) -> serde_json::Value {
        let (status, body) = self.get("/debug/config_dump/kernel-native");
        assert_eq!(status, 200, "config_dump: {body}\nlog:\n{}", self.logs());
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("config_dump is not JSON ({e}): {body}"))
    }

    /// The dual-engine config dump (store, rejected, plan sizes, xds).
    pub fn dual_engine_dump(&self) -> serde_json::Value {
        self.get_json("/debug/config_dump/dual-engine")
    }

    /// The dual-engine maps read back (records + pipeline counters).
    pub fn dual_engine_bpf_dump(&self) -> serde_json::Value {
        self.get_json("/debug/config_dump/bpf/dual-engine")
    }

    fn get_json(&self, path: &str) -> serde_json::Value {
        let (status, body) = self.get(path);
        assert_eq!(status, 200, "{path}: {body}\nlog:\n{}", self.logs());
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path} is not JSON ({e}): {body}"))
    }

    /// SIGTERM, wait (SIGKILL after a grace period). Returns the exit status,
    /// or None if it was already stopped.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        Some(terminate(&mut child, STOP_GRACE))
    }

    /// SIGKILL (no chance to finish anything), then reap it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs `kmesh-daemon uninstall` for this daemon's bpffs dir and cgroup.
    pub fn uninstall(&self) -> Output {
        run_uninstall(&self.bpf_fs_path, &self.cgroup2_path)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        if thread::panicking() {
            eprintln!("---- kmesh-daemon log ----\n{}", self.logs());
        }
    }
}

/// `kmesh-daemon uninstall --bpf-fs-path B --cgroup2-path C`; the caller
/// asserts on the output.
pub fn run_uninstall(bpf_fs_path: &Path, cgroup2_path: &Path) -> Output {
    let mut cmd = Command::new(DAEMON_BIN);
    cmd.arg("uninstall")
        .arg("--bpf-fs-path")
        .arg(bpf_fs_path)
        .arg("--cgroup2-path")
        .arg(cgroup2_path)
        .stdin(Stdio::null());
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}
