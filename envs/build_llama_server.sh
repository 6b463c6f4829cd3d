#!/usr/bin/env bash
# llama.cpp's own server (llama-server) from the llama.cpp source that llama-cpp-python vendors:
#   envs/build_llama_server.sh PYTHON 'llama-cpp-python==X' OUT [cmake flags...]
# The sdist comes from the package index as the wheel does; nothing else is downloaded (the web
# UI, whose assets would come from a hub, is left out). The build log is shown when it fails.
set -euo pipefail
python=$1 package=$2 out=$3
shift 3
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
"$python" -m pip download --quiet --no-deps --no-binary :all: -d "$src" "$package"
tar -xzf "$src"/llama_cpp_python-*.tar.gz -C "$src"
flags=(-DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
       -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DBUILD_SHARED_LIBS=OFF
       -DCMAKE_BUILD_TYPE=Release)
started=$SECONDS
if ! { cmake -S "$src"/llama_cpp_python-*/vendor/llama.cpp -B "$src/build" "$@" "${flags[@]}" &&
       cmake --build "$src/build" --target llama-server -j"$(nproc)"; } >"$src/build.log" 2>&1; then
  tail -40 "$src/build.log" >&2
  exit 1
fi
install -D "$src/build/bin/llama-server" "$out"
echo "llama-server built in $((SECONDS - started)) s: $out"
