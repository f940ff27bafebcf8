#!/usr/bin/env bash
# Build txuring's C core with AddressSanitizer + UndefinedBehaviorSanitizer in a scratch
# copy of the tree, and run the test suite (default: everything but the conformance
# suite, which runs other processes' reactors) against that build:
#
#     scripts/sanitize.sh                      # the fast suite under ASan/UBSan
#     scripts/sanitize.sh tests/test_safety.py # or any pytest arguments
#
# Python itself is not instrumented, so the sanitizer runtimes are preloaded; leak
# detection is off (CPython's own allocations at exit would drown the report). Any
# ASan/UBSan report aborts the test process with the report on stderr.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON:-$root/.venv/bin/python}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
git -C "$root" ls-files -z | (cd "$root" && xargs -0 cp --parents -t "$work")
cp -r "$root/tests" "$work/"   # (uncommitted tests too)
cp "$root"/txuring/*.py "$work/txuring/"
cp "$root"/txuring/csrc/*.c "$work/txuring/csrc/"
(cd /tmp && TXURING_SANITIZE=1 "$py" -c \
    "import runpy; runpy.run_path('$work/txuring/_build.py', run_name='__main__')" >/dev/null)
ls "$work"/txuring/_core*.so >/dev/null
cc="${CC:-gcc}"
export LD_PRELOAD="$($cc -print-file-name=libasan.so):$($cc -print-file-name=libubsan.so)"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export PYTHONPATH="$work${PYTHONPATH:+:$PYTHONPATH}"
cd "$work"
if [ $# -eq 0 ]; then
    set -- -q -p no:cacheprovider --ignore=tests/test_conformance.py tests
fi
"$py" -c "import txuring._core as c; print('sanitized core:', c.__file__)"
exec "$py" -m pytest "$@"
