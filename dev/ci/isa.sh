#!/bin/sh
# test_moe built for older x86-64 CPUs than this one, and run here: -march=haswell (AVX2 + FMA, no
# AVX-512: the AVX2 micro-kernels, f32x16 as two ymm) and -march=x86-64 (SSE2 only: the scalar
# micro-kernels, f32x16 as four xmm). `make test` runs the -march=native build; with these, every
# path the code keeps for a CPU without AVX-512 (or without AVX) passes the same tests, PyTorch
# reference and bit-identity checks included, on whatever machine CI gets. A level this CPU cannot
# run (no AVX2 + FMA for haswell), or a CPU that is not x86-64, is skipped with a line saying so.
. "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/../.."
case "$(uname -m)" in
    x86_64) ;;
    *) echo "SKIP: not an x86-64 CPU ($(uname -m))"; finish ;;
esac
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
flags=$(grep -m1 '^flags' /proc/cpuinfo)
for level in haswell x86-64; do
    if [ "$level" = haswell ] && ! { echo "$flags" | grep -qw avx2 && echo "$flags" | grep -qw fma; }; then
        echo "SKIP: -march=haswell (this CPU has no AVX2 + FMA)"
        continue
    fi
    if ! ${CC:-cc} -O3 -march="$level" -fno-math-errno -Wall -Wextra -Wno-unused-function -Wno-psabi -fopenmp \
            test_moe.c -o "$dir/test_moe_$level" -lm -lz > "$dir/build.log" 2>&1; then
        cat "$dir/build.log"
        bad "test_moe builds with -march=$level"
        continue
    fi
    ok "test_moe builds with -march=$level"
    "$dir/test_moe_$level" > "$dir/run.log" 2>&1
    status=$?
    grep -E '^FAIL' "$dir/run.log" | head -20
    line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$dir/run.log" | tail -1)
    check "$status" "test_moe -march=$level: ${line:-no result line}"
done
finish
