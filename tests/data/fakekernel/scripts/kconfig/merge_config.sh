#!/bin/sh
# fake merge_config.sh: -m -O OUTDIR BASE FRAGMENT... -> OUTDIR/.config (later assignments win)
set -e
while [ $# -gt 0 ]; do case "$1" in -m) shift;; -O) out=$2; shift 2;; *) break;; esac; done
cat "$@" > "$out/.config.merge"
mv "$out/.config.merge" "$out/.config"
