//! `kmesh-traffic`: the TCP client and backends used by the quickstart and the
//! end-to-end tests.
//!
//! * `serve` runs named backends. Each accepted connection gets one line,
//!   `NAME peer=IP:PORT\n`, so a client can tell which backend the kernel sent
//!   it to and the backend's view of the client address. `--proxy-protocol`
//!   makes it a stand-in waypoint: it reads a PROXY v2 header first and adds
//!   `src=.. dst=..` (what the header carried) to the line; `--echo` sends
//!   back every byte after the line; `--http` answers one HTTP/1.1 request
//!   with the line as the body.
//! * `dial` makes sequential connections and prints one JSON report, so a test
//!   asserts on counts instead of parsing logs.
//! * `connect-loop` times sequential `connect()` + `close()` (SO_LINGER 0)
//!   and prints the mean and percentiles: the benchmark's connect cost.
//!
//! Both can first join a named network namespace, and `dial` can move itself
//! into a cgroup2 directory: the eBPF connect hooks act on the cgroup of the
//! process calling `connect()`, so the move must happen before any socket exists.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use nix::errno::Errno;
use nix::sched::{setns, CloneFlags};
use serde::Serialize;

#[derive(Parser)]
#[command(
    name = "kmesh-traffic",
    about = "TCP backends and client for kmesh tests"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Listen on each ADDR:PORT=NAME; answer every connection with `NAME peer=IP:PORT`.
    Serve {
        /// Join /var/run/netns/NAME before opening any socket.
        #[arg(long)]
        netns: Option<String>,
        /// Keep each connection open after the line until the client closes
        /// (the client's side closes first). Default: send FIN after the line.
        #[arg(long)]
        client_closes_first: bool,
        /// Expect a PROXY protocol v2 header first (the client must send);
        /// the line gets `src=IP:PORT dst=IP:PORT` from it, or the name
        /// `bad-proxy-header` when it is not one.
        #[arg(long)]
        proxy_protocol: bool,
        /// After the line, send back every byte received until the client
        /// half-closes.
        #[arg(long, conflicts_with = "http")]
        echo: bool,
        /// Read one HTTP/1.1 request head and answer 200 with the line as the body.
        #[arg(long)]
        http: bool,
        /// Answer with the address the client reached (the connection's
        /// local address, e.g. `10.1.2.3:8080`) in place of NAME. With a
        /// wildcard listener and a `local` route over a range, one listener
        /// stands for every address of the range, and each one tells which
        /// address a connection was steered to.
        #[arg(long)]
        answer_local_address: bool,
        /// Listeners, e.g. `127.0.0.2:8080=b1` or `[fd00::2]:8080=b1`.
        #[arg(required = true, value_parser = parse_listener)]
        listeners: Vec<Listener>,
    },
    /// Make COUNT sequential TCP connections to ADDR:PORT and print a JSON report.
    Dial {
        #[command(flatten)]
        place: Placement,
        /// Number of connections.
        #[arg(long)]
        count: u32,
        /// Pause between connections.
        #[arg(long, default_value_t = 0)]
        interval_ms: u64,
        /// Limit for connect and for reading the backend's line, each.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
        /// Keep each connection open this long after reading the line.
        #[arg(long, default_value_t = 0)]
        hold_ms: u64,
        /// Keep every connection open (all at once) until this long after
        /// the last connect, then close them all.
        #[arg(long, default_value_t = 0)]
        keep_open_ms: u64,
        /// Keep every connection open (all at once) until standard input
        /// closes, then close them all: the caller decides when, however
        /// long what it does meanwhile takes.
        #[arg(long, conflicts_with = "keep_open_ms")]
        keep_open_until_stdin_closes: bool,
        /// Send this many bytes on each connection before reading the line.
        #[arg(long, default_value_t = 0)]
        send_bytes: u64,
        /// Check that the bytes sent come back after the line (a `serve
        /// --echo` backend); a difference counts as the error `echo-mismatch`.
        #[arg(long, requires = "send_bytes")]
        expect_echo: bool,
        /// With --expect-echo: start a blocking read of the answer right
        /// after connect, and send from another thread SEND_DELAY_MS later,
        /// so the read is already waiting when the first bytes go out.
        #[arg(long, requires = "expect_echo")]
        read_while_send: bool,
        /// With --read-while-send: how long the sending thread waits first.
        #[arg(long, default_value_t = 2, requires = "read_while_send")]
        send_delay_ms: u64,
        /// Send `GET / HTTP/1.1` (with each --header) and take the backend
        /// name from the response body; a status other than 200 is the
        /// error `http-STATUS`.
        #[arg(long)]
        http: bool,
        /// An HTTP request header, `Name: value` (repeatable; with --http).
        #[arg(long = "header", requires = "http")]
        headers: Vec<String>,
        /// The request path (with --http).
        #[arg(long, default_value = "/", requires = "http")]
        path: String,
        /// Set this SO_MARK on each socket before connect (needs
        /// CAP_NET_ADMIN); decimal or 0x-hex.
        #[arg(long, value_parser = parse_mark)]
        mark: Option<u32>,
        /// Target, e.g. `10.96.0.1:80` or `[fd00::1]:80`.
        target: SocketAddr,
    },
    /// Time COUNT sequential connect() + close() (SO_LINGER 0: the close
    /// sends RST, no TIME_WAIT) to ADDR:PORT; print one JSON report with the
    /// mean, median and p99 of the connect() call alone.
    ConnectLoop {
        #[command(flatten)]
        place: Placement,
        /// Timed connections.
        #[arg(long)]
        count: u32,
        /// Untimed connections made first (caches, branch predictors, the
        /// backend's accept path).
        #[arg(long, default_value_t = 200)]
        warmup: u32,
        /// Target, e.g. `10.96.0.1:80` or `[fd00::1]:80`.
        target: SocketAddr,
    },
}

#[derive(Clone, Debug)]
struct Listener {
    addr: SocketAddr,
    name: String,
}

fn parse_listener(spec: &str) -> Result<Listener, String> {
    // Split on the last '=' so the address part may be any SocketAddr syntax.
    let (addr, name) = spec
        .rsplit_once('=')
        .ok_or_else(|| format!("{spec:?}: expected ADDR:PORT=NAME"))?;
    let addr = addr
        .parse()
        .map_err(|e| format!("{spec:?}: bad address {addr:?}: {e}"))?;
    if name.is_empty() || name.chars().any(char::is_whitespace) {
        return Err(format!(
            "{spec:?}: backend name must be non-empty without spaces"
        ));
    }
    Ok(Listener {
        addr,
        name: name.to_string(),
    })
}

fn parse_mark(text: &str) -> Result<u32, String> {
    match text.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => text.parse(),
    }
    .map_err(|e| format!("{text:?}: {e}"))
}

/// Where a client runs: the netns and cgroup it joins before any socket.
#[derive(Args)]
struct Placement {
    /// Join /var/run/netns/NAME before opening any socket.
    #[arg(long)]
    netns: Option<String>,
    /// Move this process into the cgroup2 directory DIR before opening any socket.
    #[arg(long)]
    cgroup: Option<PathBuf>,
}

impl Placement {
    fn enter(&self) -> Result<()> {
        if let Some(ns) = &self.netns {
            join_netns(ns)?;
        }
        if let Some(dir) = &self.cgroup {
            join_cgroup(dir)?;
        }
        Ok(())
    }
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Serve {
            netns,
            client_closes_first,
            proxy_protocol,
            echo,
            http,
            answer_local_address,
            listeners,
        } => {
            if let Some(ns) = &netns {
                join_netns(ns)?;
            }
            let mode = ServeMode {
                client_closes_first,
                proxy_protocol,
                echo,
                http,
                answer_local_address,
            };
            serve(listeners, mode)
        }
        Command::Dial {
            place,
            count,
            interval_ms,
            timeout_ms,
            hold_ms,
            keep_open_ms,
            keep_open_until_stdin_closes,
            send_bytes,
            expect_echo,
            read_while_send,
            send_delay_ms,
            http,
            headers,
            path,
            mark,
            target,
        } => {
            place.enter()?;
            let opts = DialOptions {
                count,
                interval: Duration::from_millis(interval_ms),
                // A zero timeout is rejected by std; treat it as "1 ms" rather than fail.
                timeout: Duration::from_millis(timeout_ms.max(1)),
                hold: Duration::from_millis(hold_ms),
                keep_open: Duration::from_millis(keep_open_ms),
                keep_open_until_stdin_closes,
                send_bytes,
                expect_echo,
                read_while_send: read_while_send.then(|| Duration::from_millis(send_delay_ms)),
                http: http.then_some(HttpRequest { path, headers }),
                mark,
            };
            let report = dial(target, &opts);
            print_json(&report)
        }
        Command::ConnectLoop {
            place,
            count,
            warmup,
            target,
        } => {
            place.enter()?;
            if count == 0 {
                bail!("--count must be at least 1");
            }
            print_json(&connect_loop(target, count, warmup))
        }
    }
}

fn print_json(report: &impl Serialize) -> Result<()> {
    let mut out = io::stdout().lock();
    serde_json::to_writer(&mut out, report).context("writing report")?;
    writeln!(out).context("writing report")
}

/// What `connect-loop` prints. Times are of the `connect()` call alone
/// (socket creation and close are outside), failed connects included.
#[derive(Serialize, Debug)]
struct ConnectLoopReport {
    count: u32,
    failed: u32,
    /// Failed connects by error key (errno name).
    errors: BTreeMap<String, u32>,
    mean_ns: f64,
    median_ns: u64,
    p99_ns: u64,
    /// Whole iterations (socket, connect, close) per second of wall time.
    connects_per_s: f64,
}

fn connect_loop(target: SocketAddr, count: u32, warmup: u32) -> ConnectLoopReport {
    let mut errors = BTreeMap::new();
    let mut times = Vec::with_capacity(count as usize);
    for _ in 0..warmup {
        let _ = connect_and_reset(target);
    }
    let start = std::time::Instant::now();
    for _ in 0..count {
        let (elapsed, result) = connect_and_reset(target);
        times.push(elapsed);
        if let Err(e) = result {
            *errors.entry(error_key(&e)).or_default() += 1;
        }
    }
    let wall = start.elapsed().as_secs_f64();
    let total: u128 = times.iter().map(|&t| u128::from(t)).sum();
    times.sort_unstable();
    // Nearest rank; `count` is at least 1, so the index is in range.
    let rank = |p: usize| times[(times.len() * p).div_ceil(100).saturating_sub(1)];
    ConnectLoopReport {
        count,
        failed: errors.values().sum(),
        errors,
        mean_ns: total as f64 / f64::from(count),
        median_ns: rank(50),
        p99_ns: rank(99),
        connects_per_s: f64::from(count) / wall.max(f64::MIN_POSITIVE),
    }
}

/// One socket, one timed connect(), then close with SO_LINGER 0 (RST).
/// Returns the connect()'s duration in ns and its result.
fn connect_and_reset(target: SocketAddr) -> (u64, io::Result<()>) {
    let socket = match socket2::Socket::new(
        socket2::Domain::for_address(target),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    ) {
        Ok(s) => s,
        Err(e) => return (0, Err(e)),
    };
    if let Err(e) = socket.set_linger(Some(Duration::ZERO)) {
        return (0, Err(e));
    }
    let t0 = std::time::Instant::now();
    let result = socket.connect(&target.into());
    let elapsed = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
    (elapsed, result)
}

/// Moves the calling thread into the named netns. Called on the main thread
/// before any other thread exists, so every thread spawned later inherits it.
fn join_netns(name: &str) -> Result<()> {
    let path = Path::new("/var/run/netns").join(name);
    let ns = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    setns(&ns, CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("joining network namespace {}", path.display()))
}

/// Moves this whole process into the cgroup2 directory `dir`.
fn join_cgroup(dir: &Path) -> Result<()> {
    let procs = dir.join("cgroup.procs");
    let mut file = OpenOptions::new()
        .write(true)
        .open(&procs)
        .with_context(|| format!("opening {}", procs.display()))?;
    // One write(2) per PID: cgroup.procs does not accept partial writes.
    file.write_all(format!("{}\n", std::process::id()).as_bytes())
        .with_context(|| format!("writing our pid to {}", procs.display()))
}

/// How `serve` treats each connection.
#[derive(Clone, Copy)]
struct ServeMode {
    client_closes_first: bool,
    proxy_protocol: bool,
    echo: bool,
    http: bool,
    answer_local_address: bool,
}

fn serve(listeners: Vec<Listener>, mode: ServeMode) -> Result<()> {
    // Bind everything first so "ready" means every address accepts connections.
    let mut bound = Vec::with_capacity(listeners.len());
    for l in listeners {
        let sock = TcpListener::bind(l.addr).with_context(|| format!("binding {}", l.addr))?;
        bound.push((sock, l.name));
    }
    let mut workers = Vec::with_capacity(bound.len());
    for (sock, name) in bound {
        workers.push(thread::spawn(move || accept_loop(&sock, &name, mode)));
    }
    {
        let mut out = io::stdout().lock();
        writeln!(out, "ready").context("writing ready")?;
        out.flush().context("flushing ready")?;
    }
    // Runs until a signal ends the process: SIGTERM/SIGINT keep their default
    // action (terminate), which also closes every socket.
    for w in workers {
        if w.join().is_err() {
            bail!("a listener thread panicked");
        }
    }
    Ok(())
}

fn accept_loop(sock: &TcpListener, name: &str, mode: ServeMode) {
    loop {
        match sock.accept() {
            Ok((conn, peer)) => {
                let name = name.to_string();
                // One thread per connection: a PROXY or HTTP client that is
                // slow to send must not hold up the others.
                thread::spawn(move || serve_one(conn, peer, &name, mode));
            }
            Err(e) => {
                // Transient (e.g. ECONNABORTED, EMFILE): report and keep serving.
                eprintln!("kmesh-traffic serve {name}: accept: {e}");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// The connection's errors are its client's business, never a reason to stop
/// serving others: they end this connection only.
fn serve_one(mut conn: TcpStream, peer: SocketAddr, name: &str, mode: ServeMode) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let local = mode
        .answer_local_address
        .then(|| conn.local_addr().ok().map(|a| a.to_string()))
        .flatten();
    let name = local.as_deref().unwrap_or(name);
    let mut line = format!("{name} peer={peer}");
    if mode.proxy_protocol {
        match read_proxy_v2(&mut conn) {
            Ok((src, dst)) => line.push_str(&format!(" src={src} dst={dst}")),
            Err(why) => line = format!("bad-proxy-header {why}"),
        }
    }
    line.push('\n');
    if mode.http {
        if read_http_head(&mut conn).is_err() {
            return;
        }
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{line}",
            line.len()
        );
        let _ = conn.write_all(response.as_bytes());
        let _ = conn.shutdown(std::net::Shutdown::Write);
    } else {
        let _ = conn.write_all(line.as_bytes());
        if mode.echo {
            if let Ok(mut reader) = conn.try_clone() {
                let _ = io::copy(&mut reader, &mut conn);
            }
            let _ = conn.shutdown(std::net::Shutdown::Write);
            return;
        }
        if !mode.client_closes_first {
            let _ = conn.shutdown(std::net::Shutdown::Write);
        }
    }
    // Read (and discard) what the client sends until it closes, so every
    // byte it sends is acknowledged, never answered by a reset.
    let _ = io::copy(&mut conn, &mut io::sink());
}

/// PROXY protocol v2 signature (haproxy.org proxy-protocol.txt, 2.2).
const PROXY_V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Read a PROXY v2 header (command PROXY, TCP over IPv4 or IPv6) from the
/// start of the connection: (source, destination).
fn read_proxy_v2(conn: &mut TcpStream) -> Result<(SocketAddr, SocketAddr), String> {
    let mut fixed = [0u8; 16];
    conn.read_exact(&mut fixed)
        .map_err(|e| format!("reading: {e}"))?;
    if fixed[..12] != PROXY_V2_SIGNATURE {
        return Err("no-signature".into());
    }
    if fixed[12] != 0x21 {
        return Err(format!("version-command-{:#04x}", fixed[12]));
    }
    let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body)
        .map_err(|e| format!("reading: {e}"))?;
    let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
    match (fixed[13], len) {
        (0x11, 12) => {
            let ip = |at: usize| {
                std::net::Ipv4Addr::new(body[at], body[at + 1], body[at + 2], body[at + 3])
            };
            Ok((
                SocketAddr::from((ip(0), port(8))),
                SocketAddr::from((ip(4), port(10))),
            ))
        }
        (0x21, 36) => {
            let ip = |at: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&body[at..at + 16]);
                std::net::Ipv6Addr::from(octets)
            };
            Ok((
                SocketAddr::from((ip(0), port(32))),
                SocketAddr::from((ip(16), port(34))),
            ))
        }
        (family, len) => Err(format!("family-{family:#04x}-len-{len}")),
    }
}

/// Read an HTTP/1.1 request head (up to the blank line); the request has no body.
fn read_http_head(conn: &mut TcpStream) -> io::Result<()> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if conn.read(&mut byte)? == 0 || head.len() > 64 * 1024 {
            return Err(io::ErrorKind::InvalidData.into());
        }
        head.push(byte[0]);
    }
    Ok(())
}

struct HttpRequest {
    path: String,
    /// `Name: value` each.
    headers: Vec<String>,
}

struct DialOptions {
    count: u32,
    interval: Duration,
    timeout: Duration,
    hold: Duration,
    keep_open: Duration,
    keep_open_until_stdin_closes: bool,
    send_bytes: u64,
    expect_echo: bool,
    /// `Some(delay)`: read while another thread sends, `delay` after connect.
    read_while_send: Option<Duration>,
    /// One HTTP request per connection.
    http: Option<HttpRequest>,
    mark: Option<u32>,
}

/// The JSON printed by `dial`. Keys are sorted so output is stable.
#[derive(Default, Serialize)]
struct DialReport {
    /// Backend name (first word of the line the backend sent) -> connections.
    backends: BTreeMap<String, u64>,
    /// errno name (e.g. `ENETUNREACH`), `timeout` or `eof` -> occurrences.
    errors: BTreeMap<String, u64>,
    /// The client socket's getpeername() after connect -> connections. With a
    /// kmesh redirect this is the VIP again when getpeername hooks restore it.
    peer_names: BTreeMap<String, u64>,
    /// Connections whose connect() succeeded.
    connected: u64,
    /// `dst=` of the backend's line (a `serve --proxy-protocol` backend:
    /// the destination its PROXY header carried) -> connections.
    proxy_dsts: BTreeMap<String, u64>,
    /// Connections whose echo came back identical (`--expect-echo`).
    echoed: u64,
    /// Reads of a blocking socket that failed with EAGAIN long before the
    /// read timeout. Each one is also the connection's error
    /// (`spurious-eagain`): a blocking read must wait for data, EOF, an
    /// error or its timeout. (Linux's sockmap receive path, tcp_bpf_recvmsg,
    /// returns EAGAIN when woken without data; kmesh keeps sockets out of
    /// socket maps whenever a read can wait, see docs/waypoint-l7.md.)
    spurious_eagain: u64,
}

fn dial(target: SocketAddr, opts: &DialOptions) -> DialReport {
    let mut report = DialReport::default();
    let mut kept = Vec::new();
    for i in 0..opts.count {
        if i > 0 && !opts.interval.is_zero() {
            thread::sleep(opts.interval);
        }
        match dial_once(target, opts, &mut report) {
            Ok(stream) if !opts.keep_open.is_zero() || opts.keep_open_until_stdin_closes => {
                kept.push(stream)
            }
            Ok(_) => {}
            Err(kind) => *report.errors.entry(kind).or_default() += 1,
        }
    }
    if opts.keep_open_until_stdin_closes {
        let _ = io::copy(&mut io::stdin(), &mut io::sink());
    } else if !kept.is_empty() {
        thread::sleep(opts.keep_open);
    }
    drop(kept);
    report
}

/// One connection; returns the error key on failure. Successes are recorded
/// in `report` as they happen, so a connect that works but whose read fails
/// still counts as connected.
fn dial_once(
    target: SocketAddr,
    opts: &DialOptions,
    report: &mut DialReport,
) -> Result<TcpStream, String> {
    let stream = connect(target, opts).map_err(|e| error_key(&e))?;
    report.connected += 1;
    if let Ok(peer) = stream.peer_addr() {
        *report.peer_names.entry(peer.to_string()).or_default() += 1;
    }
    stream
        .set_read_timeout(Some(opts.timeout))
        .map_err(|e| error_key(&e))?;
    let sent = pattern(opts.send_bytes);
    if let Some(http) = &opts.http {
        let mut request = format!("GET {} HTTP/1.1\r\nHost: {target}\r\n", http.path);
        for h in &http.headers {
            request.push_str(&format!("{h}\r\n"));
        }
        request.push_str("Connection: close\r\n\r\n");
        (&stream)
            .write_all(request.as_bytes())
            .map_err(|e| error_key(&e))?;
    } else if opts.expect_echo && opts.read_while_send.is_none() && sent.len() <= ECHO_INLINE_MAX {
        // Send, then read: what a request/response client does. No
        // half-close: a proxy may not pass one on before its upstream
        // connection is up (Envoy's tcp_proxy then closes both sides).
        (&stream).write_all(&sent).map_err(|e| error_key(&e))?;
    } else if opts.expect_echo {
        // From another thread: the echo comes back while we send, and a
        // large one would otherwise fill both buffers and stall. With
        // --read-while-send the read below starts first.
        let mut writer = stream.try_clone().map_err(|e| error_key(&e))?;
        let data = sent.clone();
        let delay = opts.read_while_send.unwrap_or_default();
        thread::spawn(move || {
            if !delay.is_zero() {
                thread::sleep(delay);
            }
            let _ = writer.write_all(&data);
        });
    } else if !sent.is_empty() {
        (&stream).write_all(&sent).map_err(|e| error_key(&e))?;
    }
    let mut reader = BufReader::new(StrictReader {
        stream: &stream,
        timeout: opts.timeout,
        spurious: &mut report.spurious_eagain,
    });
    if opts.http.is_some() {
        read_http_status(&mut reader)?;
    }
    let mut line = String::new();
    let n = reader.read_line(&mut line).map_err(|e| error_key(&e))?;
    if n == 0 || !line.ends_with('\n') {
        return Err("eof".to_string());
    }
    let name = line.split_whitespace().next().unwrap_or_default();
    if name.is_empty() {
        return Err("eof".to_string());
    }
    let name = name.to_string();
    let dst = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("dst="))
        .map(str::to_string);
    let echo = if opts.expect_echo {
        let mut echoed = vec![0u8; sent.len()];
        let read = reader.read_exact(&mut echoed).map(|()| echoed);
        Some(read.map_err(|e| error_key(&e)))
    } else {
        None
    };
    drop(reader);
    *report.backends.entry(name).or_default() += 1;
    if let Some(dst) = dst {
        *report.proxy_dsts.entry(dst).or_default() += 1;
    }
    if let Some(echoed) = echo {
        if echoed? != sent {
            return Err("echo-mismatch".to_string());
        }
        report.echoed += 1;
    }
    if !opts.hold.is_zero() {
        thread::sleep(opts.hold);
    }
    Ok(stream)
}

/// Reads a blocking stream; an EAGAIN that comes long before the read
/// timeout is not a timeout but a broken blocking read: counted in
/// `DialReport::spurious_eagain` and returned as the error `spurious-eagain`.
struct StrictReader<'a> {
    stream: &'a TcpStream,
    timeout: Duration,
    spurious: &'a mut u64,
}

impl Read for StrictReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let start = std::time::Instant::now();
        match (&*self.stream).read(buf) {
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock && start.elapsed() < self.timeout / 2 =>
            {
                *self.spurious += 1;
                Err(io::Error::other(SPURIOUS_EAGAIN))
            }
            other => other,
        }
    }
}

/// The error key of a blocking read that failed with EAGAIN before its timeout.
const SPURIOUS_EAGAIN: &str = "spurious-eagain";

/// Echo payloads up to this size are sent before reading (they fit in the
/// socket buffers of both ends); larger ones are sent while reading.
const ECHO_INLINE_MAX: usize = 256 * 1024;

/// Bytes that show reordering, loss or insertion: a counter pattern.
fn pattern(len: u64) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// connect() with a timeout, the socket marked first if asked.
fn connect(target: SocketAddr, opts: &DialOptions) -> io::Result<TcpStream> {
    let Some(mark) = opts.mark else {
        return TcpStream::connect_timeout(&target, opts.timeout);
    };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(target),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_mark(mark)?;
    socket.connect_timeout(&target.into(), opts.timeout)?;
    Ok(socket.into())
}

/// Read an HTTP response's status line and headers; Err(`http-STATUS`)
/// unless 200. The body (the backend's line) follows in the reader.
fn read_http_status(reader: &mut impl BufRead) -> Result<(), String> {
    let mut status = String::new();
    reader.read_line(&mut status).map_err(|e| error_key(&e))?;
    let code = status
        .split_whitespace()
        .nth(1)
        .unwrap_or("none")
        .to_string();
    loop {
        let mut header = String::new();
        let n = reader.read_line(&mut header).map_err(|e| error_key(&e))?;
        if n == 0 {
            return Err("eof".to_string());
        }
        if header == "\r\n" {
            break;
        }
    }
    if code == "200" {
        Ok(())
    } else {
        Err(format!("http-{code}"))
    }
}

/// Maps an I/O error to a stable report key: the errno's symbolic name, or
/// `timeout` for our own deadlines (which std reports without an errno, or as
/// EAGAIN from a socket read timeout).
fn error_key(e: &io::Error) -> String {
    if e.get_ref()
        .is_some_and(|inner| inner.to_string() == SPURIOUS_EAGAIN)
    {
        return SPURIOUS_EAGAIN.to_string();
    }
    match e.raw_os_error() {
        Some(code) if code == libc::EAGAIN || code == libc::EWOULDBLOCK => "timeout".to_string(),
        Some(code) => format!("{:?}", Errno::from_raw(code)),
        None if e.kind() == io::ErrorKind::TimedOut || e.kind() == io::ErrorKind::WouldBlock => {
            "timeout".to_string()
        }
        None => format!("{:?}", e.kind()),
    }
}
