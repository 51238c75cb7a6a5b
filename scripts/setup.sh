#!/usr/bin/env bash
# Prepare a fresh Debian 12 machine for the demo and the tests: system packages, a venv with the project,
# and (for the Kubernetes tests) a kube-apiserver + etcd in $KUBEBUILDER_ASSETS (envtest convention).
# Idempotent: a second run only checks. Prints exactly what is missing when it cannot install (not root).
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PKGS=(docker-registry skopeo openssl rclone mariadb-server etcd-server podman python3-venv curl systemd containerd)
missing=()
for p in "${APT_PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: missing Debian packages: ${missing[*]} (run: sudo apt-get install -y ${missing[*]})" >&2
    exit 1
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e '.[test,docker,site]'
  rm -f .venv/.installed-*; touch "$stamp"
fi

# kube-apiserver + etcd for the apply tests: honour KUBEBUILDER_ASSETS; otherwise build the offline recipe
# from ../shared/recipes (4 min once, cached in ~/.cache) when it is available.
if [ -z "${KUBEBUILDER_ASSETS:-}" ] && [ "${HYDRA_BUNDLE_SKIP_KUBE:-}" != 1 ]; then
  recipe=${HYDRA_BUNDLE_RECIPES:-$PWD/../shared/recipes}/kube-apiserver/build.sh
  assets=$HOME/.cache/hydra-bundle-envtest
  cache=${KUBE_APISERVER_CACHE:-$HOME/.cache/kube-apiserver-1.20.2-deb12u1-p1}
  if [ ! -x "$assets/kube-apiserver" ] && [ -f "$recipe" ] && [ "$(id -u)" = 0 ]; then
    echo "setup: building kube-apiserver from Debian sources (offline recipe, ~4 min once)"
    bash "$recipe" >/tmp/hydra-bundle-kube-build.log 2>&1 || { tail -20 /tmp/hydra-bundle-kube-build.log; exit 1; }
  fi
  if [ -x "$cache/kube-apiserver" ] && command -v etcd >/dev/null; then
    mkdir -p "$assets"
    ln -sf "$cache/kube-apiserver" "$assets/kube-apiserver"
    ln -sf "$(command -v etcd)" "$assets/etcd"
  fi
fi
