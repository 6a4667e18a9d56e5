#!/usr/bin/env python3
"""Turn the figures of the last reliability run into the markdown tables of docs/reliability.md.

    MQCTL_RELIABILITY_REPORT=reliability.jsonl python3 -m pytest -q tests/reliability
    python3 scripts/reliability_table.py reliability.jsonl

Each test of ``tests/reliability`` appends one JSON line per scenario to the report file;
for each scenario the newest line wins. Prints two tables: the faults injected (with
messages, lost, duplicated and the other figures measured), then the hostile inputs and
the answer each got.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

COMMON = {"scenario", "injected", "test", "at", "messages", "lost", "duplicated", "answers"}


def latest(path: Path) -> list[dict[str, Any]]:
    """The newest row of each scenario, in scenario order (numbered first, then the rest)."""
    rows: dict[str, dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            if row["scenario"] not in rows or row["at"] >= rows[row["scenario"]]["at"]:
                rows[row["scenario"]] = row

    def order(row: dict[str, Any]) -> tuple[int, str, str]:
        number = re.match(r"(\d+)([a-z]?)\.", row["scenario"])
        return (int(number.group(1)), number.group(2), "") if number else (10**6, "", row["scenario"])

    return sorted(rows.values(), key=order)


def cell(value: Any) -> str:
    if isinstance(value, float):
        value = f"{value:g}"
    elif isinstance(value, list | tuple):
        value = ", ".join(str(v) for v in value if v not in (None, ""))
    return str(value).replace("|", "\\|").replace("\n", " ")


def figures(row: dict[str, Any]) -> str:
    return "; ".join(f"{key.replace('_', ' ')} {cell(value)}" for key, value in row.items() if key not in COMMON)


def tables(rows: list[dict[str, Any]]) -> str:
    out = [
        "| Scenario | Injected | Messages | Lost | Duplicated | Measured | Test |",
        "| --- | --- | ---: | ---: | ---: | --- | --- |",
    ]
    for row in rows:
        test = row["test"].split("::")[-1]
        out.append(
            f"| {cell(row['scenario'])} | {cell(row['injected'])} | {cell(row.get('messages', ''))} "
            f"| {cell(row.get('lost', ''))} | {cell(row.get('duplicated', ''))} | {figures(row)} | `{test}` |"
        )
    for row in rows:
        answers = row.get("answers")
        if answers:
            out += ["", f"{row['scenario']}: each input and what it got", "", "| Input | Answer |", "| --- | --- |"]
            out += [f"| {cell(name)} | {cell(answer)} |" for name, answer in answers.items()]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="the JSON-lines file the tests wrote (MQCTL_RELIABILITY_REPORT)")
    args = parser.parse_args(argv)
    if not args.report.exists():
        print(f"No report at {str(args.report)!r}: run the tests with MQCTL_RELIABILITY_REPORT set.", file=sys.stderr)
        return 1
    sys.stdout.write(tables(latest(args.report)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
