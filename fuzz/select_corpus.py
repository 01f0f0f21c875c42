#!/usr/bin/env python3
"""Pick a small corpus for `fuzz/corpus/emulate/` out of a big one.

`cargo fuzz cmin` keeps every input that adds a libFuzzer feature, thousands of them, most for
edges inside iced-x86's decoder tables. This keeps instead a greedy set cover of the coverage
edges in hvemu's own code (`src/`) and in the harness, and of those only the first `--max`
inputs (the ones covering the most).

    cargo +nightly fuzz build emulate
    python3 fuzz/select_corpus.py /tmp/big-corpus fuzz/corpus/emulate --max 500

Needs binutils (`readelf`, `addr2line`). Works on the x86-64 Linux build cargo-fuzz makes: one
module whose `__sancov_pcs` table, indexed like the `COV` lines of libFuzzer's merge control
file, holds (PC, flags) pairs filled in by R_X86_64_RELATIVE relocations.
"""

import argparse
import os
import re
import shutil
import subprocess
import tempfile

BINARY = "target/x86_64-unknown-linux-gnu/release/emulate"


def pc_table(binary):
    """The PC of every sancov entry, in table order."""
    sections = subprocess.run(["readelf", "-S", "-W", binary], capture_output=True, text=True,
                              check=True).stdout
    m = re.search(r"__sancov_pcs\s+\S+\s+([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)", sections)
    if not m:
        raise SystemExit("no __sancov_pcs section: build with `cargo +nightly fuzz build`")
    start, count = int(m.group(1), 16), int(m.group(2), 16) // 16
    pcs = [0] * count
    relocs = subprocess.run(["readelf", "-r", "-W", binary], capture_output=True, text=True,
                            check=True).stdout
    for line in relocs.splitlines():
        f = line.split()
        if len(f) >= 4 and f[2] == "R_X86_64_RELATIVE":
            off = int(f[0], 16) - start
            if 0 <= off < count * 16 and off % 16 == 0:
                pcs[off // 16] = int(f[3], 16)
    return pcs


def wanted_indices(binary, src_dir, harness):
    pcs = pc_table(binary)
    out = subprocess.run(["addr2line", "-e", binary], input="".join(f"{pc:#x}\n" for pc in pcs),
                         capture_output=True, text=True, check=True).stdout.splitlines()
    return {str(i) for i, loc in enumerate(out) if loc.startswith(src_dir) or harness in loc}


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("big", help="the corpus to select from")
    ap.add_argument("out", help="the directory to fill (emptied first)")
    ap.add_argument("--max", type=int, default=500, help="at most this many inputs")
    ap.add_argument("--binary", default=os.path.join(here, BINARY))
    ap.add_argument("--src", default=os.path.join(os.path.dirname(here), "src") + "/",
                    help="source directory whose edges count")
    args = ap.parse_args()

    wanted = wanted_indices(args.binary, args.src, "fuzz_targets/harness.rs")
    with tempfile.TemporaryDirectory() as tmp:
        control = os.path.join(tmp, "control")
        empty = os.path.join(tmp, "empty")
        os.mkdir(empty)
        subprocess.run([args.binary, "-merge=1", f"-merge_control_file={control}", empty,
                        args.big], capture_output=True, check=True)
        lines = open(control).read().split("\n")
    n = int(lines[0])
    names = lines[2:2 + n]
    cover, size = {}, {}
    for line in lines[2 + n:]:
        f = line.split()
        if f and f[0] == "STARTED":
            size[int(f[1])] = int(f[2])
        elif f and f[0] == "COV":
            cover[int(f[1])] = set(f[2:]) & wanted

    covered, chosen = set(), []
    while cover and len(chosen) < args.max:
        best = max(cover, key=lambda i: (len(cover[i] - covered), -size.get(i, 0)))
        if not cover[best] - covered:
            break
        covered |= cover.pop(best)
        chosen.append(best)

    os.makedirs(args.out, exist_ok=True)
    for f in os.listdir(args.out):
        os.remove(os.path.join(args.out, f))
    for i in chosen:
        shutil.copy(names[i], args.out)
    print(f"{len(chosen)} inputs covering {len(covered)} edges of {len(wanted)} "
          f"in {args.src} and the harness")


if __name__ == "__main__":
    main()
