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
VIP_WP = ("10.96.2.10", 80)        # dual-engine service with a waypoint -> the backend
WAYPOINT = ("127.0.0.5", 15019)    # the waypoint Envoy (PROXY v2 listener, HTTP routing)
WAYPOINT_MARK = 1337               # SO_MARK of its upstream sockets (--waypoint-mark)
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


def start_waypoint():
    """The waypoint of VIP_WP, configured like examples/waypoint-envoy.yaml:
    the proxy_protocol listener filter restores the dialled address, an HTTP
    connection manager on the service port routes to an ORIGINAL_DST
    cluster, and every upstream socket carries SO_MARK WAYPOINT_MARK so that
    kmesh load-balances it instead of sending it back here. It runs in the
    dual-engine cgroup (its upstream connect to the VIP must be steered).
    Unlike the example: no access log (none of the other proxies logs) and
    no header route."""
    conf = os.path.join(A.tmp, "waypoint.yaml")
    with open(conf, "w") as f:
        f.write(f"""static_resources:
  listeners:
  - name: waypoint
    address: {{ socket_address: {{ address: {WAYPOINT[0]}, port_value: {WAYPOINT[1]} }} }}
    listener_filters:
    - name: envoy.filters.listener.proxy_protocol
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol
        disallowed_versions: [V1]
    filter_chains:
    - name: http
      filter_chain_match: {{ destination_port: {VIP_WP[1]} }}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: waypoint_http
          route_config:
            name: waypoint
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: original_dst }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: original_dst
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 2s
cluster_manager:
  upstream_bind_config:
    socket_options:
    - {{ level: 1, name: 36, int_value: {WAYPOINT_MARK}, state: STATE_PREBIND }}
""")
    p = start(ns_argv([A.envoy, "-c", conf, "--concurrency", "1", "--disable-hot-restart",
                       "-l", "warning", "--log-path", os.path.join(A.tmp, "waypoint-envoy.log")],
                      CPU_SERVER, "de"), "waypoint")
    wait_port(WAYPOINT, 30)
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


def de_service_yaml(name, vip, port, target_port, waypoint=None):
    wp = f"\n    waypoint: {{ address: {{ address: {waypoint} }}, hbone_mtls_port: 15008 }}" if waypoint else ""
    return (f'- "@type": type.googleapis.com/istio.workload.Address\n'
            f'  service:\n'
            f'    name: {name}\n'
            f'    namespace: default\n'
            f'    hostname: {name}.default.svc.cluster.local\n'
            f'    addresses: [{{ address: {vip} }}]\n'
            f'    ports: [{{ service_port: {port}, target_port: {target_port} }}]{wp}\n')


def de_workload_yaml(uid, addr, services):
    svcs = ", ".join(f'"default/{s}.default.svc.cluster.local": {{ ports: [] }}' for s in services)
    return (f'- "@type": type.googleapis.com/istio.workload.Address\n'
            f'  workload:\n'
            f'    uid: {uid}\n'
            f'    name: {uid.replace("/", "-")}\n'
            f'    namespace: default\n'
            f'    addresses: [{addr}]\n'
            f'    services: {{ {svcs} }}\n')


def de_config(n_services, endpoints_each=10):
    """Dual-engine xDS file: `bench` (VIP_DE) and `bench-wp` (VIP_WP, with
    the waypoint) -> the backend, plus n_services-2 filler services, each a
    VIP 10.101.x.y:80 with `endpoints_each` workloads of its own in
    10.150.0.0/15 (never dialled)."""
    parts = ["resources:\n",
             de_service_yaml("bench", VIP_DE[0], VIP_DE[1], BACKEND[1]),
             de_service_yaml("bench-wp", VIP_WP[0], VIP_WP[1], BACKEND[1], waypoint=WAYPOINT[0]),
             de_workload_yaml("bench/backend", BACKEND[0], ["bench", "bench-wp"])]
    k = 0
    for i in range(n_services - 2):
        name = f"svc{i}"
        parts.append(de_service_yaml(name, f"10.101.{i // 250}.{i % 250 + 1}", 80, 8080))
        for j in range(endpoints_each):
            parts.append(de_workload_yaml(f"{name}/{j}", f"10.{150 + (k >> 16)}.{(k >> 8) & 255}.{k & 255}",
                                          [name]))
            k += 1
    return "".join(parts)


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
        if de:  # the defaults, spelled out: the waypoint variant relies on them
            argv += ["--waypoint-port", str(WAYPOINT[1]), "--waypoint-mark", str(WAYPOINT_MARK)]
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

    def de_updates(self):
        """Dual-engine: (updates applied so far, last_update) from the
        cheap summary dump."""
        status, body = self.get("/debug/config_dump/dual-engine?summary", timeout=30)
        if status != 200:
            return None, None
        try:
            dump = json.loads(body)
        except ValueError:
            return None, None
        return dump.get("updates"), dump.get("last_update")

    def apply_de(self, text, within=600.0):
        """Dual-engine: atomically replace the xDS file, wait for the next
        update; return ms from the rename until the summary shows it."""
        u0, _ = self.de_updates()
        tmp = self.xds + ".new"
        with open(tmp, "w") as f:
            f.write(text)
        t0 = time.time()
        os.rename(tmp, self.xds)
        end = t0 + within
        while time.time() < end:
            if self.proc.poll() is not None:
                raise SystemExit("dual-engine daemon exited:\n" + tail("daemon-de.log"))
            u, last = self.de_updates()
            if u is not None and u > (u0 or 0):
                outcome = (last or {}).get("outcome")
                if outcome not in (None, "applied"):
                    raise SystemExit(f"dual-engine update not applied: {outcome}")
                return (time.time() - t0) * 1000
            time.sleep(0.05)
        raise SystemExit("dual-engine update not seen in time:\n" + tail("daemon-de.log"))


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
    ("kmesh-waypoint", VIP_WP, "de"),
    ("envoy-1hop", ENVOY1, False),
    ("envoy-2hop", ENVOY2, False),
]
# Connection per request also shows what the connection metrics cost: the
# same kmesh path with monitoring switched off at run time.
NO_MONITORING = "kmesh-no-monitoring"
CLOSE_VARIANTS = VARIANTS + [(NO_MONITORING, VIP, True)]


# --------------------------------------------------------- connect loop --

def connect_loop(target, n, in_cgroup):
    """`kmesh-traffic connect-loop`: n sequential connect() + close()
    (SO_LINGER 0: close sends RST, no TIME_WAIT pile-up) after 200 untimed
    ones; the report has mean/median/p99 ns of the connect() call and the
    loop's connects per second."""
    argv = [os.path.join(A.bin_dir, "kmesh-traffic"), "connect-loop", "--count", str(n),
            f"{target[0]}:{target[1]}"]
    out = subprocess.run(ns_argv(argv, CPU_CLIENT, in_cgroup), capture_output=True, text=True,
                         timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"connect loop failed: {out.stderr}")
    return json.loads(out.stdout)


# Connect-cost variants: (name, target, client cgroup, whose programs to read
# the in-kernel cost from: "kn" kernel-native, "de" dual-engine, None).
CONNECT_VARIANTS = [
    ("direct", BACKEND, False, None),
    ("direct-in-cgroup", BACKEND, True, "kn"),
    ("kmesh", VIP, True, "kn"),
    ("kmesh-dual-engine", VIP_DE, "de", "de"),
]


class BpfStats:
    """Run time of the kmesh programs from the kernel's own accounting:
    with kernel.bpf_stats_enabled=1 every program run adds its duration to
    the program's run_time_ns and 1 to its run_cnt (tail-called stages count
    in the entry program's run). The sysctl is switched on only around the
    connect loops and put back after (run.sh restores it too on exit)."""
    SYSCTL = "/proc/sys/kernel/bpf_stats_enabled"

    def __init__(self):
        self.saved = None

    def __enter__(self):
        with open(self.SYSCTL) as f:
            self.saved = f.read().strip()
        with open(self.SYSCTL, "w") as f:
            f.write("1")
        return self

    def __exit__(self, *exc):
        with open(self.SYSCTL, "w") as f:
            f.write(self.saved)

    @staticmethod
    def cgroup_progs(cgroup):
        """{attach_type: [prog id]} of the programs attached to `cgroup`."""
        out = subprocess.run(["bpftool", "-j", "cgroup", "show", cgroup], capture_output=True,
                             text=True, check=True).stdout
        progs = {}
        for p in json.loads(out or "[]"):
            progs.setdefault(p["attach_type"], []).append(p["id"])
        return progs

    @staticmethod
    def snapshot(ids):
        """{prog id: (run_time_ns, run_cnt)}"""
        out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True,
                             check=True).stdout
        return {p["id"]: (p.get("run_time_ns", 0), p.get("run_cnt", 0))
                for p in json.loads(out) if p["id"] in ids}


def connect_pipeline_ids(cgroup):
    """The connect4 program(s), every program on the cgroup ("all"), and the
    programs of each attach type (kept in the JSON as a breakdown)."""
    progs = BpfStats.cgroup_progs(cgroup)
    connect = [i for t, ids in progs.items() if t in ("cgroup_inet4_connect", "connect4") for i in ids]
    if not connect:
        raise SystemExit(f"no connect4 program attached to {cgroup}: {progs}")
    return {**progs, "connect4": connect, "all": sorted({i for ids in progs.values() for i in ids})}


def measure_connect(n_connect, rounds):
    """Each round runs every CONNECT_VARIANTS loop once, in a rotated order,
    and reads the programs' run_time_ns/run_cnt around it. Returns
    {variant: [per-round report + "bpf"]}."""
    progs = {"kn": connect_pipeline_ids(A.cgroup), "de": connect_pipeline_ids(A.cgroup_de)}
    ids = {i for p in progs.values() for i in p["all"]}
    res = {name: [] for name, *_ in CONNECT_VARIANTS}
    with BpfStats():
        for r in range(rounds):
            k = r % len(CONNECT_VARIANTS)
            for name, target, cg, owner in CONNECT_VARIANTS[k:] + CONNECT_VARIANTS[:k]:
                before = BpfStats.snapshot(ids)
                rep = connect_loop(target, n_connect, cg)
                after = BpfStats.snapshot(ids)
                if owner:
                    rep["bpf"] = {}
                    for what, prog_ids in progs[owner].items():
                        ns = sum(after[i][0] - before[i][0] for i in prog_ids)
                        cnt = sum(after[i][1] - before[i][1] for i in prog_ids)
                        rep["bpf"][what] = {"run_time_ns": ns, "run_cnt": cnt}
                    # Per connect: connect4 runs once per connect() (warm-up included).
                    calls = rep["bpf"]["connect4"]["run_cnt"]
                    for what in rep["bpf"]:
                        rep["bpf"][what]["ns_per_connect"] = (rep["bpf"][what]["run_time_ns"] / calls
                                                              if calls else None)
                res[name].append(rep)
                log(f"  round {r + 1} {name}: {rep['mean_ns'] / 1000:.2f} µs"
                    + (f", connect4 {fmt(rep['bpf']['connect4']['ns_per_connect'], 0)} ns" if owner else ""))
    return res


def program_cost(sizes, n_connect, rounds, monitoring=True):
    """bench/prog_cost.sh: ns per connect of each kernel-native program
    attached to the cgroup (run_time_ns ÷ connect4 run_cnt, as in
    measure_connect) with `size` services configured, for each size in
    turn (applied to one running daemon, as the full bench does), against
    the bench's nginx backend; `monitoring` False
    switches connection metrics off first. Prints one line per round and a
    JSON summary (medians) on stdout."""
    start_nginx()
    xds = os.path.join(A.tmp, "xds.yaml")
    with open(xds, "w") as f:
        f.write(xds_config(10, 1))
    d = Daemon(xds)
    d.wait_version(0, within=60)
    if connect_loop(VIP, 10, True)["failed"]:
        raise SystemExit("connects to the VIP fail: is the redirect working?\n" + tail("daemon.log"))
    if not monitoring:
        d.post("/monitoring?enable=false")
    summary = []
    for i, n in enumerate(sizes):
        if i > 0 or n != 10:
            log(f"applying {n} services ...")
            d.apply(xds_config(n, 10 if n > 10 else 1))
        progs = connect_pipeline_ids(A.cgroup)
        ids = set(progs["all"])
        per_round = []
        with BpfStats():
            for r in range(rounds):
                before = BpfStats.snapshot(ids)
                rep = connect_loop(VIP, n_connect, True)
                after = BpfStats.snapshot(ids)
                calls = sum(after[p][1] - before[p][1] for p in progs["connect4"])
                row = {"mean_connect_ns": rep["mean_ns"], "failed": rep["failed"]}
                for what, prog_ids in progs.items():
                    if what == "all":
                        continue
                    ns = sum(after[p][0] - before[p][0] for p in prog_ids)
                    cnt = sum(after[p][1] - before[p][1] for p in prog_ids)
                    row[what] = {"ns_per_connect": ns / calls if calls else None,
                                 "ns_per_run": ns / cnt if cnt else None,
                                 "runs_per_connect": cnt / calls if calls else None}
                per_round.append(row)
                log(f"  {n} services, round {r + 1}: " + ", ".join(
                    f"{w} {v['ns_per_connect']:.0f} ns/connect ({v['runs_per_connect']:.1f} runs)"
                    for w, v in row.items() if isinstance(v, dict) and v["ns_per_connect"] is not None))
        med = {"services": n, "connect_mean_ns": median(r["mean_connect_ns"] for r in per_round)}
        for what in per_round[0]:
            if isinstance(per_round[0][what], dict):
                med[what] = {k: median(r[what][k] for r in per_round) for k in per_round[0][what]}
        summary.append(med)
    print(json.dumps(summary, indent=1))


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
    ap.add_argument("--render-only", action="store_true",
                    help="rewrite --out and its plots from the JSON next to it, measuring nothing")
    # The same for benches/kernel_native_control_plane.rs (see splice_kernel_native).
    ap.add_argument("--kernel-native-md")
    ap.add_argument("--kernel-native-json")
    ap.add_argument("--kernel-native-only", action="store_true",
                    help="only replace the kernel-native ADS section of --out")
    ap.add_argument("--prog-cost", metavar="SIZES",
                    help="only the per-program connect cost at these service counts (bench/prog_cost.sh)")
    ap.add_argument("--prog-cost-count", type=int, default=20000)
    ap.add_argument("--prog-cost-rounds", type=int, default=3)
    ap.add_argument("--prog-cost-no-monitoring", action="store_true")
    A = ap.parse_args()
    if A.prog_cost:
        missing = [k for k in ("ns", "cgroup", "bpffs", "tmp", "bin_dir") if getattr(A, k) is None]
        if missing:
            ap.error("required: " + ", ".join("--" + k.replace("_", "-") for k in missing))
        program_cost([int(x) for x in A.prog_cost.split(",")], A.prog_cost_count, A.prog_cost_rounds,
                     monitoring=not A.prog_cost_no_monitoring)
        return
    if A.dual_engine_only:
        update_dual_engine_section()
        return
    if A.kernel_native_only:
        splice_kernel_native(read_doc())
        return
    if A.render_only:
        data = old_json()
        if not data:
            raise SystemExit(f"{A.out.replace('.md', '.json')} is missing or unreadable")
        publish(data)
        return
    missing = [k for k in ("ns", "cgroup", "bpffs", "cgroup_de", "bpffs_de", "tmp", "bin_dir", "envoy")
               if getattr(A, k) is None]
    if missing:
        ap.error("required: " + ", ".join("--" + k.replace("_", "-") for k in missing))
    ensure_matplotlib()

    secs = 2 if A.quick else 10
    conns_ka = [1, 8, 64]
    conns_close = [1, 8]
    n_connect = 2000 if A.quick else 20000
    rounds = 5
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
    if connect_loop(VIP, 10, True)["failed"]:
        raise SystemExit("connects to the VIP fail: is the redirect working?\n" + tail("daemon.log"))
    # The same backend behind dual-engine service VIPs (one of them with a
    # waypoint), 10 services in all.
    xds_de = os.path.join(A.tmp, "xds-de.yaml")
    with open(xds_de, "w") as f:
        f.write(de_config(10))
    d_de = Daemon(xds_de, mode="dual-engine")
    deadline = time.time() + 60
    while d_de.get("/debug/ready")[0] != 200:
        if time.time() > deadline or d_de.proc.poll() is not None:
            raise SystemExit("dual-engine daemon not ready\n" + tail("daemon-de.log"))
        time.sleep(0.1)
    if connect_loop(VIP_DE, 10, "de")["failed"]:
        raise SystemExit("connects to the dual-engine VIP fail\n" + tail("daemon-de.log"))
    start_waypoint()
    check_waypoint()

    results = {"keepalive": {}, "close": {}}
    for mode, conns_list, close, variants in (("keepalive", conns_ka, False, VARIANTS),
                                              ("close", conns_close, True, CLOSE_VARIANTS)):
        for c in conns_list:
            for name, target, cg in variants:
                log(f"wrk {mode} c={c} {name} ...")
                if name == NO_MONITORING:
                    d.post("/monitoring?enable=false")
                results[mode][f"{c}/{name}"] = wrk(target, c, secs, close=close, in_cgroup=cg)
                if name == NO_MONITORING:
                    d.post("/monitoring?enable=true")

    conn = {}
    log(f"connect cost, 10 services, {rounds} rounds ...")
    conn["10"] = measure_connect(n_connect, rounds)

    cp = {}
    big = 10
    for n in sizes:
        log(f"control plane: {n} clusters x 10 endpoints ...")
        text = xds_config(n, 10)
        try:
            at_ms, obs_ms, v = d.apply(text, within=float(os.environ.get("BENCH_APPLY_TIMEOUT", "600")))
        except SystemExit as e:
            log(f"  not applied: {str(e).splitlines()[0]}")
            cp[str(n)] = None
            break
        cp[str(n)] = {"apply_ms": at_ms, "observed_ms": obs_ms, "rss_kib": d.rss_kib(),
                      "yaml_mib": len(text) / 2**20, "version": v}
        log(f"  applied: {cp[str(n)]}")
        big = n
    de_file = None
    if big > 10:
        log(f"dual-engine: {big} services x 10 endpoints through its xDS file ...")
        text = de_config(big)
        de_file = {"services": big, "yaml_mib": len(text) / 2**20,
                   "observed_ms": d_de.apply_de(text, within=float(os.environ.get("BENCH_APPLY_TIMEOUT", "600"))),
                   "rss_kib": d_de.rss_kib()}
        log(f"  applied: {de_file}")
        log(f"connect cost, {big} services, {rounds} rounds ...")
        conn[str(big)] = measure_connect(n_connect, rounds)

    log(f"one-endpoint change at {big} ...")
    changed = os.path.join(A.tmp, "xds-changed.yaml")
    with open(changed, "w") as f:
        f.write(xds_config(big, 10 if big > 10 else 1, vip_backend=BACKEND2))
    out = subprocess.run(ns_argv([sys.executable, "-c", PROBE, VIP[0], str(VIP[1]), changed, xds, "b2"],
                                 CPU_CLIENT, True), capture_output=True, text=True, timeout=200)
    if out.returncode != 0:
        raise SystemExit("endpoint change never became visible\n" + tail("daemon.log"))
    ep_change_ms = float(out.stdout.split()[0])
    d.wait_version(cp[str(big)]["version"] if big > 10 else 1)

    data = {"meta": {"mode": "--quick" if A.quick else "full", "date": time.strftime("%Y-%m-%d"),
                     "machine": machine(), "secs": secs, "conns_keepalive": conns_ka,
                     "conns_close": conns_close, "connect_count": n_connect, "connect_rounds": rounds},
            "keepalive": results["keepalive"], "close": results["close"],
            "connect_cost": conn, "control_plane": cp, "rss_kib_10_listeners": rss_small,
            "dual_engine_file_apply": de_file,
            "endpoint_change_ms": ep_change_ms, "quick": A.quick,
            "dual_engine_control_plane": dual_engine_json(old_json())}
    print(publish(data))


def check_waypoint():
    """A few HTTP requests to VIP_WP from the dual-engine cgroup must reach
    the backend through the waypoint (whose body starts with "hello")."""
    argv = [os.path.join(A.bin_dir, "kmesh-traffic"), "dial", "--http", "--count", "3",
            f"{VIP_WP[0]}:{VIP_WP[1]}"]
    out = subprocess.run(ns_argv(argv, CPU_CLIENT, "de"), capture_output=True, text=True, timeout=60)
    rep = json.loads(out.stdout or "{}")
    if rep.get("backends", {}).get("hello") != 3:
        raise SystemExit(f"HTTP through the waypoint fails: {out.stdout} {out.stderr}\n"
                         + tail("waypoint.log") + tail("daemon-de.log"))


def publish(data):
    """Write the doc, the JSON and the plots from `data` (a fresh run's
    figures, or --render-only's docs/benchmarks.json); return the tables."""
    old = read_doc()
    if "meta" not in data:  # a JSON from before "meta": take it from the doc
        m = re.search(r"\(mode: `([^`]*)`, ([\d-]+)\)", old)
        mm = re.search(r"^\*\*Machine:\*\* (.*)\.$", old, re.M)
        data["meta"] = {k: v for k, v in (("mode", m and m.group(1)), ("date", m and m.group(2)),
                                           ("machine", mm and mm.group(1)),
                                           ("secs", 2 if data.get("quick") else 10)) if v}
    # The kernel-native ADS figures: this run's, else the previous run's.
    if A.kernel_native_json and os.path.exists(A.kernel_native_json):
        with open(A.kernel_native_json) as f:
            data["kernel_native_control_plane"] = json.load(f)
    elif "kernel_native_control_plane" not in data and old_json().get("kernel_native_control_plane"):
        data["kernel_native_control_plane"] = old_json()["kernel_native_control_plane"]
    plots = write_plots(data, os.path.join(os.path.dirname(os.path.abspath(A.out)), "benchmarks"))
    report = render(data, plots)
    notes = DOC_TAIL
    if NOTES_MARK in old:  # keep hand-written notes from an earlier run
        notes = "\n" + old[old.index(NOTES_MARK):]
    dual = dual_engine_section(old)
    os.makedirs(os.path.dirname(A.out), exist_ok=True)
    with open(A.out, "w") as f:
        f.write(report["doc"] + ("\n" + dual if dual else "") + notes)
    with open(A.out.replace(".md", ".json"), "w") as f:
        json.dump(data, f, indent=1)
    log(f"wrote {A.out}, {len(plots)} plots")
    splice_kernel_native(old)
    return report["table"]


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
    # The control-plane plot shows these figures too (the doc links it already).
    write_plots(data, os.path.join(os.path.dirname(os.path.abspath(A.out)), "benchmarks"))
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


def median(xs):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    m = len(xs) // 2
    return xs[m] if len(xs) % 2 else (xs[m - 1] + xs[m]) / 2


def dataplane_rows(data, mode):
    """[(conns, variant, figures)] in run order, for the variants present."""
    rows = []
    for key, r in data.get(mode, {}).items():
        c, name = key.split("/", 1)
        rows.append((int(c), name, r))
    return rows


def connect_summary(data):
    """{services: {variant: summary}} from the per-round reports: medians
    over the rounds, and the overhead against direct as the median of the
    per-round differences (the rounds interleave the variants)."""
    out = {}
    for n, variants in (data.get("connect_cost") or {}).items():
        direct = variants.get("direct", [])
        out[int(n)] = {}
        for name, rounds in variants.items():
            diffs = [r["mean_ns"] - b["mean_ns"] for r, b in zip(rounds, direct)]
            mdiffs = [r["median_ns"] - b["median_ns"] for r, b in zip(rounds, direct)]
            bpf = [r["bpf"] for r in rounds if r.get("bpf") and r["bpf"]["connect4"]["ns_per_connect"] is not None]
            out[int(n)][name] = {
                "mean_ns": median(r["mean_ns"] for r in rounds),
                "median_ns": median(r["median_ns"] for r in rounds),
                "p99_ns": median(r["p99_ns"] for r in rounds),
                "connects_per_s": median(r["connects_per_s"] for r in rounds),
                "failed": sum(r["failed"] for r in rounds),
                "overhead_ns": median(diffs),
                "overhead_range_ns": (min(diffs), max(diffs)) if diffs else None,
                "overhead_median_ns": median(mdiffs),
                "overhead_median_range_ns": (min(mdiffs), max(mdiffs)) if mdiffs else None,
                "connect4_ns": median(b["connect4"]["ns_per_connect"] for b in bpf),
                "connect4_range_ns": ((min(b["connect4"]["ns_per_connect"] for b in bpf),
                                       max(b["connect4"]["ns_per_connect"] for b in bpf)) if bpf else None),
                "all_ns": median(b["all"]["ns_per_connect"] for b in bpf),
                "sockops_ns": median((b.get("cgroup_sock_ops") or {}).get("ns_per_connect") for b in bpf),
                "rounds": len(rounds),
            }
    return out


def render_dataplane(data, lines):
    for mode, title, col in (("keepalive", "Keep-alive HTTP (wrk, 1 thread)", "conns"),
                             ("close", "Connection per request (wrk, `Connection: close`)", "conc")):
        lines.append(f"### {title}\n")
        lines.append(f"| {col} | variant | req/s | p50 ms | p99 ms | req/s ÷ direct | p50 ÷ direct | p99 ÷ direct |")
        lines.append("|---:|---|---:|---:|---:|---:|---:|---:|")
        rows = dataplane_rows(data, mode)
        base = {c: r for c, name, r in rows if name == "direct"}
        for c, name, r in rows:
            b = base.get(c, {})
            err = f" (socket errors: {r['sock_errors']})" if r.get("sock_errors") else ""
            err += f" ({r['non2xx']} non-2xx)" if r.get("non2xx") else ""
            lines.append(f"| {c} | {name}{err} | {r['rps']:.0f} | {fmt(r['p50'], 3)} | {fmt(r['p99'], 3)} | "
                         f"{ratio(r['rps'], b.get('rps'))} | {ratio(r['p50'], b.get('p50'))} | {ratio(r['p99'], b.get('p99'))} |")
        lines.append("")


def render_connect(data, lines):
    meta = data.get("meta", {})
    if "connect" in data and "connect_cost" not in data:
        # A JSON from before the compiled loop: the python loop's figures.
        lines.append("### Connect cost vs config size (python loop)\n")
        lines.append("| listeners in config | variant | mean connect µs | connects/s | overhead vs direct µs | connects/s ÷ direct |")
        lines.append("|---:|---|---:|---:|---:|---:|")
        conn = data["connect"]
        for key, (us, rate, fails) in conn.items():
            name, n = key.split("/")
            base_us, base_rate, _ = conn[f"direct/{n}"]
            f = f" ({fails} failed)" if fails else ""
            lines.append(f"| {n} | {name}{f} | {us:.2f} | {rate:.0f} | {us - base_us:+.2f} | {ratio(rate, base_rate)} |")
        lines.append("")
        return
    summary = connect_summary(data)
    if not summary:
        return
    lines.append(f"### Connect cost vs config size ({meta.get('connect_rounds', '?')} rounds × "
                 f"{meta.get('connect_count', '?')} sequential connect+close per variant, interleaved)\n")
    lines.append("In the kernel (`kernel.bpf_stats_enabled`, run_time_ns ÷ run_cnt; median of the rounds, "
                 "[lowest, highest round]):\n")
    lines.append("| services in config | variant | `connect4` program ns per connect | `sock_ops` program ns per connect "
                 "| all programs on the cgroup ns per connect |")
    lines.append("|---:|---|---:|---:|---:|")
    for n, variants in summary.items():
        for name, c in variants.items():
            if c["connect4_ns"] is None:
                continue
            lo, hi = c["connect4_range_ns"]
            lines.append(f"| {n} | {name} | {c['connect4_ns']:.0f} [{lo:.0f}, {hi:.0f}] | {fmt(c.get('sockops_ns'), 0)} "
                         f"| {fmt(c['all_ns'], 0)} |")
    lines.append("\nWall clock (`kmesh-traffic connect-loop`, the `connect()` call; each figure the median "
                 "of the rounds; overhead = the median of the per-round differences to direct, of the loop's "
                 "mean and of its median connect time [lowest, highest round]):\n")
    lines.append("| services in config | variant | mean connect µs | median µs | p99 µs | connects/s | "
                 "overhead vs direct (means) µs | overhead vs direct (medians) µs | connects/s ÷ direct |")
    lines.append("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for n, variants in summary.items():
        base = variants.get("direct", {})
        for name, c in variants.items():
            f = f" ({c['failed']} failed)" if c["failed"] else ""
            lo, hi = c["overhead_range_ns"] or (0, 0)
            mlo, mhi = c["overhead_median_range_ns"] or (0, 0)
            lines.append(f"| {n} | {name}{f} | {c['mean_ns'] / 1000:.2f} | {c['median_ns'] / 1000:.2f} | "
                         f"{c['p99_ns'] / 1000:.2f} | {c['connects_per_s']:.0f} | "
                         f"{c['overhead_ns'] / 1000:+.2f} [{lo / 1000:+.2f}, {hi / 1000:+.2f}] | "
                         f"{c['overhead_median_ns'] / 1000:+.2f} [{mlo / 1000:+.2f}, {mhi / 1000:+.2f}] | "
                         f"{ratio(c['connects_per_s'], base.get('connects_per_s'))} |")
    lines.append("")


def render_control_plane(data, lines):
    cp = data.get("control_plane") or {}
    rss_small = data.get("rss_kib_10_listeners")
    lines.append("### Control plane (xDS file, `--xds-file-poll-ms 10`)\n")
    lines.append("| clusters × endpoints (+1 listener each) | YAML MiB | file rename → applied (daemon clock) ms | → seen in dump ms | daemon VmRSS MiB |")
    lines.append("|---|---:|---:|---:|---:|")
    if rss_small:
        lines.append(f"| 10 × 1 | - | - | - | {rss_small / 1024:.1f} |")
    for n, c in cp.items():
        if c is None:
            lines.append(f"| {n} × 10 | - | not applied within the timeout | - | - |")
            continue
        lines.append(f"| {n} × 10 | {c['yaml_mib']:.1f} | {fmt(c['apply_ms'], 0)} | {c['observed_ms']:.0f} | {c['rss_kib'] / 1024:.1f} |")
    big = max([10] + [int(n) for n, c in cp.items() if c])
    if data.get("endpoint_change_ms") is not None:
        lines.append(f"\nOne-endpoint change at {big} clusters (file rename → a dial through the VIP reaches "
                     f"the new endpoint): **{data['endpoint_change_ms']:.0f} ms**")
    de = data.get("dual_engine_file_apply")
    if de:
        lines.append(f"\nDual-engine, for the connect-cost runs: {de['services']} services × 10 workloads "
                     f"through its xDS file ({de['yaml_mib']:.1f} MiB YAML): file rename → update seen in "
                     f"the summary dump {de['observed_ms']:.0f} ms, daemon VmRSS {de['rss_kib'] / 1024:.1f} MiB.")


def render(data, plots):
    lines = []
    render_dataplane(data, lines)
    render_connect(data, lines)
    render_control_plane(data, lines)
    table = "\n".join(lines)
    meta = data.get("meta", {})
    head = DOC_HEAD.format(mode=meta.get("mode", "--quick" if data.get("quick") else "full"),
                           secs=meta.get("secs", 2 if data.get("quick") else 10),
                           machine=meta.get("machine", "(not recorded in the JSON)"),
                           date=meta.get("date", "(not recorded)"))
    if plots:
        head += "### Plots\n\n" + "".join(f"![{t}]({p})\n\n" for t, p in plots)
    return {"table": table, "doc": head + table + "\n"}


# ------------------------------------------------------------------ plots --

def ensure_matplotlib():
    """Import matplotlib (Agg), installing it with pip first if missing;
    None if that fails (the doc is then written without plots)."""
    try:
        import matplotlib
    except ImportError:
        log("installing matplotlib (pip) for the plots ...")
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "matplotlib"])
        try:
            import matplotlib
        except ImportError:
            return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def bars(ax, groups, series, values, errors=None):
    """Grouped bars: one group per `groups` item, one bar per `series` item;
    values[(group, serie)] (missing: no bar), errors likewise as (lo, hi)."""
    width = 0.8 / max(1, len(series))
    for k, name in enumerate(series):
        xs, ys, err = [], [], [[], []]
        for g, group in enumerate(groups):
            v = values.get((group, name))
            if v is None:
                continue
            xs.append(g + (k - (len(series) - 1) / 2) * width)
            ys.append(v)
            lo, hi = (errors or {}).get((group, name)) or (v, v)
            err[0].append(v - lo)
            err[1].append(hi - v)
        ax.bar(xs, ys, width, label=name, yerr=err if errors else None, capsize=2)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([str(g) for g in groups])


def plot_dataplane(plt, data, mode, path):
    rows = dataplane_rows(data, mode)
    if not rows:
        return False
    conns = sorted({c for c, _, _ in rows})
    names = list(dict.fromkeys(name for _, name, _ in rows))
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    for ax, key, label in zip(axes, ("rps", "p50", "p99"), ("requests/s", "p50 latency ms", "p99 latency ms")):
        bars(ax, conns, names, {(c, n): r.get(key) for c, n, r in rows})
        ax.set_xlabel("connections" if mode == "keepalive" else "concurrent clients")
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    title = "keep-alive HTTP" if mode == "keepalive" else "connection per request (Connection: close)"
    fig.suptitle(f"kmesh data plane: {title} (wrk -t1, {data.get('meta', {}).get('secs', '?')} s per run)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def plot_connect(plt, data, path):
    summary = connect_summary(data)
    if not summary:
        return False
    sizes = sorted(summary)
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    bpf_names = [n for n in dict.fromkeys(v for s in summary.values() for v in s)
                 if any(summary[k].get(n, {}).get("connect4_ns") is not None for k in sizes)]
    bars(left, sizes, bpf_names,
         {(k, n): summary[k][n]["connect4_ns"] for k in sizes for n in bpf_names if n in summary[k]},
         {(k, n): summary[k][n]["connect4_range_ns"] for k in sizes for n in bpf_names if n in summary[k]})
    left.axhline(1000, color="red", linestyle="--", linewidth=1, label="target: 1 µs")
    left.set_title("in the kernel: connect4 program, ns per connect")
    left.set_xlabel("services in config")
    left.set_ylabel("ns (bpf_stats run_time_ns ÷ run_cnt)")
    left.legend(fontsize=8)
    left.grid(axis="y", alpha=0.3)
    names = [n for n in dict.fromkeys(v for s in summary.values() for v in s) if n != "direct"]
    bars(right, sizes, names,
         {(k, n): summary[k][n]["overhead_median_ns"] / 1000 for k in sizes for n in names if n in summary[k]},
         {(k, n): tuple(x / 1000 for x in summary[k][n]["overhead_median_range_ns"])
          for k in sizes for n in names if n in summary[k]})
    right.axhline(0, color="black", linewidth=0.8)
    right.set_title("wall clock: median connect() − direct's, µs (median of rounds, range)")
    right.set_xlabel("services in config")
    right.set_ylabel("µs")
    right.legend(fontsize=8)
    right.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def control_plane_series(data):
    """[(label, [(services, apply ms, RSS MiB)])] for every control-plane
    measurement in the JSON. A new control-plane section adds its series here."""
    series = []
    kn = [(int(n), c["apply_ms"], c["rss_kib"] / 1024)
          for n, c in (data.get("control_plane") or {}).items() if c and c.get("apply_ms") is not None]
    if kn:
        series.append(("kernel-native, xDS file (rename → applied)", sorted(kn)))
    de = (data.get("dual_engine_control_plane") or {}).get("results") or []
    de = [(r["services"], r["apply_ms"], r["rss_kib"] / 1024) for r in de if r.get("apply_ms") is not None]
    if de:
        series.append(("dual-engine, delta ADS (push → ACK)", sorted(de)))
    kn_ads = (data.get("kernel_native_control_plane") or {}).get("results") or []
    kn_ads = [(r["services"], r["apply_ms"], r["rss_kib"] / 1024) for r in kn_ads if r.get("apply_ms") is not None]
    if kn_ads:
        series.append(("kernel-native, SotW ADS (push → last ACK)", sorted(kn_ads)))
    f = data.get("dual_engine_file_apply")
    if f:
        series.append(("dual-engine, xDS file (rename → seen)", [(f["services"], f["observed_ms"], f["rss_kib"] / 1024)]))
    return series


def plot_control_plane(plt, data, path):
    series = control_plane_series(data)
    if not series:
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    for label, pts in series:
        xs = [p[0] for p in pts]
        left.plot(xs, [p[1] for p in pts], marker="o", label=label)
        right.plot(xs, [p[2] for p in pts], marker="o", label=label)
    left.plot([10000], [1000], marker="*", color="red", markersize=12, linestyle="none",
              label="target: 10k in 1 s")
    right.axhline(100, color="red", linestyle="--", linewidth=1, label="target: 100 MB at 50k")
    for ax, ylabel, title in ((left, "ms", "whole config applied"), (right, "MiB", "daemon VmRSS after the apply")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("services (× 10 endpoints)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


PLOTS = [  # (file name, title in the doc, function)
    ("keepalive.png", "keep-alive HTTP: req/s, p50, p99", lambda plt, d, p: plot_dataplane(plt, d, "keepalive", p)),
    ("connection-per-request.png", "connection per request: req/s, p50, p99",
     lambda plt, d, p: plot_dataplane(plt, d, "close", p)),
    ("connect-cost.png", "connect cost: in the kernel and wall clock", plot_connect),
    ("control-plane.png", "control plane: apply time and daemon RSS vs services", plot_control_plane),
]


def write_plots(data, outdir):
    """The PNGs under `outdir`; returns [(title, path relative to the doc)]."""
    plt = ensure_matplotlib()
    if plt is None:
        log("matplotlib not available: no plots")
        return []
    os.makedirs(outdir, exist_ok=True)
    written = []
    for name, title, fn in PLOTS:
        path = os.path.join(outdir, name)
        if fn(plt, data, path):
            written.append((title, f"{os.path.basename(outdir)}/{name}"))
    return written


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
  client in that daemon's own cgroup); **kmesh-waypoint** (a dual-engine
  service VIP 10.96.2.10:80 whose `waypoint` is 127.0.0.5: the connect goes
  to the waypoint Envoy on 127.0.0.5:15019 (`--waypoint-port`), kmesh's
  sk_msg program prepends a PROXY v2 header, Envoy (configured like
  `examples/waypoint-envoy.yaml`: `proxy_protocol` listener filter, HTTP
  connection manager, `ORIGINAL_DST` cluster; no access log) parses the HTTP
  request and opens its upstream connection to the VIP with SO_MARK 1337,
  which kmesh load-balances to the backend: L7 through a waypoint, one proxy
  hop); **envoy-1hop** (Envoy 1.40 `tcp_proxy` on 127.0.0.3:10000 →
  backend); **envoy-2hop** (client-side Envoy 127.0.0.4:10001 →
  server-side Envoy → backend). Every Envoy runs with `--concurrency 1`.
- Data plane: `wrk -t1 -cN -d{secs}s --latency`; connection-per-request adds
  `-H "Connection: close"` (wrk reconnects for every request; its latency
  figures start after the connect, so req/s is the figure that includes the
  connect cost).
- Connect cost, two measures, each at 10 configured services and at the
  largest control-plane size (kernel-native: listeners + clusters of 10
  endpoints; dual-engine: services of 10 workloads, through its xDS file).
  The variants (direct, direct-in-cgroup, kmesh, kmesh-dual-engine) run
  interleaved, in a rotated order, for 5 rounds; figures are the median of
  the rounds.
  - **In the kernel:** with `kernel.bpf_stats_enabled=1` (on only during
    these loops, restored after) the kernel adds each program run's duration
    to the program's `run_time_ns` (`bpftool prog show`). The `connect4`
    program attached to the bench cgroup, read before and after a loop:
    Δrun_time_ns ÷ Δrun_cnt is the mean cost of kmesh's whole connect-time
    pipeline (tail-called stages run inside the entry program's run). This
    is the figure for "overhead under 1 µs, flat with the number of
    services"; it does not include the rest of `connect()`. "All programs"
    adds the cgroup's other programs per connect; most of it is `sock_ops`
    (several callbacks per connection: connection metrics, socket maps).
    The accounting itself costs two clock reads per run.
  - **Wall clock:** `kmesh-traffic connect-loop` (compiled, no interpreter
    noise) does N sequential `connect()` + `close()` (SO_LINGER 0) after 200
    untimed ones and times each `connect()` call. The overhead is the
    difference to direct, round by round, of the loop's mean and of its
    median connect time; the median is the steadier one (a whole TCP
    handshake on loopback is 5–20 µs, and a connect that gets preempted
    moves the mean by more than the effect). The wall-clock overhead also
    includes the `sock_ops` callbacks that run during the handshake (not
    those of the close), so it lies between `connect4` and "all programs".
    "direct-in-cgroup" dials the backend from inside the managed cgroup (the
    program runs and finds no listener).
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
