"""``install.sh``: a POSIX shell front that verifies the bundle's signature with ``openssl`` before anything else,
then runs ``installer.py`` (embedded verbatim) with the host's ``python3``. The same bytes for every bundle built
by one version of hydra-bundle; the signed index lists their sha256."""

from __future__ import annotations

from pathlib import Path

NAME = "install.sh"
_END = "HYDRA_BUNDLE_INSTALLER_PY"

_HEAD = r"""#!/bin/sh
# hydra-bundle: install the on-site agent from the kit this bundle carries (nothing is downloaded).
#   sh install.sh --pub KEY.pub BUNDLE [--prefix DIR] [--no-systemd] [--no-start]
# Needs only sh, tar, openssl, sha256sum and python3 (3.11 or newer; PYTHON=/path/to/python3.x picks another).
# Before anything else the bundle's signed index is verified with openssl against KEY.pub; every kit wheel is then
# checked against that index (sha256 and size) before pip installs it with no index, from the kit alone.
# Check this script before running it (README: "Installing the agent"):
#   openssl dgst -sha256 -verify KEY.pub -signature <(tar -xOf BUNDLE hydra-bundle.json.sig | base64 -d) \
#       <(tar -xOf BUNDLE hydra-bundle.json)                       # Verified OK
#   tar -xOf BUNDLE hydra-bundle.json | grep -o '"installer":{[^}]*}'   # its sha256 …
#   sha256sum install.sh                                           # … is this one
set -eu
usage="usage: sh install.sh --pub KEY.pub BUNDLE [--prefix DIR] [--no-systemd] [--no-start]"
die() { echo "install.sh: error: $*" >&2; exit 1; }

pub="" bundle="" prev=""
for a in "$@"; do
  if [ "$prev" = --pub ]; then pub=$a
  elif [ "$prev" = --prefix ] || [ "$prev" = --root ]; then :
  else
    case $a in
      --pub|--prefix|--root|--no-systemd|--no-start) ;;
      -h|--help) echo "$usage"; exit 0 ;;
      -*) die "unknown option $a ($usage)" ;;
      *) [ -z "$bundle" ] || die "give one BUNDLE ($usage)"; bundle=$a ;;
    esac
  fi
  prev=$a
done
[ -n "$pub" ] || die "--pub KEY.pub is required: the public key the bundle must be signed with ($usage)"
[ -n "$bundle" ] || die "BUNDLE is required ($usage)"
[ -f "$pub" ] || die "$pub does not exist"
[ -f "$bundle" ] || die "$bundle does not exist"
py=${PYTHON:-python3}
for tool in tar openssl sha256sum "$py"; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is missing on this host: install it from the system's packages"
done
"$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || die "$("$py" -V 2>&1) is too old: \
the agent needs Python 3.11 or newer (Debian 12, Ubuntu 24.04, RHEL 9's python3.11 …): \
PYTHON=/path/to/python3.11 sh install.sh …"

occ=""
if tar --version 2>/dev/null | grep -q 'GNU tar'; then occ=--occurrence; fi
tmp=$(mktemp -d) || die "cannot make a temporary directory"
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM
tar $occ -xOf "$bundle" hydra-bundle.json > "$tmp/index.json" 2>/dev/null || \
  die "$bundle is not a hydra-bundle bundle (it has no hydra-bundle.json)"
tar $occ -xOf "$bundle" hydra-bundle.json.sig > "$tmp/index.sig" 2>/dev/null || \
  die "$bundle is unsigned: refusing to install from it"
openssl base64 -d -A -in "$tmp/index.sig" -out "$tmp/index.der" 2>/dev/null || die "$bundle: unreadable signature"
openssl dgst -sha256 -verify "$pub" -signature "$tmp/index.der" "$tmp/index.json" >/dev/null 2>&1 || \
  die "the signature of $bundle does not verify against $pub: nothing was installed (wrong key, or a tampered bundle)"
echo "install.sh: the bundle's signature verifies against $pub"
"""


def install_script() -> bytes:
    """The bytes of ``install.sh`` (shell front + ``installer.py``)."""
    source = Path(__file__).with_name("installer.py").read_text(encoding="utf-8")
    assert _END not in source
    return (_HEAD + f'"$py" - --index-file "$tmp/index.json" --script "$0" "$@" <<\'{_END}\'\n' + source
            + f"{_END}\n").encode()
