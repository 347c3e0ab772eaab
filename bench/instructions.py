#!/usr/bin/env python3
"""Instructions per connection / request / MB of fopproxy under callgrind: a noise-free A/B.

Wall-clock and even per-CPU-second figures wobble when the machine is shared; instruction counts
of a fixed workload do not. Each source tree given (`NAME=DIR`, default: this checkout) runs
fopproxy under `valgrind --tool=callgrind` with collection switched on only while the load runs,
so start-up is not counted. Workloads: hs (N full ECDSA handshakes, GET /ok, close), res (the
same, each client offering the ticket it last got: resumed handshakes), resw (wrk reconnecting
for every request, offering its last session: ID and ticket), ka (wrk
keep-alive for a few seconds; instructions per request), bulk (1 MiB answers; per MB).

    python3 bench/instructions.py --workloads hs,ka base=/tmp/old-checkout new=. nginx=nginx
    python3 bench/instructions.py --workloads ka tcp=. http=http:. nginx-http=nginx-http

A DIR of `http:DIR` runs that tree in `mode: http`, `minimal:DIR` that tree's
bench/minimal_relay.py (the floor of a Python relay); `nginx-http` is nginx's http proxy with
upstream keep-alive (bench/conf/nginx-http.conf), the baseline for it. Without bench/.work/hsload
the warm-up is a short wrk run (ka and bulk need no Go).

Needs valgrind, nginx, wrk and bench/.work/hsload (bench/run.sh builds it). Loopback only.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent


def _driver() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_driver", HERE / "driver.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


d = _driver()


def callgrind_total(path: Path) -> int:
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            total = max(total, int(line.split()[1]))
    return total


def measure(
    name: str,
    source: Path,
    workload: str,
    a: argparse.Namespace,
    rd: Path,
    http: bool = False,
    minimal: bool = False,
) -> float:
    port = d.free_port()
    a.backend_port = a.backend_port_
    out = rd / f"{name}-{workload}.callgrind"
    argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
    nginx = str(source) in ("nginx", "nginx-http")
    if nginx:  # the baseline, one process (no master), same TLS policy
        conf = rd / f"{name}-{workload}.conf"
        d.render(
            d.CONF / ("nginx-http.conf" if str(source) == "nginx-http" else "nginx-stream.conf"),
            conf,
            {
                "RUNDIR": rd,
                "CERTDIR": a.certs,
                "BACKEND_PORT": a.backend_port,
                "NAME": name,
                "PORT_ECDSA": port,
                "PORT_RSA": d.free_port(),
                "WORKERS": 1,
                "NGX_PROXY_BUF": "16k",
                "PROTOCOLS": "TLSv1.2",
                "SESSION_CACHE": "shared:SSL:10m",
            },
        )
        argv += ["nginx", "-p", str(rd), "-c", str(conf), "-g", "daemon off; master_process off;"]
    else:
        conf = rd / f"{name}-{workload}.yaml"
        conf.write_text(d.fopproxy_config(port, "ecdsa", a) + ("mode: http\n" if http else ""))
        program = [str(HERE / "minimal_relay.py")] if minimal else ["-m", "fopproxy"]
        argv += [a.python, *program, "-c", str(conf)]
    env = None if nginx else dict(os.environ, PYTHONPATH=str(source))
    proc = d.Proc(f"{name}-{workload}", argv, "", rd, env)
    try:
        if not d.wait_port(port, timeout=240):
            raise RuntimeError(f"{name} did not start under valgrind (logs in {rd})")
        warm = [a.hsload, "-a", f"127.0.0.1:{port}", "-c", "2", "-total", "20", "-d", "120s"]
        if not Path(a.hsload).exists() and workload != "hs":
            warm = ["wrk", "-t1", "-c2", "-d2s", f"https://127.0.0.1:{port}/ok"]
        subprocess.run(warm, check=False, capture_output=True, timeout=300)
        subprocess.run(
            ["callgrind_control", "-i", "on", str(proc.p.pid)],
            check=True,
            capture_output=True,
            timeout=60,
        )
        if workload in ("hs", "res"):
            argv = [
                a.hsload,
                "-a",
                f"127.0.0.1:{port}",
                "-c",
                "4",
                "-total",
                str(a.count),
                "-d",
                "600s",
                *(["-resume"] if workload == "res" else []),
            ]
            text = subprocess.run(
                argv, check=False, capture_output=True, text=True, timeout=900
            ).stdout
            units = float(re.search(r'"ok":(\d+)', text).group(1))  # type: ignore[union-attr]
        else:
            path = "/1m" if workload == "bulk" else "/ok"
            conns = "2" if workload == "bulk" else "8"
            argv = [
                "wrk",
                "-t1",
                f"-c{conns}",
                f"-d{a.seconds}s",
                *(["-H", "Connection: close"] if workload == "resw" else []),
                f"https://127.0.0.1:{port}{path}",
            ]
            text = subprocess.run(
                argv, check=False, capture_output=True, text=True, timeout=a.seconds + 120
            ).stdout
            parsed = d.parse_wrk(text)
            units = float(parsed["requests"]) if workload != "bulk" else parsed["MBps"] * a.seconds
        subprocess.run(
            ["callgrind_control", "-i", "off", str(proc.p.pid)],
            check=True,
            capture_output=True,
            timeout=60,
        )
        subprocess.run(
            ["callgrind_control", "-d", str(proc.p.pid)],
            check=True,
            capture_output=True,
            timeout=60,
        )
        time.sleep(1.0)
    finally:
        proc.stop()
    dumps = sorted(rd.glob(f"{out.name}*"))
    total = sum(callgrind_total(p) for p in dumps)
    return total / units if units else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("trees", nargs="*", default=[f"this={HERE.parent}"], metavar="NAME=DIR")
    ap.add_argument("--workloads", default="hs,ka")
    ap.add_argument("--count", type=int, default=300, help="handshakes for hs")
    ap.add_argument("--seconds", type=int, default=8, help="wrk run for ka and bulk")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--hsload", default=str(HERE / ".work" / "hsload"))
    ap.add_argument("--certs", default=str(HERE / ".work" / "certs"))
    ap.add_argument("--rundir", default=str(HERE / "results" / time.strftime("ir-%Y%m%dT%H%M%S")))
    a = ap.parse_args()
    a.workers, a.fopproxy_extra, a.tls13 = 1, "", False  # what driver.fopproxy_config reads
    d.ensure_certs(Path(a.certs))
    rd = Path(a.rundir)
    (rd / "www").mkdir(parents=True, exist_ok=True)
    (rd / "www" / "1m").write_bytes(os.urandom(1 << 20))
    a.backend_port_ = d.free_port()
    d.render(
        d.CONF / "backend-nginx.conf",
        rd / "backend.conf",
        {"RUNDIR": rd, "DOCROOT": rd / "www", "BACKEND_PORT": a.backend_port_},
    )
    backend = d.Proc(
        "backend",
        ["nginx", "-p", str(rd), "-c", str(rd / "backend.conf"), "-g", "daemon off;"],
        "",
        rd,
    )
    unit = {
        "hs": "connection", "res": "connection", "resw": "connection", "ka": "request",
        "bulk": "MB",
    }
    try:
        d.wait_port(a.backend_port_)
        for workload in a.workloads.split(","):
            for tree in a.trees:
                name, _, src = tree.partition("=")
                http = src.startswith("http:")
                minimal = src.startswith("minimal:")
                src = src.removeprefix("http:").removeprefix("minimal:")
                source = Path(src) if src in ("nginx", "nginx-http") else Path(src).resolve()
                ir = measure(name, source, workload, a, rd, http, minimal)
                print(
                    f"{workload:5} {name:12} {ir / 1000:10.1f} k instructions per {unit[workload]}",
                    flush=True,
                )
    finally:
        backend.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
