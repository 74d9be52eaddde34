#!/usr/bin/env bash
# Container entry point.
#   prepare  export graphs + TensorRT engines from /checkpoints into /models (cached), write config
#   serve    prepare when needed, then exec the image's tritonserver on /models (default)
set -euo pipefail
MODELS="${XSYN_MODELS:-/models}"
CKPT="${XSYN_CHECKPOINTS:-/checkpoints}"
ENGINE="${XSYN_ENGINE:-tensorrt}"

prepare() {
  local args=(--out "$MODELS" --engine "$ENGINE")
  if [ -d "$CKPT/gligen" ]; then args+=(--checkpoint-dir "$CKPT/gligen"); fi
  if [ -f "$CKPT/sam.pth" ]; then args+=(--sam-checkpoint "$CKPT/sam.pth"); fi
  if [ -f "$CKPT/apsam_energy.safetensors" ]; then args+=(--energy-checkpoint "$CKPT/apsam_energy.safetensors"); fi
  if [ "${#args[@]}" -eq 4 ]; then
    echo "xsyn-entrypoint: no checkpoints under $CKPT (expected gligen/ and/or sam.pth); exporting --preset full" >&2
    args+=(--preset full)
  fi
  xsyn export "${args[@]}"
  xsyn repository --repository "$MODELS" --target container --engine "$ENGINE"
}

# Model control, configs, the repository index, shared memory, logging and trace answer only
# requests carrying XSYN_ADMIN_KEY (gRPC header triton-grpc-protocol-xsyn-admin-key, HTTP header
# xsyn-admin-key); without it set, a random key nobody knows keeps them closed.
ADMIN_KEY="${XSYN_ADMIN_KEY:-$(cat /proc/sys/kernel/random/uuid)}"
RESTRICTED="shared-memory,model-config,model-repository,trace,logging:xsyn-admin-key=$ADMIN_KEY"

case "${1:-serve}" in
  prepare) prepare ;;
  serve)
    prepare
    exec tritonserver --model-repository="$MODELS" --model-control-mode=none --strict-readiness=true \
      --grpc-restricted-protocol="$RESTRICTED" --http-restricted-api="$RESTRICTED" \
      --exit-timeout-secs="${XSYN_GRACE:-30}" --grpc-port=8001 --http-port=8000 --metrics-port=8002 ;;
  *) exec "$@" ;;
esac
