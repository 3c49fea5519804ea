#!/bin/sh
# python.sh - the flowkit Python package's tests (tests/python/*.py, plain
# unittest) with the build tree's copy of the package, run by the Python
# that configure found able to import numpy; skipped (77) without one.
set -u
if [ -z "${PYTHON_NUMPY:-}" ]; then
    echo "python.sh: no Python 3 with numpy (configure: apt-get install python3-numpy); skipped"
    exit 77
fi
. "$top_srcdir/tests/lib.sh"
# In a sanitizer build the interpreter needs ASan preloaded (lib.sh).  Leaks
# are then left to the RSS test, which ASan's quarantine of freed memory
# (and its shadow) would fail: that one test is skipped there
# (FLOWKIT_TEST_ASAN).
if ! python_sanitizer_env; then
    echo "python.sh: sanitizer build and no libasan.so to preload; skipped"
    exit 77
fi
PYTHONPATH="$top_builddir/python${PYTHONPATH:+:$PYTHONPATH}"
PYTHONDONTWRITEBYTECODE=1
export PYTHONPATH PYTHONDONTWRITEBYTECODE
cd "$top_srcdir/tests/python" || exit 1
exec "$PYTHON_NUMPY" -m unittest -v test_flowkit test_fit
