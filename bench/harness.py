#!/usr/bin/env python3
"""Side-by-side benchmarks for amqp-gateway; run through bench/run.sh (which builds first).

Everything runs on 127.0.0.1, on free ports, and every load run stops by itself (wrk -d, and a
watchdog kills it if it overstays). Raw results go to the output directory: one JSON line per
run in runs.jsonl, logs of every process, meta.json, and tables.md (also printed).

Write path: HTTP POST -> confirmed persistent event, at each --write-conns, against
  * the gateway (public route, and the same route behind a JWT check),
  * RabbitMQ's management HTTP publish endpoint,
  * Flask + pika (connection per request, confirmed) under gunicorn, 4 sync workers,
  * the raw lapin ceiling (examples/bench_publisher.rs), no HTTP,
all on one broker node with the management plugin, into one durable quorum queue bounded with
x-max-length / drop-head and purged before every run.

Read path: the gateway and nginx (2 workers each) in front of examples/users_service:
proxied GET with gzip, cached GET (identity and gzip) and If-None-Match -> 304, for the
~2.4 KB user document and the ~110 KB list.

Resources: RSS idle and while 1,000 keep-alive connections hammer a cached route; CPU per
1,000 requests for every run (utime+stime of the server's processes from /proc).

Machine noise: for every run the CPU time used by processes outside the benchmark is computed
(/proc/stat busy time minus every process the run involves) and reported as `other_cpu_pct`.
"""

import argparse
import base64
import datetime
import http.client
import json
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
TICK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024

WRITE_BODY = '{"name":"bench","email":"bench@example.com"}'
QUEUE = "bench.events"
CLASSIC_QUEUE = "bench.events.classic"
EXCHANGE = "users"
JWT_SECRET = "amqp-gateway-bench-secret-0123456789-abcdef"

# What real clients send as Accept-Encoding (issue 15): reads are measured per profile.
PROFILES = [
    ("none", {}),                                           # curl, many server-side clients
    ("okhttp", {"Accept-Encoding": "gzip"}),                # Android OkHttp (transparent gzip)
    ("ios", {"Accept-Encoding": "gzip, deflate, br"}),      # iOS URLSession
    ("browser", {"Accept-Encoding": "gzip, deflate, br, zstd"}),  # Chrome, Firefox
]
# Debian's brotli filter for nginx (package libnginx-mod-http-brotli-filter; bench/run.sh
# installs it). nginx has no zstd module in Debian: browsers get br from it.
NGINX_BROTLI = "/usr/lib/nginx/modules/ngx_http_brotli_filter_module.so"


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- processes ----------------------------------------------------------------------------------

STARTED = []  # (name, Popen) of every long-lived process we started, stopped at exit


def start(name, argv, out_dir, env=None, cwd=None):
    logf = open(os.path.join(out_dir, f"{name}.log"), "ab")
    full_env = dict(os.environ)
    full_env.update(env or {})
    p = subprocess.Popen(
        argv,
        stdout=logf,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=full_env,
        cwd=cwd,
        start_new_session=True,
    )
    STARTED.append((name, p))
    log(f"started {name} (pid {p.pid}): {' '.join(shlex.quote(a) for a in argv)}")
    return p


def stop_all():
    for name, p in reversed(STARTED):
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.time() + 10
    for name, p in reversed(STARTED):
        try:
            p.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)  # our own session, started above
            except ProcessLookupError:
                pass
    STARTED.clear()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children_map():
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def tree(pid):
    """pid and all its descendants."""
    kids = children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            # utime, stime are fields 14, 15 (1-based), i.e. 11, 12 after the comm field
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / TICK


def rss_kb(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * PAGE_KB
        except (OSError, IndexError, ValueError):
            pass
    return total


def machine_busy_seconds():
    with open("/proc/stat") as f:
        parts = f.readline().split()[1:]
    v = [int(x) for x in parts]
    idle = v[3] + v[4]
    return (sum(v[:8]) - idle) / TICK


class Group:
    """A named set of processes (a root pid and its descendants, re-read at each sample)."""

    def __init__(self, name, root_pid):
        self.name = name
        self.root = root_pid

    def pids(self):
        return tree(self.root)


class Sampler(threading.Thread):
    """Max RSS of each group while a run lasts."""

    def __init__(self, groups, interval=0.2):
        super().__init__(daemon=True)
        self.groups = groups
        self.interval = interval
        self.max_kb = {g.name: 0 for g in groups}
        self.stop_flag = threading.Event()

    def run(self):
        while not self.stop_flag.is_set():
            for g in self.groups:
                self.max_kb[g.name] = max(self.max_kb[g.name], rss_kb(g.pids()))
            self.stop_flag.wait(self.interval)

    def stop(self):
        self.stop_flag.set()
        self.join()


def wait_http(url, deadline_s=60, ok=(200,)):
    deadline = time.time() + deadline_s
    last = None
    while time.time() < deadline:
        try:
            status, _, _ = http_get(url)
            if status in ok:
                return
            last = f"status {status}"
        except OSError as e:
            last = str(e)
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready within {deadline_s}s: {last}")


def http_request(method, url, headers=None, body=None):
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    path = u.path + (f"?{u.query}" if u.query else "")
    hdrs = dict(headers or {})
    if u.username:
        cred = f"{urllib.parse.unquote(u.username)}:{urllib.parse.unquote(u.password or '')}"
        hdrs["Authorization"] = "Basic " + base64.b64encode(cred.encode()).decode()
    conn.request(method, path, body=body, headers=hdrs)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, data


def http_get(url, headers=None):
    return http_request("GET", url, headers)


# ---- load generation ----------------------------------------------------------------------------


def wrk(url, conns, duration, method="GET", body=None, headers=None, timeout_s=30):
    """Runs wrk; returns its summary plus the load generator's own CPU seconds."""
    threads = min(2, conns)
    env = dict(os.environ)
    env["WRK_METHOD"] = method
    env["WRK_BODY"] = body or ""
    env["WRK_HEADERS"] = "\n".join(f"{k}: {v}" for k, v in (headers or {}).items())
    argv = [
        "wrk", f"-t{threads}", f"-c{conns}", f"-d{duration}s", f"--timeout={timeout_s}s",
        "-s", os.path.join(BENCH, "wrk", "report.lua"), url,
    ]
    out_path = f"/tmp/bench-wrk-{os.getpid()}.out"
    with open(out_path, "wb") as out:
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + duration + 30
    rusage = None
    while True:
        pid, status, rusage = os.wait4(p.pid, os.WNOHANG)
        if pid:
            p.returncode = os.waitstatus_to_exitcode(status)
            break
        if time.time() > deadline:
            p.kill()
            pid, status, rusage = os.wait4(p.pid, 0)
            p.returncode = -9
            break
        time.sleep(0.05)
    with open(out_path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    os.unlink(out_path)
    result = None
    for line in text.splitlines():
        if line.startswith("BENCH_JSON "):
            result = json.loads(line[len("BENCH_JSON "):])
    if result is None:
        raise RuntimeError(f"wrk failed ({p.returncode}): {text[-2000:]}")
    secs = result["duration_us"] / 1e6
    errs = result["errors"]
    return {
        "requests": result["requests"],
        "seconds": secs,
        "rate": result["requests"] / secs if secs else 0.0,
        "p50_ms": result["latency_us"]["p50"] / 1000,
        "p90_ms": result["latency_us"]["p90"] / 1000,
        "p99_ms": result["latency_us"]["p99"] / 1000,
        "max_ms": result["latency_us"]["max"] / 1000,
        "bytes": result["bytes"],
        "non_2xx_3xx": errs["status"],
        "socket_errors": errs["connect"] + errs["read"] + errs["write"] + errs["timeout"],
        "loadgen_cpu_s": rusage.ru_utime + rusage.ru_stime,
    }


def amqp_shape(ready):
    """The gateway's AMQP connections and channels per connection, from its `/readyz` body:
    the raw ceiling publishes over the same shape (the broker's cost per message depends on
    how many channels carry it)."""
    connections = len(ready["connections"])
    return connections, ready["channels"]["configured"] // connections


def raw_publisher(binary, url, shape, conns, duration, warmup):
    connections, channels = shape
    argv = [
        binary, "--url", url, "--exchange", EXCHANGE, "--routing-key", "user.created",
        "--concurrency", str(conns), "--connections", str(connections),
        "--channels", str(channels),
        "--duration", f"{duration}s", "--warmup", f"{warmup}s", "--body", WRITE_BODY,
    ]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + duration + warmup + 30
    while True:
        pid, status, rusage = os.wait4(p.pid, os.WNOHANG)
        if pid:
            p.returncode = os.waitstatus_to_exitcode(status)
            break
        if time.time() > deadline:
            p.kill()
            os.wait4(p.pid, 0)
            raise RuntimeError("bench_publisher overstayed its deadline")
        time.sleep(0.05)
    out, err = p.stdout.read().decode(), p.stderr.read().decode()
    if p.returncode != 0:
        raise RuntimeError(f"bench_publisher failed: {err[-2000:]}")
    r = json.loads(out.strip().splitlines()[-1])
    return {
        "requests": r["messages"],
        "seconds": r["seconds"],
        "rate": r["rate"],
        "p50_ms": r["p50_ms"],
        "p90_ms": r["p90_ms"],
        "p99_ms": r["p99_ms"],
        "max_ms": r["max_ms"],
        "non_2xx_3xx": r["errors"],
        "socket_errors": 0,
        # The publisher is both load generator and system under test here.
        "loadgen_cpu_s": 0.0,
        "publisher_cpu_s": rusage.ru_utime + rusage.ru_stime,
    }


# ---- the bench ----------------------------------------------------------------------------------


class Bench:
    def __init__(self, args):
        self.args = args
        self.out = args.out
        self.runs = []
        self.meta = {}
        self.runs_file = open(os.path.join(self.out, "runs.jsonl"), "a")
        self.nginx_cache_dirs = []

    # -- set-up

    def setup(self):
        a = self.args
        rel = os.path.join(a.target_dir, "release")
        self.bin_gateway = a.gateway_bin or os.path.join(rel, "amqp-gateway")
        self.bin_origin = os.path.join(rel, "examples", "users_service")
        self.bin_publisher = os.path.join(rel, "examples", "bench_publisher")
        self.bin_mint = os.path.join(rel, "examples", "mint_token")

        # Broker state (quorum queue segments) stays out of the results directory.
        self.broker_dir = f"/tmp/amqpgw-bench-broker-{os.getpid()}"
        env = dict(os.environ, BROKER_PLUGINS="rabbitmq_management")
        log("booting RabbitMQ (private node, management plugin)")
        out = subprocess.run(
            [os.path.join(ROOT, "scripts", "broker.sh"), "start", self.broker_dir,
             "--watch-pid", str(os.getpid())],
            env=env, check=True, capture_output=True, text=True,
        )
        exports = {}
        for line in out.stdout.splitlines():
            if line.startswith("export "):
                k, v = line[len("export "):].split("=", 1)
                exports[k] = shlex.split(v)[0] if v else ""
        self.amqp_url = exports["AMQP_TEST_URL"]
        self.mgmt = exports["AMQP_TEST_MGMT_URL"]
        self.mgmt_auth = self.mgmt.replace("http://", "http://guest:guest@")
        with open(os.path.join(self.broker_dir, "rabbit.pid")) as f:
            self.broker = Group("broker", int(f.read().strip()))
        wait_http(self.mgmt_auth + "/api/overview", 60)

        # Exchange, bounded quorum queue, binding (idempotent declarations).
        self.mgmt_call("PUT", f"/api/exchanges/%2F/{EXCHANGE}",
                       {"type": "topic", "durable": True, "auto_delete": False})
        self.bound_queue(QUEUE, "quorum")

        # Origin.
        self.origin_port = free_port()
        self.origin = Group("origin", start(
            "origin", [self.bin_origin, "--listen", f"127.0.0.1:{self.origin_port}"],
            self.out).pid)
        wait_http(f"http://127.0.0.1:{self.origin_port}/healthz")

        # Gateway.
        self.gw_port, self.gw_admin = free_port(), free_port()
        self.gw_proc = start("gateway", [self.bin_gateway, "--config",
                                         os.path.join(BENCH, "config", "gateway.toml")],
                             self.out, env={
                                 "GATEWAY_LISTEN": f"127.0.0.1:{self.gw_port}",
                                 "GATEWAY_ADMIN_LISTEN": f"127.0.0.1:{self.gw_admin}",
                                 "AMQP_URL": self.amqp_url,
                                 "JWT_SECRET": JWT_SECRET,
                                 "ORIGIN_URL": f"http://127.0.0.1:{self.origin_port}",
                             })
        self.gateway = Group("gateway", self.gw_proc.pid)
        wait_http(f"http://127.0.0.1:{self.gw_admin}/readyz", 60)
        _, _, ready = http_request("GET", f"http://127.0.0.1:{self.gw_admin}/readyz")
        self.amqp_shape = amqp_shape(json.loads(ready))
        self.gw = f"http://127.0.0.1:{self.gw_port}"
        self.token = subprocess.run(
            [self.bin_mint, "--sub", "bench-user", "--roles", "user", "--issuer",
             "amqp-gateway-bench", "--kid", "bench", "--ttl", "86400"],
            env=dict(os.environ, JWT_SECRET=JWT_SECRET), check=True, capture_output=True,
            text=True).stdout.strip()

        # nginx twice: "nginx" with compression matching the gateway's per-response level
        # (gzip and, with the module, br at --gzip-level), "nginx-default" with nginx's own
        # defaults (gzip off: JSON goes out as it is).
        self.nginx, self.ngx = self.start_nginx("nginx", a.gzip_level)
        self.nginx_default, self.ngx_default = self.start_nginx("nginx-default", None)

        # Flask + pika under gunicorn.
        self.flask_port = free_port()
        gunicorn = os.path.join(a.venv, "bin", "gunicorn")
        self.flask = Group("flask", start(
            "flask", [gunicorn, "-w", "4", "-b", f"127.0.0.1:{self.flask_port}",
                      "--chdir", os.path.join(BENCH, "flask"), "--log-level", "warning",
                      "app:app"],
            self.out, env={"AMQP_URL": self.amqp_url}).pid)
        self.fl = f"http://127.0.0.1:{self.flask_port}"

        # Sanity: one write through each HTTP path.
        for name, url, hdrs, body, want in [
            ("gateway", self.gw + "/users", {"Content-Type": "application/json"}, WRITE_BODY, 201),
            ("gateway-jwt", self.gw + "/auth/users", {"Content-Type": "application/json",
                                                      "Authorization": f"Bearer {self.token}"},
             WRITE_BODY, 201),
            ("mgmt", self.mgmt_auth + f"/api/exchanges/%2F/{EXCHANGE}/publish",
             {"Content-Type": "application/json"}, self.mgmt_body(), 200),
        ]:
            status, _, data = http_request("POST", url, hdrs, body)
            if status != want:
                raise RuntimeError(f"{name}: sanity write got {status}: {data[:300]!r}")
            if name == "mgmt" and json.loads(data).get("routed") is not True:
                raise RuntimeError(f"mgmt publish not routed: {data!r}")
        deadline = time.time() + 30
        while True:
            try:
                status, _, data = http_request("POST", self.fl + "/users",
                                               {"Content-Type": "application/json"}, WRITE_BODY)
                if status == 201:
                    break
                raise RuntimeError(f"flask sanity write got {status}: {data[:300]!r}")
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.3)
        self.collect_meta()

    def start_nginx(self, name, level):
        """One nginx (config bench/config/nginx.conf) on a free port; `level` None = nginx's
        compression defaults (off), else gzip and br at that level."""
        port = free_port()
        ndir = os.path.join(self.out, name)
        os.makedirs(ndir, exist_ok=True)
        cache_dir = "/dev/shm" if os.path.isdir("/dev/shm") else ndir
        cache_dir = os.path.join(cache_dir, f"bench-{name}-cache-{os.getpid()}")
        self.nginx_cache_dirs.append(cache_dir)
        modules, compression = "", "# nginx's defaults: gzip off, no brotli module"
        if level is not None:
            compression = "\n    ".join([
                "gzip on;", "gzip_types application/json;", "gzip_min_length 256;",
                f"gzip_comp_level {level};", "gzip_proxied any;", "gzip_vary on;",
            ])
            if os.path.exists(NGINX_BROTLI):
                modules = f"load_module {NGINX_BROTLI};"
                compression += "\n    " + "\n    ".join([
                    "brotli on;", "brotli_types application/json;", "brotli_min_length 256;",
                    f"brotli_comp_level {level};",
                ])
        with open(os.path.join(BENCH, "config", "nginx.conf")) as f:
            conf = f.read()
        for k, v in {"DIR": ndir, "CACHE_DIR": cache_dir, "ORIGIN": f"127.0.0.1:{self.origin_port}",
                     "LISTEN": f"127.0.0.1:{port}", "MODULES": modules,
                     "COMPRESSION": compression}.items():
            conf = conf.replace(f"@@{k}@@", v)
        conf_path = os.path.join(ndir, "nginx.conf")
        with open(conf_path, "w") as f:
            f.write(conf)
        group = Group(name, start(
            name, ["nginx", "-p", ndir, "-c", conf_path, "-g", "daemon off;"], self.out).pid)
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/p/users/1")
        return group, base

    def bound_queue(self, name, kind):
        """A durable queue of `kind` (bounded: the newest 100,000 events) bound to every
        routing key of the bench exchange; idempotent."""
        self.mgmt_call("PUT", f"/api/queues/%2F/{name}", {
            "durable": True,
            "arguments": {"x-queue-type": kind, "x-max-length": 100000,
                          "x-overflow": "drop-head"},
        })
        self.mgmt_call("POST", f"/api/bindings/%2F/e/{EXCHANGE}/q/{name}",
                       {"routing_key": "#"})

    def mgmt_call(self, method, path, payload):
        status, _, data = http_request(method, self.mgmt_auth + path,
                                       {"Content-Type": "application/json"},
                                       json.dumps(payload) if payload is not None else None)
        if status >= 300:
            raise RuntimeError(f"management API {method} {path}: {status} {data[:300]!r}")
        return data

    def mgmt_body(self):
        return json.dumps({
            "properties": {"delivery_mode": 2, "content_type": "application/json"},
            "routing_key": "user.created",
            "payload": WRITE_BODY,
            "payload_encoding": "string",
        })

    def purge(self):
        self.mgmt_call("DELETE", f"/api/queues/%2F/{QUEUE}/contents", None)

    def collect_meta(self):
        def cmd(argv):
            try:
                r = subprocess.run(argv, capture_output=True, text=True, timeout=20)
                return (r.stdout + r.stderr).strip()
            except OSError as e:
                return f"unavailable: {e}"

        cpu_model = ""
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            mem_kb = int(f.readline().split()[1])
        overview = json.loads(self.mgmt_call("GET", "/api/overview", None))
        py = os.path.join(self.args.venv, "bin", "python")
        pyver = cmd([py, "-c", "import sys, importlib.metadata as m; print(sys.version.split()[0], "
                     "*(f'{p}/{m.version(p)}' for p in ('flask','pika','gunicorn')))"])
        self.meta = {
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "nproc": os.cpu_count(),
            "cpu_model": cpu_model,
            "mem_gib": round(mem_kb / 1024 / 1024, 1),
            "kernel": platform.release(),
            "os": cmd(["sh", "-c", ". /etc/os-release; echo $PRETTY_NAME"]),
            "rustc": cmd(["rustc", "-V"]),
            "gateway": cmd([self.bin_gateway, "--version"]),
            "git": cmd(["git", "-C", ROOT, "describe", "--always", "--dirty"]),
            "rabbitmq": overview.get("rabbitmq_version"),
            "erlang": overview.get("erlang_version"),
            "nginx": cmd(["nginx", "-v"]),
            "wrk": cmd(["sh", "-c", "wrk -v 2>&1 | head -1"]),
            "python_flask_pika_gunicorn": pyver,
            "loadavg_at_start": open("/proc/loadavg").read().strip(),
            "args": vars(self.args),
            "gzip_level": self.args.gzip_level,
            "amqp_connections_channels": self.amqp_shape,
        }
        with open(os.path.join(self.out, "meta.json"), "w") as f:
            json.dump(self.meta, f, indent=2)

    # -- one measured run

    def measure(self, section, system, label, groups, fn, extra=None):
        """Runs fn() (which returns a load result) while accounting CPU and RSS of `groups`."""
        every = [g for g in groups]
        pids_before = {g.name: g.pids() for g in every}
        cpu0 = {g.name: cpu_seconds(pids_before[g.name]) for g in every}
        busy0 = machine_busy_seconds()
        sampler = Sampler(every)
        sampler.start()
        t0 = time.time()
        result = fn()
        wall = time.time() - t0
        sampler.stop()
        busy1 = machine_busy_seconds()
        # Processes that exited during the run (none expected) would drop out: re-read the union.
        cpu1 = {g.name: cpu_seconds(set(pids_before[g.name]) | set(g.pids())) for g in every}
        cpu = {k: cpu1[k] - cpu0[k] for k in cpu0}
        ours = sum(cpu.values()) + result.get("loadgen_cpu_s", 0) + result.get("publisher_cpu_s", 0)
        other = max(0.0, (busy1 - busy0) - ours)
        rec = {
            "section": section, "system": system, "label": label, **(extra or {}), **result,
            "wall_s": round(wall, 3),
            "cpu_s": {k: round(v, 3) for k, v in cpu.items()},
            "cpu_ms_per_1k": {k: round(1000 * v / max(1, result["requests"]) * 1000, 1)
                              for k, v in cpu.items()},
            "max_rss_kb": sampler.max_kb,
            "loadgen_cores": round(result.get("loadgen_cpu_s", 0) / max(wall, 1e-9), 2),
            "other_cpu_pct": round(100 * other / max(wall, 1e-9) / (os.cpu_count() or 1), 1),
        }
        if "publisher_cpu_s" in result:
            rec["cpu_ms_per_1k"]["publisher"] = round(
                1e6 * result["publisher_cpu_s"] / max(1, result["requests"]), 1)
        self.runs.append(rec)
        self.runs_file.write(json.dumps(rec) + "\n")
        self.runs_file.flush()
        bad = rec["non_2xx_3xx"] + rec["socket_errors"]
        log(f"{section:9} {system:12} {label:28} {rec['rate']:10.1f}/s  p50 {rec['p50_ms']:7.2f} ms"
            f"  p99 {rec['p99_ms']:7.2f} ms  errors {bad}  other-cpu {rec['other_cpu_pct']}%")
        return rec

    # -- write path

    def write_path(self):
        a = self.args
        D, W = a.duration, a.warmup
        json_hdr = {"Content-Type": "application/json"}
        systems = [
            ("gateway", [self.gateway, self.broker],
             lambda c, d: wrk(self.gw + "/users", c, d, "POST", WRITE_BODY, json_hdr)),
            ("gateway-jwt", [self.gateway, self.broker],
             lambda c, d: wrk(self.gw + "/auth/users", c, d, "POST", WRITE_BODY,
                              dict(json_hdr, Authorization=f"Bearer {self.token}"))),
            ("mgmt-http", [self.broker],
             lambda c, d: wrk(self.mgmt + f"/api/exchanges/%2F/{EXCHANGE}/publish", c, d, "POST",
                              self.mgmt_body(),
                              dict(json_hdr, Authorization="Basic "
                                   + base64.b64encode(b"guest:guest").decode()))),
            ("flask-pika", [self.flask, self.broker],
             lambda c, d: wrk(self.fl + "/users", c, d, "POST", WRITE_BODY, json_hdr)),
        ]
        for c in a.write_conns:
            for name, groups, fn in systems:
                if name not in a.write_systems:
                    continue
                self.purge()
                fn(c, W)  # warm-up, not recorded
                self.purge()
                self.measure("write", name, f"{c} conns", groups, lambda: fn(c, D),
                             {"conns": c})
            if "raw-lapin" in a.write_systems:
                self.purge()
                self.measure("write", "raw-lapin", f"{c} conns", [self.broker],
                             lambda: raw_publisher(self.bin_publisher, self.amqp_url,
                                                   self.amqp_shape, c, D, W),
                             {"conns": c})
        self.purge()

    # -- cluster: where one node is not enough

    def cluster(self):
        """Confirmed writes into a 3-node quorum queue vs a single-node classic queue, and the
        raw confirmed-publish ceiling on each, at `--cluster-conns` connections, in this run."""
        a = self.args
        D, W, C = a.duration, a.warmup, a.cluster_conns
        json_hdr = {"Content-Type": "application/json"}

        # One node, classic queue: the quorum queue's binding swapped for a classic one.
        self.bound_queue(CLASSIC_QUEUE, "classic")
        self.mgmt_call("DELETE", f"/api/bindings/%2F/e/{EXCHANGE}/q/{QUEUE}/%23", None)
        try:
            post = lambda c, d: wrk(self.gw + "/users", c, d, "POST", WRITE_BODY, json_hdr)  # noqa: E731
            post(C, W)
            self.measure("cluster", "gateway", "1 node, classic queue", [self.gateway, self.broker],
                         lambda: post(C, D), {"conns": C})
            self.measure("cluster", "raw-lapin", "1 node, classic queue", [self.broker],
                         lambda: raw_publisher(self.bin_publisher, self.amqp_url,
                                               self.amqp_shape, C, D, W),
                         {"conns": C})
        finally:
            self.mgmt_call("POST", f"/api/bindings/%2F/e/{EXCHANGE}/q/{QUEUE}",
                           {"routing_key": "#"})
            self.mgmt_call("DELETE", f"/api/queues/%2F/{CLASSIC_QUEUE}", None)

        # Three nodes, quorum queue (3 replicas): a second gateway with `[amqp] urls`.
        self.cluster_dir = f"/tmp/amqpgw-bench-cluster-{os.getpid()}"
        log("booting a 3-node RabbitMQ cluster (scripts/broker.sh cluster-start)")
        out = subprocess.run(
            [os.path.join(ROOT, "scripts", "broker.sh"), "cluster-start", self.cluster_dir, "3",
             "--watch-pid", str(os.getpid())],
            check=True, capture_output=True, text=True,
        )
        exports = {}
        for line in out.stdout.splitlines():
            if line.startswith("export "):
                k, v = line[len("export "):].split("=", 1)
                exports[k] = shlex.split(v)[0] if v else ""
        urls = exports["AMQP_CLUSTER_URLS"].replace(",", " ").split()
        nodes = []
        for k in range(1, len(urls) + 1):
            with open(os.path.join(self.cluster_dir, f"n{k}", "rabbit.pid")) as f:
                nodes.append(Group(f"broker-n{k}", int(f.read().strip())))
        # Exchange, quorum queue on all three nodes, binding: with pika from the bench venv.
        declare = (
            "import sys, pika\n"
            "ch = pika.BlockingConnection(pika.URLParameters(sys.argv[1])).channel()\n"
            f"ch.exchange_declare('{EXCHANGE}', 'topic', durable=True)\n"
            f"ch.queue_declare('{QUEUE}', durable=True, arguments={{'x-queue-type': 'quorum', "
            "'x-quorum-initial-group-size': 3, 'x-max-length': 100000, "
            "'x-overflow': 'drop-head'})\n"
            f"ch.queue_bind('{QUEUE}', '{EXCHANGE}', '#')\n"
        )
        subprocess.run([os.path.join(a.venv, "bin", "python"), "-c", declare, urls[0]],
                       check=True, capture_output=True, text=True)
        with open(os.path.join(BENCH, "config", "gateway.toml")) as f:
            conf = f.read()
        conf = conf.replace('url = "${AMQP_URL}"',
                            "urls = [" + ", ".join(json.dumps(u) for u in urls) + "]", 1)
        conf_path = os.path.join(self.out, "gateway-cluster.toml")
        with open(conf_path, "w") as f:
            f.write(conf)
        port, admin = free_port(), free_port()
        proc = start("gateway-cluster", [self.bin_gateway, "--config", conf_path], self.out, env={
            "GATEWAY_LISTEN": f"127.0.0.1:{port}",
            "GATEWAY_ADMIN_LISTEN": f"127.0.0.1:{admin}",
            "JWT_SECRET": JWT_SECRET,
            "ORIGIN_URL": f"http://127.0.0.1:{self.origin_port}",
        })
        gw = Group("gateway", proc.pid)
        wait_http(f"http://127.0.0.1:{admin}/readyz", 60)
        status, _, ready = http_request("GET", f"http://127.0.0.1:{admin}/readyz")
        self.meta["cluster_readyz"] = json.loads(ready)
        shape = amqp_shape(self.meta["cluster_readyz"])
        post = lambda c, d: wrk(f"http://127.0.0.1:{port}/users", c, d, "POST",  # noqa: E731
                                WRITE_BODY, json_hdr)
        post(C, W)
        self.measure("cluster", "gateway", "3 nodes, quorum queue", [gw] + nodes,
                     lambda: post(C, D), {"conns": C})
        self.measure("cluster", "raw-lapin", "3 nodes, quorum queue", nodes,
                     lambda: raw_publisher(self.bin_publisher, urls[0], shape, C, D, W), {"conns": C})
        proc.terminate()
        proc.wait(timeout=30)
        with open(os.path.join(self.out, "meta.json"), "w") as f:
            json.dump(self.meta, f, indent=2)

    # -- read path

    def read_path(self):
        a = self.args
        D, W, C = a.duration, a.warmup, a.read_conns
        scenarios = []
        for test, prefix, cached in [("proxied", "/p", False), ("cached", "/c", True)]:
            for payload, path in [("user", "/users/42"), ("big", "/big")]:
                for profile, hdrs in PROFILES:
                    scenarios.append((test, profile, payload, prefix + path, hdrs, cached))
        scenarios.append(("304", "browser", "user", "/c/users/42",
                          {"If-None-Match": '"user-42-v1"', **dict(PROFILES)["browser"]}, True))
        servers = [("gateway", self.gw, self.gateway), ("nginx", self.ngx, self.nginx),
                   ("nginx-default", self.ngx_default, self.nginx_default)]
        for test, profile, payload, path, hdrs, cached in scenarios:
            if a.read_tests and test not in a.read_tests:
                continue
            if a.read_profiles and profile not in a.read_profiles:
                continue
            for system, base, group in servers:
                url = base + path
                # Prime the cache, then check what a client gets. An entry stored by an
                # earlier test may just have gone stale (max-age=30): nginx then answers the
                # next requests REVALIDATED until its refreshed entry is used, so a few
                # tries are allowed before the check fails.
                want = 304 if test == "304" else 200
                for _ in range(5):
                    http_get(url, hdrs)
                    status, rh, body = http_get(url, hdrs)
                    problems = []
                    if status != want:
                        problems.append(f"status {status}")
                    if cached and "HIT" not in rh.get("x-cache", "").upper():
                        problems.append(f"x-cache {rh.get('x-cache')}")
                    if not problems:
                        break
                    time.sleep(0.2)
                enc = rh.get("content-encoding", "identity")
                if problems:
                    raise RuntimeError(f"read check {system} {test} {path}: {problems} {rh}")
                extra = {"test": test, "profile": profile, "payload": payload, "path": path,
                         "conns": C, "body_bytes": len(body), "content_encoding": enc,
                         "etag": rh.get("etag")}
                wrk(url, C, W, headers=hdrs)  # warm-up
                self.measure("read", system, f"{test} {profile} {payload}", [group, self.origin],
                             lambda: wrk(url, C, D, headers=hdrs), extra)

    # -- resources

    def resources(self):
        a = self.args
        idle = {"gateway": rss_kb(self.gateway.pids()), "nginx": rss_kb(self.nginx.pids())}
        rec = {"section": "resources", "system": "all", "label": "idle rss",
               "idle_rss_kb": idle, "when": "after the other sections"}
        self.runs.append(rec)
        self.runs_file.write(json.dumps(rec) + "\n")
        log(f"idle RSS: {idle}")
        for system, base, group in [("gateway", self.gw, self.gateway),
                                    ("nginx", self.ngx, self.nginx)]:
            url = base + "/c/users/42"
            http_get(url)
            self.measure("resources", system, "1000 keep-alive conns", [group, self.origin],
                         lambda: wrk(url, 1000, a.duration), {"conns": 1000,
                                                               "test": "cached", "payload": "user"})

    def run(self):
        a = self.args
        self.setup()
        self.idle_rss_start = {"gateway": rss_kb(self.gateway.pids()),
                               "nginx": rss_kb(self.nginx.pids())}
        rec = {"section": "resources", "system": "all", "label": "idle rss at start",
               "idle_rss_kb": self.idle_rss_start}
        self.runs.append(rec)
        self.runs_file.write(json.dumps(rec) + "\n")
        if "read" in a.sections:
            self.read_path()
        if "write" in a.sections:
            self.write_path()
        if "cluster" in a.sections:
            self.cluster()
        if "resources" in a.sections:
            self.resources()


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--target-dir", default=os.path.join(ROOT, "target"))
    p.add_argument("--venv", default=os.path.join(BENCH, ".venv"))
    p.add_argument("--gateway-bin", default="",
                   help="gateway binary to measure (default: the release build), e.g. an older "
                        "build for a before/after comparison")
    p.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    p.add_argument("--warmup", type=int, default=2, help="seconds of warm-up before each run")
    p.add_argument("--write-conns", default="1,16,64,256")
    p.add_argument("--write-systems", default="gateway,gateway-jwt,mgmt-http,flask-pika,raw-lapin")
    p.add_argument("--read-conns", type=int, default=64)
    p.add_argument("--read-tests", default="", help="comma-separated subset, e.g. 'cached,304'")
    p.add_argument("--read-profiles", default="",
                   help="comma-separated subset of none,okhttp,ios,browser")
    p.add_argument("--sections", default="read,write,cluster,resources")
    p.add_argument("--cluster-conns", type=int, default=64,
                   help="connections for the cluster section (quorum on 3 nodes vs classic on 1)")
    p.add_argument("--gzip-level", type=int, default=1,
                   help="gzip_comp_level and brotli_comp_level of the matched nginx; 1 = the "
                        "gateway's [compression] dynamic default (fast) and nginx's own")
    a = p.parse_args()
    a.write_conns = [int(x) for x in a.write_conns.split(",") if x]
    a.write_systems = [x for x in a.write_systems.split(",") if x]
    a.read_tests = [x for x in a.read_tests.split(",") if x]
    a.read_profiles = [x for x in a.read_profiles.split(",") if x]
    a.sections = [x for x in a.sections.split(",") if x]
    return a


def main():
    args = parse_args()
    os.makedirs(args.out, exist_ok=True)
    bench = Bench(args)

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    try:
        bench.run()
    finally:
        stop_all()
        broker_dir = getattr(bench, "broker_dir", None)
        if broker_dir:
            subprocess.run(["sh", "-c", f"cp {shlex.quote(broker_dir)}/log/*.log "
                            f"{shlex.quote(args.out)}/ 2>/dev/null"])
            subprocess.run([os.path.join(ROOT, "scripts", "broker.sh"), "stop", broker_dir,
                            "--remove"], capture_output=True)
        cluster_dir = getattr(bench, "cluster_dir", None)
        if cluster_dir:
            subprocess.run([os.path.join(ROOT, "scripts", "broker.sh"), "cluster-stop",
                            cluster_dir, "--remove"], capture_output=True)
        for cache in getattr(bench, "nginx_cache_dirs", []):
            if cache.startswith("/dev/shm/bench-"):
                subprocess.run(["rm", "-rf", cache])
    import report  # bench/report.py

    text = report.render(args.out)
    with open(os.path.join(args.out, "tables.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    sys.dont_write_bytecode = True
    sys.path.insert(0, BENCH)
    main()
