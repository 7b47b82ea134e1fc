#!/bin/bash
# check-deb.sh WORKDIR - the Debian package as CI checks it (issue 24;
# scripts/test.sh runs it): builds vmshadow_*.deb with
# `dpkg-buildpackage -b -us -uc` in a copy of the tree (the checkout stays
# clean), fails on any lintian error, installs the .deb into an empty root
# (`dpkg --root`), runs the installed `vmshadow --version`, formats the
# installed man page with `man -l`, runs `systemd-analyze verify` on the
# installed units (with that
# root, so ExecStart= must name a program the package ships), and loads the
# bash completion. Everything it makes stays in WORKDIR; logs in WORKDIR/*.log.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
work=$(mkdir -p "$1" && cd "$1" && pwd)
rm -rf "$work/src" "$work/root" "$work/verify-root"
mkdir -p "$work/src/vmshadow" "$work/root"

step() { echo "check-deb: $*"; }
die() { echo "check-deb: FAILED: $*" >&2; exit 1; }

step "copying the tree (tracked and new files, no build directories)"
(cd "$top" && git ls-files -co --exclude-standard -z) |
    (cd "$top" && tar --null -T - -cf -) | tar -xf - -C "$work/src/vmshadow"

step "dpkg-buildpackage -b -us -uc (unit tests under dh_auto_test; no e2e)"
(cd "$work/src/vmshadow" && dpkg-buildpackage -b -us -uc) >"$work/build.log" 2>&1 ||
    { tail -n 40 "$work/build.log"; die "dpkg-buildpackage (see $work/build.log)"; }
deb=$(ls "$work"/src/vmshadow_*_*.deb | grep -v -- -dbgsym | head -n 1)
[ -f "$deb" ] || die "no vmshadow_*.deb built"
step "built $(basename "$deb")"

step "lintian (errors fail)"
# lintian leaves a database file in $TMPDIR per run (Lintian::Storage::MLDBM): here, not /tmp
mkdir -p "$work/tmp"
export TMPDIR="$work/tmp"
lintian --fail-on error "$deb" 2>&1 | grep -v 'running with root privileges' | tee "$work/lintian.log" ||
    true
lintian --fail-on error "$deb" >/dev/null 2>&1 || die "lintian reports errors ($work/lintian.log)"

step "installing the .deb into an empty root (dpkg --root, maintainer scripts with DPKG_ROOT)"
mkdir -p "$work/root/var/lib/dpkg/info" "$work/root/var/lib/dpkg/updates"
: >"$work/root/var/lib/dpkg/status"
# the root has no other package: the dependencies cannot be met there
dpkg --root="$work/root" --force-depends --force-script-chrootless -i "$deb" \
    >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log"; die "dpkg --root -i"; }
dpkg --root="$work/root" -s vmshadow | grep -qx 'Status: install ok installed' ||
    die "the package is not installed in the root"
dpkg --root="$work/root" -L vmshadow >/dev/null
grep -qx /etc/vmshadow/vmshadow.conf "$work/root/var/lib/dpkg/info/vmshadow.conffiles" ||
    die "the example config is not a conffile"
# a fresh install enables no timer: the config must first say what to back up
[ -z "$(find "$work/root/etc/systemd" -name 'vmshadow-*' 2>/dev/null)" ] ||
    die "the package enabled units on install"
[ -d "$work/root/etc/vmshadow/writers.d" ] || die "no /etc/vmshadow/writers.d"
dpkg-deb -f "$deb" Depends | grep -q qemu-utils || die "Depends lacks qemu-utils"
dpkg-deb -f "$deb" Depends | grep -Eq 'libvirt-daemon-system|libvirt-clients' ||
    die "Depends lacks libvirt"

step "the installed binary runs"
v=$("$work/root/usr/bin/vmshadow" --version) || die "vmshadow --version failed"
want=$(dpkg-deb -f "$deb" Version)
[ "$v" = "vmshadow ${want%%-*}" ] || die "vmshadow --version says '$v', the package is $want"
echo "  $v"

step "man -l on the installed man page"
page=$(ls "$work"/root/usr/share/man/man1/vmshadow.1*)
MANPAGER=cat MANWIDTH=80 man -l "$page" >"$work/man.txt" 2>"$work/man.err" || die "man -l failed"
grep -q 'vmshadow' "$work/man.txt" || die "man page renders empty"

step "systemd-analyze verify on the installed units"
units=$(cd "$work/root" && ls lib/systemd/system/vmshadow-* usr/lib/systemd/system/vmshadow-* 2>/dev/null || true)
[ "$(echo "$units" | grep -c .)" -ge 7 ] || die "expected 7 units, got: $units"
# verify resolves dependencies (sysinit.target, ...) and ExecStart= in the
# root: the host's units are copied beside ours, the package's programs are
# the only ones under /usr/lib/vmshadow.
cp -a "$work/root" "$work/verify-root"
for d in /lib/systemd/system /usr/lib/systemd/system; do
    [ -d "$d" ] && mkdir -p "$work/verify-root$d" && cp -an "$d/." "$work/verify-root$d/" 2>/dev/null
done
out=$(cd "$work/verify-root" && SYSTEMD_LOG_LEVEL=notice \
    systemd-analyze verify --man=no --root="$work/verify-root" $units 2>&1) ||
    { echo "$out"; die "systemd-analyze verify"; }
[ -z "$out" ] || { echo "$out"; die "systemd-analyze verify printed warnings"; }
echo "  $(echo "$units" | wc -l) units verified"

step "bash completion loads and completes commands"
comp=$work/root/usr/share/bash-completion/completions/vmshadow
got=$(bash -c '. "$1"; COMP_WORDS=(vmshadow ba); COMP_CWORD=1; _vmshadow; echo "${COMPREPLY[*]}"' _ "$comp")
[ "$got" = backup ] || die "completion of 'vmshadow ba' gave '$got'"
got=$(bash -c '. "$1"; COMP_WORDS=(vmshadow prune --keep-l); COMP_CWORD=2; _vmshadow; echo "${COMPREPLY[*]}"' _ "$comp")
[ "$got" = --keep-last ] || die "completion of 'vmshadow prune --keep-l' gave '$got'"
step "passed"
