#!/bin/sh
# python.sh - the flowkit Python package's tests (tests/python/*.py, plain
# unittest) with the build tree's copy of the package, run by the Python
# that configure found able to import numpy; skipped (77) without one.
set -u
if [ -z "${PYTHON_NUMPY:-}" ]; then
    echo "python.sh: no Python 3 with numpy (configure: apt-get install python3-numpy); skipped"
    exit 77
fi
# In a sanitizer build the libraries need ASan loaded first, which an
# interpreter not built with it does not do: LD_PRELOAD it.  Its leak
# report would list the interpreter's own allocations, so leaks are left
# to the RSS test, which ASan's quarantine of freed memory (and its
# shadow) would fail: that one test is skipped there (FLOWKIT_TEST_ASAN).
case " ${TEST_CFLAGS:-} " in *fsanitize=address*)
    asan=$(${CC:-cc} -print-file-name=libasan.so)
    if [ ! -f "$asan" ]; then
        echo "python.sh: sanitizer build and no libasan.so to preload; skipped"
        exit 77
    fi
    LD_PRELOAD="$asan${LD_PRELOAD:+:$LD_PRELOAD}"
    ASAN_OPTIONS="detect_leaks=0${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
    FLOWKIT_TEST_ASAN=1
    export LD_PRELOAD ASAN_OPTIONS FLOWKIT_TEST_ASAN ;;
esac
PYTHONPATH="$top_builddir/python${PYTHONPATH:+:$PYTHONPATH}"
PYTHONDONTWRITEBYTECODE=1
export PYTHONPATH PYTHONDONTWRITEBYTECODE
cd "$top_srcdir/tests/python" || exit 1
exec "$PYTHON_NUMPY" -m unittest -v test_flowkit test_fit
