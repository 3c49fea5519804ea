#!/bin/sh
# install.sh - `make install` into a scratch DESTDIR, then: the installed
# files are there, the library exports only flow_* and each plugin only its
# entry point, and an out-of-tree plugin compiles against the installed
# headers alone with `pkg-config --cflags flowkit` and loads.
set -u
pass=0
fail=0
ok()  { pass=$((pass + 1)); }
bad() { echo "FAIL: $*"; fail=$((fail + 1)); }
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
d="$t/root"

if ! ${MAKE:-make} -s -C "$top_builddir" install DESTDIR="$d" >"$t/log" 2>&1; then
    cat "$t/log"; echo "install: 0 passed, 1 failed"; exit 1
fi
for f in "$bindir/flowkit" "$includedir/flow/flow.h" \
         "$includedir/flow/flowc.h" "$includedir/flow/flow_plugin.h" \
         "$includedir/flow/flow_version.h" "$libdir/pkgconfig/flowkit.pc" \
         "$pkglibdir/permute.so" "$libdir/libflowkit.so" \
         "$libdir/libflowc.so" "$bindir/flowc"; do
    if [ -e "$d$f" ]; then ok; else bad "not installed: $f"; fi
done

# exports: only flow_* from the libraries, only the entry point from plugins
for lib in libflowkit libflowc; do
    others=$(nm -D --defined-only "$d$libdir/$lib.so" | awk '{print $3}' \
             | grep -v '^flow_' | grep -v '^_' || true)
    if [ -z "$others" ]; then ok; else bad "$lib exports non-flow_ symbols: $others"; fi
done
for p in "$d$pkglibdir"/*.so; do
    syms=$(nm -D --defined-only "$p" | awk '{print $3}' | grep -v '^_' \
           | tr '\n' ' ')
    if [ "$syms" = "flow_plugin_entry " ]; then ok; else
        bad "$(basename "$p") exports: $syms"; fi
done

# an out-of-tree plugin: installed headers only
cflags=$(PKG_CONFIG_PATH="$d$libdir/pkgconfig" PKG_CONFIG_SYSROOT_DIR="$d" \
         pkg-config --cflags flowkit) || bad "pkg-config --cflags flowkit"
mkdir "$t/src" "$t/out"
cp "$top_srcdir/tests/plugins/layer_stub.h" "$top_srcdir/tests/plugins/good.c" "$t/src/"
if ${CC:-cc} $cflags -shared -fPIC -fvisibility=hidden -o "$t/out/mine.so" \
        "$t/src/good.c" 2>"$t/cc.log"; then ok; else
    cat "$t/cc.log"; bad "out-of-tree plugin does not compile"; fi
LD_LIBRARY_PATH="$d$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
FLOW_PLUGIN_PATH="$t/out" "$d$bindir/flowkit" plugins >"$t/plugins" 2>&1
if grep -q "good_identity" "$t/plugins"; then ok; else
    cat "$t/plugins"; bad "installed flowkit does not load the plugin"; fi

echo "install: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
