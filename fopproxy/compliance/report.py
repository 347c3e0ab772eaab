"""A report: the results of one `check` or `scan`, as an aligned table or as JSON.

The JSON shape is a public contract, described by `docs/compliance-report.schema.json`
(`SCHEMA_ID`); the tests validate every report they produce against it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from fopproxy import __version__
from fopproxy.compliance.rules import Result

SCHEMA_ID = "https://fopproxy.dev/schema/compliance-report-1.json"

EXIT_PASS = 0  # every rule passed (warnings and skips allowed)
EXIT_FAIL = 1  # at least one rule failed
EXIT_UNREADABLE = 2  # the config cannot be read, or the target cannot be reached


@dataclass
class Report:
    kind: Literal["check", "scan"]
    target: dict[str, object]
    results: list[Result] = field(default_factory=list)
    facts: dict[str, object] = field(default_factory=dict)
    generated_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def add(self, *results: Result) -> None:
        self.results.extend(results)

    def counts(self) -> dict[str, int]:
        counts = {"PASS": 0, "WARN": 0, "FAIL": 0, "SKIP": 0}
        for result in self.results:
            counts[result.status] += 1
        return counts

    @property
    def exit_code(self) -> int:
        return EXIT_FAIL if any(r.status == "FAIL" for r in self.results) else EXIT_PASS

    def to_json(self) -> dict[str, object]:
        counts = self.counts()
        return {
            "$schema": SCHEMA_ID,
            "tool": {"name": "fopproxy", "version": __version__},
            "kind": self.kind,
            "generated_at": self.generated_at.isoformat(timespec="seconds"),
            "target": self.target,
            "results": [
                {
                    "rule": r.rule,
                    "card_rule": r.card_rule,
                    "title": r.title,
                    "subject": r.subject,
                    "status": r.status,
                    "detail": r.detail,
                    "facts": r.facts,
                }
                for r in self.results
            ],
            "facts": self.facts,
            "summary": {
                "pass": counts["PASS"],
                "warn": counts["WARN"],
                "fail": counts["FAIL"],
                "skip": counts["SKIP"],
                "verdict": "FAIL" if self.exit_code else "PASS",
                "exit_code": self.exit_code,
            },
        }

    def render_json(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=False) + "\n"

    def render_text(self) -> str:
        """An aligned table, one line per result; the detail column wraps nothing (grep-able)."""
        header = ("STATUS", "RULE", "CHECK", "SUBJECT", "DETAIL")
        rows = [(r.status, f"[{r.card_rule}]", r.rule, r.subject, r.detail) for r in self.results]
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
        lines = [self._title()]
        for row in [header, *rows]:
            cells = [row[i].ljust(widths[i]) for i in range(4)]
            lines.append("  ".join([*cells, row[4]]).rstrip())
        counts = self.counts()
        verdict = "FAIL" if self.exit_code else "PASS"
        lines.append(
            f"\n{verdict}: {counts['PASS']} passed, {counts['WARN']} warnings, "
            f"{counts['FAIL']} failed, {counts['SKIP']} not tested"
        )
        lines.append(
            "[1]-[4]: lines of the Card FOP transport page; [fop]: fopproxy's reading of it "
            "(docs/COMPLIANCE.md)"
        )
        return "\n".join(lines) + "\n"

    def _title(self) -> str:
        what = ", ".join(f"{k}={v}" for k, v in self.target.items() if v is not None)
        return f"fopproxy {self.kind}: {what}\n"
