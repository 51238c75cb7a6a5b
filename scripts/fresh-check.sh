#!/usr/bin/env bash
# Run CI (.ci/run) the way a fresh Debian 12 machine would: a fresh clone of this repository's HEAD, a scrubbed
# environment (env -i: Debian's PATH only, no /usr/local/bin or pyenv, a new empty HOME, so Debian's python3 and
# no caches), as root. What was installed by hand on this machine cannot hide a missing step.
#   bash scripts/fresh-check.sh [--keep]
# --keep leaves the clone and HOME in place (printed at the end). Exit status is .ci/run's.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
keep=0
if [ "${1:-}" = "--keep" ]; then keep=1; fi
[ -z "$(git -C "$repo" status --porcelain --untracked-files=no)" ] || \
  echo "fresh-check: note: uncommitted changes are NOT checked (the clone is of HEAD $(git -C "$repo" rev-parse --short HEAD))" >&2
work=$(mktemp -d /tmp/hydra-fresh.XXXXXX)
cleanup() { if [ "$keep" = 0 ]; then rm -rf "$work"; else echo "fresh-check: kept $work" >&2; fi; }
trap cleanup EXIT
git clone -q "$repo" "$work/main"
ln -s "$repo/../shared" "$work/shared"   # what CI has beside the clone: the shared fixtures and recipes
mkdir "$work/home"
start=$(date +%s)
set +e
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME="$work/home" LANG=C.UTF-8 TERM=dumb \
  bash "$work/main/.ci/run" 2>&1 | tee "$work/ci.log"
rc=${PIPESTATUS[0]}
set -e
echo "fresh-check: .ci/run exited $rc after $(( $(date +%s) - start )) s (python: $(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin sh -c 'command -v python3; python3 --version'))"
exit "$rc"
