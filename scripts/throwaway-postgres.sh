#!/usr/bin/env bash
# A throwaway PostgreSQL cluster on 127.0.0.1:5432 (trust auth, database `test`), for the store
# tests inside their private network namespace (where the host's PostgreSQL cannot be reached).
# Its socket is in the cluster's own folder, so clusters in several namespaces at once do not clash.
#   dir=$(scripts/throwaway-postgres.sh start)   ...   scripts/throwaway-postgres.sh stop "$dir"
set -euo pipefail
bin=$(dirname "$(readlink -f "$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | tail -n 1 || command -v initdb)")")
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
case "${1:-start}" in
  start)
    dir=$(mktemp -d /tmp/secondreader-pg.XXXXXX)
    [ "$(id -u)" = 0 ] && chown postgres "$dir"
    chmod 700 "$dir"
    as_pg "$bin/initdb" -D "$dir" -A trust -U postgres >/dev/null
    as_pg "$bin/pg_ctl" -D "$dir" -o "-k $dir -h 127.0.0.1 -p 5432" -l "$dir/server.log" -w start >/dev/null
    as_pg "$bin/createdb" -h 127.0.0.1 -U postgres test
    echo "$dir"
    ;;
  stop)
    as_pg "$bin/pg_ctl" -D "$2" -m fast -w stop >/dev/null
    rm -rf "$2"
    ;;
  *) echo "usage: $0 start | stop DIR" >&2; exit 2 ;;
esac
