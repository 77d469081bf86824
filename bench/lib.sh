# Shell helpers shared by the benchmark scripts (sourced, not run).

# timed FILE CMD...: runs CMD and writes its wall time in seconds (3 decimals) to FILE; returns
# CMD's exit status (under `set -e` a failing CMD stops the script before FILE is written).
timed() {
  local file=$1; shift
  local t0; t0=$(date +%s%N)
  "$@"
  local t1; t1=$(date +%s%N)
  printf '%d.%03d\n' $(((t1 - t0) / 1000000000)) $(((t1 - t0) / 1000000 % 1000)) > "$file"
}
