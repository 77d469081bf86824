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

# to_file FILE CMD...: CMD's output to FILE, which appears only when CMD succeeded (it is written
# to FILE.part first), so a resumed benchmark never takes a half-written result for a finished one.
to_file() {
  local file=$1; shift
  "$@" > "$file.part" && mv "$file.part" "$file"
}
