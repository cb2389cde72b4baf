#!/bin/sh
# Entrypoint of the attention-server image (installed as /usr/local/bin/attention-entrypoint).
#
# Arguments are attention-server flags. Unless one of them is --model_repository, the server gets
# --model_repository=$ATTN_MODEL_DIR (default /models) when that directory holds at least one
# <model>/config.pbtxt; otherwise it serves its built-in model "default" (an empty or absent
# mount is not an error). A first argument that is not a flag is run as a command instead, e.g.
# `attention-cli health`, `sh`.
set -eu

case "${1:-}" in
  "" | -*) ;;
  *) exec "$@" ;;
esac

for arg in "$@"; do
  case "$arg" in
    --model_repository | --model_repository=* | -model_repository | -model_repository=*)
      exec attention-server "$@" ;;
  esac
done

model_dir=${ATTN_MODEL_DIR:-/models}
for config in "$model_dir"/*/config.pbtxt; do
  if [ -f "$config" ]; then
    exec attention-server --model_repository="$model_dir" "$@"
  fi
done
echo "attention-entrypoint: no <model>/config.pbtxt under $model_dir; serving the built-in model" >&2
exec attention-server "$@"
