"""The command line: parses arguments, reports errors to the user and picks the exit code.

It prints its one-line errors to stderr; the log (`fopproxy.logs`) writes there too.

Exit codes: 0 success; 1 runtime failure (cannot bind, workers crash, forced shutdown);
2 usage, configuration or certificate error (the message names the key and the problem).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from fopproxy import __version__, signals
from fopproxy.errors import ConfigError, FopproxyError

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_CONFIG = 2

DESCRIPTION = """\
fopproxy terminates TLS in front of a plain HTTP backend with a context that meets Google's
Card FOP / Standard Payments transport rules by construction (TLS 1.2+, six ECDHE suites),
streams bytes both ways, exports Prometheus metrics and hot-reloads certificates.
"""

EPILOG = """\
examples:
  fopproxy -c proxy.yaml           run the proxy (same as: fopproxy run -c proxy.yaml)
  fopproxy demo                    TLS on https://localhost:8443/ in front of a built-in backend
  fopproxy check -c proxy.yaml     audit config and certificates against the rules (no port opened)
  fopproxy scan HOST:443           scan any live endpoint against the same rules
  fopproxy cert selfsigned --name api.example.com --out tls/
                                   a key + self-signed certificate that pass check

exit codes: 0 ok, 1 runtime failure, 2 bad usage, configuration or certificate
  (check/scan: 0 every rule passes, warnings allowed; 1 a rule fails; 2 unreadable config/target)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fopproxy",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"fopproxy {__version__}")
    parser.add_argument("-c", "--config", help="YAML configuration file (runs the proxy)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser("run", help="run the proxy", description="Run the proxy.")
    run.add_argument("-c", "--config", required=True, help="YAML configuration file")

    demo = commands.add_parser(
        "demo",
        help="run a demo endpoint on loopback",
        description="A TLS endpoint on 127.0.0.1 with a generated self-signed certificate "
        "in front of a built-in backend.",
    )
    demo.add_argument("--port", type=int, default=8443, help="TLS port (default 8443)")
    demo.add_argument("--metrics-port", type=int, default=9100, help="metrics port (default 9100)")
    demo.add_argument(
        "--dir", type=Path, default=None,
        help="keep the certificates in this folder of yours (default: a fresh private "
        "temporary folder, removed on exit)",
    )

    ticket = commands.add_parser(
        "ticket-key",
        help="write a fresh session-ticket key file (tls.session_tickets.key_file)",
        description="Write FILE (mode 0600, never over an existing file) with fresh random "
        "80-byte session-ticket keys in nginx's format, for several fopproxy pods (or nginx and "
        "HAProxy next to them) to share. Rotate by putting a new key first: the first key "
        "encrypts, all decrypt.",
    )
    ticket.add_argument("file", help="the key file to create")
    ticket.add_argument("--keys", type=int, default=1, choices=range(1, 9), metavar="N",
                        help="how many keys to write (1-8, default 1)")
    from fopproxy.compliance.cli import add_commands

    add_commands(commands)
    return parser


def _error(message: str) -> None:
    print(f"fopproxy: {message}", file=sys.stderr)


def _run(config_path: str) -> int:
    from fopproxy.config import load_config
    from fopproxy.logs import configure_logging
    from fopproxy.process import run

    config = load_config(config_path)
    configure_logging(config.logging)
    try:
        code = run(config)
    except OSError as exc:
        _error(f"cannot listen on {exc.filename or config.listen}: {exc.strerror or exc}")
        return EXIT_RUNTIME
    return code


def _ticket_key(path: str, keys: int) -> int:
    from fopproxy.tickets import write_key_file

    try:
        write_key_file(path, keys)
    except OSError as exc:
        _error(f"cannot write {path}: {exc.strerror or exc}")
        return EXIT_CONFIG
    print(f"wrote {keys} session-ticket key(s) to {path} (mode 0600)")
    return EXIT_OK


def _dispatch(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.command == "demo":
        from fopproxy.config import LoggingConfig
        from fopproxy.demo import run_demo
        from fopproxy.logs import configure_logging

        configure_logging(LoggingConfig())
        return run_demo(args.port, args.metrics_port, args.dir)
    if args.command == "ticket-key":
        return _ticket_key(args.file, args.keys)
    if args.command in {"check", "scan", "cert"}:
        from fopproxy.compliance.cli import dispatch

        signals.unblock()  # no event loop here to handle them: Ctrl-C and SIGTERM act at once
        return dispatch(args)
    if args.command == "run" or (args.command is None and args.config):
        return _run(args.config)
    parser.print_help(sys.stderr)
    return EXIT_CONFIG


def main(argv: Sequence[str] | None = None) -> int:
    # First thing: a SIGHUP (systemctl reload) or SIGTERM sent while we import and load the
    # config must wait for the event loop's handlers, not kill the process or get lost.
    previous = signals.block()
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        return _dispatch(args, parser)
    except ConfigError as exc:
        for problem in exc.problems:
            _error(f"config error: {problem}")
        return EXIT_CONFIG
    except FopproxyError as exc:
        _error(str(exc))
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        logging.shutdown()
        signals.restore(previous)
