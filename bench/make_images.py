#!/usr/bin/env python3
"""Builds the benchmark's disk images (deterministic for a given SEED).

day1.raw: SIZE bytes (default 4 GiB) in runs of 1 to 32 MiB, each run one of
  hole (32%, never written: sparse), zeros (8%, written), text (30%, real
  files of this system: compressible like a guest's file system) or random
  (30%, incompressible like encrypted or compressed guest data).
day2.raw: a sparse copy of day1 with CHANGE (2%) of its bytes rewritten in
  4 KiB..1 MiB regions at 4 KiB-aligned random offsets (45% random, 45% new
  text, 10% zeros), as a day of guest activity would.
Writes changes.json (the rewritten regions, the changed byte count) beside.

FULL=1: day1 has no holes and no zeros (half text, half random).

usage: OUTDIR=dir [SIZE=bytes] [SEED=n] [CHANGE=0.02] [FULL=1] make_images.py
"""
import json
import math
import os
import random
import subprocess
import sys

MiB = 1 << 20
SIZE = int(os.environ.get("SIZE", 4 << 30))
SEED = int(os.environ.get("SEED", 1))
CHANGE = float(os.environ.get("CHANGE", 0.02))
OUTDIR = os.environ.get("OUTDIR", "bench-images")
SKIP = (".gz", ".xz", ".bz2", ".zst", ".zip", ".jar", ".png", ".jpg", ".jpeg",
        ".gif", ".woff", ".woff2", ".pyc", ".lz4", ".7z", ".deb")
ROOTS = ["/usr/include", "/usr/share/doc", "/usr/share/man", "/usr/bin",
         "/usr/lib/x86_64-linux-gnu", "/usr/lib/gcc", "/usr/share/perl",
         "/usr/lib/python3", "/usr/share", "/usr/lib", "/usr/libexec"]


def text_stream():
    """Bytes of real system files (sorted walk, compressed formats skipped),
    looping when exhausted so that any SIZE works."""
    while True:
        seen = set()
        for root in ROOTS:
            for d, dirs, files in os.walk(root):
                dirs.sort()
                for f in sorted(files):
                    p = os.path.join(d, f)
                    if p in seen or f.endswith(SKIP) or os.path.islink(p):
                        continue
                    seen.add(p)
                    try:
                        with open(p, "rb") as fh:
                            while True:
                                b = fh.read(MiB)
                                if not b:
                                    break
                                yield b
                    except OSError:
                        pass


class Text:
    def __init__(self):
        self.it = text_stream()
        self.buf = b""

    def take(self, n):
        while len(self.buf) < n:
            self.buf += next(self.it)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


def main():
    os.makedirs(OUTDIR, exist_ok=True)
    r = random.Random(SEED)
    text = Text()
    units = SIZE // MiB
    frac = {"hole": 0.32, "zero": 0.08, "text": 0.30, "rand": 0.30}
    if os.environ.get("FULL") == "1":
        # every byte written with data (a full disk's worst case for a
        # full restore): text and random only
        frac = {"hole": 0.0, "zero": 0.0, "text": 0.5, "rand": 0.5}
    left = {k: int(round(v * units)) for k, v in frac.items()}
    left["rand"] += units - sum(left.values())
    day1 = os.path.join(OUTDIR, "day1.raw")
    fd = os.open(day1, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o644)
    os.ftruncate(fd, SIZE)
    pos = 0
    zero = bytes(MiB)
    while pos < units:
        kinds = [k for k in left if left[k] > 0]
        k = r.choices(kinds, weights=[left[x] for x in kinds])[0]
        n = min(r.randint(1, 32), left[k])
        left[k] -= n
        if k != "hole":
            for i in range(n):
                buf = zero if k == "zero" else r.randbytes(MiB) if k == "rand" else text.take(MiB)
                os.pwrite(fd, buf, (pos + i) * MiB)
        pos += n
    os.fsync(fd)
    os.close(fd)

    day2 = os.path.join(OUTDIR, "day2.raw")
    subprocess.check_call(["cp", "--sparse=always", day1, day2])
    fd = os.open(day2, os.O_WRONLY)
    changed = bytearray(SIZE // 4096)
    nchanged = 0
    regions = []
    while nchanged * 4096 < CHANGE * SIZE:
        ln = int(round(math.exp(r.uniform(math.log(4096), math.log(MiB))) / 4096)) * 4096
        ln = max(4096, min(MiB, ln))
        off = r.randrange(0, (SIZE - ln) // 4096) * 4096
        t = r.random()
        kind = "rand" if t < 0.45 else "text" if t < 0.90 else "zero"
        buf = r.randbytes(ln) if kind == "rand" else text.take(ln) if kind == "text" else bytes(ln)
        os.pwrite(fd, buf, off)
        regions.append((off, ln, kind))
        for b in range(off // 4096, (off + ln) // 4096):
            if not changed[b]:
                changed[b] = 1
                nchanged += 1
    os.fsync(fd)
    os.close(fd)
    with open(os.path.join(OUTDIR, "changes.json"), "w") as f:
        json.dump({"size": SIZE, "seed": SEED, "regions": regions,
                   "changed_bytes": nchanged * 4096}, f)
    print(f"day1/day2: {SIZE} bytes, {len(regions)} regions rewritten, "
          f"{nchanged * 4096} bytes changed ({100.0 * nchanged * 4096 / SIZE:.2f}%)",
          file=sys.stderr)


if __name__ == "__main__":
    main()
