#!/bin/sh
# Prepares tinyshakespeare into data/tinyshakespeare/: tokenizer.bin (a BPE of 4096 tokens trained
# on the train part), tiny_shakespeare_train.bin and tiny_shakespeare_val.bin (the last 10%).
#   data/tinyshakespeare.sh                               # downloads the text (1,115,394 bytes)
#   data/tinyshakespeare.sh path/to/input.txt [flags...]  # uses a copy you already have
# Without a file the text is downloaded (curl or wget, 20 s timeout per mirror) from karpathy's
# char-rnn repository, else from jcjohnson's torch-rnn, into data/tinyshakespeare/input.txt, and
# checked against its sha256. Without internet: fetch input.txt on a machine that has it, copy it
# over and give its path. A file whose sha256 differs is used with a warning (its numbers are not
# comparable to other tinyshakespeare runs). Extra flags go to data/prepare_text (e.g. -v 8192, -z,
# -t gpt2_tokenizer.bin). TINYSHAKESPEARE_URLS (space-separated) replaces the mirror list.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/data/tinyshakespeare"
urls=${TINYSHAKESPEARE_URLS:-"https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt https://raw.githubusercontent.com/jcjohnson/torch-rnn/master/data/tiny-shakespeare.txt"}
sha256=86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed

sha256_of() {  # prints the file's sha256, or nothing when no tool for it is installed
    if command -v sha256sum >/dev/null 2>&1; then sha256sum "$1" | cut -d' ' -f1
    elif command -v shasum >/dev/null 2>&1; then shasum -a 256 "$1" | cut -d' ' -f1
    fi
}

download() {  # download URL FILE: 0 when FILE holds tinyshakespeare
    rm -f "$2"
    if command -v curl >/dev/null 2>&1; then
        curl -fsSL --connect-timeout 10 --max-time 20 -o "$2" "$1" 2>/dev/null || rm -f "$2"
    elif command -v wget >/dev/null 2>&1; then
        wget -q -T 20 -t 1 -O "$2" "$1" 2>/dev/null || rm -f "$2"
    else
        echo "tinyshakespeare.sh: neither curl nor wget is installed" >&2
        return 1
    fi
    [ -s "$2" ] || return 1
    got=$(sha256_of "$2")
    if [ -n "$got" ] && [ "$got" != "$sha256" ]; then
        echo "tinyshakespeare.sh: $1 sent a file with sha256 $got, not tinyshakespeare's: ignored" >&2
        rm -f "$2"; return 1
    fi
}

mkdir -p "$out"
if [ $# -ge 1 ] && [ "${1#-}" = "$1" ]; then
    src=$1; shift
    [ -f "$src" ] || { echo "tinyshakespeare.sh: $src: no such file" >&2; exit 1; }
    src="$(cd "$(dirname "$src")" && pwd)/$(basename "$src")"  # absolute: we cd to the root below
    got=$(sha256_of "$src")
    if [ -n "$got" ] && [ "$got" != "$sha256" ]; then
        echo "tinyshakespeare.sh: warning: $src is not the usual tinyshakespeare (sha256 $got," >&2
        echo "    expected $sha256): its losses are not comparable to other tinyshakespeare runs" >&2
    fi
else
    src="$out/input.txt"
    if [ ! -s "$src" ]; then
        for url in $urls; do
            echo "downloading $url"
            if download "$url" "$src.part"; then mv "$src.part" "$src"; break; fi
        done
        if [ ! -s "$src" ]; then
            cat >&2 <<EOF
tinyshakespeare.sh: could not download tinyshakespeare (is this machine offline?).
On a machine with internet, save this file (1,115,394 bytes):
    https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt
copy it to this machine and give its path:
    data/tinyshakespeare.sh path/to/input.txt
Any other text file works the same way: data/prepare_text -i path/to/text.txt
EOF
            exit 1
        fi
    fi
fi

cd "$root"
make -s data/prepare_text 2>/dev/null || [ -x data/prepare_text ] || gcc -O2 -o data/prepare_text data/prepare_text.c -lz -lm
data/prepare_text -i "$src" -o data/tinyshakespeare -n tiny_shakespeare "$@"
