#!/usr/bin/env bash
# Makes ferry.1 from the --help texts, so that the man page says what the binary says:
# help2man for the page and its top-level part, then one subsection per command with that
# command's own --help (options, example, exit codes), then FILES, ENVIRONMENT and SEE
# ALSO from packaging/man-extra.h2m.
# Usage: scripts/make-man.sh FERRY_BINARY OUT_FILE
set -euo pipefail
bin=$1
out=$2
here=$(cd "$(dirname "$0")/.." && pwd)
command -v help2man >/dev/null || { echo "make-man: help2man is not installed (scripts/install-deps.sh)" >&2; exit 1; }
inc=$(mktemp)
trap 'rm -f "$inc"' EXIT
# roff: a backslash is \e, and a line may not start with '.' or '\''.
escape() { sed -e 's/\\/\\e/g' -e "s/^\\([.']\\)/\\\\\\&\\1/"; }
{
    echo "[COMMANDS]"
    for cmd in $("$bin" --help | awk '/^Subcommands:/ { on = 1; next } on && NF { print $1 } on && !NF { exit }'); do
        echo ".SS \"ferry $cmd\""
        # The command's whole help, as the binary prints it.
        echo ".nf"
        "$bin" "$cmd" --help | sed "s|$bin|ferry|g" | escape
        echo ".fi"
    done
    cat "$here/packaging/man-extra.h2m"
} >"$inc"
# A fixed date: the same sources give the same page.
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$here" log -1 --format=%ct 2>/dev/null || echo 0)} \
    help2man --no-info --section 1 --name "fast, authenticated peer-to-peer file transfer" \
    --include "$inc" --output "$out" "$bin"
# help2man names the binary by the path it was given.
sed -i "s|$bin|ferry|g" "$out"
