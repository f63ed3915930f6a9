#!/usr/bin/env python3
"""kmesh benchmark driver; run through bench/run.sh, which creates the netns,
cgroup, bpffs dir and temp dir and removes them (and every process whose PID
this script appends to TMP/pids) when it exits."""

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
import urllib.request

VIP = ("10.96.0.10", 80)          # kmesh listener; unreachable unless steered
VIP_DE = ("10.96.1.10", 80)       # dual-engine service VIP -> the backend
BACKEND = ("127.0.0.2", 8080)      # nginx, keep-alive, small static body
BACKEND2 = ("127.0.0.2", 8081)     # nginx, answers "b2" (endpoint-change probe)
ENVOY1 = ("127.0.0.3", 10000)      # one hop: envoy -> backend
ENVOY2 = ("127.0.0.4", 10001)      # two hops: envoy -> envoy(127.0.0.3) -> backend
CPU_SERVER, CPU_CLIENT = 1, 0

A = None


def log(*msg):
    print(*msg, file=sys.stderr, flush=True)


def track(pid):
    with open(os.path.join(A.tmp, "pids"), "a") as f:
        f.write(f"{pid}\n")


def ns_argv(argv, cpu, in_cgroup=False):
    """argv run inside the bench netns, pinned to `cpu`, optionally moved into
    a managed cgroup first (True: the kernel-native one, "de": the
    dual-engine one). nsenter/sh/taskset all exec, so the PID that Popen
    returns is the final program's."""
    cgroup = A.cgroup_de if in_cgroup == "de" else A.cgroup
    pre = f"echo $$ > {cgroup}/cgroup.procs; " if in_cgroup else ""
    return ["nsenter", f"--net=/var/run/netns/{A.ns}", "sh", "-c",
            pre + f'exec taskset -c {cpu} "$@"', "sh", *argv]


def start(argv, name):
    out = open(os.path.join(A.tmp, f"{name}.log"), "w")
    p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    track(p.pid)
    return p


def wait_port(addr, within=10.0):
    code = ("import socket,sys,time\n"
            f"end=time.time()+{within}\n"
            "while time.time()<end:\n"
            "  try: socket.create_connection(('%s',%d),0.2).close(); sys.exit(0)\n"
            "  except OSError: time.sleep(0.05)\n"
            "sys.exit(1)\n") % addr
    if subprocess.run(ns_argv([sys.executable, "-c", code], CPU_CLIENT)).returncode != 0:
        raise SystemExit(f"nothing listens on {addr} inside the netns")


# ---------------------------------------------------------------- servers --

def start_nginx():
    conf = os.path.join(A.tmp, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""daemon off;
master_process on;
worker_processes 1;
pid {A.tmp}/nginx.pid;
error_log {A.tmp}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 120s;
    default_type text/plain;
    server {{ listen {BACKEND[0]}:{BACKEND[1]} backlog=4096 reuseport;
             location / {{ return 200 "hello from the benchmark backend\\n"; }} }}
    server {{ listen {BACKEND2[0]}:{BACKEND2[1]} backlog=4096;
             location / {{ return 200 "b2\\n"; }} }}
}}
""")
    p = start(ns_argv(["nginx", "-p", A.tmp, "-e", f"{A.tmp}/nginx-error.log", "-c", conf],
                      CPU_SERVER), "nginx")
    wait_port(BACKEND)
    return p


def start_envoy(name, listen, upstream):
    conf = os.path.join(A.tmp, f"{name}.yaml")
    with open(conf, "w") as f:
        f.write(f"""static_resources:
  listeners:
  - name: l
    address: {{ socket_address: {{ address: {listen[0]}, port_value: {listen[1]} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: t
          cluster: up
  clusters:
  - name: up
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: up
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: {upstream[0]}, port_value: {upstream[1]} }} }} }}
""")
    p = start(ns_argv([A.envoy, "-c", conf, "--concurrency", "1", "--disable-hot-restart",
                       "-l", "warning", "--log-path", os.path.join(A.tmp, f"{name}-envoy.log")],
                      CPU_SERVER), name)
    wait_port(listen, 30)
    return p


# ------------------------------------------------------------- xDS + daemon --

def listener_yaml(name, addr, port, cluster):
    return (f'- "@type": type.googleapis.com/envoy.config.listener.v3.Listener\n'
            f'  name: "{name}"\n'
            f'  address: {{ socket_address: {{ address: "{addr}", port_value: {port} }} }}\n'
            f'  filter_chains:\n'
            f'  - filters:\n'
            f'    - name: envoy.filters.network.tcp_proxy\n'
            f'      typed_config:\n'
            f'        "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy\n'
            f'        stat_prefix: "{name}"\n'
            f'        cluster: "{cluster}"\n')


def cluster_yaml(name, endpoints):
    eps = "".join(f'      - endpoint: {{ address: {{ socket_address: {{ address: "{a}", port_value: {p} }} }} }}\n'
                  for a, p in endpoints)
    return (f'- "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster\n'
            f'  name: "{name}"\n'
            f'  type: STATIC\n'
            f'  lb_policy: ROUND_ROBIN\n'
            f'  load_assignment:\n'
            f'    cluster_name: "{name}"\n'
            f'    endpoints:\n'
            f'    - lb_endpoints:\n' + eps)


def xds_config(n_services, endpoints_each, vip_backend=BACKEND):
    """The VIP service (one endpoint: the backend) plus n_services-1 filler
    services, each a listener on 10.100.x.y:80 and a cluster with
    `endpoints_each` endpoints in 10.200.0.0/16 (never dialled)."""
    parts = ["resources:\n", listener_yaml("vip", VIP[0], VIP[1], "vip"),
             cluster_yaml("vip", [vip_backend])]
    for i in range(1, n_services):
        parts.append(listener_yaml(f"svc{i}", f"10.100.{i // 250}.{i % 250 + 1}", 80, f"svc{i}"))
        eps = [(f"10.200.{(i * endpoints_each + j) // 250 % 250}.{(i * endpoints_each + j) % 250 + 1}",
                8000 + j) for j in range(endpoints_each)]
        parts.append(cluster_yaml(f"svc{i}", eps))
    return "".join(parts)


DE_CONFIG = f"""resources:
- "@type": type.googleapis.com/istio.workload.Address
  service:
    name: bench
    namespace: default
    hostname: bench.default.svc.cluster.local
    addresses: [{{ address: {VIP_DE[0]} }}]
    ports: [{{ service_port: {VIP_DE[1]}, target_port: {BACKEND[1]} }}]
- "@type": type.googleapis.com/istio.workload.Address
  workload:
    uid: bench/backend
    addresses: [{BACKEND[0]}]
    services: {{ "default/bench.default.svc.cluster.local": {{ ports: [] }} }}
"""


class Daemon:
    def __init__(self, xds_path, mode="kernel-native"):
        self.xds = xds_path
        self.admin = ("127.0.0.1", free_port())
        de = mode == "dual-engine"
        argv = ["taskset", "-c", str(CPU_SERVER), os.path.join(A.bin_dir, "kmesh-daemon"),
                "--mode", mode, "--xds-file", xds_path,
                "--bpf-fs-path", A.bpffs_de if de else A.bpffs,
                "--cgroup2-path", A.cgroup_de if de else A.cgroup,
                "--admin-address", f"{self.admin[0]}:{self.admin[1]}",
                "--metrics-address", f"127.0.0.1:{free_port()}",
                "--xds-file-poll-ms", "10", "--log-level", "info"]
        self.proc = start(argv, "daemon-de" if de else "daemon")

    def get(self, path, timeout=10):
        url = f"http://{self.admin[0]}:{self.admin[1]}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except OSError:
            return None, b""

    def post(self, path, timeout=10):
        url = f"http://{self.admin[0]}:{self.admin[1]}{path}"
        req = urllib.request.Request(url, data=b"", method="POST")
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status

    def version(self):
        """(version, last_update.at_unix_ms) from the config dump."""
        status, body = self.get("/debug/config_dump/kernel-native", timeout=30)
        if status != 200:
            return None, None
        try:
            dump = json.loads(body)
        except ValueError:
            return None, None
        return dump.get("version"), (dump.get("last_update") or {}).get("at_unix_ms")

    def wait_version(self, above, within=300.0, interval=0.05):
        end = time.time() + within
        while time.time() < end:
            if self.proc.poll() is not None:
                raise SystemExit("kmesh-daemon exited; see its log:\n" + tail("daemon.log"))
            v, at = self.version()
            if v is not None and v > above and self.get("/debug/ready")[0] == 200:
                return v, at
            time.sleep(interval)
        raise SystemExit(f"config version did not pass {above} within {within}s:\n" + tail("daemon.log"))

    def rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return None

    def apply(self, text, within=300.0):
        """Atomically replace the xDS file; return (daemon-side apply ms,
        observed ms, version)."""
        v0, _ = self.version()
        tmp = self.xds + ".new"
        with open(tmp, "w") as f:
            f.write(text)
        t0 = time.time()
        os.rename(tmp, self.xds)
        v, at = self.wait_version(v0 or 0, within=within)
        observed = (time.time() - t0) * 1000
        return ((at - t0 * 1000) if at else None), observed, v


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def tail(name, n=30):
    try:
        with open(os.path.join(A.tmp, name)) as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


# ------------------------------------------------------------------- wrk --

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def parse_wrk(out):
    def ms(s):
        m = re.match(r"([\d.]+)(us|ms|s)", s)
        return float(m.group(1)) * UNITS[m.group(2)]
    res = {}
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        res[f"p{pct}"] = ms(m.group(1)) if m else None
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    res["rps"] = float(m.group(1)) if m else None
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    res["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: (.*)", out)
    res["sock_errors"] = m.group(1).strip() if m else ""
    return res


def wrk(target, conns, secs, close=False, in_cgroup=False):
    argv = ["wrk", "-t1", f"-c{conns}", f"-d{secs}s", "--latency", "--timeout", "5s"]
    if close:
        argv += ["-H", "Connection: close"]
    argv.append(f"http://{target[0]}:{target[1]}/")
    out = subprocess.run(ns_argv(argv, CPU_CLIENT, in_cgroup), capture_output=True, text=True,
                         timeout=secs + 30)
    if out.returncode != 0 or "Requests/sec" not in out.stdout:
        raise SystemExit(f"wrk failed ({out.returncode}): {out.stdout}\n{out.stderr}")
    return parse_wrk(out.stdout)


VARIANTS = [  # (name, target, client in a kmesh cgroup)
    ("direct", BACKEND, False),
    ("kmesh", VIP, True),
    ("kmesh-dual-engine", VIP_DE, "de"),
    ("envoy-1hop", ENVOY1, False),
    ("envoy-2hop", ENVOY2, False),
]
# Connection per request also shows what the connection metrics cost: the
# same kmesh path with monitoring switched off at run time.
NO_MONITORING = "kmesh-no-monitoring"
CLOSE_VARIANTS = VARIANTS + [(NO_MONITORING, VIP, True)]


# --------------------------------------------------------- connect loop --

CONNECT_LOOP = r"""
import socket, sys, time
addr = (sys.argv[1], int(sys.argv[2])); n = int(sys.argv[3])
tot = 0; fails = 0
start = time.perf_counter()
for _ in range(n):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b'\x01\x00\x00\x00\x00\x00\x00\x00')
    t0 = time.perf_counter_ns()
    try:
        s.connect(addr)
    except OSError:
        fails += 1
    tot += time.perf_counter_ns() - t0
    s.close()
wall = time.perf_counter() - start
print(f"{tot / n / 1000:.3f} {n / wall:.1f} {fails}")
"""


def connect_loop(target, n, in_cgroup):
    """Mean connect() time (µs) and connects+closes per second from a python
    loop (SO_LINGER 0: close sends RST, no TIME_WAIT pile-up)."""
    out = subprocess.run(ns_argv([sys.executable, "-c", CONNECT_LOOP, target[0], str(target[1]), str(n)],
                                 CPU_CLIENT, in_cgroup), capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise SystemExit(f"connect loop failed: {out.stderr}")
    us, rate, fails = out.stdout.split()
    return float(us), float(rate), int(fails)


PROBE = r"""
import os, socket, sys, time
addr = (sys.argv[1], int(sys.argv[2])); new_file, path, want = sys.argv[3], sys.argv[4], sys.argv[5].encode()
t0 = time.time(); os.rename(new_file, path)
end = t0 + 120; n = 0
while time.time() < end:
    n += 1
    try:
        s = socket.create_connection(addr, 1)
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        body = b""
        while True:
            d = s.recv(4096)
            if not d: break
            body += d
        s.close()
        if want in body:
            print(f"{(time.time() - t0) * 1000:.1f} {n}"); sys.exit(0)
    except OSError:
        pass
    time.sleep(0.002)
sys.exit(1)
"""


# ------------------------------------------------------------------ main --

def ratio(v, base):
    return f"{v / base:.2f}" if (v is not None and base) else "-"


def fmt(x, nd=1):
    return "-" if x is None else f"{x:.{nd}f}"


def main():
    global A
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    for k in ("ns", "cgroup", "bpffs", "cgroup-de", "bpffs-de", "tmp", "bin-dir", "envoy"):
        ap.add_argument(f"--{k}")
    ap.add_argument("--quick", action="store_true")
    # The section written by benches/dual_engine_control_plane.rs (--markdown)
    # and its figures (--json); run.sh runs that bench before this script.
    ap.add_argument("--dual-engine-md")
    ap.add_argument("--dual-engine-json")
    ap.add_argument("--dual-engine-only", action="store_true",
                    help="only replace the dual-engine section of --out")
    # The same for benches/kernel_native_control_plane.rs (see splice_kernel_native).
    ap.add_argument("--kernel-native-md")
    ap.add_argument("--kernel-native-json")
    ap.add_argument("--kernel-native-only", action="store_true",
                    help="only replace the kernel-native ADS section of --out")
    A = ap.parse_args()
    if A.dual_engine_only:
        update_dual_engine_section()
        return
    if A.kernel_native_only:
        splice_kernel_native(read_doc())
        return
    missing = [k for k in ("ns", "cgroup", "bpffs", "tmp", "bin_dir", "envoy") if getattr(A, k) is None]
    if missing:
        ap.error("required: " + ", ".join("--" + k.replace("_", "-") for k in missing))

    secs = 2 if A.quick else 10
    conns_ka = [1, 8, 64]
    conns_close = [1, 8]
    n_connect = 3000 if A.quick else 30000
    sizes = [int(x) for x in os.environ.get("BENCH_CP_SIZES", "1000,10000").split(",")]

    log("starting nginx, envoys, kmesh-daemon ...")
    start_nginx()
    start_envoy("envoy1", ENVOY1, BACKEND)
    start_envoy("envoy2", ENVOY2, ENVOY1)
    xds = os.path.join(A.tmp, "xds.yaml")
    with open(xds, "w") as f:
        f.write(xds_config(10, 1))
    d = Daemon(xds)
    d.wait_version(0, within=60)
    rss_small = d.rss_kib()
    # Sanity: the VIP is steered (fails with ENETUNREACH otherwise).
    us, _, fails = connect_loop(VIP, 10, True)
    if fails:
        raise SystemExit("connects to the VIP fail: is the redirect working?\n" + tail("daemon.log"))
    # The same backend behind a dual-engine service VIP, for the data plane.
    xds_de = os.path.join(A.tmp, "xds-de.yaml")
    with open(xds_de, "w") as f:
        f.write(DE_CONFIG)
    d_de = Daemon(xds_de, mode="dual-engine")
    deadline = time.time() + 60
    while d_de.get("/debug/ready")[0] != 200:
        if time.time() > deadline or d_de.proc.poll() is not None:
            raise SystemExit("dual-engine daemon not ready\n" + tail("daemon-de.log"))
        time.sleep(0.1)
    us, _, fails = connect_loop(VIP_DE, 10, "de")
    if fails:
        raise SystemExit("connects to the dual-engine VIP fail\n" + tail("daemon-de.log"))

    results = {"keepalive": {}, "close": {}}
    for mode, conns_list, close, variants in (("keepalive", conns_ka, False, VARIANTS),
                                              ("close", conns_close, True, CLOSE_VARIANTS)):
        for c in conns_list:
            for name, target, cg in variants:
                log(f"wrk {mode} c={c} {name} ...")
                if name == NO_MONITORING:
                    d.post("/monitoring?enable=false")
                results[mode][(c, name)] = wrk(target, c, secs, close=close, in_cgroup=cg)
                if name == NO_MONITORING:
                    d.post("/monitoring?enable=true")

    log("connect cost, 10 listeners ...")
    conn = {}
    conn[("direct", 10)] = connect_loop(BACKEND, n_connect, False)
    conn[("direct-in-cgroup", 10)] = connect_loop(BACKEND, n_connect, True)
    conn[("kmesh", 10)] = connect_loop(VIP, n_connect, True)

    cp = {}
    big = 10
    for n in sizes:
        log(f"control plane: {n} clusters x 10 endpoints ...")
        text = xds_config(n, 10)
        try:
            at_ms, obs_ms, v = d.apply(text, within=float(os.environ.get("BENCH_APPLY_TIMEOUT", "600")))
        except SystemExit as e:
            log(f"  not applied: {str(e).splitlines()[0]}")
            cp[n] = None
            break
        cp[n] = {"apply_ms": at_ms, "observed_ms": obs_ms, "rss_kib": d.rss_kib(),
                 "yaml_mib": len(text) / 2**20, "version": v}
        log(f"  applied: {cp[n]}")
        big = n
    sizes = [n for n in sizes if n in cp]
    log(f"connect cost, {big} listeners ...")
    conn[("direct", big)] = connect_loop(BACKEND, n_connect, False)
    conn[("kmesh", big)] = connect_loop(VIP, n_connect, True)

    log("one-endpoint change at 10k ...")
    changed = os.path.join(A.tmp, "xds-changed.yaml")
    with open(changed, "w") as f:
        f.write(xds_config(big, 10 if big > 10 else 1, vip_backend=BACKEND2))
    out = subprocess.run(ns_argv([sys.executable, "-c", PROBE, VIP[0], str(VIP[1]), changed, xds, "b2"],
                                 CPU_CLIENT, True), capture_output=True, text=True, timeout=200)
    if out.returncode != 0:
        raise SystemExit("endpoint change never became visible\n" + tail("daemon.log"))
    ep_change_ms = float(out.stdout.split()[0])
    d.wait_version(cp[big]["version"] if big > 10 else 1)

    report = render(results, conns_ka, conns_close, conn, cp, sizes, rss_small, ep_change_ms, secs, n_connect)
    print(report["table"])
    old = read_doc()
    notes = DOC_TAIL
    if NOTES_MARK in old:  # keep hand-written notes from an earlier run
        notes = "\n" + old[old.index(NOTES_MARK):]
    dual = dual_engine_section(old)
    os.makedirs(os.path.dirname(A.out), exist_ok=True)
    with open(A.out, "w") as f:
        f.write(report["doc"] + ("\n" + dual if dual else "") + notes)
    with open(A.out.replace(".md", ".json"), "w") as f:
        json.dump({"keepalive": {f"{k[0]}/{k[1]}": v for k, v in results["keepalive"].items()},
                   "close": {f"{k[0]}/{k[1]}": v for k, v in results["close"].items()},
                   "connect": {f"{k[0]}/{k[1]}": v for k, v in conn.items()},
                   "control_plane": cp, "rss_kib_10_listeners": rss_small,
                   "endpoint_change_ms": ep_change_ms, "quick": A.quick,
                   "dual_engine_control_plane": dual_engine_json(old_json())}, f, indent=1)
    log(f"wrote {A.out}")
    splice_kernel_native(old)


def read_doc():
    try:
        with open(A.out) as f:
            return f.read()
    except OSError:
        return ""


def old_json():
    try:
        with open(A.out.replace(".md", ".json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def dual_engine_json(old):
    """This run's dual-engine figures, else the previous run's."""
    if A.dual_engine_json and os.path.exists(A.dual_engine_json):
        with open(A.dual_engine_json) as f:
            return json.load(f)
    return old.get("dual_engine_control_plane")


def dual_engine_section(old_doc):
    """The dual-engine section between its markers: this run's (from the
    bench's markdown), else the one already in the doc (a run that skipped
    the step keeps it), else nothing."""
    if A.dual_engine_md and os.path.exists(A.dual_engine_md):
        with open(A.dual_engine_md) as f:
            body = f.read().strip()
        return (f"{DE_BEGIN}\n### Control plane, dual-engine (delta ADS; "
                f"{time.strftime('%Y-%m-%d')})\n\n{body}\n{DE_END}\n")
    if DE_BEGIN in old_doc and DE_END in old_doc:
        start = old_doc.index(DE_BEGIN)
        return old_doc[start:old_doc.index(DE_END, start) + len(DE_END)] + "\n"
    return ""


def update_dual_engine_section():
    """--dual-engine-only: replace the section in place (or put it just above
    the notes), leaving the rest of the doc and its figures as they are."""
    old = read_doc()
    if not old:
        raise SystemExit(f"{A.out} does not exist: run the full benchmark first")
    section = dual_engine_section("")
    if not section:
        raise SystemExit("--dual-engine-only needs --dual-engine-md")
    if DE_BEGIN in old and DE_END in old:
        start = old.index(DE_BEGIN)
        end = old.index(DE_END, start) + len(DE_END) + 1
        doc = old[:start] + section + old[end:]
    elif NOTES_MARK in old:
        at = old.index(NOTES_MARK)
        doc = old[:at] + section + "\n" + old[at:]
    else:
        doc = old.rstrip("\n") + "\n\n" + section
    with open(A.out, "w") as f:
        f.write(doc)
    data = old_json()
    data["dual_engine_control_plane"] = dual_engine_json(data)
    with open(A.out.replace(".md", ".json"), "w") as f:
        json.dump(data, f, indent=1)
    log(f"updated the dual-engine section of {A.out}")


def machine():
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"model name\s*:\s*(.*)", f.read())
            cpu = m.group(1) if m else ""
    except OSError:
        pass
    mem = ""
    with open("/proc/meminfo") as f:
        mem = f"{int(f.readline().split()[1]) / 2**20:.0f} GiB"
    wrkv = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0]
    ngv = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
    env = subprocess.run([A.envoy, "--version"], capture_output=True, text=True).stdout.strip()
    envv = re.search(r"version: \S+?/([\d.]+)", env)
    return (f"{os.cpu_count()} vCPU ({cpu}), {mem} RAM, Linux {platform.release()}; "
            f"{wrkv.split(' [')[0]}; {ngv}; Envoy {envv.group(1) if envv else env[:60]}")


def render(results, conns_ka, conns_close, conn, cp, sizes, rss_small, ep_change_ms, secs, n_connect):
    lines = []
    lines.append("### Keep-alive HTTP (wrk, 1 thread)\n")
    lines.append("| conns | variant | req/s | p50 ms | p99 ms | req/s ÷ direct | p50 ÷ direct | p99 ÷ direct |")
    lines.append("|---:|---|---:|---:|---:|---:|---:|---:|")
    for c in conns_ka:
        base = results["keepalive"][(c, "direct")]
        for name, _, _ in VARIANTS:
            r = results["keepalive"][(c, name)]
            lines.append(f"| {c} | {name} | {r['rps']:.0f} | {fmt(r['p50'], 3)} | {fmt(r['p99'], 3)} | "
                         f"{ratio(r['rps'], base['rps'])} | {ratio(r['p50'], base['p50'])} | {ratio(r['p99'], base['p99'])} |")
    lines.append("\n### Connection per request (wrk, `Connection: close`)\n")
    lines.append("| conc | variant | req/s | p50 ms | p99 ms | req/s ÷ direct | p50 ÷ direct | p99 ÷ direct |")
    lines.append("|---:|---|---:|---:|---:|---:|---:|---:|")
    for c in conns_close:
        base = results["close"][(c, "direct")]
        for name, _, _ in CLOSE_VARIANTS:
            r = results["close"][(c, name)]
            err = f" (socket errors: {r['sock_errors']})" if r["sock_errors"] else ""
            lines.append(f"| {c} | {name}{err} | {r['rps']:.0f} | {fmt(r['p50'], 3)} | {fmt(r['p99'], 3)} | "
                         f"{ratio(r['rps'], base['rps'])} | {ratio(r['p50'], base['p50'])} | {ratio(r['p99'], base['p99'])} |")
    lines.append(f"\n### Connect cost vs config size ({n_connect} sequential connect+close, python loop)\n")
    lines.append("| listeners in config | variant | mean connect µs | connects/s | overhead vs direct µs | connects/s ÷ direct |")
    lines.append("|---:|---|---:|---:|---:|---:|")
    for (name, n), (us, rate, fails) in conn.items():
        base_us, base_rate, _ = conn[("direct", n)]
        f = f" ({fails} failed)" if fails else ""
        lines.append(f"| {n} | {name}{f} | {us:.2f} | {rate:.0f} | {us - base_us:+.2f} | {ratio(rate, base_rate)} |")
    lines.append("\n### Control plane (xDS file, `--xds-file-poll-ms 10`)\n")
    lines.append("| clusters × endpoints (+1 listener each) | YAML MiB | file rename → applied (daemon clock) ms | → seen in dump ms | daemon VmRSS MiB |")
    lines.append("|---|---:|---:|---:|---:|")
    lines.append(f"| 10 × 1 | - | - | - | {rss_small / 1024:.1f} |")
    for n in sizes:
        c = cp[n]
        if c is None:
            lines.append(f"| {n} × 10 | - | not applied within the timeout | - | - |")
            continue
        lines.append(f"| {n} × 10 | {c['yaml_mib']:.1f} | {fmt(c['apply_ms'], 0)} | {c['observed_ms']:.0f} | {c['rss_kib'] / 1024:.1f} |")
    big = max([10] + [n for n in sizes if cp[n]])
    lines.append(f"\nOne-endpoint change at {big} clusters (file rename → a dial through the VIP reaches the new endpoint): **{ep_change_ms:.0f} ms**")
    table = "\n".join(lines)
    doc = DOC_HEAD.format(mode="--quick" if A.quick else "full", secs=secs, machine=machine(),
                          date=time.strftime("%Y-%m-%d")) + table + "\n"
    return {"table": table, "doc": doc}


DOC_HEAD = """# Benchmarks

Produced by `bench/run.sh` (mode: `{mode}`, {date}). Re-run with
`sudo bench/run.sh` (full) or `sudo bench/run.sh --quick`; the script
rewrites this file (and `docs/benchmarks.json`).

**Machine:** {machine}.

## Method

- Everything runs in one network namespace that the script creates (only `lo`
  up). Backend: nginx (`nginx-light`, 1 worker, keep-alive, a 33-byte
  `return 200` body) on 127.0.0.2:8080.
- Pinning is the same in every variant: backend, proxies and the daemon on
  CPU 1, the client (wrk / python loop) on CPU 0 (`taskset`).
- Variants: **direct** (client → 127.0.0.2:8080); **kmesh** (client in the
  managed cgroup dials the VIP 10.96.0.10:80; `cgroup/connect4` rewrites the
  destination to the backend, no proxy on the path); **kmesh-dual-engine**
  (the same backend behind a dual-engine service VIP 10.96.1.10:80, the
  client in that daemon's own cgroup); **envoy-1hop** (Envoy
  1.40 `tcp_proxy` on 127.0.0.3:10000 → backend, `--concurrency 1`);
  **envoy-2hop** (client-side Envoy 127.0.0.4:10001 → server-side Envoy →
  backend).
- Data plane: `wrk -t1 -cN -d{secs}s --latency`; connection-per-request adds
  `-H "Connection: close"` (wrk reconnects for every request; its latency
  figures start after the connect, so req/s is the figure that includes the
  connect cost).
- Connect cost: a python loop doing `connect()` + `close()` (SO_LINGER 0)
  sequentially; the mean `connect()` time difference against direct is the
  per-connect overhead. "direct-in-cgroup" is a direct dial from inside the
  managed cgroup (the program runs and finds no listener).
- Control plane: the xDS file is replaced atomically (write + rename); the
  daemon polls it every 10 ms (`--xds-file-poll-ms 10`; the default is
  200 ms). "applied" is `last_update.at_unix_ms` from
  `/debug/config_dump/kernel-native` minus the rename time; "seen in dump"
  is when polling that endpoint (every 50 ms) first shows the new `version`
  with `/debug/ready` = 200. VmRSS from `/proc/PID/status` after the apply.
  Each service is a listener + a STATIC cluster with 10 endpoints.
- Ratios are variant ÷ direct (for req/s higher is better, for latency lower).

## Results

"""

NOTES_MARK = "<!-- notes: kept across runs -->"
DE_BEGIN = "<!-- dual-engine control plane: generated by benches/dual_engine_control_plane.rs -->"
DE_END = "<!-- end of dual-engine control plane -->"
DOC_TAIL = "\n" + NOTES_MARK + "\n\n## Reading the numbers\n\n(not written yet)\n"

KN_BEGIN = "<!-- kernel-native control plane over ADS: generated by benches/kernel_native_control_plane.rs -->"
KN_END = "<!-- end of kernel-native control plane over ADS -->"


def splice_kernel_native(old_doc):
    """Put the kernel-native ADS section (between its markers) into --out:
    this run's from --kernel-native-md, else the one `old_doc` had (the doc
    before this run rewrote it). In place when --out has the markers, else
    after the dual-engine section, else above the notes. Its figures go to
    the "kernel_native_control_plane" key of the JSON next to --out."""
    if A.kernel_native_md and os.path.exists(A.kernel_native_md):
        with open(A.kernel_native_md) as f:
            body = f.read().strip()
        section = (f"{KN_BEGIN}\n### Control plane, kernel-native (SotW ADS; "
                   f"{time.strftime('%Y-%m-%d')})\n\n{body}\n{KN_END}\n")
    elif KN_BEGIN in old_doc and KN_END in old_doc:
        start = old_doc.index(KN_BEGIN)
        section = old_doc[start:old_doc.index(KN_END, start) + len(KN_END)] + "\n"
    else:
        return
    doc = read_doc()
    if KN_BEGIN in doc and KN_END in doc:
        start = doc.index(KN_BEGIN)
        end = doc.index(KN_END, start) + len(KN_END) + 1
        doc = doc[:start] + section + doc[end:]
    elif DE_END in doc:
        at = doc.index(DE_END) + len(DE_END) + 1
        doc = doc[:at] + "\n" + section + doc[at:]
    elif NOTES_MARK in doc:
        at = doc.index(NOTES_MARK)
        doc = doc[:at] + section + "\n" + doc[at:]
    else:
        doc = doc.rstrip("\n") + "\n\n" + section
    with open(A.out, "w") as f:
        f.write(doc)
    if A.kernel_native_json and os.path.exists(A.kernel_native_json):
        data = old_json()
        with open(A.kernel_native_json) as f:
            data["kernel_native_control_plane"] = json.load(f)
        with open(A.out.replace(".md", ".json"), "w") as f:
            json.dump(data, f, indent=1)
    log(f"updated the kernel-native ADS section of {A.out}")


if __name__ == "__main__":
    main()
