#!/usr/bin/env bash
# Installs the Debian packages named as arguments that are not installed yet, as root or
# through sudo; otherwise says which to install. Installed ones are left alone.
set -euo pipefail
missing=()
for p in "$@"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
[ ${#missing[@]} = 0 ] && exit 0
if ! command -v apt-get >/dev/null; then
  echo "install these Debian packages (or your OS's equivalents): ${missing[*]}" >&2
  exit 1
fi
if [ "$(id -u)" = 0 ]; then
  sudo=()
elif command -v sudo >/dev/null; then
  sudo=(sudo)
else
  echo "not root and no sudo: install these Debian packages: ${missing[*]}" >&2
  exit 1
fi
echo "installing Debian packages: ${missing[*]}"
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
  -o DPkg::Lock::Timeout=900 "${missing[@]}" >/dev/null
