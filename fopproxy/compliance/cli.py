"""The `check`, `scan` and `cert` subcommands; `fopproxy.cli` owns printing errors and exiting.

Reports go to stdout (the table or `--json`), so `fopproxy check -c x.yaml --json > report.json`
is the evidence file; problems that stop a command raise FopproxyError (exit 2 in the CLI).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_commands(commands: Any) -> None:
    """Add the subcommands to `fopproxy`'s subparsers object."""
    check = commands.add_parser(
        "check",
        help="audit a config and its certificates against the rules (no port opened)",
        description="Static audit: one line per rule, PASS/WARN/FAIL and why. "
        "Exit 0 every rule passes (warnings allowed), 1 a rule fails, 2 the config cannot be read.",
    )
    check.add_argument("-c", "--config", required=True, help="YAML configuration file")
    check.add_argument("--json", action="store_true", help="print the JSON report instead")

    scan = commands.add_parser(
        "scan",
        help="scan a live TLS endpoint against the rules",
        description="Live client-side scan of any TLS endpoint: protocols, suites (each tried "
        "alone), server preference, certificates, hostname verification. Same rules and exit "
        "codes as check; 2 when the target cannot be reached.",
    )
    scan.add_argument(
        "target", metavar="HOST:PORT", help="endpoint to scan, e.g. api.example.com:443"
    )
    scan.add_argument("--servername", help="SNI and hostname to verify (default: HOST)")
    scan.add_argument(
        "--cafile", type=Path, help="extra trust anchors (PEM) for hostname verification"
    )
    scan.add_argument(
        "--timeout", type=float, default=5.0, help="seconds per handshake (default 5)"
    )
    scan.add_argument("--json", action="store_true", help="print the JSON report instead")

    cert = commands.add_parser(
        "cert",
        help="make or inspect certificates",
        description="Make a self-signed certificate, or show one.",
    )
    actions = cert.add_subparsers(dest="cert_command", metavar="ACTION", required=True)
    make = actions.add_parser(
        "selfsigned",
        help="write a self-signed key and certificate that pass check",
        description="Writes OUT/<key-type>.pem and OUT/<key-type>.key (0600) and prints the "
        "SHA-256 fingerprint to give Google.",
    )
    make.add_argument(
        "--name",
        action="append",
        required=True,
        help="DNS name (repeat for more; the first is the CN)",
    )
    make.add_argument("--key-type", choices=("ecdsa", "rsa"), default="ecdsa")
    make.add_argument("--days", type=int, default=397, help="validity in days (default 397)")
    make.add_argument("--out", type=Path, required=True, help="folder to write into")
    make.add_argument("--force", action="store_true", help="replace existing files")
    show = actions.add_parser(
        "show", help="print subject, names, issuer, validity, key, fingerprint"
    )
    show.add_argument("file", type=Path, help="PEM certificate or chain")


def dispatch(args: argparse.Namespace) -> int:
    if args.command == "check":
        from fopproxy.compliance.check import check_file

        report = check_file(args.config)
        print(report.render_json() if args.json else report.render_text(), end="")
        return report.exit_code
    if args.command == "scan":
        from fopproxy.compliance.scan import Target, parse_target, scan

        host, port = parse_target(args.target)
        target = Target(host, port, args.servername, args.cafile, args.timeout)
        report = scan(target)
        print(report.render_json() if args.json else report.render_text(), end="")
        return report.exit_code
    from fopproxy.compliance import certcmd

    if args.cert_command == "selfsigned":
        print(
            certcmd.make_self_signed(
                args.name, args.key_type, args.out, args.days, force=args.force
            ),
            end="",
        )
    else:
        print(certcmd.show(args.file), end="")
    return 0
