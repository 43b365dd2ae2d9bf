#!/bin/sh
# Prepares tinyshakespeare into data/tinyshakespeare/: tokenizer.bin (a BPE of 4096 tokens trained
# on the train part), tiny_shakespeare_train.bin and tiny_shakespeare_val.bin (the last 10%).
#   data/tinyshakespeare.sh [LOCAL_TEXT] [prepare_text flags...]
# With LOCAL_TEXT (e.g. ../shared/data/tinyshakespeare.txt) nothing is downloaded; without it the
# text is downloaded from karpathy's char-rnn repository (20 s timeout). Extra flags go to
# data/prepare_text (e.g. -v 8192, -z, -t gpt2_tokenizer.bin).
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/data/tinyshakespeare"
url=https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt
mkdir -p "$out"

if [ $# -ge 1 ] && [ "${1#-}" = "$1" ]; then
    src=$1; shift
    [ -f "$src" ] || { echo "tinyshakespeare.sh: $src: no such file" >&2; exit 1; }
    src="$(cd "$(dirname "$src")" && pwd)/$(basename "$src")"  # absolute: we cd to the root below
else
    src="$out/input.txt"
    if [ ! -s "$src" ]; then
        echo "downloading $url"
        if command -v curl >/dev/null 2>&1; then
            curl -fsSL --connect-timeout 10 --max-time 20 -o "$src.part" "$url" || rm -f "$src.part"
        elif command -v wget >/dev/null 2>&1; then
            wget -q -T 20 -t 1 -O "$src.part" "$url" || rm -f "$src.part"
        fi
        if [ ! -s "$src.part" ]; then
            echo "tinyshakespeare.sh: download failed (offline?); pass a local copy instead:" >&2
            echo "    data/tinyshakespeare.sh ../shared/data/tinyshakespeare.txt" >&2
            exit 1
        fi
        mv "$src.part" "$src"
    fi
fi

cd "$root"
make -s data/prepare_text 2>/dev/null || gcc -O2 -o data/prepare_text data/prepare_text.c -lz -lm
data/prepare_text -i "$src" -o data/tinyshakespeare -n tiny_shakespeare "$@"
