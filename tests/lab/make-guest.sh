#!/bin/sh
# make-guest.sh - build the tiny test guest of vmshadow's lab from Debian packages.
#
# Usage: make-guest.sh OUTDIR
# Writes to OUTDIR: vmlinuz, initrd.img, data.raw (64 MiB ext4, label "data"),
# data.qcow2 (the same disk as qcow2), and STAMP (what it was built from).
# A second call with the same inputs returns at once (the cache is OUTDIR).
#
# Needs (Debian 12): linux-image-cloud-amd64, busybox-static, qemu-guest-agent,
# qemu-utils, e2fsprogs, cpio, gzip, kmod (all in scripts/debian-packages.txt).
#
# The guest (PID 1 is busybox init) mounts /dev/vda on /mnt/data and runs
# qemu-ga with an fsfreeze hook. Kernel command-line switches:
#   lab.ticker=1      append "N epoch up=UPTIME" to /mnt/data/ticks every 0.5 s
#   lab.ip=A.B.C.D/N  static address on eth0;  lab.gw=A.B.C.D default route
#   lab.hookfail=1    the fsfreeze hook refuses to freeze (agent freeze fails)
#   lab.hookhang=1    the fsfreeze hook never returns on freeze (a hung agent)
#   lab.nohook=1      qemu-ga runs without an fsfreeze hook (Debian's default)
# The hook writes /mnt/data/FREEZE_MARKER before a freeze, so a backup taken
# while frozen contains it: proof that the guest's own writers ran.
# ttyS0 shows "LAB: ready" once set up and "LAB: qga-up" when the agent starts.
set -eu
OUT=${1:?usage: make-guest.sh OUTDIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

KVER=$(ls /boot 2>/dev/null | sed -n 's/^vmlinuz-\(.*-cloud-amd64\)$/\1/p' | sort -V | tail -n 1)
[ -n "$KVER" ] || { echo "make-guest: no cloud kernel in /boot: apt-get install linux-image-cloud-amd64" >&2; exit 1; }
QGA=/usr/sbin/qemu-ga
BB=/bin/busybox
for f in "$QGA" "$BB" /lib/modules/"$KVER"; do
    [ -e "$f" ] || { echo "make-guest: $f missing: run scripts/install-deps.sh" >&2; exit 1; }
done
ldd "$BB" 2>&1 | grep -q 'not a dynamic executable' || { echo "make-guest: $BB is not static: apt-get install busybox-static" >&2; exit 1; }

SELF_SUM=$(sha256sum "$0" | cut -c1-16)
STAMP="kernel=$KVER script=$SELF_SUM qga=$(stat -c %Y "$QGA") bb=$(stat -c %Y "$BB")"
if [ -f "$OUT/STAMP" ] && [ "$(cat "$OUT/STAMP")" = "$STAMP" ] &&
   [ -f "$OUT/initrd.img" ] && [ -f "$OUT/data.qcow2" ] && [ -f "$OUT/data.raw" ]; then
    exit 0
fi

ROOT=$(mktemp -d "$OUT/.root.XXXXXX")
trap 'rm -rf "$ROOT"' EXIT
for d in bin sbin etc/qemu lib/modules proc sys dev run tmp mnt/data root usr/sbin lib64; do
    mkdir -p "$ROOT/$d"
done
ln -s ../run "$ROOT/var" 2>/dev/null || true

cp "$BB" "$ROOT/bin/busybox"
for applet in $("$BB" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$ROOT/bin/$applet"
done
ln -sf ../bin/busybox "$ROOT/sbin/init"
ln -sf sbin/init "$ROOT/init"

# The agent and the shared libraries it links (as ldd resolves them on this host).
cp "$QGA" "$ROOT/usr/sbin/qemu-ga"
ldd "$QGA" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | while read -r lib; do
    mkdir -p "$ROOT$(dirname "$lib")"
    cp -L "$lib" "$ROOT$lib"
done

# virtio drivers: the cloud kernel builds them as modules; resolve dependencies
# in load order and skip built-ins (modprobe prints "builtin" for those).
: > "$ROOT/etc/modules"
for m in virtio_pci virtio_blk virtio_console virtio_net virtio_rng; do
    modprobe -S "$KVER" --show-depends "$m" 2>/dev/null | awk '$1 == "insmod" {print $2}'
done | awk '!seen[$0]++' | while read -r ko; do
    base=$(basename "$ko")
    case "$ko" in
    *.ko.xz) xz -dc "$ko" > "$ROOT/lib/modules/${base%.xz}"; base=${base%.xz} ;;
    *.ko.zst) zstd -qdc "$ko" > "$ROOT/lib/modules/${base%.zst}"; base=${base%.zst} ;;
    *) cp "$ko" "$ROOT/lib/modules/$base" ;;
    esac
    echo "$base" >> "$ROOT/etc/modules"
done

cat > "$ROOT/etc/inittab" <<'EOF'
::sysinit:/etc/boot.sh
::respawn:/etc/agent.sh
::shutdown:/etc/halt.sh
EOF

cat > "$ROOT/etc/boot.sh" <<'EOF'
#!/bin/sh
export PATH=/bin:/sbin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/qga
hostname labguest
while read -r ko; do insmod "/lib/modules/$ko" 2>/dev/null; done < /etc/modules
# no udev: name the virtio serial ports as udev would
mkdir -p /dev/virtio-ports
for p in /sys/class/virtio-ports/*; do
    [ -r "$p/name" ] && ln -sf "../${p##*/}" "/dev/virtio-ports/$(cat "$p/name")"
done
opt() { for w in $(cat /proc/cmdline); do case $w in "$1="*) echo "${w#*=}"; return ;; esac; done; }
ip link set lo up
if [ -e /sys/class/net/eth0 ]; then
    ip link set eth0 up
    [ -n "$(opt lab.ip)" ] && ip addr add "$(opt lab.ip)" dev eth0
    [ -n "$(opt lab.gw)" ] && ip route add default via "$(opt lab.gw)"
fi
n=0
while [ ! -b /dev/vda ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
[ -b /dev/vda ] && mount -t ext4 /dev/vda /mnt/data && echo "LAB: data mounted" > /dev/ttyS0
acpid -l /run/acpid.log 2>/dev/null
if [ "$(opt lab.ticker)" = 1 ]; then
    (i=0; while :; do i=$((i + 1)); read -r up _ < /proc/uptime
        echo "$i $(date +%s) up=$up" >> /mnt/data/ticks; sleep 0.5; done) &
fi
echo "LAB: ready" > /dev/ttyS0
EOF

cat > "$ROOT/etc/agent.sh" <<'EOF'
#!/bin/sh
port=/dev/virtio-ports/org.qemu.guest_agent.0
if [ ! -e $port ]; then sleep 3600; exit 0; fi   # a guest without an agent channel
echo "LAB: qga-up" > /dev/ttyS0
case " $(cat /proc/cmdline) " in
*" lab.nohook=1 "*) # as Debian's qemu-guest-agent runs by default: no hook
    exec /usr/sbin/qemu-ga -m virtio-serial -p $port -t /run/qga -l /run/qga.log ;;
esac
exec /usr/sbin/qemu-ga -m virtio-serial -p $port -t /run/qga -l /run/qga.log \
    --fsfreeze-hook=/etc/qemu/fsfreeze-hook
EOF

cat > "$ROOT/etc/qemu/fsfreeze-hook" <<'EOF'
#!/bin/sh
# qemu-ga runs this with "freeze" before freezing and "thaw" after thawing.
read -r up _ < /proc/uptime
echo "$(date +%s) up=$up $1" >> /run/fsfreeze-hook.log
echo "LAB: fsfreeze-hook $1" > /dev/ttyS0
if [ "$1" = freeze ]; then
    case " $(cat /proc/cmdline) " in
    *" lab.hookfail=1 "*) echo "LAB: hook refuses to freeze" > /dev/ttyS0; exit 1 ;;
    *" lab.hookhang=1 "*) echo "LAB: hook hangs" > /dev/ttyS0; while :; do sleep 60; done ;;
    esac
    if grep -q ' /mnt/data ' /proc/mounts; then
        echo "$(date +%s) up=$up" > /mnt/data/FREEZE_MARKER
        sync
    fi
fi
# thawed already: the failure makes qemu-ga report the thaw as failed
case "$1 $(cat /proc/cmdline) " in
thaw*" lab.thawfail=1 "*) echo "LAB: hook fails after the thaw" > /dev/ttyS0; exit 1 ;;
esac
exit 0
EOF

cat > "$ROOT/etc/halt.sh" <<'EOF'
#!/bin/sh
sync
umount /mnt/data 2>/dev/null
echo "LAB: halted" > /dev/ttyS0
EOF
mkdir -p "$ROOT/etc/acpi/PWRF"
printf '#!/bin/sh\npoweroff\n' > "$ROOT/etc/acpi/PWRF/00000080"
# qemu-ga's guest-shutdown runs /sbin/shutdown -h|-r ...
printf '#!/bin/sh\ncase " $* " in *" -r "*) exec reboot ;; esac\nexec poweroff\n' > "$ROOT/sbin/shutdown"
chmod 0755 "$ROOT/etc/boot.sh" "$ROOT/etc/agent.sh" "$ROOT/etc/qemu/fsfreeze-hook" \
    "$ROOT/etc/halt.sh" "$ROOT/etc/acpi/PWRF/00000080" "$ROOT/sbin/shutdown"
echo "root:x:0:0:root:/root:/bin/sh" > "$ROOT/etc/passwd"
echo "root:x:0:" > "$ROOT/etc/group"

(cd "$ROOT" && find . | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 | gzip -1) > "$OUT/initrd.img.new"
cp "/boot/vmlinuz-$KVER" "$OUT/vmlinuz.new"

SEED="$ROOT/.seed"
mkdir -p "$SEED"
echo "hello from the vmshadow lab data disk" > "$SEED/hello.txt"
rm -f "$OUT/data.raw.new"
truncate -s 64M "$OUT/data.raw.new"
mkfs.ext4 -q -F -L data -d "$SEED" "$OUT/data.raw.new"
qemu-img convert -f raw -O qcow2 "$OUT/data.raw.new" "$OUT/data.qcow2.new"
for f in vmlinuz initrd.img data.raw data.qcow2; do mv "$OUT/$f.new" "$OUT/$f"; done
chmod 0644 "$OUT"/vmlinuz "$OUT"/initrd.img "$OUT"/data.raw "$OUT"/data.qcow2
echo "$STAMP" > "$OUT/STAMP"
echo "make-guest: built $OUT (kernel $KVER)" >&2
