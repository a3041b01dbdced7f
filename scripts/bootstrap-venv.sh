#!/usr/bin/env bash
# Debian ships Python without ensurepip unless python3-venv is installed; add it when we can.
set -euo pipefail
py=$1
venv=$2
ver=$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing python$ver-venv (needed for virtual environments on Debian)"
  apt-get update -qq && apt-get install -y -qq "python$ver-venv" >/dev/null
elif command -v sudo >/dev/null && command -v apt-get >/dev/null; then
  sudo apt-get update -qq && sudo apt-get install -y -qq "python$ver-venv" >/dev/null
else
  echo "cannot create a virtual environment: install python$ver-venv (or your OS's venv package)" >&2
  exit 1
fi
rm -rf "$venv"
"$py" -m venv "$venv"
