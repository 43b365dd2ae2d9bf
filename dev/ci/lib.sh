# Sourced by the slow suites dev/ci/*.sh: PASS/FAIL lines and the closing "N passed, N failed".
#   ok MSG | bad MSG | check EXIT_STATUS MSG | finish   (finish exits non-zero when anything failed)
pass=0
fail=0
ok() { echo "PASS: $1"; pass=$((pass + 1)); }
bad() { echo "FAIL: $1"; fail=$((fail + 1)); }
check() { if [ "$1" = 0 ]; then ok "$2"; else bad "$2"; fi; }
finish() { echo "$pass passed, $fail failed"; [ "$fail" -eq 0 ]; exit $?; }
