#!/usr/bin/env bash
# A one-node Slurm cluster on this machine (loopback only), for trying `lowrank-lens study --executor slurm`
# and for the tests that submit to a real Slurm. `up` needs root (it installs Debian's slurm-wlm and munge
# when they are missing and starts munged, slurmctld and slurmd).
#   scripts/local_slurm.sh up      install if needed, configure, start; waits until the node is idle
#   scripts/local_slurm.sh down    stop the daemons it started, put the config back as it was (state is kept)
#   scripts/local_slurm.sh config  only write the config (as `up` does), start nothing
# It touches only what it started or wrote: its daemons are the ones named by the pid files of its config
# (checked against /proc/<pid>/comm before a signal), munged only when `up` had to start it. Slurm daemons
# it did not start make `up` refuse. A config it did not write (its own starts with the $mark line below)
# is kept once in $LENS_SLURM_DIR/slurm.conf.orig, and `down` puts it back (or removes the config if there
# was none, noted by slurm.conf.absent).
# Everything it writes lives in $LENS_SLURM_DIR (default /var/tmp/lowrank-lens-slurm) and the config
# $LENS_SLURM_CONF (default /etc/slurm/slurm.conf; another path is passed to the daemons with -f and to
# Slurm's commands here as SLURM_CONF).
set -euo pipefail
dir=${LENS_SLURM_DIR:-/var/tmp/lowrank-lens-slurm}
conf=${LENS_SLURM_CONF:-/etc/slurm/slurm.conf}
mark="# Written by lowrank-lens scripts/local_slurm.sh; 'local_slurm.sh down' puts back what was here."
export SLURM_CONF=$conf
me=local_slurm.sh

# The pid of the daemon $1 (slurmctld, slurmd or munged) this script started, if it still runs: its pid file
# ($2) names a live process of that name (a stale pid file reused by another process names nothing).
our_pid() {
  local pid
  [ -s "$2" ] || return 1
  pid=$(tr -dc 0-9 < "$2")
  [ -n "$pid" ] && runs "$pid" "$1" || return 1
  echo "$pid"
}

# Whether process $1 runs (exited but not yet reaped counts as gone) and is named $2.
runs() {
  [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ] && [ "$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1)" != Z ]
}

# Stop the daemon $1 started by this script (pid file $2), waiting for it to exit (SIGKILL after 20 s).
stop_ours() {
  local pid
  if pid=$(our_pid "$1" "$2"); then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do runs "$pid" "$1" || break; sleep 0.2; done
    if runs "$pid" "$1"; then kill -9 "$pid" 2>/dev/null || true; sleep 0.5; fi
  fi
  rm -f "$2"
}

stop_daemons() {
  stop_ours slurmd "$dir/slurmd.pid"
  stop_ours slurmctld "$dir/slurmctld.pid"
}

# Slurm daemons running on this machine that this script did not start, as "slurmctld pid 12, ..."
foreign_daemons() {
  local name pid ours found=()
  for name in slurmctld slurmd; do
    ours=$(our_pid "$name" "$dir/$name.pid" || true)
    for pid in $(pgrep -x "$name" || true); do
      [ "$pid" = "$ours" ] || ! runs "$pid" "$name" || found+=("$name pid $pid")
    done
  done
  local IFS=,
  echo "${found[*]:-}" | sed 's/,/, /g'
}

# Whether some process named $1 runs (zombies aside: the exited halves of daemonizing may linger unreaped).
any_runs() {
  local pid
  for pid in $(pgrep -x "$1" || true); do runs "$pid" "$1" && return 0; done
  return 1
}

is_ours() { [ -f "$1" ] && [ "$(head -n 1 "$1")" = "$mark" ]; }

# Every core of the machine. nproc alone honours OMP_NUM_THREADS, which test workers and many training
# environments set to 1, and a one-CPU node runs a study's array tasks one after another.
cores() { env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc; }

write_conf() {
  local host cpus mem
  host=$(hostname -s)
  cpus=$(cores)
  mem=$(( $(awk '/MemTotal/{print $2}' /proc/meminfo) / 1024 * 8 / 10 ))
  mkdir -p "$dir"/state "$dir"/spool "$(dirname "$conf")"
  # Keep what was there once: a config this script did not write, or a note that there was none.
  if ! is_ours "$conf"; then
    if [ -e "$dir/slurm.conf.orig" ] || [ -e "$dir/slurm.conf.absent" ]; then
      echo "$me: $conf was replaced since this script wrote it, and $dir already keeps the config found" \
           "before; move one of them away first" >&2
      exit 1
    fi
    if [ -e "$conf" ] || [ -L "$conf" ]; then
      cp -a "$conf" "$dir/slurm.conf.orig.tmp" && mv "$dir/slurm.conf.orig.tmp" "$dir/slurm.conf.orig"
    else
      : > "$dir/slurm.conf.absent"
    fi
  fi
  # Processes are tracked by their parents (no cgroups in containers) and no accounting database is run.
  cat > "$conf.tmp" <<CONF
$mark
ClusterName=lens
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
DefMemPerCPU=$(( mem / cpus ))
SchedulerParameters=defer_batch,bf_interval=1
ReturnToService=2
MpiDefault=none
KillWait=5
MinJobAge=3600
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
  mv "$conf.tmp" "$conf"
}

# Put back the config found by `up` (or remove ours if there was none); a config someone else wrote since is
# left alone, with the kept one beside it.
restore_conf() {
  if [ -e "$dir/slurm.conf.orig" ] || [ -L "$dir/slurm.conf.orig" ] || [ -e "$dir/slurm.conf.absent" ]; then
    if [ -e "$conf" ] && ! is_ours "$conf"; then
      echo "$me: $conf was replaced since this script wrote it; left as it is (the one found before is kept" \
           "in $dir)" >&2
      return 0
    fi
    if [ -e "$dir/slurm.conf.absent" ]; then
      rm -f "$conf" "$dir/slurm.conf.absent"
    else
      mv -f "$dir/slurm.conf.orig" "$conf"
    fi
  fi
}

down() {
  stop_daemons
  if pid=$(our_pid munged "$dir/munged.started"); then
    kill "$pid" 2>/dev/null || true
  fi
  rm -f "$dir/munged.started"
  restore_conf
}

up() {
  local running host pid
  running=$(foreign_daemons)
  if [ -n "$running" ]; then
    echo "$me: Slurm daemons this script did not start are running ($running); stop them first, or use" \
         "that Slurm as it is (the tests use any Slurm where \`sinfo\` shows an idle node)" >&2
    exit 1
  fi
  if [ "$(id -u)" != 0 ]; then echo "$me: needs root (it installs and starts Slurm daemons)" >&2; exit 1; fi
  if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge
  fi
  write_conf
  if ! any_runs munged; then
    mkdir -p /run/munge && chown munge:munge /run/munge
    [ -s /etc/munge/munge.key ] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null;
                                     chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
    su -s /bin/sh munge -c "/usr/sbin/munged" 2>/dev/null || /usr/sbin/munged --force
    # Noted so that `down` stops munged only when it was this script that started it.
    for pid in $(cat /run/munge/munged.pid 2>/dev/null) $(pgrep -x munged || true); do
      if runs "$pid" munged; then echo "$pid" > "$dir/munged.started"; break; fi
    done
  fi
  stop_daemons  # ours from an earlier `up`, restarted with this config
  slurmctld -i -f "$conf"
  slurmd -f "$conf"
  host=$(hostname -s)
  for _ in $(seq 60); do
    if sinfo -h -o %T 2>/dev/null | grep -q idle; then
      echo "local Slurm up: node $host, $(cores) CPUs, partition debug"; exit 0
    fi
    scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true
    sleep 1
  done
  echo "$me: the node did not become idle; see $dir/slurmctld.log and $dir/slurmd.log" >&2
  exit 1
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  config) write_conf ;;
  *) echo "usage: $0 up|down|config" >&2; exit 2 ;;
esac
