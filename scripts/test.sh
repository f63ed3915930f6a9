#!/usr/bin/env bash
# The one test command, for developers and CI alike:
#   deps -> cargo fmt --check -> clippy -D warnings -> build -> test.
# Every step runs (except tests after a failed build) so one run reports all
# problems; the exit status is non-zero if any step failed.
# CI=true is passed through: end-to-end tests then fail instead of skipping
# when the machine cannot run them.
set -uo pipefail

cd "$(dirname "$0")/.."

bash scripts/install-deps.sh || { echo "test.sh: scripts/install-deps.sh failed" >&2; exit 1; }
# install-deps runs in its own shell: repeat its PATH fixes here.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi

# End-to-end tests need root; use sudo when not root (no-op on CI, which is root).
SUDO=()
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo -E env "PATH=$PATH")
fi

results=()
failed=0
test_log="$(mktemp)"
trap 'rm -f "$test_log"' EXIT

step() {
    local name="$1"
    shift
    echo
    echo "==> $name: $*"
    local start=$SECONDS
    if "$@"; then
        results+=("ok    $name ($((SECONDS - start))s)")
    else
        results+=("FAIL  $name ($((SECONDS - start))s)")
        failed=1
        return 1
    fi
}

step fmt cargo fmt --all -- --check
step clippy cargo clippy --all-targets -- -D warnings
# tee keeps the live output and a copy to count results from; pipefail makes
# the pipeline's status cargo's.
run_tests() {
    "${SUDO[@]}" cargo test --all-targets -- --test-threads=2 2>&1 | tee "$test_log"
}
if step build cargo build --all-targets; then
    step test run_tests
else
    results+=("SKIP  test (build failed)")
fi

# Totals over every test binary's "test result:" line.
read -r passed failed_tests ignored < <(awk '
    /^test result:/ {
        for (i = 1; i <= NF; i++) {
            if ($(i + 1) ~ /^passed/) p += $i
            if ($(i + 1) ~ /^failed/) f += $i
            if ($(i + 1) ~ /^ignored/) g += $i
        }
    }
    END { print p + 0, f + 0, g + 0 }' "$test_log")

echo
echo "==> summary"
for r in "${results[@]}"; do
    echo "  $r"
done
if [ "$failed" -ne 0 ]; then
    echo "test.sh: FAILED"
else
    echo "test.sh: all steps passed"
fi
echo "tests: $passed passed, $failed_tests failed, $ignored skipped"
exit "$failed"
