#!/usr/bin/env python3
"""fopproxy vs nginx-stream, side by side, interleaved, pinned: the driver behind bench/run.sh.

With --http: fopproxy in `mode: http` vs nginx's `http` reverse proxy (TLS, upstream keep-alive,
forwarding headers, buffered access log): the request-aware modes of both, same workloads.

Starts a plain nginx HTTP backend, nginx `stream` as the baseline TLS terminator, and fopproxy from
this checkout with its default config plus metrics and connection logs on; then runs every workload
round-robin over the targets (order alternating per round) and prints medians, ratios (raw and per
proxy CPU-second), paired per-round ratios (their spread is the noise) and the CPU other processes
used while it measured.

Workloads:
  hs-ecdsa, hs-rsa  full TLS 1.2 handshakes (bench/hsload, never resumes), GET /ok, close
  res-ecdsa, res-rsa returning clients: as hs-*, but each load connection offers its last
                    session (bench/hsload -resume); the resumed fraction is reported per side
  resw, resw-rsa    returning clients, wrk's way: 32 connections, `Connection: close` on every
                    request, ECDSA / RSA (wrk offers its last session on each reconnect)
  ka                wrk keep-alive, 2-byte answers, req/s and p50/p99
  bulk              wrk keep-alive, 1 MiB answers, MB/s
  mem               fresh proxies; N TLS connections each POST 64 KiB and GET 64 KiB, then stay
                    open and idle: RSS growth / N (KiB per idle connection after traffic)
Every port is kernel-assigned on 127.0.0.1; every process started is stopped by its process group.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CONF = HERE / "conf"
TICK = os.sysconf("SC_CLK_TCK")
SERVER_NAME = "bench.fop.test"

# What the issue asks of fopproxy, per proxy CPU-second, against nginx-stream in the same run.
TARGETS = {"hs-ecdsa": 0.75, "hs-rsa": 0.85, "ka": 1.0, "bulk": 1.25}
# --http: fopproxy's mode: http against nginx's http proxy (issue 18); no p99 limit asked there.
HTTP_TARGETS = {"ka": 0.8}
KA_P99_LIMIT = 1.3


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


_ISSUED: set[int] = set()


def free_port() -> int:
    """A free loopback port, never one handed out before: a port given to a process that has
    not bound it yet is free to the kernel, so two targets could otherwise get the same one."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _ISSUED:
            _ISSUED.add(port)
            return port


def wait_port(port: int, timeout: float = 15.0) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
        except OSError:
            time.sleep(0.05)
        else:
            return True
    return False


def render(src: Path, dst: Path, subs: dict[str, object]) -> None:
    text = src.read_text()
    for key, value in subs.items():
        text = text.replace(f"@{key}@", str(value))
    left = re.findall(r"@[A-Z_]+@", text)
    if left:
        raise SystemExit(f"unrendered placeholders in {src}: {left}")
    dst.write_text(text)


def ensure_certs(folder: Path) -> None:
    """Throwaway self-signed ECDSA P-256 and RSA-2048 certificates for SERVER_NAME."""
    names = ("ecdsa.crt", "ecdsa.key", "rsa.crt", "rsa.key")
    if all((folder / n).exists() for n in names):
        return
    folder.mkdir(parents=True, exist_ok=True)
    for name, newkey in (
        ("ecdsa", ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]),
        ("rsa", ["-newkey", "rsa:2048"]),
    ):
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-nodes",
                *newkey,
                "-days",
                "30",
                "-subj",
                f"/CN={SERVER_NAME}",
                "-addext",
                f"subjectAltName=DNS:{SERVER_NAME}",
                "-keyout",
                str(folder / f"{name}.key"),
                "-out",
                str(folder / f"{name}.crt"),
            ],
            check=True,
            capture_output=True,
        )


def children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat[stat.rfind(")") + 2 :].split()[1])
            kids.setdefault(ppid, []).append(int(entry))
    return kids


def tree_texts(roots: list[int], name: str) -> Iterator[str]:
    """/proc/<pid>/<name> of every process under `roots` (the roots included), one /proc scan."""
    kids = children_map()
    todo = list(roots)
    while todo:
        pid = todo.pop()
        todo.extend(kids.get(pid, []))
        try:
            yield Path(f"/proc/{pid}/{name}").read_text()
        except OSError:
            continue


def cpu_seconds(roots: list[int]) -> float:
    total = 0
    for stat in tree_texts(roots, "stat"):
        fields = stat[stat.rfind(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # utime + stime, all threads
    return total / TICK


def rss_kib(roots: list[int]) -> int:
    total = 0
    for status in tree_texts(roots, "status"):
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        total += int(match.group(1)) if match else 0
    return total


def machine_busy() -> float:
    """Busy CPU-seconds of the whole machine (every process, every core)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / TICK


def pinned(argv: list[str], cpus: str) -> list[str]:
    return ["taskset", "-c", cpus, *argv] if cpus else argv


class Proc:
    """A process in its own session, logging to a file, stopped by its process group id."""

    def __init__(
        self, name: str, argv: list[str], cpus: str, rundir: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        argv = pinned(argv, cpus)
        log(f"start {name}: {' '.join(shlex.quote(x) for x in argv)}")
        with (rundir / f"{name}.log").open("ab") as out:
            # cwd: `python -m` puts it first on sys.path, so it must be the tree under test.
            self.p = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
                cwd=(env or {}).get("PYTHONPATH", rundir),
            )

    def stop(self) -> None:
        if self.p.poll() is not None:
            return
        try:
            os.killpg(self.p.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.p.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.p.pid, signal.SIGKILL)
            self.p.wait(5)


class Target:
    """One proxy under test: an ECDSA port and an RSA port, backed by the same plain backend."""

    def __init__(
        self, name: str, kind: str, args: argparse.Namespace, rundir: Path, source: Path = REPO
    ) -> None:
        self.name, self.kind, self.args, self.rundir, self.source = name, kind, args, rundir, source
        self.procs: list[Proc] = []
        self.port_ecdsa = self.port_rsa = 0
        self.starts = 0

    def start(self) -> None:
        a, rd = self.args, self.rundir
        self.starts += 1
        self.port_ecdsa, self.port_rsa = free_port(), free_port()
        tag = f"{self.name}-{self.starts}"
        if self.kind in ("nginx-stream", "nginx-http"):
            conf = rd / f"{tag}.conf"
            render(
                CONF / f"{self.kind}.conf",
                conf,
                {
                    "RUNDIR": rd,
                    "CERTDIR": a.certs,
                    "BACKEND_PORT": a.backend_port,
                    "NAME": tag,
                    "PORT_ECDSA": self.port_ecdsa,
                    "PORT_RSA": self.port_rsa,
                    "WORKERS": a.workers,
                    "NGX_PROXY_BUF": a.nginx_buffer,
                    "PROTOCOLS": "TLSv1.2 TLSv1.3" if a.tls13 else "TLSv1.2",
                    "SESSION_CACHE": a.nginx_session_cache,
                },
            )
            self.procs.append(
                Proc(
                    tag,
                    ["nginx", "-p", str(rd), "-c", str(conf), "-g", "daemon off;"],
                    a.proxy_cpus,
                    rd,
                )
            )
        else:
            env = dict(os.environ, PYTHONPATH=str(self.source))
            for port, cert in ((self.port_ecdsa, "ecdsa"), (self.port_rsa, "rsa")):
                conf = rd / f"{tag}-{cert}.yaml"
                conf.write_text(
                    fopproxy_config(port, cert, a)
                    + ("mode: http\n" if self.kind == "fopproxy-http" else "")
                )
                minimal = self.kind == "minimal"
                program = [str(HERE / "minimal_relay.py")] if minimal else ["-m", "fopproxy"]
                self.procs.append(
                    Proc(
                        f"{tag}-{cert}",
                        [a.python, *program, "-c", str(conf)],
                        a.proxy_cpus,
                        rd,
                        env,
                    )
                )
        for port in (self.port_ecdsa, self.port_rsa):
            if not wait_port(port):
                raise RuntimeError(f"{self.name} did not listen on {port} (logs in {rd})")

    def pids(self, cert: str | None = None) -> list[int]:
        if cert is None or self.kind.startswith("nginx"):
            return [p.p.pid for p in self.procs]
        return [p.p.pid for p in self.procs if p.name.endswith(cert)]

    def cpu(self) -> float:
        return cpu_seconds(self.pids())

    def alive(self) -> bool:
        return all(p.p.poll() is None for p in self.procs)

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()
        self.procs = []

    def restart(self) -> None:
        self.stop()
        self.start()


def fopproxy_config(port: int, cert: str, a: argparse.Namespace) -> str:
    """fopproxy's defaults plus what a production sidecar runs with: metrics, connection logs."""
    return f"""\
listen: "127.0.0.1:{port}"
backend: "127.0.0.1:{a.backend_port}"
server_name: "{SERVER_NAME}"
tls:
  certificates:
    - {{cert: "{a.certs}/{cert}.crt", key: "{a.certs}/{cert}.key"}}
  profile: {"card-fop-tls13" if getattr(a, "tls13", False) else "card-fop"}
workers: {a.workers}
logging:
  connections: true
metrics:
  listen: "127.0.0.1:{free_port()}"
{a.fopproxy_extra}
"""


# ---- workloads -----------------------------------------------------------------------------

UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}
TIME_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}


def parse_wrk(out: str) -> dict[str, Any]:
    r: dict[str, Any] = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    r["rps"] = float(m.group(1)) if m else 0.0
    m = re.search(r"Transfer/sec:\s+([\d.]+)([KMG]?B)", out)
    r["MBps"] = float(m.group(1)) * UNITS[m.group(2)] / 1e6 if m else 0.0
    for q in ("50", "99"):
        m = re.search(rf"^\s+{q}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.MULTILINE)
        if m:
            r[f"p{q}_ms"] = float(m.group(1)) * TIME_MS[m.group(2)]
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    r["errors"] = sum(map(int, m.groups())) if m else 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    r["errors"] += int(m.group(1)) if m else 0
    m = re.search(r"(\d+) requests in", out)
    r["requests"] = int(m.group(1)) if m else 0
    return r


class Measure:
    """CPU of the proxy, the backend, our load generators and everyone else over one run."""

    def __init__(self, target: Target, backend: Proc) -> None:
        self.target, self.backend = target, backend
        self.c0, self.b0 = target.cpu(), cpu_seconds([backend.p.pid])
        self.ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.s0, self.t0 = machine_busy(), time.time()

    def done(self, r: dict[str, Any]) -> dict[str, Any]:
        wall = time.time() - self.t0
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        r["wall"] = wall
        r["proxy_cpu"] = (self.target.cpu() - self.c0) / wall
        r["backend_cpu"] = (cpu_seconds([self.backend.p.pid]) - self.b0) / wall
        r["load_cpu"] = (ru1.ru_utime - self.ru0.ru_utime + ru1.ru_stime - self.ru0.ru_stime) / wall
        r["foreign_cpu"] = max(
            0.0,
            (machine_busy() - self.s0) / wall - r["proxy_cpu"] - r["backend_cpu"] - r["load_cpu"],
        )
        proxy_cpu_s = r["proxy_cpu"] * wall
        r["eff"] = (
            (r["MBps"] * wall if "MBps" in r and r.get("bulk") else r["requests"]) / proxy_cpu_s
            if proxy_cpu_s > 0
            else 0.0
        )
        return r


def run_hs(workload: str, t: Target, a: argparse.Namespace, backend: Proc) -> dict[str, Any]:
    port = t.port_rsa if workload.endswith("rsa") else t.port_ecdsa
    argv = pinned(
        [a.hsload, "-a", f"127.0.0.1:{port}", "-c", str(a.hs_conns), "-d", f"{a.duration}s"]
        + (["-resume"] if workload.startswith("res-") else [])
        + (["-tls13"] if a.tls13 else []),
        a.load_cpus,
    )
    env = dict(os.environ, GOMAXPROCS=str(a.load_count))
    m = Measure(t, backend)
    out = subprocess.run(
        argv, check=False, capture_output=True, text=True, timeout=a.duration + 60, env=env
    ).stdout
    try:
        j = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        j = {"ok": 0, "errors": -1, "rps": 0.0}
    r = {
        "rps": j["rps"],
        "requests": j["ok"],
        "errors": j["errors"],
        "p50_ms": j.get("p50_ms"),
        "p99_ms": j.get("p99_ms"),
        "resumed": j.get("resumed"),
        "cipher": j.get("cipher"),
        "first_error": j.get("first_error"),
    }
    return m.done(r)


def run_wrk(workload: str, t: Target, a: argparse.Namespace, backend: Proc) -> dict[str, Any]:
    conns, path = {
        "ka": (a.ka_conns, "/ok"), "bulk": (a.bulk_conns, "/1m"), "resw": (a.hs_conns, "/ok"),
        "resw-rsa": (a.hs_conns, "/ok"),
    }[workload]
    # resw: wrk reconnecting for every request; wrk offers its last session on each reconnect.
    close = ["-H", "Connection: close"] if workload.startswith("resw") else []
    port = t.port_rsa if workload.endswith("rsa") else t.port_ecdsa
    argv = pinned(
        [
            "wrk",
            f"-t{a.wrk_threads}",
            f"-c{conns}",
            f"-d{a.duration}s",
            "--latency",
            *close,
            f"https://127.0.0.1:{port}{path}",
        ],
        a.load_cpus,
    )
    m = Measure(t, backend)
    out = subprocess.run(
        argv, check=False, capture_output=True, text=True, timeout=a.duration + 60
    ).stdout
    r = parse_wrk(out)
    r["bulk"] = workload == "bulk"
    return m.done(r)


def run_mem(t: Target, a: argparse.Namespace, backend: Proc) -> dict[str, Any]:
    """RSS growth per idle TLS connection that has carried mem_bytes each way (fresh process)."""
    t.restart()
    pids = t.pids("ecdsa")
    addr = f"127.0.0.1:{t.port_ecdsa}"
    base = [
        a.hsload,
        "-mode",
        "idle",
        "-a",
        addr,
        "-p",
        "/64k",
        "-up",
        str(a.mem_bytes),
        "-c",
        str(a.hs_conns),
    ]
    env = dict(os.environ, GOMAXPROCS=str(a.load_count))
    # Warm-up: allocator arenas, the shared read buffer, imports done lazily; then closed.
    subprocess.run(
        pinned([*base, "-n", "200"], a.load_cpus),
        input="",
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    time.sleep(1.0)
    rss0 = rss_kib(pids)
    m = Measure(t, backend)
    with subprocess.Popen(
        pinned([*base, "-n", str(a.mem_conns), "-hold", "120s"], a.load_cpus),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    ) as holder:
        assert holder.stdout is not None
        assert holder.stdin is not None
        line = holder.stdout.readline()
        # Read RSS once the connections are idle: after 1 s (what earlier runs reported) and
        # after --mem-settle s, long enough for fopproxy's sweep (every second) to free the
        # buffers of connections quiet for a whole sweep. nginx keeps its buffers either way.
        time.sleep(1.0)
        rss_1s = rss_kib(pids)
        time.sleep(max(0.0, a.mem_settle - 1.0))
        rss1 = rss_kib(pids)
        holder.stdin.close()
        holder.wait(60)
    j = json.loads(line) if line.strip() else {"ok": 0, "errors": -1}
    opened = int(j.get("open", 0))
    r = {
        "requests": opened,
        "errors": j.get("errors", -1),
        "rss0_kib": rss0,
        "rss1_kib": rss1,
        "kib_per_conn": (rss1 - rss0) / opened if opened else float("nan"),
        "kib_per_conn_1s": (rss_1s - rss0) / opened if opened else float("nan"),
        "first_error": j.get("first_error"),
        "p50_ms": j.get("p50_ms"),
        "p99_ms": j.get("p99_ms"),
    }
    return m.done(r)


PRIMARY = {
    "hs-ecdsa": "rps", "hs-rsa": "rps", "res-ecdsa": "rps", "res-rsa": "rps",
    "ka": "rps", "bulk": "MBps", "mem": "kib_per_conn", "resw": "rps",
    "resw-rsa": "rps",
}


def run_one(workload: str, t: Target, a: argparse.Namespace, backend: Proc) -> dict[str, Any]:
    if workload.startswith(("hs-", "res-")):
        return run_hs(workload, t, a, backend)
    if workload == "mem":
        return run_mem(t, a, backend)
    return run_wrk(workload, t, a, backend)


# ---- report --------------------------------------------------------------------------------


def med(xs: list[float | None]) -> float:
    """Median of what was measured: missing (None) and NaN values are left out."""
    present = [x for x in xs if x is not None and x == x]
    return statistics.median(present) if present else float("nan")


def report(
    results: dict[str, dict[str, list[dict[str, Any]]]],
    names: list[str],
    base: str,
    a: argparse.Namespace,
) -> None:
    print(
        f"\n== fopproxy vs {base}: proxies on CPU(s) '{a.proxy_cpus}', load on '{a.load_cpus}', "
        f"workers {a.workers}, {a.rounds} rounds x {a.duration}s"
    )
    print(
        f"{'workload':9} {'target':14} {'median':>10} {'unit':6} {'ratio':>6} {'per-cpu-s':>10} "
        f"{'eff':>6} {'p50ms':>7} {'p99ms':>7} {'pxcpu':>5}  runs"
    )
    verdicts = []
    for wl, per in results.items():
        key = PRIMARY[wl]
        unit = {"rps": "/s", "MBps": "MB/s", "kib_per_conn": "KiB/c"}[key]
        b_med, b_eff = med([r[key] for r in per[base]]), med([r["eff"] for r in per[base]])
        for name in names:
            rs = per.get(name, [])
            if not rs:
                continue
            m, e = med([r[key] for r in rs]), med([r["eff"] for r in rs])
            print(
                f"{wl:9} {name:14} {m:10.1f} {unit:6} {m / b_med if b_med else float('nan'):6.3f} "
                f"{e:10.1f} {e / b_eff if b_eff else float('nan'):6.3f} "
                f"{med([r.get('p50_ms') for r in rs]):7.2f} "
                f"{med([r.get('p99_ms') for r in rs]):7.2f} "
                f"{med([r['proxy_cpu'] for r in rs]):5.2f}  "
                + " ".join(f"{r[key]:.0f}" for r in rs)
                + (
                    f"  errors={sum(r['errors'] for r in rs)}"
                    if any(r["errors"] for r in rs)
                    else ""
                )
            )
        for name in names:
            if name == base or not per.get(name):
                continue
            rs, bs = per[name], per[base]
            if wl == "mem":
                mine, theirs = med([r[key] for r in rs]), b_med
                line = (
                    f"RATIO mem      {name}/{base}: {mine:.1f} vs {theirs:.1f} KiB per idle TLS "
                    f"connection after {a.mem_bytes // 1024} KiB each way "
                    f"(RSS {med([r['rss0_kib'] for r in rs]) / 1024:.0f}->"
                    f"{med([r['rss1_kib'] for r in rs]) / 1024:.0f} MiB for {a.mem_conns} conns, "
                    f"idle {a.mem_settle:g}s; after 1s: "
                    f"{med([r['kib_per_conn_1s'] for r in rs]):.1f} vs "
                    f"{med([r['kib_per_conn_1s'] for r in per[base]]):.1f})"
                )
                verdicts.append((f"mem {name}", mine <= theirs, f"{mine:.1f} <= {theirs:.1f} KiB"))
                print(line)
                continue
            paired = [x["eff"] / y["eff"] for x, y in zip(rs, bs, strict=False) if y["eff"]]
            raw = [x[key] / y[key] for x, y in zip(rs, bs, strict=False) if y[key]]
            eff = med([r["eff"] for r in rs]) / b_eff if b_eff else float("nan")
            p99, bp99 = med([r.get("p99_ms") for r in rs]), med([r.get("p99_ms") for r in bs])
            print(
                f"RATIO {wl:8} {name}/{base}: throughput {med(raw):.3f} "
                f"[{min(raw, default=0):.2f}..{max(raw, default=0):.2f}], per-proxy-CPU-second "
                f"{eff:.3f} (paired rounds {med(paired):.3f} "
                f"[{min(paired, default=0):.2f}..{max(paired, default=0):.2f}]), "
                f"p99 {p99:.2f}ms vs {bp99:.2f}ms"
            )
            if wl.startswith("res-"):
                for who, runs in ((name, rs), (base, bs)):
                    done = sum(r["requests"] for r in runs)
                    resumed = sum(r.get("resumed") or 0 for r in runs)
                    print(
                        f"RESUMED {wl:8} {who}: {resumed}/{done} "
                        f"({100 * resumed / done if done else float('nan'):.1f} %)"
                    )
            targets = HTTP_TARGETS if a.http else TARGETS
            if wl in targets:
                ok = eff >= targets[wl]
                detail = f"eff {eff:.3f} >= {targets[wl]}"
                if wl == "ka" and not a.http:
                    ok = ok and p99 <= KA_P99_LIMIT * bp99
                    detail += (
                        f", p99 ratio {p99 / bp99 if bp99 else float('nan'):.2f} <= {KA_P99_LIMIT}"
                    )
                verdicts.append((f"{wl} {name}", ok, detail))
    every = [r for per in results.values() for rs in per.values() for r in rs]
    if every:
        foreign = [r["foreign_cpu"] for r in every]
        busy = sum(1 for x in foreign if x > 0.15)
        print(
            "NOISE: CPU used by processes the bench did not start: "
            f"median {med(foreign):.2f} cores, "
            f"max {max(foreign):.2f}; {busy} of {len(foreign)} runs above 0.15 cores"
            + (
                "  <-- machine was busy: trust per-CPU-second ratios, rerun with more --rounds"
                if busy > len(foreign) // 4
                else ""
            )
        )
    for what, ok, detail in verdicts:
        print(f"TARGET {'met ' if ok else 'MISS'} {what}: {detail}")


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run finally: stop what we started
    signal.signal(signal.SIGINT, lambda *_: sys.exit(130))
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--workloads", default="hs-ecdsa,hs-rsa,ka,bulk,mem")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mem-rounds", type=int, default=1, help="mem restarts the proxies each round")
    ap.add_argument("--duration", type=int, default=4, help="seconds per workload run")
    ap.add_argument(
        "--workers", type=int, default=1, help="fopproxy workers and nginx worker_processes"
    )
    ap.add_argument(
        "--proxy-cpus", default="1", help="taskset list for the proxies ('' = unpinned)"
    )
    ap.add_argument(
        "--load-cpus", default="0", help="taskset list for load and backend ('' = unpinned)"
    )
    ap.add_argument("--hs-conns", type=int, default=32)
    ap.add_argument("--ka-conns", type=int, default=50)
    ap.add_argument("--bulk-conns", type=int, default=8)
    ap.add_argument("--wrk-threads", type=int, default=0, help="default: one per load CPU")
    ap.add_argument("--mem-conns", type=int, default=5000)
    ap.add_argument("--mem-bytes", type=int, default=65536)
    ap.add_argument(
        "--mem-settle",
        type=float,
        default=3.0,
        help="seconds the mem connections stay idle before RSS is read (also read at 1 s)",
    )
    ap.add_argument("--nginx-buffer", default="16k", help="nginx-stream proxy_buffer_size")
    ap.add_argument(
        "--nginx-session-cache",
        default="shared:SSL:10m",
        help="nginx-stream ssl_session_cache ('none' as in runs before the res-* workloads)",
    )
    ap.add_argument(
        "--tls13",
        action="store_true",
        help="TLS 1.3 allowed on both sides (fopproxy card-fop-tls13); default TLS 1.2 only",
    )
    ap.add_argument("--python", default=sys.executable, help="interpreter that runs fopproxy")
    ap.add_argument("--fopproxy-extra", default="", help="YAML lines appended to fopproxy's config")
    ap.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="NAME=SOURCE_DIR",
        help="another fopproxy checkout to compare (A/B of relay changes)",
    )
    ap.add_argument("--no-nginx", action="store_true", help="skip nginx-stream (A/B runs only)")
    ap.add_argument(
        "--also-tcp", action="store_true", help="with --http: also fopproxy in tcp mode (its cost)"
    )
    ap.add_argument(
        "--http",
        action="store_true",
        help="fopproxy in mode: http vs nginx's http proxy with upstream keep-alive "
        "(default workloads then: ka,bulk)",
    )
    ap.add_argument(
        "--minimal",
        action="store_true",
        help="also run bench/minimal_relay.py (py-minimal): the floor of a Python relay",
    )
    ap.add_argument("--hsload", default=str(HERE / ".work" / "hsload"))
    ap.add_argument("--certs", default=str(HERE / ".work" / "certs"))
    ap.add_argument("--rundir", default=str(HERE / "results" / time.strftime("run-%Y%m%dT%H%M%S")))
    ap.add_argument("--json", default=None, help="write every raw result here")
    a = ap.parse_args()
    if a.http and a.workloads == ap.get_default("workloads"):
        a.workloads = "ka,bulk"
    a.load_count = (
        len(os.sched_getaffinity(0))
        if not a.load_cpus
        else len({c for part in a.load_cpus.split(",") for c in _cpu_range(part)})
    )
    a.wrk_threads = a.wrk_threads or a.load_count
    ensure_certs(Path(a.certs))
    rd = Path(a.rundir)
    rd.mkdir(parents=True, exist_ok=True)
    www = rd / "www"
    www.mkdir(exist_ok=True)
    (www / "1m").write_bytes(os.urandom(1 << 20))
    (www / "64k").write_bytes(os.urandom(a.mem_bytes))
    a.backend_port = free_port()
    render(
        CONF / "backend-nginx.conf",
        rd / "backend.conf",
        {"RUNDIR": rd, "DOCROOT": www, "BACKEND_PORT": a.backend_port},
    )
    targets: list[Target] = []
    ours = "fopproxy-http" if a.http else "fopproxy"
    if not a.no_nginx:
        nginx = "nginx-http" if a.http else "nginx-stream"
        targets.append(Target(nginx, nginx, a, rd))
    targets.append(Target(ours, ours, a, rd))
    for spec in a.also:
        name, _, src = spec.partition("=")
        targets.append(Target(name, ours, a, rd, Path(src).resolve()))
    if a.http and a.also_tcp:
        targets.append(Target("fopproxy-tcp", "fopproxy", a, rd))
    if a.minimal:
        targets.append(Target("py-minimal", "minimal", a, rd))
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    backend = Proc(
        "backend",
        ["nginx", "-p", str(rd), "-c", str(rd / "backend.conf"), "-g", "daemon off;"],
        a.load_cpus,
        rd,
    )
    log(f"run dir: {rd} (configs and logs of every process)")
    try:
        if not wait_port(a.backend_port):
            raise RuntimeError("backend did not start")
        for t in targets:
            t.start()
        for t in targets:
            o = subprocess.run(
                ["openssl", "s_client", "-brief", "-connect", f"127.0.0.1:{t.port_rsa}"],
                input="",
                check=False,
                capture_output=True,
                text=True,
                timeout=10,
            )
            neg = re.findall(
                r"(?:Protocol version|Ciphersuite|Peer signature type): *(.*)", o.stdout + o.stderr
            )
            log(f"negotiated {t.name} (RSA port): {' | '.join(neg)}")
        workloads = a.workloads.split(",")
        for rnd in range(a.rounds):
            order = targets if rnd % 2 == 0 else targets[::-1]
            for wl in workloads:
                if wl == "mem" and rnd >= a.mem_rounds:
                    continue
                for t in order:
                    if not t.alive():
                        raise RuntimeError(f"{t.name} died (logs in {rd})")
                    r = run_one(wl, t, a, backend)
                    results.setdefault(wl, {}).setdefault(t.name, []).append(r)
                    log(
                        f"round {rnd} {wl:8} {t.name:14} {PRIMARY[wl]}={r.get(PRIMARY[wl], 0):.1f} "
                        f"eff={r['eff']:.1f} p50={r.get('p50_ms')} p99={r.get('p99_ms')} "
                        f"proxy_cpu={r['proxy_cpu']:.2f} load_cpu={r['load_cpu']:.2f} "
                        f"backend_cpu={r['backend_cpu']:.2f} foreign_cpu={r['foreign_cpu']:.2f} "
                        f"errors={r['errors']}"
                        + (f" first_error={r['first_error']}" if r.get("first_error") else "")
                    )
    finally:
        for t in targets:
            t.stop()
        backend.stop()
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    names = [t.name for t in targets]
    report(results, names, names[0], a)
    return 0


def _cpu_range(part: str) -> list[str]:
    lo, _, hi = part.partition("-")
    return [str(c) for c in range(int(lo), int(hi or lo) + 1)]


if __name__ == "__main__":
    sys.exit(main())
