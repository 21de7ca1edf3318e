#!/usr/bin/env bash
# Set-up command 2 of the README: install eftclip with every extra into .venv and run the tests.
# Works on a fresh machine: torch 2.14.1 / torchvision 0.29.1 come from the local wheel store
# that pip is pointed at here (x86_64, CPython 3.11); everything else from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,fastsam,hf,wordnet]'
# Offline WordNet for EDA synonyms and the onnx-detector's prompt mapping (Debian packages);
# optional: without it the shipped synonym table is used and the tests that need WordNet skip.
if [ ! -f /usr/share/wordnet/data.noun ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  { apt-get update -qq && apt-get install -y -qq wordnet-base wordnet-sense-index >/dev/null; } \
    || echo "note: WordNet not installed; the shipped synonym table is used and WordNet tests skip"
fi
# Slow tests (marked 'slow') are included when EFTCLIP_SLOW=1.
if [ "${EFTCLIP_SLOW:-0}" = "1" ]; then marker=(); else marker=(-m "not slow"); fi
exec .venv/bin/python -m pytest -q "${marker[@]}" "$@"
