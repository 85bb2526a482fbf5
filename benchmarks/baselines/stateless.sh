#!/usr/bin/env bash
# The stateless baseline: how the newest cyber-dojo runner runs a kata.
#
#   stateless.sh IMAGE NAME < files.tgz > results.tgz
#
# One `docker run --rm -i` per run. The visible files arrive as a gzipped
# tar on stdin and are extracted by tar inside the container; then
# cyber-dojo.sh runs with its stdout, stderr and exit status captured in
# files, and the container writes one gzipped tar on its stdout:
# tmp/out/{stdout,stderr,status} and every file of sandbox/. The caller
# reads that tar (and, on a timeout, removes container NAME itself).
#
# Lighter than the real one: cyber-dojo also runs `file` on every sandbox
# file to send back only text files, and truncates big ones.
set -euo pipefail

image=$1
name=$2
here=$(dirname -- "${BASH_SOURCE[0]}")
# shellcheck source=lockdown.sh
source "$here/lockdown.sh"

# Runs in the container, under sh (busybox or dash). GNU and busybox tar
# both read -o on extraction as "do not restore owners".
# shellcheck disable=SC2016  # expanded by the container's shell
main='mkdir /tmp/out &&
tar -x -z -o -f - -C /sandbox || exit 125
cd /sandbox
sh -c ./cyber-dojo.sh >/tmp/out/stdout 2>/tmp/out/stderr
echo $? >/tmp/out/status
cd / && exec tar -c -z -f - tmp/out sandbox'

exec docker run --rm -i --name "$name" "${LOCKDOWN[@]}" \
  "$image" sh -c "$main"
