#!/usr/bin/env bash
# A one-node Slurm cluster on this machine (loopback only), for trying `lowrank-lens study --executor slurm`
# and for the tests that submit to a real Slurm. Needs root (it installs Debian's slurm-wlm and munge when
# they are missing and starts munged, slurmctld and slurmd).
#   scripts/local_slurm.sh up     install if needed, configure, start; waits until the node is idle
#   scripts/local_slurm.sh down   stop the daemons (the state folder is kept)
# Everything it writes lives in $LENS_SLURM_DIR (default /var/tmp/lowrank-lens-slurm) and /etc/slurm/slurm.conf.
set -euo pipefail
dir=${LENS_SLURM_DIR:-/var/tmp/lowrank-lens-slurm}
conf=/etc/slurm/slurm.conf

down() {
  pkill -x slurmd 2>/dev/null || true
  pkill -x slurmctld 2>/dev/null || true
}

up() {
  if [ "$(id -u)" != 0 ]; then echo "local_slurm.sh: needs root (it installs and starts Slurm daemons)" >&2; exit 1; fi
  if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge
  fi
  host=$(hostname -s)
  cpus=$(nproc)
  mem=$(( $(awk '/MemTotal/{print $2}' /proc/meminfo) / 1024 * 8 / 10 ))
  mkdir -p "$dir"/state "$dir"/spool /etc/slurm
  # Processes are tracked by their parents (no cgroups in containers) and no accounting database is run.
  cat > "$conf.tmp" <<CONF
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
  if ! pgrep -x munged >/dev/null; then
    mkdir -p /run/munge && chown munge:munge /run/munge
    [ -s /etc/munge/munge.key ] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null;
                                     chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
    su -s /bin/sh munge -c "/usr/sbin/munged" 2>/dev/null || /usr/sbin/munged --force
  fi
  down
  sleep 1
  slurmctld -i
  slurmd
  for _ in $(seq 60); do
    if sinfo -h -o %T 2>/dev/null | grep -q idle; then echo "local Slurm up: node $host, $cpus CPUs, partition debug"; exit 0; fi
    scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true
    sleep 1
  done
  echo "local_slurm.sh: the node did not become idle; see $dir/slurmctld.log and $dir/slurmd.log" >&2
  exit 1
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
