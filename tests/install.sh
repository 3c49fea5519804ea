#!/bin/sh
# install.sh - `make install` into a scratch DESTDIR, then: the installed
# files are there, the library exports only flow_* and each plugin only its
# entry point, an out-of-tree plugin compiles against the installed
# headers alone with `pkg-config --cflags flowkit` and loads, and the
# plugin author's kit (examples/plugin: own Makefile, sinh-arcsinh layer,
# a spec using it) builds, passes `flowkit check` and trains.
set -u
. "$top_srcdir/tests/lib.sh"
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
d="$t/root"

if ! ${MAKE:-make} -s -C "$top_builddir" install DESTDIR="$d" >"$t/log" 2>&1; then
    cat "$t/log"; bad "make install"; finish install
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
# every call the installed headers declare is exported: flow.h's by
# libflowkit, flowc.h's by libflowc
for pair in flow.h:libflowkit flowc.h:libflowc; do
    h=${pair%%:*}
    lib=${pair#*:}
    sed -n 's/^FLOW_API [^(]*[ *]\(flow_[a-z0-9_]*\)(.*/\1/p' \
        "$d$includedir/flow/$h" >"$t/want"
    nm -D --defined-only "$d$libdir/$lib.so" | awk '{print $3}' >"$t/have"
    missing=$(grep -vxF -f "$t/have" "$t/want" | tr '\n' ' ')
    n=$(wc -l <"$t/want")
    if [ "$n" -ge 20 ] && [ -z "$missing" ]; then ok; else
        bad "$lib: $n calls declared in $h, not exported: $missing"; fi
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

# the plugin author's kit: examples/plugin/ built with its own Makefile
# against the installed headers only (pkg-config), checked by the
# installed flowkit, and its spec trained for a few steps
mkdir "$t/kit"
cp "$top_srcdir/examples/plugin/Makefile" "$top_srcdir/examples/plugin/sinharcsinh.c" \
   "$top_srcdir/examples/plugin/sas.flow" "$t/kit/"
fk="$d$bindir/flowkit"
export LD_LIBRARY_PATH="$d$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if PKG_CONFIG_PATH="$d$libdir/pkgconfig" PKG_CONFIG_SYSROOT_DIR="$d" \
        ${MAKE:-make} -s -C "$t/kit" CC="${CC:-cc}" \
        CFLAGS="-O2 -Wall -Wextra -Werror" >"$t/kit.log" 2>&1; then ok; else
    cat "$t/kit.log"; bad "examples/plugin does not build against the installed headers"; fi
syms=$(nm -D --defined-only "$t/kit/sinharcsinh.so" 2>/dev/null | awk '{print $3}' \
       | grep -v '^_' | tr '\n' ' ')
if [ "$syms" = "flow_plugin_entry " ]; then ok; else
    bad "sinharcsinh.so exports: $syms"; fi
(cd "$t/kit" && "$fk" check ./sinharcsinh.so) >"$t/check" 2>&1
rc=$?
if [ $rc -eq 0 ] && grep -q "^PASS: 1 layer, 24 checks, 0 failed, 0 skipped$" "$t/check"
then ok; else cat "$t/check"; bad "flowkit check on the example plugin file (exit $rc)"; fi
export FLOW_PLUGIN_PATH="$t/kit:$d$pkglibdir"
"$fk" check sinh_arcsinh --dim 3 --attr skew=0.5 --attr tail=0.7 >"$t/check" 2>&1
rc=$?
if [ $rc -eq 0 ] && grep -q "^PASS: 1 layer, 24 checks, 0 failed, 1 skipped$" "$t/check" \
        && grep -q "^sinh_arcsinh ($t/kit/sinharcsinh.so): D = 3, K = 0$" "$t/check"
then ok; else cat "$t/check"; bad "flowkit check sinh_arcsinh through FLOW_PLUGIN_PATH (exit $rc)"; fi
"$fk" plugins >"$t/plugins" 2>&1
if grep -q "sinh_arcsinh   elementwise sinh-arcsinh flow (Jones & Pewsey 2009)" \
        "$t/plugins"; then ok; else cat "$t/plugins"; bad "example plugin not listed"; fi
"$fk" data moons -n 2000 --seed 1 -o "$t/kit/moons.csv" >/dev/null 2>&1
if (cd "$t/kit" && "$fk" train sas.flow --data moons.csv --steps 30 --seed 2 \
        -o sas.ckpt) >"$t/train" 2>&1 && [ -s "$t/kit/sas.ckpt" ]; then ok; else
    cat "$t/train"; bad "training sas.flow with the example plugin"; fi
ll=$("$fk" eval "$t/kit/sas.ckpt" --data "$t/kit/moons.csv" 2>&1)
case "$ll" in
*nan*|*inf*|"") bad "eval of the trained example: '$ll'";;
*) ok;;
esac

finish install
