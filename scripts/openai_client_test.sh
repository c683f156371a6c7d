#!/usr/bin/env bash
# Starts `ember serve` on the tiny Llama and drives it with the official `openai` Python
# client (installed from PyPI into a cached virtual environment).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ember/target}"
venv="${EMBER_OPENAI_VENV:-$HOME/.cache/ember/openai-venv}"
log() { printf '[openai check] %s\n' "$*"; }

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check openai
# Built as the test command builds it: with the dev-dependencies' features unified in, so
# after `cargo test --release` nothing is recompiled (a plain `cargo build --bin ember`
# resolves features differently and rebuilds most of the dependency tree).
cargo test --release --quiet --no-run

server_log="$(mktemp)"
"$CARGO_TARGET_DIR/release/ember" serve fixtures/llama-tiny-f16 --port 0 --served-model-name tiny \
  --api-key check-key 2>"$server_log" &
server=$!
trap 'kill "$server" 2>/dev/null || true; rm -f "$server_log"' EXIT
for _ in $(seq 600); do
  grep -q serving "$server_log" && break
  kill -0 "$server" 2>/dev/null || { cat "$server_log"; log "ember serve exited"; exit 1; }
  sleep 0.1
done
addr="$(grep -o 'http://[0-9.:]*' "$server_log" | head -1)"
[ -n "$addr" ] || { cat "$server_log"; log "no address in the server's banner"; exit 1; }
log "server at $addr"
"$venv/bin/python" scripts/openai_client_check.py "$addr/v1" check-key tiny
kill -TERM "$server"
wait "$server"
grep -q "server stopped" "$server_log" || { cat "$server_log"; log "no clean shutdown"; exit 1; }
log "passed"
