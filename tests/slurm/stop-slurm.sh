#!/usr/bin/env bash
# Based on the genrecon team reference (tested single-node SLURM recipe, Debian 12, Slurm 22.05).
# Stop the single-node SLURM started by start-slurm.sh, by PID file only.
# Usage: stop-slurm.sh [slurmd] [slurmctld] [munged]: only those daemons (e.g. the ones
# start-slurm.sh reported as "started: ..."); no arguments: all three.
STATE=${SLURM_CI_STATE:-/tmp/slurm-ci}
[ $# -gt 0 ] || set -- slurmd slurmctld munged
for pidfile in "$STATE/slurmd.pid" "$STATE/slurmctld.pid" /run/munge/munged.pid; do
  name=$(basename "$pidfile" .pid)
  case " $* " in *" $name "*) ;; *) continue ;; esac
  [ -s "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null || continue
  for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  echo "stopped $name (pid $pid)"
done
