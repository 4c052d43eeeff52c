#!/usr/bin/env bash
# Create benchmarks/.venv-recbole: RecBole 1.2.1 in a virtualenv of its own (its pins conflict
# with lmrec's stack). Idempotent: a marker file records a finished setup, and a rerun with the
# same recipe does nothing. Set RECBOLE_VENV to put the environment elsewhere.
#
# Recipe from shared/peers/README.md:
#   - torch==2.13.0 exactly: the CPU wheel is in the local wheelhouse; any other version pulls
#     gigabytes of CUDA wheels.
#   - recbole with --no-deps: its declared dependencies pin versions that no longer install.
#   - RecBole imports ray at module level but never uses it for a plain run, so a stub package
#     `ray` with an attribute `tune` stands in for the real (large) one.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${RECBOLE_VENV:-$here/.venv-recbole}"
recipe="recbole==1.2.1 torch==2.13.0 ray-stub v1"
marker="$venv/.lmrec-recbole-ready"

if [[ -f "$marker" && "$(cat "$marker")" == "$recipe" ]]; then
    echo "recbole_env: $venv is ready"
    exit 0
fi

if [[ ! -x "$venv/bin/python" ]]; then
    echo "recbole_env: creating $venv"
    python3 -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --quiet --quiet)  # -qq: the local index prints a warning per package
"${pip[@]}" torch==2.13.0
"${pip[@]}" --no-deps recbole==1.2.1
"${pip[@]}" "numpy<2" scipy pandas tqdm colorlog==4.7.2 colorama==0.4.4 scikit-learn pyyaml \
    tensorboard thop tabulate plotly texttable psutil

site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
mkdir -p "$site/ray"
cat >"$site/ray/__init__.py" <<'EOF'
"""Stub of ray for RecBole 1.2.1, which imports ray (and ray.tune) at module level but uses it
only for hyper-parameter search. Written by lmrec's benchmarks/recbole_env.sh."""

from . import tune  # noqa: F401
EOF
cat >"$site/ray/tune.py" <<'EOF'
"""Stub of ray.tune: present so that imports succeed; using any of it is an error."""


def __getattr__(name):
    raise AttributeError(f"ray.tune.{name}: ray is a stub here (lmrec benchmarks/recbole_env.sh); install ray to use it")
EOF

"$venv/bin/python" -c 'import recbole.quick_start, torch; print("recbole_env: recbole ok, torch", torch.__version__)'
echo "$recipe" >"$marker"
