#!/usr/bin/env bash
# Measures the performance targets on this machine. Each group below compares its steps in
# one invocation, alternating them (A, B, C, A, B, C, ...) REPEAT times, so that a machine
# whose load changes over minutes still gives comparable figures; each line is the median
# of its runs, and the ratio is against the group's first step. Needs psql, unzip,
# /usr/bin/time, python3 (with venv) and network access to PyPI for the venv it creates.
#   DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres benches/targets.sh [WORKDIR]
# TARGET_GROUPS=dry,indexed,noidx,100k,inline,producer,fixture picks groups (default: all).
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/importer-targets}
repeat=${REPEAT:-3}
groups=${TARGET_GROUPS:-dry,indexed,noidx,100k,inline,producer,fixture}
admin=${DATABASE_URL:?set DATABASE_URL to a server where this user may CREATE DATABASE}
db=importer_targets
url="${admin%/*}/$db"
bin=$PWD/target/release/importer
columns="name,category,phone,email,address,city,country,website,description"
venv=$work/venv
python=$venv/bin/python

cargo build --release -q
mkdir -p "$work"
# the realistic generator (descriptions of 60-200 characters), shared strings, and the same
# rows as CSV for psql; one workbook with inline strings
for rows in 1000000 100000; do
    [ -f "$work/b$rows.xlsx" ] || $bin generate --rows $rows --seed 1 "$work/b$rows.xlsx" 2>/dev/null
    [ -f "$work/b$rows.csv" ] || $bin generate --rows $rows --seed 1 "$work/b$rows.csv" 2>/dev/null
done
wanted() { [[ ",$groups," == *",$1,"* ]]; }
! wanted inline || [ -f "$work/b1000000_inline.xlsx" ] ||
    $bin generate --rows 1000000 --seed 1 --inline-strings "$work/b1000000_inline.xlsx" 2>/dev/null
# the Python stack: polars + fastexcel + psycopg for the comparison, XlsxWriter as a second
# producer of the same rows
if [ ! -x "$python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q polars fastexcel 'psycopg[binary]' xlsxwriter
fi
! wanted producer || [ -f "$work/b1000000_xlsxwriter.xlsx" ] ||
    "$python" benches/producers.py xlsxwriter "$work/b1000000.csv" "$work/b1000000_xlsxwriter.xlsx"

psql -q "$admin" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
psql -q "$url" -f fixtures/businesses.sql
psql -q "$url" -c "CREATE TABLE businesses_noidx (LIKE businesses INCLUDING DEFAULTS)"
export DATABASE_URL=$url

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# step LABEL TABLE COMMAND...: one step of a group: TABLE is emptied before each run ("-"
# for none), COMMAND is run as given
labels=() tables=() commands=()
step() { labels+=("$1"); tables+=("$2"); shift 2; commands+=("$(printf '%q ' "$@")"); }
# compare TITLE: runs the steps declared since the last compare, alternating, REPEAT times;
# prints wall time, client CPU (user + system) and peak RSS, medians, and the ratio of each
# median wall time to the first step's
compare() {
    local title=$1 round index seconds user system kilobytes
    local -A walls=() cpus=() rsss=()
    for round in $(seq "$repeat"); do
        for index in "${!labels[@]}"; do
            [ "${tables[$index]}" = - ] || psql -q "$url" -c "TRUNCATE ${tables[$index]}"
            if ! /usr/bin/time -f "%e %U %S %M" -o "$work/time" \
                bash -c "${commands[$index]}" >/dev/null 2>"$work/stderr"; then
                # a rejected row (exit 3) is no failure of the measurement
                grep -q '^error' "$work/stderr" && { cat "$work/stderr"; exit 1; }
            fi
            read -r seconds user system kilobytes < <(tail -1 "$work/time")
            walls[$index]+="$seconds "
            cpus[$index]+="$(awk "BEGIN {print $user + $system}") "
            rsss[$index]+="$((kilobytes / 1024)) "
        done
    done
    echo "== $title (medians of $repeat, alternated)"
    local first
    first=$(printf '%s\n' ${walls[0]} | median)
    for index in "${!labels[@]}"; do
        local wall cpu rss
        wall=$(printf '%s\n' ${walls[$index]} | median)
        cpu=$(printf '%s\n' ${cpus[$index]} | median)
        rss=$(printf '%s\n' ${rsss[$index]} | median)
        printf '%-52s %7.2f s  cpu %7.2f s  %5d MB  %5.2fx   (runs: %s)\n' "${labels[$index]}" \
            "$wall" "$cpu" "$rss" "$(awk "BEGIN {print $wall / $first}")" "${walls[$index]% }"
    done
    labels=() tables=() commands=()
}
unzip_both() { # inflate the sheet, then the shared strings: what reading cannot beat
    step "unzip -p sheet1.xml; unzip -p sharedStrings.xml" - bash -c \
        "unzip -p '$1' xl/worksheets/sheet1.xml >/dev/null; unzip -p '$1' xl/sharedStrings.xml >/dev/null"
}
psql_copy() { # psql_copy ROWS TABLE
    step "psql \\copy csv -> $2" "$2" psql -q "$url" -c "\\copy $2($columns) from '$work/b$1.csv' csv header"
}
m=$work/b1000000.xlsx
if wanted dry; then
    unzip_both "$m"
    step "importer run --dry-run" - $bin run --dry-run -t businesses "$m"
    compare "1M rows: read and convert (target 1: dry run <= 1.0x unzip)"
fi
if wanted indexed; then
    psql_copy 1000000 businesses
    step "importer run -m copy -> businesses" businesses $bin run -m copy -t businesses "$m"
    step "importer run -m batch -> businesses" businesses $bin run -m batch -t businesses "$m"
    compare "1M rows, 6 indexes (target 2: copy <= 0.9x psql; target 6: batch <= 1.3x copy)"
fi
if wanted noidx; then
    psql_copy 1000000 businesses_noidx
    step "importer run -m copy -> businesses_noidx" businesses_noidx $bin run -m copy -t businesses_noidx "$m"
    step "polars read_excel(calamine) + psycopg COPY" businesses_noidx "$python" benches/producers.py polars-copy "$m" "$url" businesses_noidx
    compare "1M rows, no indexes (target 3: copy <= 1.5x psql and <= 0.5x polars)"
fi
if wanted 100k; then
    psql_copy 100000 businesses
    step "importer run -m copy -> businesses (100k)" businesses $bin run -m copy -t businesses "$work/b100000.xlsx"
    step "importer run --dry-run (100k)" - $bin run --dry-run -t businesses "$work/b100000.xlsx"
    compare "100k rows, 6 indexes (target 4: copy <= 1.1x psql)"
fi
if wanted inline; then
    i=$work/b1000000_inline.xlsx
    step "importer run --dry-run, inline strings" - $bin run --dry-run -t businesses "$i"
    step "importer run -m copy -> businesses, inline strings" businesses $bin run -m copy -t businesses "$i"
    compare "1M rows, inline strings (target 5: <= 60 MB peak RSS)"
fi
if wanted producer; then
    x=$work/b1000000_xlsxwriter.xlsx
    unzip_both "$x"
    step "importer run --dry-run, XlsxWriter's workbook" - $bin run --dry-run -t businesses "$x"
    step "importer run -m copy -> businesses_noidx, XlsxWriter's" businesses_noidx $bin run -m copy -t businesses_noidx "$x"
    compare "1M rows written by XlsxWriter (a second producer)"
fi
if wanted fixture; then
    echo "== 10,000-row fixture: importer bench (target 6: sequential, concurrent no slower; batch <= 1.3x copy)"
    $bin bench -t businesses --repeat "$repeat" --format markdown fixtures/businesses.xlsx 2>/dev/null
    for round in $(seq "$repeat"); do
        for ledger in "" --no-ledger; do
            psql -q "$url" -c "TRUNCATE businesses"
            /usr/bin/time -f "%e" -o "$work/time" $bin run -q -m sequential $ledger -t businesses \
                fixtures/businesses.xlsx >/dev/null 2>&1 || true
            echo "sequential ${ledger:-(ledger)} $(tail -1 "$work/time")"
        done
    done | sort | awk '{k=$1" "$2; a[k]=a[k]" "$3} END {for (k in a) print k ":" a[k] " s"}'
fi
psql -q "$admin" -c "DROP DATABASE $db"
