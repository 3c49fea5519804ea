#!/bin/sh
# export_ref.sh - runs the Python tests of `flowkit export` (tests/python:
# the strict safetensors reader, the numpy reference against logprob).
#
# They need a Python 3 with numpy and nothing else: the one configure
# chose (PYTHON_NUMPY, see tests/python.sh); none: skipped (77).
set -u
py=${PYTHON_NUMPY:-}
if [ -z "$py" ]; then
    echo "SKIP: no Python 3 with numpy (configure found none); install" \
        "python3-numpy to run these tests"
    exit 77
fi
echo "using $(command -v "$py") ($("$py" -c 'import numpy; print("numpy", numpy.__version__)'))"
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
# from a scratch directory, without writing bytecode into the sources
cd "$t" || exit 1
PYTHONPATH="$top_srcdir/tests/python" PYTHONDONTWRITEBYTECODE=1 \
    "$py" -m unittest -v test_safetensors test_export_ref
