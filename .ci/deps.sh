#!/bin/sh
# Installs the Debian packages named as arguments that are not installed yet.
# Used by `make test`, `make valgrind` and CI; needs root (or all present).
missing=""
for p in "$@"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "lua-vpp: missing Debian packages:$missing (run as root, or install them)" >&2
  exit 1
fi
echo "lua-vpp: installing$missing" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq && apt-get install -y -qq --no-install-recommends $missing >/dev/null
