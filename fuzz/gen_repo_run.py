#!/usr/bin/env python3
"""gen_repo_run.py - a second implementation of the chunk index run format
(docs/formats/repository.md, "Chunk index runs"), written from that page:
writes tests/golden/run-v1/ (a run of an unencrypted repository, with the
entries it must answer in entries.txt, read back by test_chunkindex.c) and
the fuzz corpus fuzz/corpus/repo_run/.

    fuzz/gen_repo_run.py [ROOT]
"""
import hashlib
import os
import random
import struct
import sys

BLOCK, TAG_OFF, HDR, ENTRY, PER, FPP = 4096, 4064, 32, 64, 63, 512


def tag(name, fno, blk):
    return hashlib.sha256(b"vmshadow-run-v1:" + name.encode() + b":" +
                          struct.pack("<Q", fno) + blk[:TAG_OFF]).digest()


def run_bytes(name, entries):
    """entries: list of (id32, pack16, offset, stored, raw, kind), any order"""
    entries = sorted(entries)
    n = len(entries)
    nb = (n + PER - 1) // PER
    nf = (nb + FPP - 1) // FPP
    blocks, fences = [], []
    for b in range(nb):
        part = entries[b * PER:(b + 1) * PER]
        blk = bytearray(BLOCK)
        struct.pack_into("<IIQ", blk, 0, len(part), 0, b)
        for i, (eid, pack, off, stored, raw, kind) in enumerate(part):
            struct.pack_into("<32s16sQII", blk, HDR + i * ENTRY, eid, pack, off, stored,
                             raw | kind << 24)
        blk[TAG_OFF:] = tag(name, b + 1, blk)
        blocks.append(bytes(blk))
        fences.append(struct.unpack(">Q", part[0][0][:8])[0])
    pages = []
    for p in range(nf):
        pg = bytearray(BLOCK)
        for j, f in enumerate(fences[p * FPP:(p + 1) * FPP]):
            struct.pack_into("<Q", pg, 8 * j, f)
        pages.append(bytes(pg))
    top = b"".join(struct.pack("<Q", fences[p * FPP]) for p in range(nf))
    hdr = bytearray(BLOCK)
    hdr[0:8] = b"VMSHRUN1"
    struct.pack_into("<IIQQQQQII", hdr, 8, 1, 0, n, nb, nf, (1 + nb + nf) * BLOCK, 8 * nf,
                     PER, FPP)
    hdr[TAG_OFF:] = tag(name, 0, hdr)
    return bytes(hdr) + b"".join(blocks) + b"".join(pages) + top


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "."
    rnd = random.Random(27)
    name = "0123456789abcdef0123456789abcdef"
    ents = []
    for i in range(700):
        eid = bytes(rnd.getrandbits(8) for _ in range(32))
        if i < 130:  # three blocks that share one 8-byte prefix
            eid = b"\x42" * 8 + eid[8:]
        pack = bytes(rnd.getrandbits(8) for _ in range(16))
        ents.append((eid, pack, 16 + 100 * i, 1 + i, 1 + (i * 97) % 65536, i & 1))
    data = run_bytes(name, ents)
    g = os.path.join(root, "tests/golden/run-v1")
    os.makedirs(g, exist_ok=True)
    with open(os.path.join(g, name + ".run"), "wb") as f:
        f.write(data)
    with open(os.path.join(g, "entries.txt"), "w") as f:
        for eid, pack, off, stored, raw, kind in sorted(ents):
            f.write("%s %s %d %d %d %d\n" % (eid.hex(), pack.hex(), off, stored, raw, kind))
    c = os.path.join(root, "fuzz/corpus/repo_run")
    os.makedirs(c, exist_ok=True)
    fuzz_name = "5bfb63f42e6f2676986cac47ae5f7ded"
    small = run_bytes(fuzz_name, ents[:100])
    for fn, body in (("valid", b"\x00" + small), ("fixup", b"\x01" + small),
                     ("empty", b"\x00" + run_bytes(fuzz_name, [])),
                     ("prefix", b"\x00" + run_bytes(fuzz_name, ents[:130]))):
        with open(os.path.join(c, fn), "wb") as f:
            f.write(body)


if __name__ == "__main__":
    main()
