#!/usr/bin/env python3
"""Prints the markdown results table of the `exits` bench from criterion's estimates.

    cargo bench --bench exits | tee bench.log
    python3 benches/table.py bench.log

Prints one row per case: hvemu median, decode-floor median, their ratio, and the same with a
decode cache (hvemu-cached) where the case has it. With the bench's printed output as argument
(a file, or `-` for stdin), the medians are those its RATIO and RATIO-CACHED lines give (read
from criterion's estimates as that run ended each group, so a later run, say of the other
decoder configuration, does not change the table of this one); it also fills the "callbacks
per exit" column from the CALLBACKS lines, lists only the cases that run measured and the
SKIPPED ones, and appends the PER-ELEMENT, CALLBACKS-ONLY, BEYOND-CALLBACKS and BANDWIDTH
lines. Without a log it reads target/criterion/<case>/{decode,hvemu,hvemu-cached}/new/
estimates.json (the medians of the last run of each group) for the suite's cases found on disk
(--all: every group with decode and hvemu results).

With several logs (runs of the same build, say three in a row on a noisy machine), each
figure is the median of that figure over the runs, a ratio the median of the runs' own ratios,
and the extra lines are listed run by run.

The criterion directory is $CRITERION_HOME, else $CARGO_TARGET_DIR/criterion, else
target/criterion next to this script's crate; --criterion-dir overrides it.
"""

import argparse
import json
import os
import re
import statistics
import sys
from pathlib import Path

# The suite's order; cases found on disk but not listed here follow, sorted.
ORDER = [
    "mov-store-64",
    "mov-load-64",
    "movzx-load-64",
    "movdqu-store-64",
    "vmovdqu-ymm-store-64",
    "add-rmw-64",
    "or-byte-rmw-64",
    "lock-cmpxchg-64",
    "mov-store-16",
    "mov-store-32",
    "rep-movsb-4k",
    "rep-stosb-4k",
    "rep-insb-256",
    "rep-outsb-256",
    "rep-movsb-64k-bulk",
    "rep-stosb-64k-bulk",
    "rep-insb-4k-bulk",
    "rep-outsb-4k-bulk",
]

EXTRA_LINES = ("PER-ELEMENT", "CALLBACKS-ONLY", "BEYOND-CALLBACKS", "BANDWIDTH")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def criterion_dir(arg):
    if arg:
        return Path(arg)
    if os.environ.get("CRITERION_HOME"):
        return Path(os.environ["CRITERION_HOME"])
    if os.environ.get("CARGO_TARGET_DIR"):
        return Path(os.environ["CARGO_TARGET_DIR"]) / "criterion"
    return Path(__file__).resolve().parent.parent / "target" / "criterion"


def median_ns(root, group, function):
    path = root / group / function / "new" / "estimates.json"
    try:
        with open(path) as f:
            return json.load(f)["median"]["point_estimate"]
    except (OSError, ValueError, KeyError):
        return None


def fmt_time(ns):
    if ns is None:
        return "–"
    if ns < 1e3:
        return f"{ns:.1f} ns"
    if ns < 1e6:
        return f"{ns / 1e3:.2f} µs"
    return f"{ns / 1e6:.2f} ms"


def compact_callbacks(text):
    """'get 1, set 1, memory 1, io 0, …' without the zero counts."""
    counts, _, rest = text.partition(" (")
    kept = [c for c in counts.split(", ") if not c.endswith(" 0")]
    out = ", ".join(kept) if kept else "none"
    return f"{out} ({rest}" if rest else out


RATIO_LINE = re.compile(r"RATIO(-CACHED)? ([^:]+): hvemu .*?([0-9.]+) ns / floor ([0-9.]+) ns")


def parse_log(lines):
    """Callbacks, skipped cases, medians {(case, function): ns} and the extra lines."""
    callbacks, skipped, medians, extra = {}, {}, {}, []
    for raw in lines:
        line = ANSI.sub("", raw).strip()
        ratio = RATIO_LINE.match(line)
        if line.startswith("CALLBACKS "):
            case, _, text = line[len("CALLBACKS ") :].partition(": ")
            callbacks[case] = compact_callbacks(text)
        elif ratio:
            cached, case, hvemu, floor = ratio.groups()
            medians[(case, "hvemu-cached" if cached else "hvemu")] = float(hvemu)
            medians[(case, "decode")] = float(floor)
        elif line.startswith("SKIPPED"):
            m = re.match(r"SKIPPED \(([^)]*)\) ([^:]+)", line)
            if m:
                skipped[m.group(2)] = f"skipped ({m.group(1)})"
        elif line.startswith(EXTRA_LINES):
            extra.append(line)
    return callbacks, skipped, medians, extra


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "logs", nargs="*", metavar="log", help="the bench's output (files, or - for stdin)"
    )
    ap.add_argument("--criterion-dir", help="criterion's output directory")
    ap.add_argument(
        "--all", action="store_true", help="without a log: every group on disk, not just the suite's"
    )
    args = ap.parse_args()
    root = criterion_dir(args.criterion_dir)

    callbacks, skipped, runs, extra = {}, {}, [], []
    for i, log in enumerate(args.logs):
        stream = sys.stdin if log == "-" else open(log, encoding="utf-8")
        with stream:
            run_callbacks, run_skipped, run_medians, run_extra = parse_log(stream)
        callbacks.update(run_callbacks)
        skipped.update(run_skipped)
        runs.append(run_medians)
        if len(args.logs) > 1 and run_extra:
            extra.append(f"run {i + 1} ({log}):")
        extra.extend(run_extra)
    medians = {key: statistics.median(r[key] for r in runs if key in r) for r in runs for key in r}

    def median(case, function):
        if args.logs:
            return medians.get((case, function))
        return median_ns(root, case, function)

    def ratio_of(case, function):
        """The median over the runs of each run's own ratio to its floor."""
        if not args.logs:
            hvemu, floor = median(case, function), median(case, "decode")
            return hvemu / floor if hvemu and floor else None
        ratios = [
            r[(case, function)] / r[(case, "decode")]
            for r in runs
            if r.get((case, function)) and r.get((case, "decode"))
        ]
        return statistics.median(ratios) if ratios else None

    on_disk = {
        p.parents[2].name
        for p in root.glob("*/hvemu/new/estimates.json")
        if (p.parents[2] / "decode" / "new" / "estimates.json").exists()
    }
    if args.logs:
        cases = {case for case, function in medians if function == "hvemu"} | set(skipped)
    elif args.all:
        cases = on_disk
    else:
        cases = on_disk & set(ORDER)
    if not cases:
        sys.exit(f"no results in {args.logs}" if args.logs else f"no results under {root}")
    ordered = [c for c in ORDER if c in cases] + sorted(cases - set(ORDER))

    print(
        "| case | hvemu median | floor median | ratio | with decode cache | ratio | "
        "callbacks per exit |"
    )
    print("|---|---:|---:|---:|---:|---:|---|")
    for case in ordered:
        if case in skipped:
            print(f"| `{case}` | {skipped[case]} | | | |")
            continue
        hvemu = median(case, "hvemu")
        floor = median(case, "decode")
        cached = median(case, "hvemu-cached")
        plain, warm = ratio_of(case, "hvemu"), ratio_of(case, "hvemu-cached")
        ratio = f"{plain:.2f}x" if plain else "–"
        cached_ratio = f"{warm:.2f}x" if warm else ""
        cached_time = fmt_time(cached) if cached else ""
        cb = callbacks.get(case, "–")
        print(
            f"| `{case}` | {fmt_time(hvemu)} | {fmt_time(floor)} | {ratio} | {cached_time} "
            f"| {cached_ratio} | {cb} |"
        )
    if extra:
        print()
        for line in extra:
            print(f"    {line}")


if __name__ == "__main__":
    main()
