# run_lanes LOGDIR NAME FUNCTION [NAME FUNCTION ...]: run each shell function in the background with
# its output in LOGDIR/NAME.log, wait for all of them; fails (after all have ended) if any failed.
# Sourced by the comparison scripts: this project's CPU has 2 cores, so two one-thread lanes.
run_lanes() {
  local logdir=$1; shift
  local pids=() names=() status=0
  while [ "$#" -gt 0 ]; do
    echo "   lane $1: log in $logdir/$1.log"
    "$2" > "$logdir/$1.log" 2>&1 & pids+=($!); names+=("$1"); shift 2
  done
  for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || { echo "lane ${names[$i]} failed: see the end of $logdir/${names[$i]}.log" >&2; status=1; }
  done
  return $status
}
