# shellcheck shell=bash
# Sourced by the baselines: the `docker run` options that give a baseline
# container the same lockdown as a runners.Sandbox with the default
# runners.ContainerLimits (768 MiB memory and no swap, 256 pids, 1 CPU,
# ulimits, tmpfs sizes, 16 MiB /dev/shm). Keep the two in step, or the
# comparison measures different containers.
#
# BENCH_LABEL (set by the caller) marks every baseline container, so the
# benchmark can find any it leaves behind; it is not org.tarpipe.managed,
# which would mix them up with the runners' own.

# SC2034: used by the scripts that source this file. SC2054: the commas
# are tmpfs options, not separators.
# shellcheck disable=SC2034,SC2054
LOCKDOWN=(
  --label "${BENCH_LABEL:-org.tarpipe.bench=baseline}"
  --network none
  --user 65534:65534
  --read-only
  --tmpfs /sandbox:exec,uid=65534,gid=65534,mode=0755,size=536870912
  --tmpfs /tmp:exec,uid=65534,gid=65534,mode=1777,size=67108864
  --workdir /sandbox
  --cap-drop ALL
  --security-opt no-new-privileges
  --init
  --pids-limit 256
  --memory 768m
  --memory-swap 768m
  --cpus 1
  --shm-size 16m
  --ulimit nofile=1024:1024
  --ulimit nproc=8192:8192
  --ulimit fsize=67108864:67108864
  --ulimit core=0:0
)
