#!/usr/bin/env bash
# The one test command, for developers and CI alike:
#   deps -> cargo fmt --check -> clippy -D warnings -> build -> test.
# Every step runs (except tests after a failed build) so one run reports all
# problems; the exit status is non-zero if any step failed.
# CI=true is passed through: end-to-end tests then fail instead of skipping
# when the machine cannot run them (and a SKIP line that still shows up
# fails the test step).
# Then every fuzz target is built and run for a bounded time: a crash fails.
set -uo pipefail

cd "$(dirname "$0")/.."

bash scripts/install-deps.sh || { echo "test.sh: scripts/install-deps.sh failed" >&2; exit 1; }
# install-deps runs in its own shell: repeat its PATH fixes here.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi

# As tests/common reads it: CI=true or CI=1, any case.
ci=false
case "$(printf '%s' "${CI:-}" | tr '[:upper:]' '[:lower:]')" in
    true | 1) ci=true ;;
esac

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
# the pipeline's status cargo's. --show-output puts the SKIP lines of tests
# that returned early (libtest counts them as passed) into the log, so the
# summary can count them as skipped.
run_tests() {
    "${SUDO[@]}" cargo test --all-targets -- --test-threads=2 --show-output 2>&1 | tee "$test_log"
}
if step build cargo build --all-targets; then
    step test run_tests
else
    results+=("SKIP  test (build failed)")
fi

# Totals over every test binary's "test result:" line, skips counted apart.
read -r passed failed_tests skipped skip_lines < <(bash scripts/test-counts.sh "$test_log")
# The skip helpers panic under CI=true; a test that skips some other way
# must not let CI pass either.
if [ "$ci" = true ] && [ "$skip_lines" -gt 0 ]; then
    results+=("FAIL  no skips under CI=true ($skip_lines tests printed SKIP)")
    failed=1
fi

# cargo-fuzz needs nightly features; RUSTC_BOOTSTRAP=1 allows them on the
# stable toolchain. It is installed once per machine (~/.cargo/bin), and the
# fuzz builds are kept outside the checkout (CI checks out afresh each run)
# so only kmesh itself is rebuilt. Each target runs from its seeds for
# FUZZ_SECONDS (at least 30 under CI=true); a crash, a leak or an input
# slower than 10 s fails the step and leaves the input in fuzz/artifacts/.
fuzz_seconds="${FUZZ_SECONDS:-30}"
if [ "$ci" = true ] && [ "$fuzz_seconds" -lt 30 ]; then
    fuzz_seconds=30
fi
fuzz_target_dir="${FUZZ_TARGET_DIR:-$HOME/.cache/kmesh/fuzz-target}"
run_fuzz() {
    if ! command -v cargo-fuzz >/dev/null 2>&1; then
        cargo install cargo-fuzz --locked || return 1
    fi
    local cargo_fuzz=(env RUSTC_BOOTSTRAP=1 cargo fuzz)
    "${cargo_fuzz[@]}" build --target-dir "$fuzz_target_dir" || return 1
    local targets corpus status=0
    targets="$("${cargo_fuzz[@]}" list)" || return 1
    [ -n "$targets" ] || { echo "no fuzz targets listed" >&2; return 1; }
    for target in $targets; do
        corpus="$(mktemp -d)"
        echo "--> fuzz $target for ${fuzz_seconds}s"
        "${cargo_fuzz[@]}" run --target-dir "$fuzz_target_dir" "$target" \
            "$corpus" "fuzz/seeds/$target" -- \
            -max_total_time="$fuzz_seconds" -timeout=10 || status=1
        rm -rf "$corpus"
    done
    return "$status"
}
step fuzz run_fuzz

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
echo "tests: $passed passed, $failed_tests failed, $skipped skipped"
exit "$failed"
