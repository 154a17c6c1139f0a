#!/usr/bin/env bash
# Stop the single-node SLURM started by cluster/slurm-local/start.sh: cancel its jobs, then
# end the daemons by the PIDs recorded in $SLURM_LOCAL_DIR/*.pid (never by name). munged is
# stopped only if start.sh started it (it records munged.pid only then). Safe to run when
# nothing is running.
set -uo pipefail
D=${SLURM_LOCAL_DIR:-/tmp/slurm-local}
log() { echo "[slurm-local stop $(date +%T)] $*" >&2; }

stop_pidfile() { # stop_pidfile NAME FILE
  local name=$1 f=$2 p
  [ -s "$f" ] || { log "$name: no pid file"; return 0; }
  p=$(cat "$f")
  if ! kill -0 "$p" 2>/dev/null; then log "$name: pid $p not running"; rm -f "$f"; return 0; fi
  log "$name: SIGTERM $p"
  kill -TERM "$p" 2>/dev/null
  for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$p" 2>/dev/null; then log "$name: still alive, SIGKILL $p"; kill -KILL "$p" 2>/dev/null; fi
  rm -f "$f"
}

# 1. Cancel the remaining jobs while the controller is up, so that slurmstepd and the job
#    processes (which are not children of slurmd) go away too.
if [ -s "$D/slurmctld.pid" ] && kill -0 "$(cat "$D/slurmctld.pid")" 2>/dev/null; then
  jobs=$(squeue -h -o %i 2>/dev/null | tr '\n' ' ')
  if [ -n "${jobs// }" ]; then
    log "scancel $jobs"
    # shellcheck disable=SC2086
    scancel $jobs 2>/dev/null || true
    for _ in $(seq 100); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.2; done
  fi
fi

# 2. The daemons, by recorded PID.
stop_pidfile slurmd    "$D/slurmd.pid"
stop_pidfile slurmctld "$D/slurmctld.pid"   # its child slurmscriptd exits with it
stop_pidfile munged    "$D/munged.pid"

log "stopped"
