#!/usr/bin/env bash
# Builds the DICOM reader's libFuzzer target (clang, ASan + UBSan) and runs it for a short while,
# seeded with pydicom's and WG04's files. Long runs stay out of CI: run this by hand.
#
#   scripts/fuzz_reader.sh [seconds=180] [jobs=1]
#
# Needs clang and libclang-rt-14-dev (scripts/setup.sh installs both). DCMTK and GDCM are the
# system's, not instrumented: the sanitizers and coverage feedback cover fedrad's code (header
# parsing, bit layout, colour/VOI/padding arithmetic) and DCMTK's behaviour is seen through it.
# Crashes land in build-fuzz/crashes/; the corpus grows in build-fuzz/corpus/ (both ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_TO_RUN=${1:-180}
JOBS=${2:-1}
OUT=build-fuzz
DATA=${FEDRAD_DATA:-../shared/data}
CXX=${FUZZ_CXX:-clang++}
mkdir -p "$OUT/corpus" "$OUT/crashes" "$OUT/seeds"

GDCM_INC=$(ls -d /usr/include/gdcm-* | head -1)
SRCS=(imaging/dicom.cpp imaging/scan.cpp imaging/site_index.cpp common/status.cpp tests/fuzz/dicom_reader_fuzz.cpp)
if [ ! -x "$OUT/dicom_reader_fuzz" ] || [ -n "$(find "${SRCS[@]}" imaging/*.h -newer "$OUT/dicom_reader_fuzz")" ]; then
  echo "fuzz: building $OUT/dicom_reader_fuzz with $CXX"
  "$CXX" -std=c++17 -O1 -g -fno-omit-frame-pointer \
    -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -I. -isystem "$GDCM_INC" "${SRCS[@]}" -o "$OUT/dicom_reader_fuzz" \
    -ldcmjpls -ldcmjpeg -ldcmimage -ldcmimgle -ldcmdata -loflog -lofstd \
    -lgdcmMSFF -lgdcmDSED -lgdcmIOD -lgdcmDICT -lgdcmCommon -lz -lpthread
fi

# Seeds: every pydicom and WG04 file under 512 KiB (copies under build-fuzz/, never in the tree).
find "$DATA/dicom/pydicom" "$DATA/dicom/wg04" -type f -size -512k -print0 |
  while IFS= read -r -d '' f; do cp -n "$f" "$OUT/seeds/$(echo "$f" | md5sum | cut -c1-16)"; done
echo "fuzz: $(ls "$OUT/seeds" | wc -l) seeds, ${SECONDS_TO_RUN}s, $JOBS job(s)"

LOG="$OUT/fuzz.log"
ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1 \
UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
"$OUT/dicom_reader_fuzz" "$OUT/corpus" "$OUT/seeds" \
  -max_total_time="$SECONDS_TO_RUN" -max_len=524288 -rss_limit_mb=4096 -timeout=20 \
  -artifact_prefix="$OUT/crashes/" -print_final_stats=1 $([ "$JOBS" -gt 1 ] && echo "-jobs=$JOBS -workers=$JOBS") 2>&1 | tee "$LOG" | grep -E "^#[0-9]+ +(INITED|DONE|pulse)|ERROR|SUMMARY|stat::" || true
echo "fuzz: crashes found: $(ls "$OUT/crashes" | wc -l) (in $OUT/crashes)"
