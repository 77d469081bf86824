#!/usr/bin/env bash
# Builds the federation message decoder's libFuzzer target (clang, ASan + UBSan) and runs it for
# a short while, seeded with one encoded message of every type and a chunked FIT_RES. Long runs
# stay out of CI: run this by hand.
#
#   scripts/fuzz_wire.sh [seconds=180] [jobs=1]
#
# Needs clang and libclang-rt-14-dev (scripts/setup.sh installs both) and libzstd-dev.
# Crashes land in build-fuzz-wire/crashes/; the corpus grows in build-fuzz-wire/corpus/.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_TO_RUN=${1:-180}
JOBS=${2:-1}
OUT=build-fuzz-wire
CXX=${FUZZ_CXX:-clang++}
mkdir -p "$OUT/corpus" "$OUT/crashes" "$OUT/seeds"

SRCS=(federation/wire.cpp common/status.cpp)
TARGET=tests/fuzz/wire_decode_fuzz.cpp
if [ ! -x "$OUT/wire_decode_fuzz" ] || [ -n "$(find "${SRCS[@]}" "$TARGET" federation/*.h -newer "$OUT/wire_decode_fuzz")" ]; then
  echo "fuzz: building $OUT/wire_decode_fuzz with $CXX"
  "$CXX" -std=c++17 -O1 -g -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined \
    -fno-sanitize-recover=undefined -I. "${SRCS[@]}" "$TARGET" -o "$OUT/wire_decode_fuzz" -lzstd
  "$CXX" -std=c++17 -O1 -DFEDRAD_WIRE_SEEDS -I. "${SRCS[@]}" "$TARGET" -o "$OUT/wire_seeds" -lzstd
fi
"$OUT/wire_seeds" "$OUT/seeds"
echo "fuzz: $(ls "$OUT/seeds" | wc -l) seeds, ${SECONDS_TO_RUN}s, $JOBS job(s)"

LOG="$OUT/fuzz.log"
ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 \
UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
"$OUT/wire_decode_fuzz" "$OUT/corpus" "$OUT/seeds" \
  -max_total_time="$SECONDS_TO_RUN" -max_len=65536 -rss_limit_mb=4096 -timeout=10 \
  -artifact_prefix="$OUT/crashes/" -print_final_stats=1 $([ "$JOBS" -gt 1 ] && echo "-jobs=$JOBS -workers=$JOBS") 2>&1 | tee "$LOG" | grep -E "^#[0-9]+ +(INITED|DONE|pulse)|ERROR|SUMMARY|stat::" || true
echo "fuzz: crashes found: $(ls "$OUT/crashes" | wc -l) (in $OUT/crashes)"
