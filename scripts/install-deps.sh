#!/bin/sh
# install-deps.sh [EXTRA-LIST...] - installs the Debian packages of
# scripts/debian-packages.txt (and of any extra list given, such as
# bench/debian-packages.txt) that are not installed yet. Needs root.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
lists="$here/debian-packages.txt $*"
missing=""
for pkg in $(cat $lists | sed 's/#.*//' | tr -s ' \n' '\n' | grep .); do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    case "$status" in
    *"install ok installed"*) ;;
    *) missing="$missing $pkg" ;;
    esac
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "install-deps: missing packages:$missing; run as root (sudo $0)" >&2
    exit 1
fi
echo "install-deps: installing$missing" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# --no-install-recommends: libvirt-daemon-system's recommends pull in a desktop's worth.
apt-get install -y -q --no-install-recommends $missing
