#!/usr/bin/env python3
"""gen_repo_config.py - writes the format version 2 encrypted configs of
fuzz/corpus/repo_config/ (v2-encrypted-*), made from
docs/formats/repository.md ("Keys", "Config authentication") with a cheap key
derivation (scrypt N=1024, r=1, p=1) so that fuzz_repo_config can open them
with its key file ("fuzz passphrase") on every run. Also a second, independent
implementation of the config MAC. Usage: fuzz/gen_repo_config.py OUT-DIR"""
import hashlib, hmac, json, os, sys
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MEMBERS = ["format", "version", "id", "created", "chunk_size", "pack_size", "hash",
           "compression", "compression_level", "encryption.cipher", "encryption.kdf",
           "encryption.kdf_n", "encryption.kdf_r", "encryption.kdf_p", "encryption.salt",
           "encryption.wrapped_key"]


def canonical(cfg):
    out = b"vmshadow-config-v2\n"
    for name in MEMBERS:
        o, key = cfg, name
        if name.startswith("encryption."):
            o, key = cfg.get("encryption") or {}, name[11:]
        if key not in o:
            out += b"%s - 0:\n" % name.encode()
            continue
        v = o[key]
        tag, text = ("s", v.encode()) if isinstance(v, str) else ("j", json.dumps(v).encode())
        out += b"%s %s %d:" % (name.encode(), tag.encode(), len(text)) + text + b"\n"
    return out


def make(version=2):
    rid = "0f5e1e4c2b6a49d8a1c3b5d7e9f10213"
    salt = bytes(range(16))
    master = bytes(range(100, 164))
    kek = hashlib.scrypt(b"fuzz passphrase", salt=salt, n=1024, r=1, p=1, dklen=32)
    nonce = bytes(12)
    wrapped = nonce + AESGCM(kek).encrypt(nonce, master, b"vmshadow-key-v%d:%s" % (version, rid.encode()))
    cfg = {"format": "vmshadow-repository", "version": version, "id": rid,
           "created": "2026-12-06T03:00:00Z", "chunk_size": 65536, "pack_size": 67108864,
           "hash": "hmac-sha256", "compression": "zstd", "compression_level": 1,
           "encryption": {"cipher": "aes-256-gcm", "kdf": "scrypt", "kdf_n": 1024, "kdf_r": 1,
                          "kdf_p": 1, "salt": salt.hex(), "wrapped_key": wrapped.hex()}}
    mk = hmac.new(master, b"vmshadow-config-mac-v2", hashlib.sha256).digest()
    cfg["mac"] = hmac.new(mk, canonical(cfg), hashlib.sha256).hexdigest()
    return cfg


def main():
    out = sys.argv[1]
    put = lambda name, c: open(os.path.join(out, name), "w").write(json.dumps(c, indent=2) + "\n")
    put("v2-encrypted-ok", make())
    c = make(); c["compression_level"] = 9
    put("v2-encrypted-altered", c)
    c = make(); del c["mac"]
    put("v2-encrypted-no-mac", c)
    c = make(); c["version"] = 1
    put("v2-encrypted-version-lowered", c)
    c = make(); c["encryption"] = None; del c["mac"]; c["hash"] = "sha256"
    put("v2-encryption-removed", c)


main()
