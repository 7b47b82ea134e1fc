#!/bin/sh
# Enforces the layering of docs/ARCHITECTURE.md: a source file in src/LAYER
# may include only the public headers of LAYER and of the layers below it.
#   util < repo < coord < hv < writers, providers < requestor < cli
# The command line includes only the requestor's, the repository's and
# util's public headers (issue 21): it parses, calls the requestor, prints.
top=${1:-.}
cd "$top/src" || exit 1
allowed() {
    case $1 in
    util) echo "util" ;;
    repo) echo "util repo" ;;
    coord) echo "util repo coord" ;;
    hv) echo "util repo coord hv" ;;
    writers|providers) echo "util repo coord hv writers providers" ;;
    requestor) echo "util repo coord hv writers providers requestor" ;;
    cli) echo "util repo requestor" ;;
    esac
}
bad=0
for layer in util repo coord hv writers providers requestor cli; do
    [ -d "$layer" ] || continue
    for f in "$layer"/*.[ch]; do
        [ -f "$f" ] || continue
        ok=$(allowed $layer)
        for used in $(sed -n 's|^[[:space:]]*#[[:space:]]*include[[:space:]]*<vmshadow/\([a-z]*\)/.*|\1|p' "$f" | sort -u); do
            case " $ok " in *" $used "*) ;; *) echo "$f: layer '$layer' must not include vmshadow/$used/"; bad=1 ;; esac
        done
        # Writers reach providers only through interfaces (coord/writer.h's
        # provider table, writers/capture.h), never a provider's header.
        if [ "$layer" = writers ] && grep -nE '^[[:space:]]*#[[:space:]]*include[[:space:]]*<vmshadow/providers/' "$f"; then
            echo "$f: writers reach providers only through the provider interface"; bad=1
        fi
        if grep -nE '^[[:space:]]*#[[:space:]]*include[[:space:]]*"\.\./' "$f"; then
            echo "$f: reaches into another layer's private headers"; bad=1
        fi
        # Only the hypervisor layer talks to libvirt (STYLE.md, "Layering").
        if [ "$layer" != hv ] && grep -nE '^[[:space:]]*#[[:space:]]*include[[:space:]]*<libvirt/' "$f"; then
            echo "$f: only src/hv may include libvirt"; bad=1
        fi
    done
done
# The repository reaches its files only through its store (src/repo/store.h,
# issue 21 point 3 / issue 20 point 6): no file-system call on repository
# paths outside src/repo/store_*.c. restore.c writes the user's output files
# and source*.c reads block sources, neither of them repository paths.
for f in repo/*.c; do
    case $f in repo/store_*.c|repo/restore.c|repo/source*.c) continue ;; esac
    if grep -nE '(^|[^_[:alnum:]>.])(open|openat|creat|rename|renameat|unlink|unlinkat|opendir|fdopendir|fsync|fdatasync|mkdir|mkdirat|rmdir|access|lstat|stat|fstatat|flock|ftruncate|pread|pwrite|vmsh_fs_[a-z_]*|vmsh_lock_take[a-z_]*)[[:space:]]*\(' "$f" |
        grep -vE '^[0-9]+:[[:space:]]*(/?\*|//)' | grep -v 'vmsh_fs_read_all(key_file'; then
        echo "$f: file-system access outside the repository's store (src/repo/store_*.c)"; bad=1
    fi
done
# The VM writer changes VMs only through the VM host operations' table
# (hv/hostops.h, issue 21), so that a cluster-aware one can hook them.
if grep -nE 'vmsh_hv_(state|stop|save|restore|resume|define|undefine|managed_save)[[:space:]]*\(' writers/*.c; then
    echo "writers: VM lifecycle calls go through the host operations (vmsh_host_*)"; bad=1
fi
# Image operations (qemu-img) run only in src/hv (issue 21 point 3): no
# argument vector names it elsewhere.
if grep -rnE '"qemu-img"[[:space:]]*[,;}]' --include='*.c' . | grep -v '^\./hv/'; then
    echo "qemu-img is run outside src/hv (use src/hv/image.c)"; bad=1
fi
[ $bad = 0 ] && echo "layers ok"
exit $bad
