#!/bin/bash
# File-level restore (issue 23 point 4, point 5's bad input) on real
# backups, through libguestfs's appliance on the served disks:
#  - a tree written in the guest on its ext4 data disk (modes, owners,
#    times, a symlink pointing out of it, an empty directory, a FIFO, a
#    device node, a set-user-ID file) is listed (`files --json -R`) with
#    the guest's own modes, owners, sizes, times and link targets, and
#    copied out (`files get --to`) identical (content, modes, owners,
#    mtimes, link targets); the FIFO and the device node are skipped with
#    a note, the set-user-ID bit dropped with a note, links never followed;
#  - a tree on an LVM logical volume (xfs) in a GPT partition of a second
#    disk comes out of `files get --tar` identical too, found by
#    libguestfs's inspection: the data disk holds an operating system's
#    markers and an fstab that mounts the LV at /srv (the listing of vda
#    alone has no LV: a warning, the rest listed; the copy picks the ext4
#    filesystem with --fs);
#  - a backup whose filesystem is damaged: a clear error, nothing mounted
#    on the host (/proc/mounts unchanged), no server left;
#  - bad input (no such backup, VM or disk; an encrypted repository without
#    its key; --to an existing file; a copy onto an existing name without
#    --force; wrong arguments): a clear error before the appliance starts,
#    nothing changed, nothing left serving;
#  - no command leaves its session directory in the run directory.
# The appliance boots under TCG (KVM does not work here): a few launches.
set -u
export TZ=UTC # the guest's clock zone: `touch -d` means the same there and here
. "$VMSH_SOURCE_DIR/tests/lab/lab.sh"
. "$VMSH_SOURCE_DIR/tests/e2e/common.sh"
lab_init
e2e_env
E2E_T0=$SECONDS # the time from here on: after the lab lock
export LIBGUESTFS_BACKEND=direct LIBGUESTFS_BACKEND_SETTINGS=force_tcg
# the servers' session directories (rundir.c) under LAB_WORK: each run
# removes its own at its end, failures included (checked at the end)
export VMSHADOW_RUN_DIR=$LAB_WORK/run
command -v guestfish >/dev/null || fail "guestfish missing: run scripts/install-deps.sh"
# no nbdkit serving this test's repositories ([n]: not pgrep's own match)
no_server() { ! pgrep -f "[n]bdkit.*repo=$LAB_WORK/" >/dev/null; }

# meta DIR: one line per entry below DIR (sh: runs in busybox and here):
#   d PATH MODE UID:GID MTIME | f PATH MODE UID:GID MTIME SIZE MD5 |
#   l PATH -> TARGET UID:GID | o PATH (anything else)
META='cd "$1" && find . ! -path . | while IFS= read -r p; do
  n=${p#./}
  if [ -L "$p" ]; then echo "l $n -> $(readlink "$p") $(stat -c %u:%g "$p")"
  elif [ -d "$p" ]; then echo "d $n $(stat -c "%a %u:%g %Y" "$p")"
  elif [ -f "$p" ]; then echo "f $n $(stat -c "%a %u:%g %Y %s" "$p") $(md5sum < "$p" | cut -c1-32)"
  else echo "o $n"; fi
done | LC_ALL=C sort'
meta() { sh -c "$META" meta "$1"; }

# mktree DIR: the tree (sh: busybox in the guest, coreutils here).
MKTREE='set -e; cd "$1"
mkdir -p sub/deeper empty
printf "hello from the guest\n" > hello.txt
printf "secret\n" > sub/private
printf "#!/bin/sh\necho hi\n" > sub/run.sh
i=0; while [ $i -lt 3000 ]; do echo "line $i of a file of several chunks of the tar writer"; i=$((i+1)); done > sub/deeper/big.txt
printf "x" > café.txt
printf "s" > suid
ln -s ../hello.txt sub/rel-link
ln -s ../../../../../etc/passwd sub/out-link
ln -s /etc/shadow abs-link
mkfifo fifo
mknod null c 1 3
chown 1234:2345 hello.txt
chown 0:4242 sub/private
chown -h 777:778 sub/rel-link
chown 4321:4321 sub empty
chmod 0640 sub/private
chmod 0755 sub/run.sh
chmod 4755 suid
chmod 0700 empty
chmod 2750 sub
touch -d "2021-02-03 04:05:06" hello.txt sub/private sub/run.sh sub/deeper/big.txt café.txt suid
touch -d "2019-07-08 09:10:11" sub/deeper empty
touch -d "2018-01-01 00:00:00" sub
'

# ---- the LVM disk, made inside libguestfs's appliance (the tiny guest has
# no LVM tools): GPT, one partition, a PV, VG vmshvg, LV data, xfs (its
# minimum is 300 MiB: a sparse image), the tree copied in. Kept between
# runs of the same inputs (the ASan pass reuses it: one appliance less).
mkdir -p "$LAB_WORK/lvref/lvtree"
sh -c "$MKTREE" mktree "$LAB_WORK/lvref/lvtree" || fail "mktree on the host"
touch -d "2017-05-06 07:08:09" "$LAB_WORK/lvref/lvtree"
LVSUM=$( (sha256sum "$0"; meta "$LAB_WORK/lvref") | sha256sum | cut -c1-16)
LVIMG=$LAB_DIR/files-lvm-$LVSUM.qcow2
if [ ! -f "$LVIMG" ]; then
    t0=$(date +%s)
    qemu-img create -q -f qcow2 "$LVIMG.new" 400M || fail "qemu-img create"
    guestfish --format=qcow2 -a "$LVIMG.new" >"$LAB_WORK/gf.log" 2>&1 <<EOF || { cat "$LAB_WORK/gf.log" >&2; rm -f "$LVIMG.new"; fail "guestfish could not make the LVM disk"; }
run
part-disk /dev/sda gpt
pvcreate /dev/sda1
vgcreate vmshvg /dev/sda1
lvcreate-free data vmshvg 100
mkfs xfs /dev/vmshvg/data
mount /dev/vmshvg/data /
copy-in $LAB_WORK/lvref/lvtree /
umount-all
EOF
    mv "$LVIMG.new" "$LVIMG"
    echo "# the LVM disk took $(( $(date +%s) - t0 )) s (one appliance)"
fi
find "$LAB_DIR" -maxdepth 1 -name 'files-lvm-*.qcow2' ! -name "files-lvm-$LVSUM.qcow2" -delete
cp "$LVIMG" "$LAB_WORK/g.lvm.qcow2"
chmod 0644 "$LAB_WORK/g.lvm.qcow2"

# ---- the guest: its ext4 data disk (vda) gets the tree; vdb is the LVM disk
lab_guest_define g --disk-xml "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='$LAB_WORK/g.lvm.qcow2'/><target dev='vdb' bus='virtio'/></disk>"
G=$(lab_domname g)
lab_guest_start g
# and makes its data disk look like an operating system's root to
# libguestfs's inspection: /bin, /etc/os-release, an fstab mounting the LV
# (on the other disk) at /srv
lab_gexec g "mkdir /mnt/data/tree && sh -c '$MKTREE' mktree /mnt/data/tree && touch -d '2016-04-05 06:07:08' /mnt/data/tree &&
    mkdir -p /mnt/data/bin /mnt/data/etc /mnt/data/srv &&
    printf 'ID=debian\\nVERSION_ID=12\\n' > /mnt/data/etc/os-release &&
    echo '/dev/vmshvg/data /srv xfs defaults 0 0' > /mnt/data/etc/fstab && sync" ||
    fail "writing the tree in the guest"
lab_gexec g "sh -c '$META' meta /mnt/data/tree" > "$LAB_WORK/guest.meta" || fail "the guest's listing"
check "the guest wrote the tree (FIFO, device node, set-user-ID file among it)" \
    grep -q '^o fifo$' "$LAB_WORK/guest.meta"
lab_virsh shutdown "$G" >/dev/null
lab_wait_off g || fail "the guest did not power off"

vsh init
check "init" test "$RC" = 0
vsh --json backup "$G"
ID=$(jq -r .backup <<<"$OUT")
check "backup of the VM (ext4 disk and LVM disk)" test "$RC" = 0 -a -n "$ID" -a "$ID" != null

cp /proc/mounts "$LAB_WORK/mounts.before"

# expected: the guest's view, less what a copy skips, set-user-ID dropped
grep -v '^o ' "$LAB_WORK/guest.meta" | sed 's/^f suid 4755 /f suid 755 /' > "$LAB_WORK/expect.meta"

# ---- listing (appliance 1): ext4 disk only
t0=$(date +%s)
vsh --json files -R "$ID" "$G" vda /tree
t1=$(date +%s)
echo "# files --json -R: $((t1 - t0)) s"
check "files -R lists the ext4 tree: exit 0" test "$RC" = 0
jq -r '.entries[] |
    if .type == "symlink" then "l \(.name) -> \(.target) \(.uid):\(.gid)"
    elif .type == "directory" then "d \(.name) \(.mode|ltrimstr("0")) \(.uid):\(.gid) \(.mtime)"
    elif .type == "file" then "f \(.name) \(.mode|ltrimstr("0")) \(.uid):\(.gid) \(.mtime) \(.size)"
    else "o \(.name)" end' <<<"$OUT" | LC_ALL=C sort > "$LAB_WORK/list.meta"
# the guest's lines without the content hash
sed -E 's/^(f .*) [0-9a-f]{32}$/\1/' "$LAB_WORK/guest.meta" > "$LAB_WORK/guest.nomd5"
check "the listing has every entry with the guest's mode, owner, mtime, size, link target" \
    diff -u "$LAB_WORK/guest.nomd5" "$LAB_WORK/list.meta"
check "the listing names the mounted filesystem" jq -e '.mounts | test("/dev/sda \\(ext4, disk vda\\) at /")' <<<"$OUT"

# ---- bad input that is refused before any appliance starts
mkdir -p "$LAB_WORK/out"
: > "$LAB_WORK/a-file"
vsh files get "$ID" "$G" /tree --to "$LAB_WORK/a-file"
check "--to an existing file: exit 1, says so" test "$RC" = 1 -a -n "$(grep 'not a directory' <<<"$ERR")"
mkdir -p "$LAB_WORK/out/tree"
vsh files get "$ID" "$G" /tree --to "$LAB_WORK/out"
check "--to DIR where DIR/tree exists, without --force: exit 1, says --force" \
    test "$RC" = 1 -a -n "$(grep -- '--force' <<<"$ERR")"
check "  nothing written" test -z "$(ls -A "$LAB_WORK/out/tree")"
rmdir "$LAB_WORK/out/tree"
vsh files nosuchbackup "$G" /
check "no such backup: exit 1" test "$RC" = 1 -a -n "$ERR"
vsh files "$ID" no-such-vm /
check "no such VM: exit 1, names the VMs there are" test "$RC" = 1 -a -n "$(grep -F "$G" <<<"$ERR")"
vsh files "$ID" "$G" vdz /
check "no such disk: exit 1, names the disks" test "$RC" = 1 -a -n "$(grep 'vda, vdb' <<<"$ERR")"
vsh files get "$ID" "$G" relative/path --to "$LAB_WORK/out"
check "a relative guest path: usage error (2)" test "$RC" = 2
vsh files get "$ID" "$G" /tree
check "get without --to or --tar: usage error (2)" test "$RC" = 2
vsh files "$ID" "$G" / --to "$LAB_WORK/out"
check "--to on a listing: usage error (2)" test "$RC" = 2
check "no server left by any of them" no_server

# ---- copy (appliance 2): the ext4 tree
t0=$(date +%s)
vsh files get "$ID" "$G" --fs /dev/sda /tree --to "$LAB_WORK/out"
t1=$(date +%s)
echo "# files get --to: $((t1 - t0)) s"
check "files get --fs /dev/sda --to: exit 0" test "$RC" = 0
meta "$LAB_WORK/out/tree" > "$LAB_WORK/copy.meta"
check "the copy is identical: content, modes, owners, mtimes, link targets" \
    diff -u "$LAB_WORK/expect.meta" "$LAB_WORK/copy.meta"
check "the top directory's mode, owner and mtime too" \
    test "$(stat -c '%a %u:%g %Y' "$LAB_WORK/out/tree")" = "755 0:0 $(TZ=UTC date -d '2016-04-05 06:07:08' +%s)"
check "the FIFO and the device node are skipped with a note" \
    test -n "$(grep 'tree/fifo: FIFO: skipped' <<<"$ERR")" -a -n "$(grep 'tree/null: character device: skipped' <<<"$ERR")"
check "the set-user-ID bit is dropped with a note" test -n "$(grep 'tree/suid: set-user-ID' <<<"$ERR")"
check "the link pointing out is a link, not followed" \
    test -L "$LAB_WORK/out/tree/sub/out-link" -a "$(readlink "$LAB_WORK/out/tree/sub/out-link")" = ../../../../../etc/passwd
check "nothing was written beside the target" test "$(ls -A "$LAB_WORK/out")" = tree

# ---- tar (appliance 3): the LVM volume's tree, choosing the filesystem
t0=$(date +%s)
"$VMSHADOW" files get --tar "$ID" "$G" /srv/lvtree \
    >"$LAB_WORK/lv.tar" 2>"$LAB_WORK/tar.err"
RC=$?
t1=$(date +%s)
echo "# files get --tar: $((t1 - t0)) s"
check "files get --tar (inspection: the OS's fstab mounts the LV at /srv): exit 0" test "$RC" = 0
mkdir -p "$LAB_WORK/untar"
check "GNU tar reads the stream" tar -C "$LAB_WORK/untar" --same-owner -xpf "$LAB_WORK/lv.tar"
meta "$LAB_WORK/lvref/lvtree" | grep -v '^o ' | sed 's/^f suid 4755 /f suid 755 /' > "$LAB_WORK/lvexpect.meta"
meta "$LAB_WORK/untar/lvtree" > "$LAB_WORK/lvcopy.meta"
check "the LVM tree is identical through tar: content, modes, owners, mtimes, link targets" \
    diff -u "$LAB_WORK/lvexpect.meta" "$LAB_WORK/lvcopy.meta"
check "  the root at /, the LV's xfs at /srv" \
    grep -q '/dev/sda (ext4, disk vda) at /, /dev/vmshvg/data (xfs) at /srv' "$LAB_WORK/tar.err"

# ---- a damaged filesystem (appliance 4): ext4 whose group descriptors are
# garbage (the superblock is intact: libguestfs sees ext4 and mount fails)
lab_guest_define bad
BADG=$(lab_domname bad)
BAD=$(lab_disk bad)
qemu-io -f qcow2 -c 'write -P 0xff 2048 6k' "$BAD" >/dev/null || fail "qemu-io"
vsh --json backup "$BADG"
BID=$(jq -r .backup <<<"$OUT")
check "backup of the VM with the damaged filesystem" test "$RC" = 0 -a "$BID" != null
vsh files "$BID" "$BADG" /
check "files on a damaged filesystem: exit 1" test "$RC" = 1
check "  the error names the filesystem and says damaged" \
    test -n "$(grep -E '/dev/sda \(ext4, disk vda\).*damaged' <<<"$ERR")"
check "nothing was mounted on this host" diff -u "$LAB_WORK/mounts.before" /proc/mounts
check "no server left" no_server

# ---- an encrypted repository without its key (no appliance)
echo "files test passphrase" > "$LAB_WORK/key"
vsh -r "$LAB_WORK/enc" init --encrypt --key-file "$LAB_WORK/key"
VMSHADOW_KEY_FILE=$LAB_WORK/key vsh --json -r "$LAB_WORK/enc" backup "$BADG"
EID=$(jq -r .backup <<<"$OUT")
check "encrypted backup" test "$RC" = 0 -a "$EID" != null
vsh -r "$LAB_WORK/enc" files "$EID" "$BADG" /
check "encrypted repository without its key: exit 1, says key" \
    test "$RC" = 1 -a -n "$(grep -i 'key' <<<"$ERR")"
check "no server left" no_server

check "every command removed its session directory, failed ones too" \
    test -z "$(ls -A "$VMSHADOW_RUN_DIR" 2>/dev/null)"

echo "# t-files took $((SECONDS - E2E_T0)) s (after the lab lock)"
e2e_done
