#!/usr/bin/env bash
# A real single-node SLURM on the local machine, for development and CI.
#
#   slurm/local-cluster.sh up       install (if missing), configure and start munge + SLURM
#   slurm/local-cluster.sh down     stop what `up` started, restore a replaced slurm.conf
#   slurm/local-cluster.sh status   show the daemons and `sinfo`; exit 0 iff the node is usable
#
# Written for Debian 12 (Slurm 22.05 from Debian's packages) run as root, with or
# without systemd and cgroups: the daemons are started by hand, on loopback only.
#
# Idempotent and polite:
#   * `up` does nothing when a usable SLURM is already running (whoever started it);
#     otherwise it starts only the daemons that are not running and records their
#     pids in $STATE_DIR, plus whether it wrote /etc/slurm/slurm.conf (an existing
#     one is backed up first).
#   * `down` stops only the daemons recorded there and restores the backup; running
#     it twice, or without a previous `up`, is fine.
#
# The node advertises CPUs=4 (SlurmdParameters=config_overrides) so that more
# one-core jobs than there are cores can run at once, e.g. Dask workers in tests.
set -euo pipefail

STATE_DIR=/run/cartcohort-slurm            # what this script started (pids, flags)
CONF=/etc/slurm/slurm.conf
CONF_BACKUP=/etc/slurm/slurm.conf.cartcohort-backup
CONF_MARKER="# Written by cartcohort slurm/local-cluster.sh"
SPOOL=/var/spool/slurm-local                # StateSaveLocation and SlurmdSpoolDir
LOGDIR=/var/log/slurm-local
PIDDIR=/run/slurm                           # the notes' /var/run/slurm (same directory)
MUNGE_KEY=/etc/munge/munge.key
MUNGE_RUN=/run/munge
ADVERTISED_CPUS=4
WAIT_S=30                                   # bound on waiting for the node to become idle
PACKAGES=(slurmctld slurmd slurm-client munge)

log() { printf 'local-cluster: %s\n' "$*"; }
die() { printf 'local-cluster: error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- processes --
# A stopped daemon may linger as a zombie (no init reaps it here), so "running"
# means: /proc/PID exists, its state is not Z (zombie) or X (dead), and its
# command name is the expected one (guards against a recycled pid).
proc_state() {  # PID -> one-letter state, empty if no such process
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    stat=${stat##*) }                       # drop "pid (comm) " (comm may hold spaces)
    printf '%s' "${stat%% *}"
}

pid_alive() {  # PID NAME
    local pid=$1 name=$2 state comm
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    state=$(proc_state "$pid")
    [[ -n $state && $state != Z && $state != X ]] || return 1
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    [[ $comm == "$name" ]]
}

pids_of() {  # NAME -> live pids whose command name is NAME, one a line
    local d pid
    for d in /proc/[0-9]*; do
        pid=${d#/proc/}
        if pid_alive "$pid" "$1"; then printf '%s\n' "$pid"; fi
    done
}

running() { [[ -n $(pids_of "$1") ]]; }

started_pid() {  # NAME -> the pid recorded by `up` for NAME, if any
    cat "$STATE_DIR/$1.pid" 2>/dev/null || true
}

wait_for_pidfile() {  # FILE NAME -> prints the live pid written in FILE (10 s bound)
    local file=$1 name=$2 pid i
    for i in $(seq 1 50); do
        pid=$({ tr -dc '0-9' <"$file"; } 2>/dev/null || true)
        if [[ -n $pid ]] && pid_alive "$pid" "$name"; then printf '%s' "$pid"; return 0; fi
        sleep 0.2
    done
    # no usable pid file: fall back to the (single) running process of that name
    pid=$(pids_of "$name" | head -n 1)
    [[ -n $pid ]] || return 1
    printf '%s' "$pid"
}

stop_pid() {  # NAME PID: TERM, wait up to 20 s, then KILL
    local name=$1 pid=$2 i
    if ! pid_alive "$pid" "$name"; then
        log "$name (pid $pid) is not running"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do
        pid_alive "$pid" "$name" || { log "stopped $name (pid $pid)"; return 0; }
        sleep 0.2
    done
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.5
    pid_alive "$pid" "$name" && die "could not stop $name (pid $pid)"
    log "killed $name (pid $pid) after it ignored SIGTERM for 20 s"
}

# ------------------------------------------------------------------- health --
# The node is usable when slurmctld answers and some node is in a state that
# takes jobs (no "*" not-responding, drain or down suffixes/states).
node_states() {
    command -v sinfo >/dev/null 2>&1 || return 1
    timeout 10 sinfo -h -N -o '%t' 2>/dev/null
}

node_usable() {
    local states
    states=$(node_states) || return 1
    grep -Eqx '(idle|mix|alloc|comp)' <<<"$states"
}

munge_works() {
    command -v munge >/dev/null 2>&1 || return 1
    timeout 10 munge -n 2>/dev/null | timeout 10 unmunge >/dev/null 2>&1
}

# ---------------------------------------------------------------------- up --
require_root() {
    [[ $(id -u) -eq 0 ]] || die "'$1' must run as root (it installs packages and starts system daemons)"
}

install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        log "packages present: ${PACKAGES[*]}"
        return 0
    fi
    command -v apt-get >/dev/null 2>&1 || die "missing packages (${missing[*]}) and no apt-get to install them"
    log "installing: ${missing[*]}"
    # Keep package scripts from starting the daemons themselves: whatever runs
    # must be started (and later stopped) by this script. Only add a temporary
    # policy-rc.d when the machine has none.
    local policy=/usr/sbin/policy-rc.d added_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 0755 "$policy" && added_policy=1
    fi
    local rc=0
    {
        DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}"
    } >"$STATE_DIR/apt.log" 2>&1 || rc=$?
    [[ $added_policy -eq 1 ]] && rm -f "$policy"
    [[ $rc -eq 0 ]] || die "apt-get failed (exit $rc); see $STATE_DIR/apt.log"
    log "installed: ${missing[*]}"
}

start_munge() {
    if [[ ! -s $MUNGE_KEY ]]; then
        log "creating munge key $MUNGE_KEY"
        mkdir -p "$(dirname "$MUNGE_KEY")"
        mungekey -c -k "$MUNGE_KEY" >/dev/null 2>&1 || die "mungekey -c failed"
    fi
    chown munge:munge "$MUNGE_KEY"
    chmod 0400 "$MUNGE_KEY"
    # Without systemd nothing creates the socket directory.
    mkdir -p "$MUNGE_RUN"
    chown munge:munge "$MUNGE_RUN"
    chmod 0755 "$MUNGE_RUN"
    if running munged; then
        log "munged already running (pid $(pids_of munged | head -n 1)); not started by this script"
    else
        runuser -u munge -- munged >/dev/null 2>&1 || die "munged failed to start"
        local pid
        pid=$(wait_for_pidfile "$MUNGE_RUN/munged.pid" munged) || die "munged exited right after starting"
        echo "$pid" >"$STATE_DIR/munged.pid"
        log "started munged (pid $pid)"
    fi
    munge_works || die "munge does not work ('munge -n | unmunge' failed)"
    log "munge works"
}

ensure_hostname() {
    local host=$1
    if getent hosts "$host" >/dev/null 2>&1; then
        log "hostname '$host' resolves"
    else
        printf '127.0.0.1 %s\n' "$host" >>/etc/hosts
        log "added '127.0.0.1 $host' to /etc/hosts"
    fi
}

write_conf() {
    local host=$1 mem
    # RealMemory (MB) as slurmd measures it on this machine.
    mem=$(slurmd -C 2>/dev/null | grep -o 'RealMemory=[0-9]*' | head -n 1 | cut -d= -f2)
    [[ -n $mem ]] || die "'slurmd -C' reported no RealMemory"
    mkdir -p /etc/slurm "$SPOOL/ctld" "$SPOOL/d" "$LOGDIR" "$PIDDIR"
    chown slurm:slurm "$SPOOL/ctld" "$LOGDIR" "$PIDDIR"
    if [[ -e $CONF ]] && ! grep -qxF "$CONF_MARKER" "$CONF"; then
        cp -p "$CONF" "$CONF_BACKUP"
        log "backed up existing $CONF to $CONF_BACKUP"
        touch "$STATE_DIR/conf-backed-up"
    fi
    cat >"$CONF" <<EOF
$CONF_MARKER (single node on loopback, for
# development and CI); \`slurm/local-cluster.sh down\` restores the previous file.
ClusterName=localcluster
SlurmctldHost=$host(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$LOGDIR/jobcomp.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
ReturnToService=2
SlurmdParameters=config_overrides
StateSaveLocation=$SPOOL/ctld
SlurmdSpoolDir=$SPOOL/d
SlurmctldPidFile=$PIDDIR/slurmctld.pid
SlurmdPidFile=$PIDDIR/slurmd.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
NodeName=$host NodeAddr=127.0.0.1 CPUs=$ADVERTISED_CPUS RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    chmod 0644 "$CONF"
    touch "$STATE_DIR/conf-written"
    log "wrote $CONF (node $host, CPUs=$ADVERTISED_CPUS, RealMemory=$mem MB)"
}

start_slurm_daemon() {  # NAME
    local name=$1 pid
    if running "$name"; then
        log "$name already running (pid $(pids_of "$name" | head -n 1)); not started by this script"
        return 0
    fi
    mkdir -p "$PIDDIR" && chown slurm:slurm "$PIDDIR"
    "$name" >>"$LOGDIR/$name.start.log" 2>&1 || die "$name failed to start; see $LOGDIR/$name.log"
    pid=$(wait_for_pidfile "$PIDDIR/$name.pid" "$name") || die "$name exited right after starting; see $LOGDIR/$name.log"
    echo "$pid" >"$STATE_DIR/$name.pid"
    log "started $name (pid $pid)"
}

wait_until_idle() {
    local host=$1 i states resumed=0
    for ((i = 0; i < WAIT_S * 2; i++)); do
        if node_usable; then
            log "node $host is $(node_states | paste -sd, -); SLURM is up"
            return 0
        fi
        # A node left drained by an earlier run does not come back by itself.
        states=$(node_states || true)
        if [[ $resumed -eq 0 && $states == *drain* ]]; then
            scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1 || true
            resumed=1
        fi
        sleep 0.5
    done
    die "node $host not idle after ${WAIT_S}s (state: ${states:-no answer}); see $LOGDIR/"
}

cmd_up() {
    require_root up
    if node_usable && munge_works; then
        log "SLURM is already up and usable (node: $(node_states | paste -sd, -)); nothing to do"
        return 0
    fi
    mkdir -p "$STATE_DIR"
    install_packages
    local host
    host=$(hostname -s)
    [[ -n $host ]] || die "empty short hostname"
    start_munge
    ensure_hostname "$host"
    mkdir -p "$LOGDIR" && chown slurm:slurm "$LOGDIR"
    if running slurmctld || running slurmd; then
        # Someone else's SLURM is (partly) running: keep its configuration.
        log "a SLURM daemon is already running; keeping the existing $CONF"
    else
        write_conf "$host"
    fi
    start_slurm_daemon slurmctld
    start_slurm_daemon slurmd
    wait_until_idle "$host"
}

# -------------------------------------------------------------------- down --
cmd_down() {
    if [[ ! -d $STATE_DIR ]]; then
        log "nothing was started by this script; nothing to do"
        return 0
    fi
    require_root down
    local name pid
    for name in slurmd slurmctld munged; do          # reverse start order
        pid=$(started_pid "$name")
        [[ -n $pid ]] || continue
        stop_pid "$name" "$pid"
        rm -f "$STATE_DIR/$name.pid"
    done
    if [[ -e $STATE_DIR/conf-written ]]; then
        if [[ -e $STATE_DIR/conf-backed-up && -e $CONF_BACKUP ]]; then
            mv -f "$CONF_BACKUP" "$CONF"
            log "restored the previous $CONF"
        else
            rm -f "$CONF"
            log "removed $CONF (there was none before)"
        fi
        rm -f "$STATE_DIR/conf-written" "$STATE_DIR/conf-backed-up"
    fi
    rm -rf "$STATE_DIR"
    log "down"
}

# ------------------------------------------------------------------ status --
cmd_status() {
    local name pids mine
    for name in munged slurmctld slurmd; do
        pids=$(pids_of "$name" | paste -sd, -)
        if [[ -n $pids ]]; then
            mine=$(started_pid "$name")
            if [[ -n $mine ]] && pid_alive "$mine" "$name"; then
                log "$name: running (pid $pids, started by this script)"
            else
                log "$name: running (pid $pids)"
            fi
        else
            log "$name: not running"
        fi
    done
    if command -v sinfo >/dev/null 2>&1; then
        timeout 10 sinfo 2>&1 | sed 's/^/  /' || true
    else
        log "sinfo: not installed"
    fi
    if node_usable; then
        log "usable"
        return 0
    fi
    log "not usable"
    return 1
}

case ${1:-} in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
