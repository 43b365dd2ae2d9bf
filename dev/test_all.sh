#!/bin/sh
# Every test suite of moe.c, then one combined "N passed, N failed" line.
#   sh dev/test_all.sh        what `make test` runs: the fast suites (about a minute)
#   sh dev/test_all.sh --all  what `make ci` and CI run: the fast suites, then the slow ones
#                             (sanitizers, fuzzers, crash campaign, study smoke test, MPI, bench smoke,
#                             test_moe built for AVX2 and SSE2 CPUs)
# Fast suites:
#   test_moe             ops, model, PyTorch reference, routers, checkpoints, trainer, data, tokenizer
#   dev/test_sgemm       the matmul kernel against its scalar definition, and thread-count bit-identity
#   dev/test_sgemm_avx2  the same with the AVX2 micro-kernel (built -DSGEMM_NO_AVX512; on a CPU
#                        without AVX-512 both builds test AVX2)
#   dev/test_sgemm_scalar  the same with the scalar micro-kernels (built without AVX/AVX2/FMA/AVX-512)
#   gpt2_tokenizer/check.sh   tokenizer.h against the npm gpt-3-encoder package (needs node + npm);
#                        also on tinyshakespeare when data/tinyshakespeare/input.txt exists
# A slow suite is a script dev/ci/NAME.sh that prints its own "N passed, N failed" as its last
# such line; it is listed in SLOW_SUITES below.
ALL=0
[ "${1:-}" = "--all" ] && ALL=1
SLOW_SUITES="mpi bench plot study crash diskfull fuzz sanitize isa"
passed=0
failed=0
count() {  # count LOGFILE: add the suite's closing "N passed, N failed"
    line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$1" | tail -1)
    if [ -z "$line" ]; then failed=$((failed + 1)); echo "(no result line: counted as 1 failure)"; return; fi
    passed=$((passed + $(echo "$line" | cut -d' ' -f1)))
    failed=$((failed + $(echo "$line" | cut -d' ' -f3)))
}
log=$(mktemp)
trap 'rm -f "$log"' EXIT

echo "== test_moe"
./test_moe > "$log" 2>&1; cat "$log"; count "$log"
echo "== dev/test_sgemm"
./dev/test_sgemm > "$log" 2>&1; head -1 "$log"; tail -3 "$log"; count "$log"
echo "== dev/test_sgemm_avx2"
make -s dev/test_sgemm_avx2 > "$log" 2>&1 || cat "$log"   # (land.sh builds only dev/test_sgemm)
./dev/test_sgemm_avx2 > "$log" 2>&1; head -1 "$log"; tail -3 "$log"; count "$log"
echo "== dev/test_sgemm_scalar"
make -s dev/test_sgemm_scalar > "$log" 2>&1 || cat "$log"
./dev/test_sgemm_scalar > "$log" 2>&1; head -1 "$log"; tail -3 "$log"; count "$log"
echo "== GPT-2 tokenizer compatibility (npm gpt-3-encoder)"
if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
    text=data/tinyshakespeare/input.txt  # data/tinyshakespeare.sh downloads it there
    sh dev/gpt2_tokenizer/check.sh $( [ -f "$text" ] && echo "$text" ) > "$log" 2>&1
    cat "$log"
    passed=$((passed + $(grep -c '^PASS' "$log")))
    failed=$((failed + $(grep -c '^FAIL' "$log")))
else
    echo "SKIP: node and npm are not installed (apt-get install nodejs npm)"
fi
if [ "$ALL" = 1 ]; then
    for s in $SLOW_SUITES; do
        echo "== dev/ci/$s.sh"
        t0=$(date +%s)
        sh "dev/ci/$s.sh" > "$log" 2>&1; cat "$log"; count "$log"
        echo "(dev/ci/$s.sh took $(( $(date +%s) - t0 )) s)"
    done
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
