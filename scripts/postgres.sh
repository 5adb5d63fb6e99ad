#!/usr/bin/env bash
# A throw-away PostgreSQL server on 127.0.0.1 for the multi-worker tests (Debian's postgresql).
#   scripts/postgres.sh start DIR PORT   installs the package if missing, starts a server whose
#                                        data lives in DIR, prints its URL (database mlp_sweep)
#   scripts/postgres.sh stop DIR         stops that server by the process id in DIR/postmaster.pid
set -euo pipefail
action=$1; dir=$(realpath -m "$2"); port=${3:-55432}

case "$action" in
start)
  if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } >&2
  fi
  bin=$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)")
  mkdir -p "$dir"
  # initdb refuses to run as root: the server runs as Debian's postgres user.
  chown postgres "$dir"
  as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
  as_postgres "$bin/initdb" -D "$dir/data" -U postgres --auth=trust >/dev/null
  as_postgres "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir" start >&2
  as_postgres "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres mlp_sweep
  echo "postgresql://postgres@127.0.0.1:$port/mlp_sweep"
  ;;
stop)
  pid=$(head -n 1 "$dir/data/postmaster.pid")
  kill -INT "$pid"   # fast shutdown: ends open client sessions instead of waiting for them
  while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
  ;;
*) echo "usage: $0 start DIR [PORT] | stop DIR" >&2; exit 2 ;;
esac
