#!/usr/bin/env bash
# Set everything up (idempotent, fast when done), then serve the chat page and print its URL.
#   ./start.sh                      serve on http://127.0.0.1:8000
#   ./start.sh --port 9000          serve, with `webrwkv serve` options
#   ./start.sh generate --prompt Hi any other `webrwkv` command
set -euo pipefail
cd "$(dirname "$0")"
bash tools/setup.sh
if [ $# -eq 0 ] || [[ "$1" == -* ]]; then
    set -- serve "$@"
fi
exec .venv/bin/webrwkv "$@"
