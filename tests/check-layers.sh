#!/bin/sh
# Enforces the layering of docs/ARCHITECTURE.md: a source file in src/LAYER
# may include only the public headers of LAYER and of the layers below it.
#   util < repo < coord < hv < writers, providers < cli
top=${1:-.}
cd "$top/src" || exit 1
allowed() {
    case $1 in
    util) echo "util" ;;
    repo) echo "util repo" ;;
    coord) echo "util repo coord" ;;
    hv) echo "util repo coord hv" ;;
    writers|providers) echo "util repo coord hv writers providers" ;;
    cli) echo "util repo coord hv writers providers" ;;
    esac
}
bad=0
for layer in util repo coord hv writers providers cli; do
    [ -d "$layer" ] || continue
    ok=$(allowed $layer)
    for f in "$layer"/*.[ch]; do
        [ -f "$f" ] || continue
        for used in $(sed -n 's|^[[:space:]]*#[[:space:]]*include[[:space:]]*<vmshadow/\([a-z]*\)/.*|\1|p' "$f" | sort -u); do
            case " $ok " in *" $used "*) ;; *) echo "$f: layer '$layer' must not include vmshadow/$used/"; bad=1 ;; esac
        done
        if grep -nE '^[[:space:]]*#[[:space:]]*include[[:space:]]*"\.\./' "$f"; then
            echo "$f: reaches into another layer's private headers"; bad=1
        fi
        # Only the hypervisor layer talks to libvirt (STYLE.md, "Layering").
        if [ "$layer" != hv ] && grep -nE '^[[:space:]]*#[[:space:]]*include[[:space:]]*<libvirt/' "$f"; then
            echo "$f: only src/hv may include libvirt"; bad=1
        fi
    done
done
[ $bad = 0 ] && echo "layers ok"
exit $bad
