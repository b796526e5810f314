#!/usr/bin/env bash
# A real one-node SLURM cluster on localhost, for the `slurm` tests and for trying launcher=slurm.
#
#   scripts/slurm-local.sh start          # install (Debian packages) if missing, configure, start; idempotent;
#                                         # prints the launcher=slurm overrides that fit the node
#   scripts/slurm-local.sh stop [--purge] # stop every daemon by PID file; --purge also drops the job state
#                                         # (the next start, a cold one, then also drops the accounting database)
#   scripts/slurm-local.sh status         # the daemons and `sinfo`
#
# Runs as root without systemd: munged, MariaDB + slurmdbd (accounting: without it a job killed hard never reports
# and submitit waits forever), slurmctld and slurmd. One node "localhost" with this machine's CPUs and ~85% of its
# memory, no cgroups, requeue delay cut to ~10 s (AuthInfo=cred_expire=10). Everything lives under $SLURM_LOCAL_DIR
# (default /var/tmp/lesstuning-slurm) except the config files, which go to /etc/slurm so that sbatch, sinfo and
# submitit need no SLURM_CONF.
set -euo pipefail

BASE=${SLURM_LOCAL_DIR:-/var/tmp/lesstuning-slurm}
CLUSTER=ltlocal
ETC=/etc/slurm
PACKAGES="slurmctld slurmd slurm-client munge slurmdbd mariadb-server"

# munged and MariaDB drop privileges, so their PID files live in their own run folders
MUNGE_PID=/run/munge/munged.pid
MARIADB_PID=/run/mysqld/mariadb.pid

log() { printf '[slurm-local] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts daemons)"

alive() {  # alive PIDFILE: true when the PID file names a running process that is not a zombie
    local f=$1 pid state
    [ -s "$f" ] || return 1
    pid=$(cat "$f" 2>/dev/null) || return 1
    [ -r "/proc/$pid/stat" ] || return 1
    state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
    [ "$state" != Z ]
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local secs=$1 what=$2; shift 2
    for _ in $(seq $((secs * 5))); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    die "timed out after ${secs}s waiting for $what (logs in $BASE/log)"
}

install_packages() {
    local missing=()
    for cmd in slurmctld slurmd sbatch munged slurmdbd mariadbd; do
        command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing $PACKAGES (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $PACKAGES >/dev/null
}

write_config() {
    local cpus mem
    cpus=$(nproc)
    mem=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.85}' /proc/meminfo)
    mkdir -p "$ETC" "$BASE"/{state,spool,log,run,mysql-run}
    cat > "$ETC/slurm.conf" <<CONF
# written by scripts/slurm-local.sh
ClusterName=$CLUSTER
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerParameters=batch_sched_delay=0
# a requeued or cancelled job gets SIGKILL 5 s after SIGTERM (default 30 s)
KillWait=5
MailProg=/bin/true
ReturnToService=2
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool
SlurmctldPidFile=$BASE/run/slurmctld.pid
SlurmdPidFile=$BASE/run/slurmd.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd.log
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
    cat > "$ETC/slurmdbd.conf" <<CONF
# written by scripts/slurm-local.sh
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
PidFile=$BASE/run/slurmdbd.pid
LogFile=$BASE/log/slurmdbd.log
CONF
    chmod 600 "$ETC/slurmdbd.conf"
}

start_munge() {
    alive $MUNGE_PID && return 0
    if [ ! -s /etc/munge/munge.key ]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    runuser -u munge -- /usr/sbin/munged --pid-file=$MUNGE_PID 2>>"$BASE/log/munged.log" || true
    wait_for 10 munged alive $MUNGE_PID
}

start_mariadb() {  # start_mariadb [fresh]: fresh also drops the accounting database (cold start)
    if ! alive $MARIADB_PID; then
        mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
        if [ ! -d /var/lib/mysql/mysql ]; then
            mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
        fi
        mariadbd --user=mysql --datadir=/var/lib/mysql --socket=/run/mysqld/mysqld.sock \
            --pid-file=$MARIADB_PID --skip-networking=0 --bind-address=127.0.0.1 \
            >>"$BASE/log/mariadb.log" 2>&1 &
        wait_for 30 MariaDB mariadb -e "select 1"
    fi
    if [ "${1:-}" = fresh ]; then
        # job ids restart at 1 with a fresh job state: old accounting records with the same ids would make
        # sacct (and so submitit) report a new job as long finished
        mariadb -e "DROP DATABASE IF EXISTS slurm_acct_db;"
    fi
    mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
                CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
                GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
}

start_slurm() {
    if ! alive "$BASE/run/slurmdbd.pid"; then
        slurmdbd
        wait_for 30 slurmdbd sacctmgr -n list cluster
    fi
    sacctmgr -i add cluster "$CLUSTER" >/dev/null 2>&1 || true
    if ! alive "$BASE/run/slurmctld.pid"; then
        slurmctld
        wait_for 30 slurmctld scontrol ping
    fi
    if ! alive "$BASE/run/slurmd.pid"; then
        slurmd -N localhost
    fi
    wait_for 30 "node localhost to be idle" sh -c 'sinfo -h -n localhost -o %t | grep -Eq "^(idle|mix|alloc)"'
}

fit_overrides() {  # the launcher=slurm overrides a job needs to fit the node (no GPU: no GRES is configured)
    local cpus mem
    read -r cpus mem < <(sinfo -h -N -n localhost -o '%c %m' | head -n 1)
    echo "hydra.launcher.gpus_per_node=0 hydra.launcher.cpus_per_task=$cpus hydra.launcher.mem_gb=$((mem / 1024))"
}

cmd_start() {
    install_packages
    local cold=1
    for d in slurmctld slurmd slurmdbd; do alive "$BASE/run/$d.pid" && cold=0; done
    # a cold start recovers jobs as RUNNING on a node that no longer knows them: start from a clean job state
    [ $cold = 1 ] && rm -rf "$BASE/state" "$BASE/spool"
    write_config
    start_munge
    if [ $cold = 1 ]; then start_mariadb fresh; else start_mariadb; fi
    start_slurm
    log "running: $(sinfo -h -o '%P %D %t %c CPUs %m MB')"
    # launcher=slurm asks for 1 GPU, 8 CPUs and 32 GB by default: more than this node has
    log "jobs fit this node with: python -m launch launcher=slurm $(fit_overrides)"
}

stop_pid() {  # stop_pid NAME PIDFILE
    local name=$1 f=$2 pid
    [ -s "$f" ] || return 0
    pid=$(cat "$f" 2>/dev/null) || return 0  # the daemon may remove it while stopping
    if alive "$f"; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do alive "$f" || break; sleep 0.1; done
        alive "$f" && kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
    log "stopped $name"
}

cmd_stop() {
    stop_pid slurmd "$BASE/run/slurmd.pid"
    stop_pid slurmctld "$BASE/run/slurmctld.pid"
    stop_pid slurmdbd "$BASE/run/slurmdbd.pid"
    stop_pid mariadb $MARIADB_PID
    stop_pid munged $MUNGE_PID
    if [ "${1:-}" = --purge ]; then
        rm -rf "$BASE/state" "$BASE/spool"
        log "purged job state"
    fi
}

cmd_status() {
    for f in $MUNGE_PID $MARIADB_PID "$BASE"/run/slurm{dbd,ctld,d}.pid; do
        if alive "$f"; then echo "$(basename "$f" .pid): running ($(cat "$f"))"; else echo "$(basename "$f" .pid): stopped"; fi
    done
    command -v sinfo >/dev/null && sinfo 2>/dev/null || true
    if alive "$BASE/run/slurmctld.pid"; then echo "jobs fit the node with: $(fit_overrides 2>/dev/null)"; fi
}

case "${1:-}" in
    start) cmd_start ;;
    stop) shift; cmd_stop "$@" ;;
    status) cmd_status ;;
    *) echo "usage: $0 start|stop [--purge]|status" >&2; exit 2 ;;
esac
