#!/usr/bin/env bash
# Runs every hostile input of tests/fixtures/crashers/ through a release build the way the
# fuzzing run found them (`--dry-run -t fz`, an 8 GiB address-space cap, 20 s), and prints one
# Markdown row per file: exit code, the number of `error:` lines, whether a panic or backtrace
# showed, wall time and peak RSS. What every file must get: exit 1 with one error line (or a
# normal exit 0/3), no panic, bounded time and memory.
#   DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres benches/crashers.sh [--xlsx-reader calamine]
set -uo pipefail
: "${DATABASE_URL:?set DATABASE_URL: a dry run still looks the table up}"
cd "$(dirname "$0")/.."
cargo build --release -q
bin=$PWD/target/release/importer
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
echo "| file | exit | error lines | panic | wall s | peak RSS MB | error (first 80 characters) |"
echo "|---|---|---|---|---|---|---|"
for file in tests/fixtures/crashers/*; do
    (
        ulimit -v 8388608
        /usr/bin/time -f "%e %M" -o "$out/time" timeout 20 "$bin" run --dry-run -t fz "$@" "$file" \
            >/dev/null 2>"$out/stderr"
        echo $? >"$out/rc"
    )
    rc=$(cat "$out/rc")
    read -r wall rss_kb <"$out/time" 2>/dev/null || { wall=?; rss_kb=0; }
    [[ "$wall" =~ ^[0-9.]+$ ]] || { wall=$(tail -1 "$out/time" | cut -d' ' -f1); rss_kb=$(tail -1 "$out/time" | cut -d' ' -f2); }
    reason=$(grep -m1 "^error: " "$out/stderr" | cut -c8-90)
    errors=$(grep -c '^error: ' "$out/stderr")
    panic=$(grep -qiE 'panicked|backtrace' "$out/stderr" && echo yes || echo no)
    echo "| $(basename "$file") | $rc | $errors | $panic | $wall | $((rss_kb / 1024)) | ${reason//|/\\|} |"
done
