#!/bin/sh
# Crash campaign: SIGKILL a training run at random moments (checkpointing every step, so many kills
# land inside a checkpoint write), resume each time from the newest complete checkpoint, and check
# that the result is the uninterrupted run: the same trl lines, the same final checkpoint, every
# step exactly once in main.log and metrics.tsv, no temp file ever used or left behind.
#   sh dev/ci/crash.sh [KILLS]      (default 12; seconds on an idle 2-core machine, a few minutes on a loaded one)
# Prints what it saw and a closing "N passed, N failed" line.
set -u
cd "$(dirname "$0")/../.."
KILLS=${1:-12}
STEPS=150
dir=$(mktemp -d /tmp/moe_crash_XXXXXX)
trap 'rm -rf "$dir"' EXIT
passed=0; failed=0
check() {  # check CONDITION_EXIT_STATUS MESSAGE
    if [ "$1" -eq 0 ]; then passed=$((passed + 1)); echo "PASS $2"; else failed=$((failed + 1)); echo "FAIL $2"; fi
}
[ -x ./train_moe ] || make -s train_moe
# a model whose checkpoint (~7 MB with AdamW state) takes a noticeable share of each step to write
RUN="./train_moe --synthetic-tokens 40000 --layers 2 --channels 64 --heads 2 --experts 8 --top-k 2 -b 4 -t 16 -v 0 -n 1 --seed 7"
t0=$(date +%s.%N)
$RUN -x $STEPS -o "$dir/ref" > "$dir/ref.txt" 2>&1
check $? "uninterrupted reference run of $STEPS steps"
# kill moments are drawn in units of this machine's own step time (a fast idle machine and a
# loaded one both see kills spread over the run, and about as many land inside checkpoint writes)
step_s=$(awk -v a="$t0" -v b="$(date +%s.%N)" -v n=$STEPS 'BEGIN { printf "%.4f", (b - a) / n }')
echo "reference: $step_s s per step (checkpoint included)"

newest() { ls "$dir/crash"/model_*.bin 2>/dev/null | grep -v '\.nan\.bin$' | sort | tail -1; }
kills=0; in_write=0; resumes=0; seed=12345
while [ $kills -lt "$KILLS" ]; do
    last=$(newest)
    if [ -z "$last" ]; then $RUN -x $STEPS --keep 3 -o "$dir/crash" > "$dir/run.txt" 2>&1 &
    else $RUN -x $STEPS --keep 3 -e "$last" -o "$dir/crash" > "$dir/run.txt" 2>&1 & resumes=$((resumes + 1)); fi
    pid=$!
    # a random moment once training runs (startup time varies with the machine's load)
    while kill -0 $pid 2>/dev/null && ! grep -q '^step ' "$dir/run.txt"; do sleep 0.01; done
    seed=$(( (seed * 1103515245 + 12345) % 2147483648 ))
    sleep "$(awk -v s=$seed -v t="$step_s" 'BEGIN { srand(s); printf "%.4f", rand() * 4 * t }')"
    if kill -9 $pid 2>/dev/null; then
        wait $pid 2>/dev/null
        kills=$((kills + 1))
        ls "$dir/crash"/*.tmp* > /dev/null 2>&1 && in_write=$((in_write + 1))  # killed inside a checkpoint write
    else
        wait $pid 2>/dev/null
        [ "$(newest)" = "$dir/crash/model_$(printf %08d $STEPS).bin" ] && break  # it finished first
    fi
done
last=$(newest)
if [ "$last" != "$dir/crash/model_$(printf %08d $STEPS).bin" ]; then
    $RUN -x $STEPS --keep 3 -e "$last" -o "$dir/crash" > "$dir/run.txt" 2>&1
    check $? "final resume from $(basename "$last") finishes"
    resumes=$((resumes + 1))
fi
echo "kills: $kills (of which inside a checkpoint write, temp file on disk: $in_write), resumes: $resumes"
[ $kills -ge 10 ] || [ "$KILLS" -lt 10 ]; check $? "at least 10 kills ($kills)"

grep ' trl:' "$dir/ref/main.log" > "$dir/ref_trl.txt"
grep ' trl:' "$dir/crash/main.log" > "$dir/crash_trl.txt"
cmp -s "$dir/ref_trl.txt" "$dir/crash_trl.txt"
check $? "main.log train losses equal the uninterrupted run's ($(wc -l < "$dir/crash_trl.txt") trl lines)"
final=model_$(printf %08d $STEPS).bin
cmp -s "$dir/ref/$final" "$dir/crash/$final"
check $? "final checkpoint $final bit-identical to the uninterrupted run's"
cmp -s "$dir/ref/metrics.tsv" "$dir/crash/metrics.tsv"
check $? "metrics.tsv equal to the uninterrupted run's (every step once, every line whole)"
steps_seen=$(sed 's/ .*//' "$dir/crash/main.log" | sort | uniq -c | awk '$1 == 2' | wc -l)
[ "$(wc -l < "$dir/crash/main.log")" -eq $((2 * STEPS)) ] && [ "$steps_seen" -eq $STEPS ]
check $? "main.log: each of the $STEPS steps exactly once (an aux and a trl line each), no broken line"
[ -z "$(ls "$dir/crash" | grep '\.tmp')" ]
check $? "no temp file left behind"
[ "$(ls "$dir/crash"/model_*.bin | wc -l)" -le 3 ]
check $? "--keep 3: at most 3 checkpoints on disk ($(ls "$dir/crash"/model_*.bin | wc -l))"
echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
