#!/bin/sh
# Fails when a C file differs from what clang-format makes of it (.clang-format).
top=${1:-.}
cd "$top" || exit 1
command -v clang-format >/dev/null || { echo "clang-format not installed"; exit 1; }
bad=0
for f in $(git ls-files -co --exclude-standard -- 'src/*.[ch]' 'include/*.h' 'tests/*.[ch]' 'bench/*.[ch]' 'fuzz/*.[ch]' 2>/dev/null || find src include tests bench -name '*.[ch]'); do
    [ -f "$f" ] || continue
    if ! clang-format --style=file "$f" | cmp -s - "$f"; then
        echo "not formatted: $f (run: clang-format -i $f)"; bad=1
    fi
done
exit $bad
