#!/usr/bin/env bash
# Start a real single-node SLURM on localhost (munged + slurmctld + slurmd), without
# systemd, containers or cgroups, so that `python -m pytest tests/test_slurm.py` (and
# `bignmf fit --cluster slurm`, `bignmf submit`) can run against real sbatch/squeue/scancel.
#
# Idempotent: re-running it while SLURM is up only re-checks it. The last line on stdout is
# the partition name, so
#     PARTITION=$(sudo cluster/slurm-local/start.sh | tail -n1)
# Stop everything it started with cluster/slurm-local/stop.sh.
#
# Tested on Debian 12 (bookworm): slurm-wlm 22.05, munge 0.5.15. Must run as root (it
# installs packages with apt-get if needed and writes /etc/slurm/slurm.conf); jobs may then
# be submitted by any local user.
#
# Settings (environment variables):
#   SLURM_LOCAL_DIR        state, spool, logs and pid files   (default /tmp/slurm-local)
#   SLURM_LOCAL_CPUS       CPUs the node advertises           (default: nproc). More than the
#                          hardware has sets SlurmdParameters=config_overrides so the node is
#                          not drained: more concurrent 1-CPU jobs than cores.
#   SLURM_LOCAL_MEM_MB     the node's RealMemory              (default: 90% of MemTotal)
#   SLURM_LOCAL_PARTITION  partition name                     (default: debug)
#   SLURM_LOCAL_NODE       node name                          (default: hostname -s)
#   SLURM_LOCAL_SKIP_APT=1 never run apt-get (fail if SLURM or munge is missing)
set -euo pipefail

D=${SLURM_LOCAL_DIR:-/tmp/slurm-local}
PART=${SLURM_LOCAL_PARTITION:-debug}
NODE=${SLURM_LOCAL_NODE:-$(hostname -s)}
HWCPUS=$(nproc)
CPUS=${SLURM_LOCAL_CPUS:-$HWCPUS}
MEM=${SLURM_LOCAL_MEM_MB:-$(awk '/^MemTotal:/{print int($2/1024*0.9)}' /proc/meminfo)}
CONF=/etc/slurm/slurm.conf

log() { echo "[slurm-local start $(date +%T)] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (use sudo)"

alive() { # alive PIDFILE: 0 if the pid in the file is a running process
  [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

T_START=$(date +%s.%N)

# ------------------------------------------------------------------------ 1. packages
if ! { command -v slurmctld && command -v slurmd && command -v sbatch && command -v munged; } \
    >/dev/null 2>&1; then
  [ "${SLURM_LOCAL_SKIP_APT:-0}" = 1 ] && die "slurm/munge not installed and SLURM_LOCAL_SKIP_APT=1"
  log "installing slurmctld slurmd slurm-client munge (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # --no-install-recommends: 8 packages instead of ~43 (no hdf5/rrd/ipmi/rocm plugins).
  # Where systemd runs, postinst may start munge.service itself: that is handled below.
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
fi
log "slurm: $(slurmd -V)  munge: $(munged -V 2>&1 | head -1)"

mkdir -p "$D"/state "$D"/spool "$D"/log
chmod 755 "$D"

# ------------------------------------------------------------------------ 2. munge
if [ ! -s /etc/munge/munge.key ]; then
  log "creating the munge key"
  mkdir -p /etc/munge
  mungekey -c -k /etc/munge/munge.key 2>/dev/null \
    || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
fi
chown munge:munge /etc/munge /etc/munge/munge.key
chmod 700 /etc/munge; chmod 600 /etc/munge/munge.key
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown munge:munge /run/munge /var/lib/munge /var/log/munge
chmod 755 /run/munge

if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  if alive "$D/munged.pid"; then log "munged already running (ours, pid $(cat "$D/munged.pid"))"
  else log "munged already running (not started here, e.g. by systemd): using it"; fi
else
  rm -f /run/munge/munged.pid "$D/munged.pid"
  log "starting munged"
  runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
  for _ in $(seq 50); do [ -s /run/munge/munged.pid ] && break; sleep 0.1; done
  cp /run/munge/munged.pid "$D/munged.pid"   # stop.sh stops munged only if we started it
  munge -n | unmunge >/dev/null || die "munge round trip failed (see /var/log/munge/munged.log)"
fi

# ------------------------------------------------------------------------ 3. slurm.conf
EXTRA=""
[ "$CPUS" -gt "$HWCPUS" ] && EXTRA="SlurmdParameters=config_overrides"
mkdir -p /etc/slurm
NEWCONF=$(cat <<EOF
# written by bignmf's cluster/slurm-local/start.sh: one node, no cgroups, no accounting
ClusterName=localci
SlurmctldHost=${NODE}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MailProg=/bin/true
SchedulerType=sched/backfill
# the default batch_sched_delay=3 makes a job wait 2-3 s before it starts; 0 gives ~1 s
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/slurmctld.pid
SlurmdPidFile=$D/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=5
Waittime=0
$EXTRA
NodeName=${NODE} NodeAddr=127.0.0.1 NodeHostname=${NODE} CPUs=${CPUS} RealMemory=${MEM} State=UNKNOWN
PartitionName=${PART} Nodes=${NODE} Default=YES MaxTime=INFINITE State=UP
EOF
)
CONF_CHANGED=0
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$NEWCONF" ]; then
  printf '%s\n' "$NEWCONF" > "$CONF"; CONF_CHANGED=1
fi
chmod 644 "$CONF"

# ------------------------------------------------------------------------ 4. daemons
if [ "$CONF_CHANGED" = 1 ] && { alive "$D/slurmctld.pid" || alive "$D/slurmd.pid"; }; then
  log "slurm.conf changed while SLURM runs: restarting the daemons"
  for f in slurmd slurmctld; do
    if alive "$D/$f.pid"; then p=$(cat "$D/$f.pid"); kill "$p"
      for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done; fi
  done
fi

if alive "$D/slurmctld.pid"; then
  log "slurmctld already running (pid $(cat "$D/slurmctld.pid"))"
else
  log "starting slurmctld"
  # -c: clean start (forget the jobs and node state of an earlier run); -i: ignore
  # unreadable state files
  slurmctld -c -i
  for _ in $(seq 100); do alive "$D/slurmctld.pid" && break; sleep 0.1; done
  alive "$D/slurmctld.pid" || { tail -20 "$D/log/slurmctld.log" >&2; die "slurmctld did not start"; }
fi

if alive "$D/slurmd.pid"; then
  log "slurmd already running (pid $(cat "$D/slurmd.pid"))"
else
  log "starting slurmd"
  slurmd -N "$NODE"
  for _ in $(seq 100); do alive "$D/slurmd.pid" && break; sleep 0.1; done
  alive "$D/slurmd.pid" || { tail -20 "$D/log/slurmd.log" >&2; die "slurmd did not start"; }
fi

# ------------------------------------------------------------------------ 5. the node
state=""
for _ in $(seq 150); do
  state=$(sinfo -h -n "$NODE" -o %T 2>/dev/null | head -1 || true)
  case "$state" in
    idle|mixed|allocated|completing) break ;;
    down*|drain*|drained*)
      # e.g. "Node unexpectedly rebooted" or stale state: bring it back
      scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true ;;
  esac
  sleep 0.2
done
case "$state" in idle|mixed|allocated|completing) ;; *)
  sinfo -R >&2 || true; tail -20 "$D/log/slurmctld.log" "$D/log/slurmd.log" >&2
  die "node $NODE is not usable (state '$state')";;
esac

T_END=$(date +%s.%N)
log "SLURM up in $(awk "BEGIN{printf \"%.1f\", $T_END-$T_START}") s: node=$NODE cpus=$CPUS mem=${MEM}MB state=$state"
sinfo >&2
echo "$PART"
