#!/bin/sh
# Install what the test suite needs to start its own real services
# (PostgreSQL 15 clusters, a private sshd, podman containers), Debian's
# chromium, in which the db.report test opens the page headless, and Debian's
# pgcopydb, one of the contenders `make bench` measures (issue 21).
#
# Idempotent: when everything is present it exits 0 without output.
# When something is missing and we are root with apt-get, it installs the
# missing Debian packages (apt-get update first); otherwise it prints the exact
# packages to install and exits 1. See ../shared/ENVIRONMENT.md.
set -eu

PG_BINDIR=/usr/lib/postgresql/15/bin
missing=""

add() {
    # add PACKAGE... to $missing unless already listed
    for p in "$@"; do
        case " $missing " in
            *" $p "*) ;;
            *) missing="${missing:+$missing }$p" ;;
        esac
    done
}

have() { command -v "$1" >/dev/null 2>&1; }

have podman         || add podman uidmap
have runc           || add runc
have podman-compose || add podman-compose
[ -x /usr/sbin/sshd ] || add openssh-server
have ssh            || add openssh-client
have ssh-keygen     || add openssh-client
have sudo           || add sudo
have crontab        || add cron
have zstd           || add zstd
have chromium       || add chromium
have pgcopydb       || add pgcopydb
for b in initdb pg_ctl postgres pg_dump pg_restore psql pg_isready; do
    [ -x "$PG_BINDIR/$b" ] || { add postgresql-15; break; }
done

[ -z "$missing" ] && exit 0

if [ "$(id -u)" = 0 ] && have apt-get; then
    echo "install-test-deps: installing: $missing" >&2
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get update; then
        echo "install-test-deps: apt-get update failed" >&2
        exit 2
    fi
    # shellcheck disable=SC2086  # word splitting of the package list is intended
    if ! apt-get install -y --no-install-recommends $missing; then
        echo "install-test-deps: apt-get install failed for: $missing" >&2
        exit 3
    fi
    exit 0
fi

echo "install-test-deps: missing test dependencies; install these Debian packages:" >&2
echo "  apt-get update && apt-get install -y --no-install-recommends $missing" >&2
echo "$missing"
exit 1
