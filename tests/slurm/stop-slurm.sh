#!/usr/bin/env bash
# Vendored from the genrecon team reference (tested single-node SLURM recipe, Debian 12, Slurm 22.05).
# Stop the single-node SLURM started by start-slurm.sh, by PID file only.
STATE=${SLURM_CI_STATE:-/tmp/slurm-ci}
for pidfile in "$STATE/slurmd.pid" "$STATE/slurmctld.pid" /run/munge/munged.pid; do
  [ -s "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null || continue
  for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  echo "stopped $(basename "$pidfile" .pid) (pid $pid)"
done
