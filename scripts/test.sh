#!/usr/bin/env bash
# The test command (README and CI run exactly this): set up, lint and type-check, then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HYDRA_BUNDLE_FIXTURES=${HYDRA_BUNDLE_FIXTURES:-$(cd .. && pwd)/shared/fixtures}
if [ -z "${KUBEBUILDER_ASSETS:-}" ] && [ -x "$HOME/.cache/hydra-bundle-envtest/kube-apiserver" ]; then
  export KUBEBUILDER_ASSETS=$HOME/.cache/hydra-bundle-envtest
fi
.venv/bin/ruff check src tests bench demo
.venv/bin/mypy   # strict, over src/hydra_bundle (pyproject.toml [tool.mypy])
.venv/bin/hydra-bundle lint bundle-spec.yaml --search "$HYDRA_BUNDLE_FIXTURES"
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
