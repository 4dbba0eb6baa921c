#!/usr/bin/env bash
# Measures issue 3's targets on this machine: medians of REPEAT runs, each ratio taken from
# runs in this one invocation. Needs psql, /usr/bin/time and a release build.
#   DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres benches/targets.sh [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/importer-targets}
repeat=${REPEAT:-3}
admin=${DATABASE_URL:?set DATABASE_URL to a server where this user may CREATE DATABASE}
db=importer_targets
url="${admin%/*}/$db"
bin=target/release/importer
columns="name,category,phone,email,address,city,country,website,description"

cargo build --release -q
mkdir -p "$work"
for rows in 1000000 100000; do
    [ -f "$work/b$rows.xlsx" ] || $bin generate --rows $rows --seed 1 "$work/b$rows.xlsx" 2>/dev/null
    [ -f "$work/b$rows.csv" ] || $bin generate --rows $rows --seed 1 "$work/b$rows.csv" 2>/dev/null
done
[ -f "$work/b1000000_inline.xlsx" ] || $bin generate --rows 1000000 --seed 1 --inline-strings "$work/b1000000_inline.xlsx" 2>/dev/null

psql -q "$admin" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
psql -q "$url" -f fixtures/businesses.sql
psql -q "$url" -c "CREATE TABLE businesses_noidx (LIKE businesses INCLUDING DEFAULTS)"

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# run LABEL TABLE COMMAND...: REPEAT timed runs into an emptied TABLE; prints the median
# seconds and the median peak RSS (MB)
run() {
    local label=$1 table=$2; shift 2
    local times=() rss=()
    for _ in $(seq "$repeat"); do
        psql -q "$url" -c "TRUNCATE $table"
        /usr/bin/time -f "%e %M" -o /tmp/importer-targets.time "$@" >/dev/null 2>&1
        read -r seconds kilobytes < /tmp/importer-targets.time
        times+=("$seconds"); rss+=("$((kilobytes / 1024))")
    done
    printf '%-44s %8.2f s %6d MB   (runs: %s)\n' "$label" \
        "$(printf '%s\n' "${times[@]}" | median)" "$(printf '%s\n' "${rss[@]}" | median)" "${times[*]}"
}
export DATABASE_URL=$url
for rows in 1000000 100000; do
    echo "== $rows rows"
    run "psql \\copy csv -> businesses" businesses psql "$url" -c "\\copy businesses($columns) from '$work/b$rows.csv' csv header"
    run "read only (run --dry-run)" businesses $bin run --dry-run -t businesses "$work/b$rows.xlsx"
    run "importer copy -> businesses" businesses $bin run -m copy -t businesses "$work/b$rows.xlsx"
    run "importer batch -> businesses" businesses $bin run -m batch -t businesses "$work/b$rows.xlsx"
    run "psql \\copy csv -> businesses_noidx" businesses_noidx psql "$url" -c "\\copy businesses_noidx($columns) from '$work/b$rows.csv' csv header"
    run "importer copy -> businesses_noidx" businesses_noidx $bin run -m copy -t businesses_noidx "$work/b$rows.xlsx"
done
echo "== 1000000 rows, inline strings"
run "read only (run --dry-run), inline strings" businesses $bin run --dry-run -t businesses "$work/b1000000_inline.xlsx"
run "importer copy -> businesses, inline strings" businesses $bin run -m copy -t businesses "$work/b1000000_inline.xlsx"
echo "== 10,000-row fixture: importer bench"
$bin bench -t businesses --repeat "$repeat" --format markdown fixtures/businesses.xlsx 2>/dev/null
psql -q "$admin" -c "DROP DATABASE $db"
