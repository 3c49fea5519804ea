#!/bin/sh
# python.sh - the flowkit Python package's tests (tests/python/*.py, plain
# unittest) with the build tree's copy of the package, run by the Python
# that configure found able to import numpy; skipped (77) without one.
set -u
if [ -z "${PYTHON_NUMPY:-}" ]; then
    echo "python.sh: no Python 3 with numpy (configure: apt-get install python3-numpy); skipped"
    exit 77
fi
# ASan must be the first library of a process that loads an instrumented
# one, and a Python interpreter is not built with it: LD_PRELOAD would
# work, but the interpreter's own allocations then fill the log with
# leaks that are not flowkit's.  The sanitizer build runs the C tests.
case " ${TEST_CFLAGS:-} " in *fsanitize=address*)
    echo "python.sh: sanitizer build (an uninstrumented interpreter cannot load ASan libraries); skipped"
    exit 77 ;;
esac
PYTHONPATH="$top_builddir/python${PYTHONPATH:+:$PYTHONPATH}"
PYTHONDONTWRITEBYTECODE=1
export PYTHONPATH PYTHONDONTWRITEBYTECODE
cd "$top_srcdir/tests/python" || exit 1
exec "$PYTHON_NUMPY" -m unittest -v test_flowkit test_fit
