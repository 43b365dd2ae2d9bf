#!/bin/bash
# Full disk and unwritable output: a checkpoint that cannot be written (a 1.6 MB tmpfs that fills
# up; a file-size limit, ulimit -f) must give a clear error naming the path and the bytes needed,
# leave the previous checkpoint intact and no temp file, and stop the run with exit status 3.
# The tmpfs part needs root and mount; without them it prints SKIP and its reason.
set -u
cd "$(dirname "$0")/../.."
[ -x ./train_moe ] || make -s train_moe
passed=0; failed=0
check() { if [ "$1" -eq 0 ]; then passed=$((passed + 1)); echo "PASS $2"; else failed=$((failed + 1)); echo "FAIL $2"; fi; }
dir=$(mktemp -d /tmp/moe_diskfull_XXXXXX)
mnt="$dir/tmpfs"
cleanup() { mountpoint -q "$mnt" 2>/dev/null && umount "$mnt"; rm -rf "$dir"; }
trap cleanup EXIT
RUN="./train_moe --synthetic-tokens 40000 --layers 2 --channels 32 --heads 2 --experts 4 -b 4 -t 16 -v 0 -n 1"
$RUN -x 3 -o "$dir/ref" > "$dir/ref.txt" 2>&1
check $? "reference run"

# 1. file-size limit: the run resumes from step 1, its step-2 checkpoint exceeds ulimit -f
mkdir -p "$dir/ulimit" && cp "$dir/ref/model_00000001.bin" "$dir/ulimit/"
(ulimit -f 600; $RUN -x 3 -e "$dir/ulimit/model_00000001.bin" -o "$dir/ulimit" > "$dir/ulimit.txt" 2>&1)
rc=$?
[ $rc -eq 3 ]; check $? "ulimit -f: exit status 3 (got $rc)"
grep -q "checkpoint $dir/ulimit/model_00000002.bin: cannot write [0-9]* bytes" "$dir/ulimit.txt"
check $? "ulimit -f: the message names the path and the bytes needed: $(grep -m1 'error:' "$dir/ulimit.txt")"
cmp -s "$dir/ref/model_00000001.bin" "$dir/ulimit/model_00000001.bin"; check $? "ulimit -f: the previous checkpoint is intact"
[ -z "$(ls "$dir/ulimit" | grep '\.tmp')" ] && [ ! -e "$dir/ulimit/model_00000002.bin" ]
check $? "ulimit -f: no temp file and no partial checkpoint left"

# 2. a full disk: a 1.6 MB tmpfs holds the step-1 checkpoint but not the step-2 one
if [ "$(id -u)" -ne 0 ]; then echo "SKIP tmpfs part: not root (mount needs it)"
elif ! mkdir -p "$mnt" || ! mount -t tmpfs -o size=1600k tmpfs "$mnt" 2>"$dir/mount.txt"; then
    echo "SKIP tmpfs part: mount -t tmpfs failed ($(cat "$dir/mount.txt"))"
else
    $RUN -x 3 -o "$mnt/run" > "$dir/tmpfs.txt" 2>&1
    rc=$?
    [ $rc -eq 3 ]; check $? "full tmpfs: exit status 3 (got $rc)"
    grep -q "checkpoint $mnt/run/model_00000002.bin: cannot write [0-9]* bytes.*No space left on device" "$dir/tmpfs.txt"
    check $? "full tmpfs: the message names the path, the bytes and the reason: $(grep -m1 'error:' "$dir/tmpfs.txt")"
    cmp -s "$dir/ref/model_00000001.bin" "$mnt/run/model_00000001.bin"; check $? "full tmpfs: the step-1 checkpoint is intact"
    [ -z "$(ls "$mnt/run" | grep '\.tmp')" ]; check $? "full tmpfs: no temp file left"
    [ "$(grep -c ' trl:' "$mnt/run/main.log")" -eq 2 ]; check $? "full tmpfs: main.log holds steps 0 and 1"
    # and the run resumes once there is room
    cp "$mnt/run/model_00000001.bin" "$dir/" && rm -f "$mnt/run/model_00000001.bin"
    mv "$dir/model_00000001.bin" "$dir/resume.bin"
    $RUN -x 3 -n 2 -e "$dir/resume.bin" -o "$dir/after" > "$dir/after.txt" 2>&1
    cmp -s "$dir/ref/model_00000002.bin" "$dir/after/model_00000002.bin"; check $? "full tmpfs: the intact checkpoint resumes to the reference's step 2"
fi
echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
