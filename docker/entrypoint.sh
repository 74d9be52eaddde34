#!/usr/bin/env bash
# Container entry point.
#   prepare  export graphs + TensorRT engines from /checkpoints into /models (cached), write config
#   serve       prepare when needed, then exec the image's tritonserver on /models (default)
#   serve-only  exec tritonserver on $XSYN_MODELS as it is: a prepared folder or an s3:// (gs://,
#               as://) repository, which Triton reads natively (deploy/kubernetes)
set -euo pipefail
MODELS="${XSYN_MODELS:-/models}"
CKPT="${XSYN_CHECKPOINTS:-/checkpoints}"
ENGINE="${XSYN_ENGINE:-tensorrt}"

prepare() {
  local args=(--out "$MODELS" --engine "$ENGINE") found=0 entry
  # every checkpoint under $CKPT, recognised by content (GLIGEN .pth or diffusers folder, SAM or
  # APSAM .pth); a tokenizer/ folder goes with an original GLIGEN .pth
  shopt -s nullglob
  for entry in "$CKPT"/*; do
    if [ "$(basename "$entry")" = tokenizer ]; then
      args+=(--tokenizer "$entry")
    elif [ -d "$entry" ] || [[ "$entry" == *.pth || "$entry" == *.safetensors ]]; then
      args+=(--checkpoint "$entry"); found=$((found + 1))
    fi
  done
  if [ "$found" -eq 0 ]; then
    echo "xsyn-entrypoint: no checkpoints under $CKPT (expected a GLIGEN .pth or folder, a SAM/APSAM .pth); exporting --preset full" >&2
    args=(--out "$MODELS" --engine "$ENGINE" --preset full)
  fi
  xsyn export "${args[@]}"
  xsyn repository --repository "$MODELS" --target container --engine "$ENGINE"
}

# Model control, configs, the repository index, shared memory, logging and trace answer only
# requests carrying XSYN_ADMIN_KEY (gRPC header triton-grpc-protocol-xsyn-admin-key, HTTP header
# xsyn-admin-key); without it set, a random key nobody knows keeps them closed.
ADMIN_KEY="${XSYN_ADMIN_KEY:-$(cat /proc/sys/kernel/random/uuid)}"
RESTRICTED="shared-memory,model-config,model-repository,trace,logging:xsyn-admin-key=$ADMIN_KEY"

serve_repository() {
  exec tritonserver --model-repository="$MODELS" --model-control-mode=none --strict-readiness=true \
    --grpc-restricted-protocol="$RESTRICTED" --http-restricted-api="$RESTRICTED" \
    --exit-timeout-secs="${XSYN_GRACE:-30}" --grpc-port=8001 --http-port=8000 --metrics-port=8002
}

case "${1:-serve}" in
  prepare) prepare ;;
  serve)
    prepare
    serve_repository ;;
  serve-only)
    if [[ "$MODELS" != *://* && ! -f "$MODELS/xsyn/config.pbtxt" ]]; then
      echo "xsyn-entrypoint: $MODELS holds no prepared repository (no xsyn/config.pbtxt); run 'prepare' first" >&2
      exit 2
    fi
    serve_repository ;;
  *) exec "$@" ;;
esac
