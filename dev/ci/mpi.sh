#!/bin/sh
# MPI suite: train_moe on 2 ranks (mpirun on localhost) against the single-process run, every
# router. Needs Open MPI (apt-get install openmpi-bin libopenmpi-dev). Run from the repository
# root: sh dev/ci/mpi.sh. Prints PASS/FAIL lines and "N passed, N failed" last. Tiny models:
# about a minute on 2 cores.
#   data parallel, 2 ranks x 1 micro-batch  vs  1 process x 2 micro-batches: losses within 1e-5
#   (the first step's bit for bit), every step's parameters identical on both ranks (crc32)
#   ZeRO-1: bit-identical to plain data parallel; gradient/parameter bytes per step as README says
#   expert parallel (+ data parallel): losses and validation within 1e-5 of 1 process; no
#   expert gradient communicated; checkpoints to and from 1 process
#   1 rank under MPI: bit-identical to the build without MPI
#   checkpoints: 2 ranks -> 1 process -> 2 ranks (ZeRO-1) resumes; a signal to one rank stops all
#   with a resumable checkpoint; a NaN loss saves the last good state on every rank count
cd "$(dirname "$0")/../.." || exit 1
. dev/ci/lib.sh

export OMP_NUM_THREADS=1  # one thread per rank: 2 ranks on 2 cores, no oversubscribed OpenMP
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1  # CI runs as root
export OMPI_MCA_rmaps_base_oversubscribe=1
if ! command -v mpicc >/dev/null 2>&1 || ! command -v mpirun >/dev/null 2>&1; then
    bad "mpicc and mpirun not found: apt-get install openmpi-bin libopenmpi-dev"
    finish
fi
if ! make -s train_moe train_moe_mpi >/dev/null 2>&1; then bad "make train_moe train_moe_mpi"; finish; fi
ok "make train_moe_mpi builds with mpicc"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
MPIRUN="mpirun --allow-run-as-root --oversubscribe"
SMALL="--synthetic-tokens 40000 --layers 2 --channels 32 --heads 2 --experts 4 -b 4 -t 16 -v 0 --seed 7"

# maxdiff A B [KEY]: largest |difference| of the train losses (KEY trl, or tel: validation) of two
# main.log files, same steps
maxdiff() {
    grep "${3:-trl}:" "$1" > "$dir/a.trl"; grep "${3:-trl}:" "$2" > "$dir/b.trl"
    paste "$dir/a.trl" "$dir/b.trl" | awk '{ split($2, a, ":"); split($4, b, ":"); d = a[2] - b[2]; if (d < 0) d = -d;
        if (d > m) m = d; n++ } END { if (n == 0) print "none"; else printf "%.2e\n", m }'
}
# counts F: metrics.tsv's whole-number columns (step, layer, tokens, zero_experts, expert_counts,
# domain_counts, competed): exact whatever the round-off, unlike the float columns
counts() {
    awk -F'\t' 'NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
        { print $col["step"], $col["layer"], $col["tokens"], $col["zero_experts"], $col["expert_counts"],
          $col["domain_counts"], $col["competed"] }' "$1"
}
# within X TOL: X is a number no larger than TOL
within() { [ "$1" != none ] && awk -v x="$1" -v t="$2" 'BEGIN { exit !(x <= t) }'; }
first_loss() { grep -m1 trl: "$1" | cut -d: -f3; }

# --- data parallel against one process, every router
COMPETE="--compete-rate 0.5 --compete-warmup 0 --compete-max-layers 2"  # competition at most steps
for router in topk gatepro compete auxfree xmoe; do
    extra=""
    [ "$router" = compete ] && extra="$COMPETE"
    ./train_moe $SMALL --router $router $extra -x 8 -d 128 -o "$dir/one_$router" >"$dir/one_$router.txt" 2>&1
    $MPIRUN -np 2 ./train_moe_mpi $SMALL --router $router $extra -x 8 -o "$dir/dp_$router" --comm-stats \
        >"$dir/dp_$router.txt" 2>&1
    rc=$?
    d=$(maxdiff "$dir/one_$router/main.log" "$dir/dp_$router/main.log")
    [ $rc = 0 ] && within "$d" 1e-5 && [ "$(first_loss "$dir/one_$router/main.log")" = "$(first_loss "$dir/dp_$router/main.log")" ]
    check $? "$router: 2 ranks x B=4 vs 1 process x 2 micro-batches of 4: max |loss diff| $d over 8 steps (<= 1e-5; step 1 identical)"
    n=$(grep -c "params crc32 .* on all 2 ranks" "$dir/dp_$router.txt")
    [ "$n" = 8 ]
    check $? "$router: parameters identical on both ranks after each of the 8 steps (crc32 compared: $n)"
done
[ "$(counts "$dir/one_compete/metrics.tsv")" = "$(counts "$dir/dp_compete/metrics.tsv")" ] &&
    [ "$(counts "$dir/dp_compete/metrics.tsv" | awk '$7 == 1' | wc -l)" -gt 0 ]
check $? "compete: metrics.tsv's routing counts from 2 ranks (summed over ranks) equal one process's, competition steps included"

# --- bytes per step: data parallel receives P floats of gradient per rank (R = 2)
P=$(grep -m1 "parameters," "$dir/dp_topk.txt" | sed 's/.*: \([0-9]*\) parameters.*/\1/')
g=$(grep -m1 "^comm step" "$dir/dp_topk.txt" | sed 's/.* grads \([0-9]*\) params \([0-9]*\) .*/\1 \2/')
[ "$g" = "$((4 * P)) 0" ]
check $? "data parallel: rank 0 receives 4P = $((4 * P)) bytes of gradients per step, no parameters (got $g)"

# --- ZeRO-1: the same bits as plain data parallel
$MPIRUN -np 2 ./train_moe_mpi $SMALL -x 8 -o "$dir/zero" --zero --comm-stats >"$dir/zero.txt" 2>&1
[ "$(grep trl "$dir/zero/main.log")" = "$(grep trl "$dir/dp_topk/main.log")" ] &&
    cmp -s "$dir/zero/model_00000008.bin" "$dir/dp_topk/model_00000008.bin"
check $? "ZeRO-1: losses and the final checkpoint (moments gathered to rank 0) bit-identical to plain data parallel"
g=$(grep -m1 "^comm step" "$dir/zero.txt" | sed 's/.* grads \([0-9]*\) params \([0-9]*\) .*/\1 \2/')
set -- $g
[ $(( $1 + $2 )) = $((4 * P)) ] && [ "$2" -gt 0 ]
check $? "ZeRO-1: rank 0 receives its shard's gradient ($1 B) and the other shard's parameters ($2 B): 4P in all"

# --- expert parallel (with data parallel): 2 ranks, 2 experts each, tokens sent to their experts
for router in topk gatepro compete auxfree xmoe; do
    extra=""
    [ "$router" = compete ] && extra="$COMPETE"
    $MPIRUN -np 2 ./train_moe_mpi $SMALL --router $router $extra -x 8 -v 4 -o "$dir/ep_$router" --expert-parallel \
        --comm-stats >"$dir/ep_$router.txt" 2>&1
    rc=$?
    ./train_moe $SMALL --router $router $extra -x 8 -v 4 -d 128 -o "$dir/onev_$router" >/dev/null 2>&1
    d=$(maxdiff "$dir/onev_$router/main.log" "$dir/ep_$router/main.log")
    dv=$(maxdiff "$dir/onev_$router/main.log" "$dir/ep_$router/main.log" tel)
    [ $rc = 0 ] && within "$d" 1e-5 && within "$dv" 1e-5 && [ "$(grep -c tel: "$dir/ep_$router/main.log")" = 3 ]
    check $? "$router expert parallel: 2 ranks vs 1 process (2 micro-batches): max |loss diff| $d over 8 steps, validation (steps 0, 4, 8) $dv"
    n=$(grep -c "params crc32 .* on all 2 ranks" "$dir/ep_$router.txt")
    ne=$(grep -m1 "parameters summed over ranks" "$dir/ep_$router.txt" | sed 's/.*; \([0-9]*\) parameters summed.*/\1/')
    g=$(grep "^comm step 2:" "$dir/ep_$router.txt" | sed 's/.* grads \([0-9]*\) params \([0-9]*\) tokens \([0-9]*\) .*/\1 \2 \3/')
    set -- $g
    [ "$n" = 8 ] && [ "$1" = $((4 * ne)) ] && [ "$2" = 0 ] && [ "${3:-0}" -gt 0 ]
    check $? "$router expert parallel: shared parameters identical on both ranks every step; rank 0 receives 4 x $ne B of shared gradients, no expert gradients, $3 B of tokens (step 2)"
done
[ "$(counts "$dir/onev_compete/metrics.tsv")" = "$(counts "$dir/ep_compete/metrics.tsv")" ]
check $? "compete expert parallel: metrics.tsv's routing counts (winners on competition steps) equal one process's"
$MPIRUN -np 2 ./train_moe_mpi $SMALL -x 6 -d 256 -o "$dir/ep4" --expert-parallel >/dev/null 2>&1
./train_moe $SMALL -x 6 -d 256 -o "$dir/one4" >/dev/null 2>&1
d=$(maxdiff "$dir/one4/main.log" "$dir/ep4/main.log")
within "$d" 1e-5
check $? "expert parallel, 2 micro-batches per rank: max |loss diff| $d to 1 process x 4 micro-batches"
# an expert-parallel checkpoint is the single-process file: it resumes in one process, and back
./train_moe $SMALL -x 8 -v 4 -e "$dir/ep_topk/model_00000008.bin" -x 10 -o "$dir/ep_r1" >/dev/null 2>&1 &&
    $MPIRUN -np 2 ./train_moe_mpi $SMALL -v 4 -x 12 -e "$dir/ep_r1/model_00000010.bin" --expert-parallel -o "$dir/ep_r2" >/dev/null 2>&1 &&
    ./train_moe $SMALL -v 4 -x 12 -e "$dir/ep_topk/model_00000008.bin" -o "$dir/ep_r3" >/dev/null 2>&1
d=$(maxdiff "$dir/ep_r3/main.log" "$(cat "$dir/ep_r1/main.log" "$dir/ep_r2/main.log" > "$dir/ep_rr.log"; echo "$dir/ep_rr.log")")
[ -f "$dir/ep_r2/model_00000012.bin" ] && within "$d" 1e-5
check $? "expert-parallel checkpoint -> 1 process (2 steps) -> expert parallel (2 steps): max |loss diff| $d to 1 process throughout"
$MPIRUN -np 2 ./train_moe_mpi $SMALL --experts 3 --top-k 1 -x 1 --expert-parallel -o "$dir/ep3" >"$dir/ep3.txt" 2>&1
[ $? != 0 ] && grep -q "do not split evenly" "$dir/ep3.txt"
check $? "expert parallel refuses 3 experts on 2 ranks with a message"

# --- one rank under MPI is the plain program
$MPIRUN -np 1 ./train_moe_mpi $SMALL -x 4 -o "$dir/mpi1" >/dev/null 2>&1
./train_moe $SMALL -x 4 -o "$dir/plain1" >/dev/null 2>&1
cmp -s "$dir/mpi1/model_00000004.bin" "$dir/plain1/model_00000004.bin"
check $? "1 rank under mpirun: checkpoint bit-identical to the build without MPI"

# --- a build without MPI refuses to run as several ranks
$MPIRUN -np 2 ./train_moe $SMALL -x 1 -o "$dir/refuse" >"$dir/refuse.txt" 2>&1
[ $? != 0 ] && grep -q "built without MPI" "$dir/refuse.txt"
check $? "train_moe built without MPI refuses to run under mpirun -np 2"
$MPIRUN -np 2 ./train_moe_mpi $SMALL -x 1 -d 192 -o "$dir/refuse" >"$dir/refuse.txt" 2>&1
[ $? != 0 ] && grep -q "not a multiple of the 2 MPI ranks" "$dir/refuse.txt"
check $? "3 micro-batches on 2 ranks refused with a message"

# --- checkpoints across rank counts: 2 ranks -> 1 process -> 2 ranks with ZeRO-1 (the checkpoint
# keeps -d, so the step's tokens stay 128 whatever the rank count)
$MPIRUN -np 2 ./train_moe_mpi $SMALL -x 8 -n 3 -o "$dir/r2" >/dev/null 2>&1
./train_moe $SMALL -x 8 -n 6 -e "$dir/r2/model_00000003.bin" -o "$dir/r1" >/dev/null 2>&1
$MPIRUN -np 2 ./train_moe_mpi $SMALL -x 8 --zero -e "$dir/r1/model_00000006.bin" -o "$dir/r2b" >"$dir/r2b.txt" 2>&1
{ grep "^s:[0-2] trl" "$dir/r2/main.log"; grep "^s:[3-5] trl" "$dir/r1/main.log"; grep "^s:[6-7] trl" "$dir/r2b/main.log"; } > "$dir/resumed.log"
d=$(maxdiff "$dir/dp_topk/main.log" "$dir/resumed.log")
[ -f "$dir/r2b/model_00000008.bin" ] && [ "$(grep -c trl "$dir/resumed.log")" = 8 ] && within "$d" 1e-5
check $? "resume 2 ranks -> 1 process (step 3) -> 2 ranks ZeRO-1 (step 6): 8 steps, max |loss diff| to the unbroken run $d"
# the same rank count resumes bit for bit
$MPIRUN -np 2 ./train_moe_mpi $SMALL -x 8 --zero -e "$dir/r2/model_00000003.bin" -o "$dir/r2z" >/dev/null 2>&1
cmp -s "$dir/r2z/model_00000008.bin" "$dir/dp_topk/model_00000008.bin"
check $? "resume on 2 ranks (ZeRO-1) from a 2-rank step-3 checkpoint: final checkpoint bit-identical to the unbroken run"

# --- a signal to one rank stops every rank with a resumable checkpoint
$MPIRUN -np 2 ./train_moe_mpi $SMALL -x 100000 -o "$dir/sig" >"$dir/sig.txt" 2>&1 &
mpid=$!
victim=""
for i in $(seq 1 100); do
    if grep -q "^step .*/100000" "$dir/sig.txt" 2>/dev/null; then
        victim=$(pgrep -f "^./train_moe_mpi .*$dir/sig" | tail -1)
        [ -n "$victim" ] && break
    fi
    sleep 0.1
done
[ -n "$victim" ] && kill -TERM "$victim"
wait $mpid
rc=$?
ck=$(ls "$dir"/sig/model_*.bin 2>/dev/null | head -1)
grep -q "stopped by signal 15" "$dir/sig.txt" && [ -n "$ck" ] && [ $rc != 0 ]
check $? "SIGTERM to one rank: all stop at the same step, rank 0 saves $(basename "${ck:-none}") (mpirun exit $rc)"
if [ -n "$ck" ]; then
    s=$(basename "$ck" .bin | sed 's/model_0*//')
    $MPIRUN -np 2 ./train_moe_mpi $SMALL -x $((s + 2)) -e "$ck" -o "$dir/sig2" >/dev/null 2>&1
    check $? "the signal's checkpoint resumes on 2 ranks"
else
    bad "the signal's checkpoint resumes on 2 ranks (no checkpoint)"
fi

# --- NaN guard: a NaN parameter (wte[0], so every logit row holds a NaN and every loss is NaN);
# the update is skipped and the last good state saved as model_<step>.nan.bin (docs/formats.md)
python3 - "$dir/plain1/model_00000004.bin" "$dir/nan.bin" <<'EOF2'
import struct, sys, zlib
b = bytearray(open(sys.argv[1], 'rb').read())
struct.pack_into('f', b, 1024, float('nan'))  # wte[0], the first parameter
struct.pack_into('I', b, len(b) - 4, zlib.crc32(bytes(b[:-4])) & 0xffffffff)
open(sys.argv[2], 'wb').write(b)
EOF2
$MPIRUN -np 2 ./train_moe_mpi $SMALL -x 8 -d 128 --zero -e "$dir/nan.bin" -o "$dir/nan" >"$dir/nan.txt" 2>&1
rc=$?
[ $rc != 0 ] && grep -q "not finite" "$dir/nan.txt" && [ -f "$dir/nan/model_00000004.nan.bin" ]
check $? "NaN loss on 2 ranks (ZeRO-1): update skipped, last good state saved by rank 0, non-zero exit ($rc)"

finish
