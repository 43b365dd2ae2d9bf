#!/usr/bin/env bash
# A multi-domain corpus of real text from what a Debian machine has, one domain per kind of text,
# prepared with one tokenizer into shards + per-token domain labels (data/prepare_text):
#
#   data/multidomain.sh [-o OUTDIR] [-b BYTES_PER_DOMAIN] [-v VOCAB] [--shakespeare FILE]
#
# Domains (each capped at BYTES_PER_DOMAIN, default 600000, cut at a line end; files taken in
# byte-order of their paths, so the same machine gives the same corpus):
#   c        C headers:   /usr/include/*.h, then /usr/include/*/*.h   (libc6-dev, linux-libc-dev, ...)
#   licenses licence texts: /usr/share/common-licenses/* (base-files), then
#                           /usr/share/doc/*/copyright                 (every package)
#   man      manual pages of section 1 rendered to plain text by groff (-man -Tascii)   (groff-base)
#   python   Python's standard library sources: /usr/lib/python3*/*.py  (libpython3-stdlib)
#   shakespeare  only with --shakespeare FILE (tinyshakespeare: no download, the file is given)
# A domain whose source is missing is skipped with a message; fewer than 3 domains is an error.
# Needs: make (builds data/prepare_text), groff (Debian: groff-base) for `man`, python3 for
# `python`. Installs nothing. Writes OUTDIR (default data/multidomain): the domains' texts in
# OUTDIR/text/, tokenizer.bin, domains.txt, multidomain_{train,val}.bin and their .domains labels.
set -euo pipefail
out=data/multidomain bytes=600000 vocab=4096 shakespeare=""
while [ $# -gt 0 ]; do
    case "$1" in
        -o) out=$2; shift 2 ;;
        -b) bytes=$2; shift 2 ;;
        -v) vocab=$2; shift 2 ;;
        --shakespeare) shakespeare=$2; shift 2 ;;
        -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "multidomain.sh: unknown argument '$1' (see --help)" >&2; exit 1 ;;
    esac
done
case "$bytes" in ''|*[!0-9]*) echo "multidomain.sh: -b $bytes: give a number of bytes" >&2; exit 1 ;; esac
root=$(cd "$(dirname "$0")/.." && pwd)
export LC_ALL=C
make -s -C "$root" data/prepare_text
rm -rf "$out/text"
mkdir -p "$out/text"

# fill DOMAIN: reads file paths on stdin, appends each file's text (cat, or the command in $render)
# until the domain holds BYTES, then cuts it at the last line end before BYTES
fill() {
    local name=$1 file="$out/text/$1.txt" n=0
    : > "$file"
    while IFS= read -r path; do
        [ -f "$path" ] && [ -r "$path" ] || continue
        if [ -n "${render:-}" ]; then $render "$path" >> "$file" 2>/dev/null || true; else cat "$path" >> "$file"; fi
        n=$(wc -c < "$file")
        [ "$n" -ge "$bytes" ] && break
    done
    if [ "$n" -ge "$bytes" ]; then
        head -c "$bytes" "$file" | sed '$d' > "$file.cut" && mv "$file.cut" "$file"
    fi
    n=$(wc -c < "$file")
    if [ "$n" -lt 20000 ]; then
        echo "domain $name: only $n bytes found: skipped" >&2
        rm -f "$file"
    else
        echo "domain $name: $n bytes"
    fi
}

# C headers
render="" fill c < <({ ls -d /usr/include/*.h; ls -d /usr/include/*/*.h; } 2>/dev/null | sort)
# licence texts (symlinks resolved so a text is taken once)
render="" fill licenses < <(for f in /usr/share/common-licenses/*; do readlink -f "$f"; done | sort -u;
                            ls -d /usr/share/doc/*/copyright 2>/dev/null | sort)
# manual pages, rendered
if command -v groff >/dev/null 2>&1; then
    man_text() { zcat -f "$1" | groff -t -man -Tascii -P-bcou -rLL=78n | cat -s; }
    render=man_text fill man < <(ls -d /usr/share/man/man1/*.1.gz 2>/dev/null | sort)
else
    echo "domain man: groff not found (Debian: apt-get install groff-base): skipped" >&2
fi
# Python sources
render="" fill python < <(ls -d /usr/lib/python3*/*.py 2>/dev/null | sort)
# tinyshakespeare, when given
if [ -n "$shakespeare" ]; then
    [ -f "$shakespeare" ] || { echo "multidomain.sh: --shakespeare $shakespeare: no such file" >&2; exit 1; }
    render="" fill shakespeare <<< "$shakespeare"
fi

set -- "$out"/text/*.txt
if [ ! -e "$1" ] || [ $# -lt 3 ]; then
    echo "multidomain.sh: only $( [ -e "$1" ] && echo $# || echo 0 ) domains found; need at least 3 (see --help for the sources)" >&2
    exit 1
fi
args=()
for f in "$@"; do args+=(-i "$f"); done
"$root/data/prepare_text" "${args[@]}" -o "$out" -n multidomain -v "$vocab"
