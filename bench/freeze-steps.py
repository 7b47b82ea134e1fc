#!/usr/bin/env python3
"""freeze-steps.py - the steps of a set's freeze window, from the traces
vmshadow writes when VMSHADOW_FREEZE_TRACE names a file
(docs/formats/freeze-trace.md; issue 27 point 4).

Usage: freeze-steps.py LABEL=VMNAME... -- TRACE...
Each TRACE is the trace of one backup. Prints, per step, the median and
range over the traces of its time in ms since the window's start (the first
guest's freeze sent), and of the time each VM's call took (sent..returned).
"""
import statistics
import sys


def main(argv):
    if "--" not in argv:
        sys.exit(__doc__)
    cut = argv.index("--")
    labels = dict(reversed(a.split("=", 1)) for a in argv[:cut])
    at = {}  # (who, step) -> [ms since window-start]
    took = {}  # (who, call) -> [ms sent..returned]
    for path in argv[cut + 1:]:
        rows = []
        with open(path) as f:
            for line in f:
                p = line.split()
                if len(p) == 3 and p[0].isdigit():
                    rows.append((int(p[0]), p[1], p[2]))
        t0 = next((t for t, _, s in rows if s == "window-start"), None)
        if t0 is None:
            continue
        sent = {}
        for t, vm, step in rows:
            who = "set" if vm == "-" else labels.get(vm, vm)
            at.setdefault((who, step), []).append((t - t0) / 1000)
            call, _, what = step.rpartition("-")
            if what == "sent":
                sent[(who, call)] = t
            elif what == "returned" and (who, call) in sent:
                took.setdefault((who, call), []).append((t - sent.pop((who, call))) / 1000)

    def row(name, v):
        print("%-34s %8.1f %17s %3d" % (name, statistics.median(v),
                                         "%.1f-%.1f" % (min(v), max(v)), len(v)))

    print("%-34s %8s %17s %3s" % ("step (ms since window-start)", "median", "min-max", "n"))
    for k in sorted(at, key=lambda k: statistics.median(at[k])):
        row("%s %s" % k, at[k])
    print("%-34s %8s %17s %3s" % ("call (ms, sent..returned)", "median", "min-max", "n"))
    for k in sorted(took):
        row("%s %s" % k, took[k])


if __name__ == "__main__":
    main(sys.argv[1:])
