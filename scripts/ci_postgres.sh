#!/usr/bin/env bash
# Make sure the PostgreSQL server binaries (initdb, pg_ctl, postgres) are installed, for the store
# tests (tests/pg.py starts a throwaway server from them). Idempotent: a no-op, in milliseconds,
# where they are already there; otherwise installs Debian/Ubuntu's `postgresql` package (on Debian
# 12 the binaries land in /usr/lib/postgresql/15/bin, which tests/pg.py searches).
set -euo pipefail

find_bin_dir() {
    local d
    for d in "$(dirname "$(command -v initdb 2>/dev/null || echo /nonexistent/initdb)")" /usr/local/bin \
        $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -rV); do
        if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/postgres" ]; then
            echo "$d"
            return 0
        fi
    done
    return 1
}

if dir="$(find_bin_dir)"; then
    echo "ci_postgres: PostgreSQL binaries in $dir"
    exit 0
fi

if ! command -v apt-get >/dev/null; then
    echo "ci_postgres: no PostgreSQL binaries and no apt-get: install PostgreSQL's server package" >&2
    exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi

echo "ci_postgres: installing PostgreSQL with apt-get"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends postgresql >/dev/null
# The package creates (and where it can, starts) a default cluster: the tests start their own, so
# drop it rather than leave a server running on the CI machine. Only clusters this run installed.
if command -v pg_lsclusters >/dev/null; then
    pg_lsclusters -h 2>/dev/null | while read -r version name _; do
        $sudo pg_dropcluster --stop "$version" "$name" || true
    done
fi

if dir="$(find_bin_dir)"; then
    echo "ci_postgres: PostgreSQL binaries in $dir"
else
    echo "ci_postgres: installed the postgresql package but found no initdb under /usr/lib/postgresql/*/bin" >&2
    exit 1
fi
