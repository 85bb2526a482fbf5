#!/usr/bin/env bash
# The 2016 tar-pipe baseline: a kata's sandbox kept in a host folder,
# piped through a fresh container on every run, with the docker CLI.
#
#   tarpipe2016.sh IMAGE SANDBOX_DIR OUT_DIR
#
# Starts a container that only sleeps, pipes `tar -zc` of SANDBOX_DIR
# into `tar -zx` in its /sandbox, runs cyber-dojo.sh with `docker exec`,
# pipes the whole sandbox back over SANDBOX_DIR (build products included:
# that folder is the kata's state from run to run), and removes the
# container. cyber-dojo.sh's stdout, stderr and exit status are written
# to OUT_DIR/stdout, OUT_DIR/stderr and OUT_DIR/status; this script's
# own status is 0 unless a step of the pipe failed.
#
# Like the original, mtimes cross in whole seconds (GNU tar's default
# format), and files deleted in the container stay in SANDBOX_DIR.
set -euo pipefail

image=$1
sandbox=$2
out=$3
here=$(dirname -- "${BASH_SOURCE[0]}")
# shellcheck source=lockdown.sh
source "$here/lockdown.sh"

cid=$(docker run -d "${LOCKDOWN[@]}" "$image" sleep 2147483647)
# shellcheck disable=SC2064  # the id is known now and must not change
trap "docker rm -f $cid >/dev/null 2>&1 || true" EXIT

tar -z -c -f - -C "$sandbox" . \
  | docker exec -i "$cid" tar -z -x -f - -C /sandbox

status=0
docker exec "$cid" sh -c ./cyber-dojo.sh >"$out/stdout" 2>"$out/stderr" \
  || status=$?
printf '%s\n' "$status" >"$out/status"

docker exec "$cid" tar -z -c -f - -C /sandbox . | tar -z -x -f - -C "$sandbox"

trap - EXIT
docker rm -f "$cid" >/dev/null
