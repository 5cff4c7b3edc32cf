# Shared set-up for scripts/quickstart and scripts/test: a virtualenv in .venv with agentfleet installed.
# Idempotent and quiet when nothing changed; everything it needs comes from PyPI.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "agentfleet needs Python >= 3.11")'
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
stamp=".venv/.installed-$(cat pyproject.toml | sha256sum | cut -c1-16)-${AGENTFLEET_EXTRAS:-test}"
if [ ! -f "$stamp" ]; then
  echo "==> installing agentfleet[${AGENTFLEET_EXTRAS:-test}] into .venv"
  python -m pip install -q --upgrade pip
  python -m pip install -q -e ".[${AGENTFLEET_EXTRAS:-test}]"
  rm -f .venv/.installed-*
  touch "$stamp"
fi
