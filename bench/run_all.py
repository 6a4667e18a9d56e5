"""Every benchmark target from one run: the benchmarks back to back, one table for BENCHMARKS.md.

Runs bench_library, bench_nats, bench_worker, bench_ingest, bench_e2e, bench_delivery,
bench_faststream and bench_rates one after the other (each with ``--json``, each starting its
own private Redis, NATS and servers), keeps every report in one JSON file, and prints every
target as one Markdown table (target, figure, met, the script). Each figure is still a ratio
(or a latency, or a rate) measured within its own script's run; running them together only
means they come from the same code, the same hour and the same machine load.

    python3 bench/run_all.py [--rounds 3] [--out bench/results/all.json] [--skip faststream]

Needs wrk (``apt-get install wrk``) and FastStream (``pip install 'faststream[redis]'``), as
the scripts it runs do. About 10 minutes with the default rounds (8 min 15 s here).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SCRIPTS = {
    "library": "bench_library.py",
    "nats": "bench_nats.py",
    "worker": "bench_worker.py",
    "ingest": "bench_ingest.py",
    "e2e": "bench_e2e.py",
    "delivery": "bench_delivery.py",
    "faststream": "bench_faststream.py",
    "rates": "bench_rates.py",
}
TAKES_ROUNDS = set(SCRIPTS) - {"rates"}


def run_script(name: str, extra: list[str], log: Any) -> dict[str, Any]:
    argv = [sys.executable, str(HERE / SCRIPTS[name]), "--json", *extra]
    log(f"== {name}: {' '.join(argv[1:])}")
    started = time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.PIPE, text=True, check=False)  # stderr: the live log
    if done.returncode != 0:
        raise SystemExit(f"{SCRIPTS[name]} failed with exit code {done.returncode}; see its log above.")
    report: dict[str, Any] = json.loads(done.stdout)
    log(f"== {name}: done in {time.perf_counter() - started:.0f} s")
    return report


def rows(reports: dict[str, dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    """(target, measured, met, script) for every target in the reports."""
    return [(*row, SCRIPTS[name]) for name in SCRIPTS if name in reports for row in _rows(name, reports[name])]


def _ratios(ours: list[float], raw: list[float]) -> str:
    return ", ".join(f"{o / r:.2f}" for o, r in zip(ours, raw, strict=False) if r)


def _rows(name: str, report: dict[str, Any]) -> list[tuple[str, str, str]]:
    out: list[tuple[str, str, str]] = []
    if name == "library":
        for s in report["scenarios"]:
            per_round = _ratios(s["ours_per_round"], s["raw_per_round"])
            what = f"library {s['name']} >= {s['target']:g}x raw redis-py"
            out.append((what, f"{s['ratio']:.2f}x ({per_round})", _met(s["met"])))
    if name == "nats":
        for s in report["scenarios"]:
            what = f"nats:// {s['name']} >= {s['target']:g}x raw nats-py"
            out.append((what, f"{s['ratio']:.2f}x ({_ratios(s['ours'], s['raw'])})", _met(s["met"])))
    if name == "worker":
        for c in report["comparisons"]:
            what = f"handler runtime >= {c['target']:g}x {c['baseline']}"
            out.append((what, f"{c['ratio']:.2f}x", _met(c["met"])))
    if name == "rates":
        out += [(t["what"], t["value"], _met(t["met"])) for t in report["targets"]]
    reports = {name: report}
    if "ingest" in reports:
        for t in reports["ingest"]["targets"]:
            per_round = ", ".join(f"{x:.2f}" for x in t["per_round"])
            out.append((f"{t['what']} >= {t['target']:g}x", f"{t['value']:.2f}x ({per_round})", _met(t["met"])))
    if "e2e" in reports:
        for generator, summary in reports["e2e"]["generators"].items():
            ours, bare = summary["ours"], summary["bare"]
            rate = reports["e2e"]["rate"]
            for t in summary["targets"]:
                key = "median_p50_ms" if t["what"].startswith("p50") else "median_p99_ms"
                out.append(
                    (
                        f"end to end at {rate:g}/s, {t['what']} <= {t['target']:g} ({generator} generator)",
                        f"{t['ours']:.1f} ms (bare {bare[key]:.1f}; accepted {ours['median_accepted_per_s']:,.0f}/s, "
                        f"lost {ours['lost']}, dup {ours['duplicates']})",
                        _met(t["met"]),
                    )
                )
    for script, peer in (("delivery", "bare Starlette"), ("faststream", "FastStream")):
        for s in reports.get(script, {}).get("scenarios", []):
            per_round = ", ".join(f"{x:.2f}" for x in s["per_round"])
            what = f"{script} {s['name']} >= {s['target']:g}x {peer}"
            out.append((what, f"{s['ratio']:.2f}x ({per_round})", _met(s["met"])))
    return out


def _met(met: bool) -> str:
    return "yes" if met else "**no**"


def markdown(reports: dict[str, dict[str, Any]]) -> str:
    lines = ["| target | measured (ratio of medians; per round) | met | script |", "|---|---|:-:|---|"]
    lines += [f"| {a} | {b} | {c} | `bench/{d}` |" for a, b, c, d in rows(reports)]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds for every script (default 3)")
    parser.add_argument("--out", default="bench/results/all.json", help="where to write all the reports (JSON)")
    parser.add_argument("--skip", action="append", default=[], choices=sorted(SCRIPTS), help="leave a script out")
    args = parser.parse_args()

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    reports: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    for name in SCRIPTS:
        if name not in args.skip:
            reports[name] = run_script(name, ["--rounds", str(args.rounds)] if name in TAKES_ROUNDS else [], log)
    everything = {
        "command": " ".join(["python3", *sys.argv]),
        "load_average_at_end": os.getloadavg(),
        "wall_s": round(time.perf_counter() - started, 1),
        "reports": reports,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(everything, indent=2) + "\n")
    log(f"all reports in {args.out}")
    print(markdown(reports))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
