#!/usr/bin/env bash
# Installs every Debian package ferry needs to build, test, demo and benchmark. The fuzz
# build (make test-fuzz, make fuzz) needs clang-14 with its sanitizer and libFuzzer runtimes.
# Packages already present are skipped; nothing is fetched from anywhere but apt.
set -euo pipefail

build_pkgs=(
  build-essential cmake ninja-build pkg-config
  libasio-dev libssl-dev libprotobuf-dev protobuf-compiler
  libzstd-dev libxxhash-dev libcli11-dev nlohmann-json3-dev libfmt-dev libtomlplusplus-dev liburing-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  help2man dpkg-dev
  clang-14 libclang-rt-14-dev libfuzzer-14-dev
)
tool_pkgs=(openssl netcat-openbsd iproute2 procps time)
bench_pkgs=(iperf3 rsync openssh-server openssh-client socat hyperfine linux-perf strace xxhash)

# AES-GCM with VAES for the TLS record layer; only packaged for x86-64 (optional).
if [ "$(dpkg --print-architecture 2>/dev/null)" = amd64 ]; then
  build_pkgs+=(libipsec-mb-dev)
fi

want=("${build_pkgs[@]}" "${tool_pkgs[@]}")
if [ "${1:-}" = "--bench" ]; then
  want+=("${bench_pkgs[@]}")
fi

missing=()
for p in "${want[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing packages: ${missing[*]}" >&2
  echo "install-deps: run as root (or: sudo apt-get install --no-install-recommends ${missing[*]})" >&2
  exit 1
fi

echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# A fresh machine has no package lists yet: fetched first. Lists already there are tried
# as they are (quietly), and fetched again only when that fails.
if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
  echo "install-deps: apt-get update (no package lists yet)" >&2
  apt-get update -q >/dev/null
fi
if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
  echo "install-deps: apt-get update, then installing again" >&2
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi
