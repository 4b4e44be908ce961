#!/usr/bin/env bash
# Installs what the project needs on Debian or Ubuntu, from the project folder:
#   the Debian packages (python3-venv, dataset-fashion-mnist; chromium with --screenshots),
#   a virtual environment .venv with the runtime and test requirements, and the project itself
#   (editable: `.venv/bin/fixmatch --dataset=...` and the other commands of pyproject.toml).
#
#   bash scripts/setup.sh                 # CPU (the TensorFlow wheel also uses a GPU when CUDA is installed)
#   bash scripts/setup.sh --gpu           # + TensorFlow's CUDA libraries from pip (requirements-gpu.txt)
#   bash scripts/setup.sh --screenshots   # + chromium, for scripts/tensorboard_screenshot.py
#   bash scripts/setup.sh --no-test       # runtime requirements only
#
# Works as root (Docker, CI: no sudo needed) and as a user with sudo. Debian packages already installed are
# not asked for again, so a user without sudo can run it once they are there. Running it again is harmless.
set -euo pipefail
cd "$(dirname "$0")/.."

gpu=0 screenshots=0 tests=1
for arg in "$@"; do
  case "$arg" in
    --gpu) gpu=1 ;;
    --screenshots) screenshots=1 ;;
    --no-test) tests=0 ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown option $arg; options: --gpu --screenshots --no-test" >&2; exit 2 ;;
  esac
done

packages=(python3-venv dataset-fashion-mnist)
if [ "$screenshots" = 1 ]; then packages+=(chromium); fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    as_root=()
  elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
  else
    echo "error: need the Debian packages ${missing[*]}: run this script as root, or install sudo," \
         "or ask an administrator for: apt-get install ${missing[*]}" >&2
    exit 2
  fi
  echo "Installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  "${as_root[@]}" apt-get update -qq
  "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "Creating the virtual environment .venv"
  python3 -m venv .venv
fi
requirements=(-r requirements.txt)
if [ "$tests" = 1 ]; then requirements+=(-r requirements-test.txt); fi
if [ "$gpu" = 1 ]; then requirements+=(-r requirements-gpu.txt); fi
echo "Installing Python packages: ${requirements[*]}"
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "${requirements[@]}"
# the project itself, editable; setuptools' notes about editable installs are shown only if it fails
if ! log=$(.venv/bin/python -m pip install -q --no-deps -e . 2>&1); then echo "$log" >&2; exit 1; fi
echo "Ready: .venv/bin/python fixmatch.py --dataset=fashion_mnist.1@40-1 --local"
