#!/usr/bin/env bash
# Starts a PostgreSQL server of its own on 127.0.0.1 for the tests, with
# role `ledger` (password `ledger`) owning database `ledger_test`, and
# prints its URL.
#
#   scripts/postgres.sh          start it, or do nothing if it already runs
#   scripts/postgres.sh stop     stop it (the data directory is kept)
#
# It never touches Debian's default cluster and needs no systemd: it runs
# its own cluster with pg_ctl, on an uncommon port. The server binaries come
# from Debian's `postgresql` package, installed here when missing.
#
# As root the cluster runs as the `postgres` system user (initdb refuses
# root), and its data directory defaults to that user's home, because the
# postgres user cannot enter root's home (mode 0700). As any other user the
# cluster runs as that user, under their own home.
#
# Environment: LEDGER_PG_DATA (data directory; default
# ~/.cache/recovery-ledger/pgdata of the user running the server),
# LEDGER_PG_PORT (54329), LEDGER_PG_START_TIMEOUT (60 s).
set -euo pipefail

port=${LEDGER_PG_PORT:-54329}
start_timeout=${LEDGER_PG_START_TIMEOUT:-60}
url=postgresql://ledger:ledger@127.0.0.1:$port/ledger_test

die() {
    echo "postgres.sh: $*" >&2
    exit 1
}

if ((EUID == 0)); then
    owner=postgres
    # From / so that the postgres user is not left in a directory it
    # cannot read (initdb and pg_ctl warn, or fail, if it is).
    as_owner() { (cd / && runuser -u postgres -- "$@"); }
else
    owner=$(id -un)
    as_owner() { "$@"; }
fi

# The newest installed major version that has a server, not just a client.
find_server_bin() {
    local dir
    printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | while read -r dir; do
        if [[ -x $dir/postgres && -x $dir/initdb && -x $dir/pg_ctl ]]; then
            echo "$dir"
        fi
    done | tail -n 1 | grep .
}

install_server() {
    ((EUID == 0)) || die "no PostgreSQL server installed; as root run:" \
        "apt-get update && apt-get install -y postgresql"
    echo "postgres.sh: installing Debian's postgresql package" >&2

    # Debian's package would otherwise create and try to start its own
    # cluster on port 5432, which nothing here uses.
    mkdir -p /etc/postgresql-common/createcluster.d
    echo "create_main_cluster = false" \
        >/etc/postgresql-common/createcluster.d/recovery-ledger.conf

    apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2
}

# Settings are rewritten before every start, so that a changed
# LEDGER_PG_PORT takes effect without a new cluster. fsync stays on: crash
# tests rely on committed data surviving a killed server.
write_settings() {
    as_owner tee "$pg_data/recovery-ledger.conf" >/dev/null <<EOF
# Written by scripts/postgres.sh on every start; edits here are lost.
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$pg_data'
unix_socket_permissions = 0700
max_connections = 200
EOF
}

init_cluster() {
    if [[ -f $pg_data/PG_VERSION ]]; then
        local have want
        have=$(<"$pg_data/PG_VERSION")
        want=$("$pg_bin/postgres" --version | sed -E 's/.* ([0-9]+).*/\1/')
        [[ $have == "$want" ]] || die "$pg_data holds a PostgreSQL $have" \
            "cluster but the server is $want; delete it to start afresh"
        return 0
    fi

    mkdir -p "$pg_data"
    chown "$owner": "$pg_data"
    chmod 700 "$pg_data"
    as_owner test -w "$pg_data" || die "user $owner cannot write $pg_data;" \
        "set LEDGER_PG_DATA to a directory it can reach"

    # Local (socket) connections are trusted: the socket lives in the data
    # directory, which only the owner can enter. TCP needs the password.
    as_owner "$pg_bin/initdb" -D "$pg_data" -U postgres \
        --auth-local=trust --auth-host=scram-sha-256 \
        --encoding=UTF8 --no-locale >"$pg_data.initdb.log" 2>&1 ||
        die "initdb failed; see $pg_data.initdb.log"
    echo "include = 'recovery-ledger.conf'" |
        as_owner tee -a "$pg_data/postgresql.conf" >/dev/null
}

admin_psql() {
    as_owner "$pg_bin/psql" -X -q -v ON_ERROR_STOP=1 \
        -h "$pg_data" -p "$port" -U postgres -d postgres "$@"
}

server_running() {
    as_owner "$pg_bin/pg_ctl" -D "$pg_data" status >/dev/null 2>&1
}

# Polls rather than trusting pg_ctl status once: a server killed a moment
# ago can still look alive (its pid not yet reaped) and then vanish, and
# one that is shutting down refuses connections until it is gone.
start_server() {
    local deadline=$((SECONDS + start_timeout))

    until admin_psql -c 'select 1' >/dev/null 2>&1; do
        if ! server_running; then
            write_settings
            # fd 9 (the lock) is closed so that the server does not hold it.
            as_owner "$pg_bin/pg_ctl" -D "$pg_data" -l "$pg_data/server.log" \
                -w -t "$start_timeout" start >&2 9>&- || {
                tail -n 20 "$pg_data/server.log" >&2 || true
                die "the server did not start; log: $pg_data/server.log"
            }
        fi
        if ((SECONDS >= deadline)); then
            die "the server does not accept connections after" \
                "${start_timeout}s (one started on another LEDGER_PG_PORT" \
                "needs 'scripts/postgres.sh stop'); log: $pg_data/server.log"
        fi
        sleep 0.2
    done
}

# Idempotent, so every run also repairs a role or database dropped by hand.
create_role_and_database() {
    admin_psql >&2 <<'EOF'
SELECT 'CREATE ROLE ledger'
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ledger')
\gexec
ALTER ROLE ledger WITH LOGIN SUPERUSER PASSWORD 'ledger';
SELECT 'CREATE DATABASE ledger_test OWNER ledger'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'ledger_test')
\gexec
EOF
}

# What the tests will do: a password login over TCP on 127.0.0.1.
wait_until_answering() {
    local deadline=$((SECONDS + start_timeout))

    until "$pg_bin/psql" -X -q "$url" -c 'select 1' >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            "$pg_bin/psql" -X "$url" -c 'select 1' >&2 || true
            die "$url does not answer after ${start_timeout}s;" \
                "log: $pg_data/server.log"
        fi
        sleep 0.2
    done
}

stop_server() {
    if server_running; then
        as_owner "$pg_bin/pg_ctl" -D "$pg_data" -m fast -w stop >&2
    fi
}

main() {
    local action=${1:-start} home

    # Installed before anything else: the package creates the postgres user
    # whose home holds the data directory when running as root.
    if ! pg_bin=$(find_server_bin); then
        [[ $action == stop ]] && exit 0
        install_server
        pg_bin=$(find_server_bin) || die "postgresql installed but no server found"
    fi

    home=$(getent passwd "$owner" | cut -d: -f6)
    pg_data=${LEDGER_PG_DATA:-$home/.cache/recovery-ledger/pgdata}

    # One run at a time: two concurrent first runs would both run initdb.
    mkdir -p "$(dirname "$pg_data")"
    exec 9>"$pg_data.lock"
    flock 9

    case $action in
    start)
        init_cluster
        start_server
        create_role_and_database
        wait_until_answering
        echo "$url"
        ;;
    stop)
        if [[ -f $pg_data/PG_VERSION ]]; then
            stop_server
        fi
        echo "postgres.sh: stopped" >&2
        ;;
    *)
        die "usage: $0 [start|stop]"
        ;;
    esac
}

main "$@"
