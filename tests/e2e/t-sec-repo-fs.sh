#!/bin/bash
# Nothing in a repository is followed or blocked on (issue 20, point 6;
# docs/formats/repository.md, "Stores"): symbolic links, FIFOs and another
# owner's files planted at every kind of repository path (config, a packs/XX
# fan-out directory, a pack, an index, an index/XX directory, a manifest,
# locks/, a lock file), for every command (list, show, verify, extract,
# prune, gc, a backup through vmshadow-repo-tool, init on the existing path).
# Each ends in a clear error or a skip with a message, never hangs (timeout
# 20), never reads through a link (a link to a FIFO would hang the old code)
# and never changes anything outside the repository. Then: gc's sweep never
# deletes outside; a repository others can write is refused without
# --allow-foreign-repo; a read-only bind mount serves list, show, verify and
# extract without a lock file being created.
set -uo pipefail
. "$VMSH_SOURCE_DIR/tests/e2e/scratch.sh"
TOOL=$VMSH_BUILD_DIR/bench/vmshadow-repo-tool
unset VMSHADOW_KEY_FILE
[ "$(id -u)" = 0 ] || { echo "1..0 # SKIP needs root (chown to nobody, bind mounts)"; exit 0; }

MASTER=$T/master
OUTSIDE=$T/outside
REPO=$T/repo
export VMSHADOW_REPO=$REPO

truncate -s 4M "$T/a.img"
yes "vmshadow sec line" | head -c 1M | dd of="$T/a.img" conv=notrunc status=none
head -c 512K /dev/urandom | dd of="$T/a.img" bs=512K seek=4 conv=notrunc status=none

run timeout 20 "$VMSHADOW" -r "$MASTER" init; [ $RC = 0 ] || fail "init master: $ERR"
for i in 1 2; do
    run timeout 20 "$TOOL" backup --doc '{"vms":[{"name":"vm-a","method":"saved-state"}]}' "$MASTER" "vm/disk.img=$T/a.img"
    [ $RC = 0 ] || fail "backup $i: $ERR"
    sleep 1.1
done
LATEST=$(timeout 20 "$VMSHADOW" -r "$MASTER" --json list | jget 'd["backups"][-1]["id"]')
[ -n "$LATEST" ] || fail "no latest backup"
pass "a repository with two backups"

# the repository's paths, by kind (one of each)
PACK=$(cd "$MASTER" && ls packs/*/*.pack | head -1)
PACKDIR=$(dirname "$PACK")
INDEX=$(cd "$MASTER" && ls index/*/* | head -1)
INDEXDIR=$(dirname "$INDEX")
declare -A PATHOF=([config]=config [packdir]=$PACKDIR [pack]=$PACK [index]=$INDEX
    [indexdir]=$INDEXDIR [manifest]=backups/$LATEST [locks]=locks
    [lockgc]=locks/gc [lockread]=locks/read)

# the commands; `must` lists, per kind, those that need the path and so must
# end in an error or a warning (the others must still not hang, follow or
# touch anything outside)
CMDS="list show verify extract prune gc backup init"
declare -A MUST=([config]="$CMDS" [packdir]="verify extract gc backup"
    [pack]="verify extract gc" [index]="verify extract gc"
    [indexdir]="verify extract gc" [manifest]="list show verify extract prune gc"
    [locks]="verify extract gc backup" [lockgc]="gc"
    [lockread]="verify extract gc")

run_cmd() { # run_cmd NAME: one command against $REPO
    rm -f "$T/x.img"
    case $1 in
    list) run timeout 20 "$VMSHADOW" list ;;
    show) run timeout 20 "$VMSHADOW" show latest ;;
    verify) run timeout 20 "$VMSHADOW" verify ;;
    extract) run timeout 20 "$VMSHADOW" extract latest vm/disk.img "$T/x.img" ;;
    prune) run timeout 20 "$VMSHADOW" prune --keep-last 1 ;;
    gc) run timeout 20 "$VMSHADOW" gc ;;
    backup) run timeout 20 "$TOOL" backup --doc '{}' "$REPO" "vm/disk.img=$T/a.img" ;;
    init) run timeout 20 "$VMSHADOW" init ;;
    esac
}

fresh() {
    rm -rf "$REPO" "$OUTSIDE"
    cp -a "$MASTER" "$REPO"
    mkdir -p "$OUTSIDE"
    # every lock file exists, so that each can be planted (backups and prune
    # take no lock since issue 26: gc takes locks/gc, readers locks/read)
    touch "$REPO/locks/read" "$REPO/locks/gc"
}

snapshot() { (cd "$OUTSIDE" && find . -printf '%p %y %s %m %u\n' | sort && find . -type f -exec sha256sum {} + | sort); }

# plant HOW KIND: HOW is link (to a copy outside), fifolink (to a FIFO
# outside: following it hangs), fifo (a FIFO in its place), foreign (owned by
# nobody)
plant() {
    local how=$1 p=$REPO/${PATHOF[$2]}
    case $how in
    link)
        cp -a "$p" "$OUTSIDE/copy"
        rm -rf "$p"
        ln -s "$OUTSIDE/copy" "$p" ;;
    fifolink)
        mkfifo "$OUTSIDE/fifo"
        rm -rf "$p"
        ln -s "$OUTSIDE/fifo" "$p" ;;
    fifo)
        rm -rf "$p"
        mkfifo "$p" ;;
    foreign)
        chown -R nobody "$p" ;;
    esac
}

for how in link fifolink fifo foreign; do
    for kind in config packdir pack index indexdir manifest locks lockgc lockread; do
        for cmd in $CMDS; do
            fresh
            plant "$how" "$kind"
            before=$(snapshot)
            link_before=$(readlink "$REPO/${PATHOF[$kind]}" || true)
            run_cmd "$cmd"
            what="$cmd with a $how at ${PATHOF[$kind]}"
            [ $RC != 124 ] || fail "$what hangs"
            case $ERR in *AddressSanitizer* | *"runtime error:"* | *LeakSanitizer*) fail "$what: sanitizer report: $ERR" ;; esac
            [ "$(snapshot)" = "$before" ] || fail "$what changed something outside the repository"
            if [ -n "$link_before" ] && [ -L "$REPO/${PATHOF[$kind]}" ]; then
                [ "$(readlink "$REPO/${PATHOF[$kind]}")" = "$link_before" ] || fail "$what rewrote the link"
            fi
            case " ${MUST[$kind]} " in
            *" $cmd "*)
                # an error, or a warning: never a silent success
                if [ $RC = 0 ] && [ -z "$ERR" ]; then
                    fail "$what succeeded silently: $OUT"
                fi
                # and it says why (not a crash)
                [ $RC -lt 128 ] || fail "$what crashed ($RC): $ERR"
                all="$ERR $OUT"
                case $all in
                *refusing* | *"symbolic link"* | *"not a regular file"* | *"not a directory"* | *"uid 65534"* | *damaged* | *"left alone"* | *"not empty"* | *"cannot be read"* | *missing*) ;;
                *) fail "$what: no clear message ($RC): $all" ;;
                esac ;;
            *) [ $RC -lt 128 ] || fail "$what crashed ($RC): $ERR" ;;
            esac
        done
        pass "a $how at $kind: every command errs or warns, none hangs or follows"
    done
done

# gc's sweep never leaves the repository: a temporary-looking link, and an
# index fan-out directory linked to a directory outside that holds
# index-like and temporary-looking files
fresh
mkdir -p "$OUTSIDE/ix"
head -c 100 /dev/urandom > "$OUTSIDE/ix/$(printf 'f%.0s' {1..64})"
head -c 100 /dev/urandom > "$OUTSIDE/ix/x.tmp.1"
head -c 100 /dev/urandom > "$OUTSIDE/victim.tmp.1"
ln -s "$OUTSIDE/ix" "$REPO/index/ff"
ln -s "$OUTSIDE/victim.tmp.1" "$REPO/$PACKDIR/zz.pack.tmp.1"
ln -s "$OUTSIDE" "$REPO/backups/ee"
before=$(snapshot)
run timeout 20 "$VMSHADOW" --json gc
[ $RC = 0 ] || fail "gc with planted links: $ERR"
[ "$(snapshot)" = "$before" ] || fail "gc deleted or changed files outside the repository"
[ "$(echo "$OUT" | jget 'd["skipped"]')" -ge 2 ] || fail "gc does not report what it left alone: $OUT"
[ -L "$REPO/index/ff" ] && [ -L "$REPO/$PACKDIR/zz.pack.tmp.1" ] || fail "gc removed the planted links"
run timeout 20 "$VMSHADOW" gc
[[ $ERR == *"left alone"* ]] || fail "gc gives no warning: $ERR"
pass "gc's sweep never leaves the repository and reports what it skipped"

# a repository others can write
fresh
chmod 0770 "$REPO"
for cmd in list verify; do
    run timeout 20 "$VMSHADOW" $cmd
    [ $RC = 1 ] && [[ $ERR == *"writable by its group"* ]] && [[ $ERR == *--allow-foreign-repo* ]] || fail "$cmd on a group-writable repository ($RC): $ERR"
    run timeout 20 "$VMSHADOW" --allow-foreign-repo $cmd
    [ $RC = 0 ] || fail "$cmd --allow-foreign-repo ($RC): $ERR"
done
run timeout 20 "$TOOL" backup --doc '{}' "$REPO" "vm/disk.img=$T/a.img"
[ $RC != 0 ] && [[ $ERR == *"writable by its group"* ]] || fail "repo tool backup into a group-writable repository ($RC): $ERR"
chmod 0700 "$REPO"
chmod 0777 "$REPO/packs"
run timeout 20 "$VMSHADOW" verify
[ $RC = 1 ] && [[ $ERR == *"writable by everyone"* ]] || fail "world-writable packs/ ($RC): $ERR"
chmod 0700 "$REPO/packs"
chown nobody "$REPO"
run timeout 20 "$VMSHADOW" list
[ $RC = 1 ] && [[ $ERR == *"uid 65534"* ]] || fail "a repository of another owner ($RC): $ERR"
run timeout 20 "$VMSHADOW" --allow-foreign-repo list
[ $RC = 0 ] || fail "list --allow-foreign-repo of another owner's repository ($RC): $ERR"
mkdir -m 0777 "$T/shared"
run timeout 20 "$VMSHADOW" -r "$T/shared" init
[ $RC = 1 ] && [[ $ERR == *"writable by everyone"* ]] || fail "init in a world-writable directory ($RC): $ERR"
run timeout 20 "$VMSHADOW" --allow-foreign-repo -r "$T/shared" init
[ $RC = 0 ] || fail "init --allow-foreign-repo ($RC): $ERR"
pass "a repository others can write is refused unless --allow-foreign-repo"

# a read-only bind mount
fresh
rm -f "$REPO/locks/read"
RO=$T/ro
mkdir "$RO"
if mount --bind "$REPO" "$RO" 2>/dev/null && mount -o remount,bind,ro "$RO" 2>/dev/null; then
    scratch_stop() { umount "$RO" 2>/dev/null || true; }
    touch "$RO/probe" 2>/dev/null && fail "the bind mount is writable"
    for round in without-lock-file with-lock-file; do
        run timeout 20 "$VMSHADOW" -r "$RO" list
        [ $RC = 0 ] && [[ $OUT == *"$LATEST"* ]] || fail "list read-only, $round ($RC): $ERR"
        run timeout 20 "$VMSHADOW" -r "$RO" show latest
        [ $RC = 0 ] || fail "show read-only, $round ($RC): $ERR"
        run timeout 20 "$VMSHADOW" -r "$RO" verify
        [ $RC = 0 ] || fail "verify read-only, $round ($RC): $ERR"
        rm -f "$T/x.img"
        run timeout 20 "$VMSHADOW" -r "$RO" extract latest vm/disk.img "$T/x.img"
        [ $RC = 0 ] && cmp -s "$T/a.img" "$T/x.img" || fail "extract read-only, $round ($RC): $ERR"
        if [ $round = without-lock-file ]; then
            [ ! -e "$REPO/locks/read" ] || fail "a lock file was created"
            touch "$REPO/locks/read" # made through the writable path: now taken shared
        fi
    done
    run timeout 20 "$VMSHADOW" -r "$RO" gc
    [ $RC != 0 ] || fail "gc on a read-only repository succeeded"
    umount "$RO"
    scratch_stop() { :; }
    pass "a read-only bind mount serves list, show, verify and extract without creating a lock file"
else
    echo "# SKIP read-only bind mount: mount --bind is not permitted here"
fi
echo "1..$n"
