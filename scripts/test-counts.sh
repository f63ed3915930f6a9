#!/usr/bin/env bash
# Totals of a `cargo test` log, as "PASSED FAILED SKIPPED SKIP_LINES":
# usage: scripts/test-counts.sh LOG
#
# A test that cannot run here (tests/common's skip helpers, outside CI)
# prints `SKIP <test>: <why>` and returns, and libtest counts it as passed.
# It is counted as skipped here instead, with the tests libtest ignored.
# The SKIP lines reach the log only if libtest shows the output of passing
# tests: run it with --show-output (scripts/test.sh does).
set -euo pipefail

awk '
    /^test result:/ {
        for (i = 1; i <= NF; i++) {
            if ($(i + 1) ~ /^passed/) p += $i
            if ($(i + 1) ~ /^failed/) f += $i
            if ($(i + 1) ~ /^ignored/) g += $i
        }
    }
    /^SKIP [^ ]+: / { s += 1 }
    END { print p - s, f + 0, g + s, s + 0 }' "$1"
