#!/usr/bin/env bash
# Triton's perf_analyzer against `vae_decoder` of the tiny server (loopback, bounded run).
#
# PyPI's `perf-analyzer` serves only an empty 0.1.0 placeholder on these machines, so the
# perf_analyzer binary is taken from the tritonclient 2.41.0 wheel (the last one that ships it),
# with its two shared libraries linked from the nvidia-pytriton wheel. Everything lives in
# .venv/tools/; nothing is committed.
#   usage: scripts/perf_vae_decoder.sh [extra perf_analyzer args]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
TOOLS=.venv/tools
PA="$TOOLS/perf_analyzer"
LIBS="$($BIN/python -c 'import pytriton, pathlib; print(pathlib.Path(pytriton.__file__).parent.parent / "nvidia_pytriton.libs")')"
if [ ! -x "$PA" ]; then
  mkdir -p "$TOOLS/libs"
  $BIN/python -m pip download --quiet --no-deps -d "$TOOLS/wheel" "tritonclient==2.41.0"
  (cd "$TOOLS" && unzip -o -q wheel/tritonclient-2.41.0-*.whl "tritonclient-2.41.0.data/data/bin/perf_analyzer" \
     && mv tritonclient-2.41.0.data/data/bin/perf_analyzer perf_analyzer && rm -rf tritonclient-2.41.0.data wheel)
  chmod +x "$PA"
  ln -sf "$LIBS"/libb64-*.so.0d "$TOOLS/libs/libb64.so.0d"
  ln -sf "$LIBS"/libcudart-*.so.12* "$TOOLS/libs/libcudart.so.12"
fi
read -r GRPC HTTP METRICS < <($BIN/python -c 'from xsyn.serving.server import free_port as f; print(f(), f(), f())')
KEY="$TOOLS/admin.key"  # perf_analyzer reads the model's config: a restricted protocol
$BIN/xsyn serve --preset tiny --grpc-port "$GRPC" --http-port "$HTTP" --metrics-port "$METRICS" --admin-key-file "$KEY" &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 120); do $BIN/xsyn health --url "127.0.0.1:$GRPC" >/dev/null 2>&1 && break; sleep 1; done
LD_LIBRARY_PATH="$TOOLS/libs:$LIBS" "$PA" -m vae_decoder -u "127.0.0.1:$GRPC" -i grpc \
  -H "triton-grpc-protocol-xsyn-admin-key:$(cat "$KEY")" \
  --input-data zero --concurrency-range 1:4 --measurement-interval 3000 --max-trials 5 "$@"
