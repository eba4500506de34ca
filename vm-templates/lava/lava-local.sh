#!/bin/bash
# A local LAVA (Debian 12's lava-server and lava-dispatcher) for kpipe's tests and CI, on 127.0.0.1 only.
#
#   vm-templates/lava/lava-local.sh install   # packages; run it before any other apt step (see below)
#   vm-templates/lava/lava-local.sh start     # apache, gunicorn, scheduler, worker; a token and a qemu device
#   vm-templates/lava/lava-local.sh stop      # every daemon it started
#
# No systemd is assumed as PID 1: daemons are started from their unit files' ExecStart lines. While
# `install` runs, /usr/sbin/policy-rc.d keeps maintainer scripts from starting apache2, udev and lava-*
# (apache would listen on every address); it affects every apt step on the machine while it exists, so
# `install` runs first and removes it on exit. State (token, PIDs, logs) lives in $KPIPE_LAVA_DIR
# (default /var/lib/kpipe-lava). The REST API is then http://127.0.0.1/api/v0.2/.
set -euo pipefail
STATE=${KPIPE_LAVA_DIR:-/var/lib/kpipe-lava}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$STATE"

log() { echo "lava-local: $*" >&2; }

install_lava() {
    if dpkg -s lava-server lava-dispatcher >/dev/null 2>&1; then log "already installed"; return; fi
    for _ in $(seq 120); do pgrep -x apt-get >/dev/null || pgrep -x dpkg >/dev/null || break; sleep 2; done
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    printf '#!/bin/sh\ncase "$1" in apache2|apache-htcacheclean|udev|lava-*) exit 101;; esac\nexit 0\n' \
        > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql >/dev/null
    service postgresql start   # lava-server's postinst creates its database
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        lava-server lava-dispatcher apache2 lavacli >"$STATE/apt.log" 2>&1 || { tail -30 "$STATE/apt.log"; exit 1; }
    rm -f /usr/sbin/policy-rc.d
    trap - EXIT
    log "installed ($(dpkg-query -W -f='${Version}' lava-server))"
}

daemon() {  # name, command...: start once, PID in $STATE/name.pid
    local name=$1; shift
    if [ -f "$STATE/$name.pid" ] && kill -0 "$(cat "$STATE/$name.pid")" 2>/dev/null; then return; fi
    nohup "$@" >"$STATE/$name.out" 2>&1 &
    echo $! >"$STATE/$name.pid"
}

start_lava() {
    service postgresql start >/dev/null
    sed -i 's/^Listen 80$/Listen 127.0.0.1:80/; s/^\(\s*\)Listen 443$/\1Listen 127.0.0.1:443/' /etc/apache2/ports.conf
    a2dissite -q 000-default >/dev/null 2>&1 || true
    a2enmod -q proxy proxy_http >/dev/null
    a2ensite -q lava-server >/dev/null
    mkdir -p /etc/lava-server/settings.d /var/log/lava-server /var/log/lava-dispatcher
    # http://127.0.0.1 is not https: Django's secure cookies off; events wake the scheduler at once.
    printf 'CSRF_COOKIE_SECURE: false\nSESSION_COOKIE_SECURE: false\nEVENT_NOTIFICATION: true\nEVENT_SOCKET: "tcp://127.0.0.1:5500"\n' \
        > /etc/lava-server/settings.d/01-kpipe-localhost.yaml
    apache2ctl start 2>/dev/null || apache2ctl graceful
    daemon gunicorn /usr/bin/gunicorn3 lava_server.wsgi --log-level INFO --log-file /var/log/lava-server/gunicorn.log \
        -u lavaserver -g lavaserver --worker-class eventlet --workers 2 --bind 127.0.0.1:8000
    daemon publisher /usr/bin/lava-server manage lava-publisher --level INFO \
        --log-file /var/log/lava-server/lava-publisher.log --host 127.0.0.1 --port 8001
    daemon scheduler /usr/bin/lava-server manage lava-scheduler --level INFO \
        --log-file /var/log/lava-server/lava-scheduler.log
    for _ in $(seq 90); do curl -sf -o /dev/null http://127.0.0.1/api/v0.2/system/version/ && break; sleep 1; done
    curl -sf -o /dev/null http://127.0.0.1/api/v0.2/system/version/ || { log "the REST API does not answer"; exit 1; }
    # It registers itself from 127.0.0.0/8 (WORKER_AUTO_REGISTER_NETMASK).
    daemon worker /usr/bin/lava-worker --level INFO --url http://127.0.0.1/ --name kpipe-worker \
        --log-file /var/log/lava-dispatcher/lava-worker.log
    if ! lava-server manage users details kpipe >/dev/null 2>&1; then
        lava-server manage users add kpipe --superuser --staff --passwd "$(head -c 18 /dev/urandom | base64)"
    fi
    if [ ! -s "$STATE/token" ]; then
        (umask 077; lava-server manage tokens add --user kpipe --description kpipe-tests > "$STATE/token")
    fi
    lava-server manage device-types list | grep -qw qemu || lava-server manage device-types add qemu
    install -m 644 "$HERE/qemu-device.jinja2" /etc/lava-server/dispatcher-config/devices/kpipe-qemu01.jinja2
    for _ in $(seq 60); do lava-server manage workers list | grep -q kpipe-worker && break; sleep 1; done
    lava-server manage devices details kpipe-qemu01 >/dev/null 2>&1 || \
        lava-server manage devices add --device-type qemu --worker kpipe-worker kpipe-qemu01
    lava-server manage devices update --health UNKNOWN kpipe-qemu01 >/dev/null 2>&1 || true
    log "up: http://127.0.0.1/api/v0.2/ (token in $STATE/token, device kpipe-qemu01)"
}

stop_lava() {
    for name in worker scheduler publisher gunicorn; do
        if [ -f "$STATE/$name.pid" ]; then kill "$(cat "$STATE/$name.pid")" 2>/dev/null || true; rm -f "$STATE/$name.pid"; fi
    done
    apache2ctl stop 2>/dev/null || true
    pkill -f 'lava-run ' 2>/dev/null || true
    log "stopped"
}

case "${1:-}" in
    install) install_lava ;;
    start) start_lava ;;
    stop) stop_lava ;;
    *) echo "usage: $0 install|start|stop" >&2; exit 64 ;;
esac
