//! `kmesh-traffic`: the TCP client and backends used by the quickstart and the
//! end-to-end tests.
//!
//! * `serve` runs named backends. Each accepted connection gets one line,
//!   `NAME peer=IP:PORT\n`, so a client can tell which backend the kernel sent
//!   it to and the backend's view of the client address.
//! * `dial` makes sequential connections and prints one JSON report, so a test
//!   asserts on counts instead of parsing logs.
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
use clap::{Parser, Subcommand};
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
        /// Listeners, e.g. `127.0.0.2:8080=b1` or `[fd00::2]:8080=b1`.
        #[arg(required = true, value_parser = parse_listener)]
        listeners: Vec<Listener>,
    },
    /// Make COUNT sequential TCP connections to ADDR:PORT and print a JSON report.
    Dial {
        /// Join /var/run/netns/NAME before opening any socket.
        #[arg(long)]
        netns: Option<String>,
        /// Move this process into the cgroup2 directory DIR before opening any socket.
        #[arg(long)]
        cgroup: Option<PathBuf>,
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
        /// Send this many bytes on each connection before reading the line.
        #[arg(long, default_value_t = 0)]
        send_bytes: u64,
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

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Serve {
            netns,
            client_closes_first,
            listeners,
        } => {
            if let Some(ns) = &netns {
                join_netns(ns)?;
            }
            serve(listeners, client_closes_first)
        }
        Command::Dial {
            netns,
            cgroup,
            count,
            interval_ms,
            timeout_ms,
            hold_ms,
            keep_open_ms,
            send_bytes,
            target,
        } => {
            if let Some(ns) = &netns {
                join_netns(ns)?;
            }
            if let Some(dir) = &cgroup {
                join_cgroup(dir)?;
            }
            let opts = DialOptions {
                count,
                interval: Duration::from_millis(interval_ms),
                // A zero timeout is rejected by std; treat it as "1 ms" rather than fail.
                timeout: Duration::from_millis(timeout_ms.max(1)),
                hold: Duration::from_millis(hold_ms),
                keep_open: Duration::from_millis(keep_open_ms),
                send_bytes,
            };
            let report = dial(target, &opts);
            let mut out = io::stdout().lock();
            serde_json::to_writer(&mut out, &report).context("writing report")?;
            writeln!(out).context("writing report")?;
            Ok(())
        }
    }
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

fn serve(listeners: Vec<Listener>, client_closes_first: bool) -> Result<()> {
    // Bind everything first so "ready" means every address accepts connections.
    let mut bound = Vec::with_capacity(listeners.len());
    for l in listeners {
        let sock = TcpListener::bind(l.addr).with_context(|| format!("binding {}", l.addr))?;
        bound.push((sock, l.name));
    }
    let mut workers = Vec::with_capacity(bound.len());
    for (sock, name) in bound {
        workers.push(thread::spawn(move || {
            accept_loop(&sock, &name, client_closes_first)
        }));
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

fn accept_loop(sock: &TcpListener, name: &str, client_closes_first: bool) {
    loop {
        match sock.accept() {
            Ok((mut conn, peer)) => {
                // The client may already be gone; that is its business, not a
                // reason to stop serving others.
                let _ = conn.write_all(format!("{name} peer={peer}\n").as_bytes());
                if !client_closes_first {
                    let _ = conn.shutdown(std::net::Shutdown::Write);
                }
                // Read (and discard) what the client sends until it closes, so
                // every byte it sends is acknowledged, never answered by a reset.
                thread::spawn(move || {
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
                    let _ = io::copy(&mut conn, &mut io::sink());
                });
            }
            Err(e) => {
                // Transient (e.g. ECONNABORTED, EMFILE): report and keep serving.
                eprintln!("kmesh-traffic serve {name}: accept: {e}");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

struct DialOptions {
    count: u32,
    interval: Duration,
    timeout: Duration,
    hold: Duration,
    keep_open: Duration,
    send_bytes: u64,
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
}

fn dial(target: SocketAddr, opts: &DialOptions) -> DialReport {
    let mut report = DialReport::default();
    let mut kept = Vec::new();
    for i in 0..opts.count {
        if i > 0 && !opts.interval.is_zero() {
            thread::sleep(opts.interval);
        }
        match dial_once(target, opts, &mut report) {
            Ok(stream) if !opts.keep_open.is_zero() => kept.push(stream),
            Ok(_) => {}
            Err(kind) => *report.errors.entry(kind).or_default() += 1,
        }
    }
    if !kept.is_empty() {
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
    let stream = TcpStream::connect_timeout(&target, opts.timeout).map_err(|e| error_key(&e))?;
    report.connected += 1;
    if let Ok(peer) = stream.peer_addr() {
        *report.peer_names.entry(peer.to_string()).or_default() += 1;
    }
    stream
        .set_read_timeout(Some(opts.timeout))
        .map_err(|e| error_key(&e))?;
    if opts.send_bytes > 0 {
        io::copy(&mut io::repeat(b'x').take(opts.send_bytes), &mut &stream)
            .map_err(|e| error_key(&e))?;
    }
    let mut line = String::new();
    let mut reader = BufReader::new(&stream);
    let n = reader.read_line(&mut line).map_err(|e| error_key(&e))?;
    if n == 0 || !line.ends_with('\n') {
        return Err("eof".to_string());
    }
    let name = line.split_whitespace().next().unwrap_or_default();
    if name.is_empty() {
        return Err("eof".to_string());
    }
    *report.backends.entry(name.to_string()).or_default() += 1;
    if !opts.hold.is_zero() {
        thread::sleep(opts.hold);
    }
    Ok(stream)
}

/// Maps an I/O error to a stable report key: the errno's symbolic name, or
/// `timeout` for our own deadlines (which std reports without an errno, or as
/// EAGAIN from a socket read timeout).
fn error_key(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(code) if code == libc::EAGAIN || code == libc::EWOULDBLOCK => "timeout".to_string(),
        Some(code) => format!("{:?}", Errno::from_raw(code)),
        None if e.kind() == io::ErrorKind::TimedOut || e.kind() == io::ErrorKind::WouldBlock => {
            "timeout".to_string()
        }
        None => format!("{:?}", e.kind()),
    }
}
