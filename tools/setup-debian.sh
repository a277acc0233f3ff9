#!/usr/bin/env bash
# Debian packages qpass's tests and benchmarks need: host compilers (gcc, clang) and the Cortex-M
# cross toolchain (arm-none-eabi-gcc with newlib), and chromium (the test that opens report.html in a
# headless browser). Installs only what is missing; needs root or sudo.
set -euo pipefail
need=()
command -v gcc >/dev/null || need+=(gcc)
command -v clang >/dev/null || need+=(clang)
command -v size >/dev/null || need+=(binutils)
command -v arm-none-eabi-gcc >/dev/null || need+=(gcc-arm-none-eabi)
command -v chromium >/dev/null || need+=(chromium)
[ -e /usr/lib/arm-none-eabi/newlib/libc.a ] || [ -e /usr/lib/arm-none-eabi/lib/libc.a ] || need+=(libnewlib-arm-none-eabi)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
