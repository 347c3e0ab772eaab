"""README's first command: `fopproxy demo` gives a TLS endpoint that curl can use as written.

The demo keeps keys in a folder: a fresh private one (never a fixed /tmp name another local user
could create first or plant symlinks in), or a `--dir` of ours that nobody else can write.
"""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import time
from pathlib import Path

from tests.support.backends import free_port
from tests.support.proxy import fopproxy_command, fopproxy_env

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_curl_pattern(tmp: Path, port: int) -> re.Pattern[str]:
    """README's curl line, with its placeholder folder suffix as the only free part."""
    (line,) = [x for x in README.read_text().splitlines() if x.startswith("curl --cacert")]
    assert "/tmp/fopproxy-demo-XXXXXXXX/" in line and ":8443/" in line, line
    pattern = re.escape(line.replace("/tmp/", f"{tmp}/").replace(":8443/", f":{port}/"))
    return re.compile(pattern.replace("XXXXXXXX", "[A-Za-z0-9_]+"))


def start_demo(tmp: Path, *args: str) -> tuple[subprocess.Popen[str], int, str]:
    """Starts the demo with TMPDIR=tmp; returns it, its port and its output up to 'listening on'."""
    port = free_port()
    proc = subprocess.Popen(
        fopproxy_command("demo", "--port", str(port), "--metrics-port", str(free_port()), *args),
        stderr=subprocess.PIPE, text=True, env=fopproxy_env(TMPDIR=str(tmp)),
    )
    assert proc.stderr is not None
    output = ""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and "listening on" not in output:
        line = proc.stderr.readline()
        if not line:
            break
        output += line
    return proc, port, output


def stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0


def printed_curl(output: str) -> str:
    (line,) = [x for x in output.splitlines() if "curl --cacert" in x]
    return line.split("try:", 1)[1].strip()


def test_demo_endpoint_answers_the_printed_curl_line(tmp_path: Path) -> None:
    # Another local user got there first: the old fixed folder is a symlink to a folder they can
    # read. The demo must not write through it.
    planted = tmp_path / "elsewhere"
    planted.mkdir()
    (tmp_path / "fopproxy-demo").symlink_to(planted)
    proc, port, output = start_demo(tmp_path)
    try:
        assert "listening on" in output, output
        curl = printed_curl(output)
        assert readme_curl_pattern(tmp_path, port).fullmatch(curl), (curl, output)
        folder = Path(curl.split()[2]).parent
        assert folder.parent == tmp_path and folder.name.startswith("fopproxy-demo-")
        assert not any(planted.iterdir()), "wrote through the planted symlink"
        assert stat.S_IMODE(os.lstat(folder).st_mode) == 0o700
        for key in ("ecdsa.key", "rsa.key"):
            assert stat.S_IMODE((folder / key).stat().st_mode) == 0o600
        result = subprocess.run([*curl.split(), "-sS"], capture_output=True, text=True, timeout=20)
        assert result.returncode == 0, result.stderr
        assert "fopproxy demo backend" in result.stdout
        assert "GET / HTTP/1.1" in result.stdout
    finally:
        stop(proc)
    assert not folder.exists(), "the private folder (and its keys) outlived the demo"


def test_demo_dir_must_be_ours_and_not_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(target)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    for folder, why in ((link, "symlink"), (shared, "others may write")):
        result = subprocess.run(
            fopproxy_command("demo", "--port", str(free_port()), "--dir", str(folder)),
            capture_output=True, text=True, timeout=30, env=fopproxy_env(),
        )
        assert result.returncode == 2, result.stderr
        assert why in result.stderr
    assert not any(target.iterdir())
    assert not any(shared.iterdir())


def test_demo_dir_of_ours_is_used_and_kept(tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    proc, _, output = start_demo(tmp_path, "--dir", str(folder))
    try:
        assert "listening on" in output, output
        assert printed_curl(output).split()[2] == str(folder / "ca.pem")
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert stat.S_IMODE((folder / "rsa.key").stat().st_mode) == 0o600
    finally:
        stop(proc)
    assert (folder / "ca.pem").is_file()
