# _core.py - specs and models of the flowkit package: compile, load, the
# density and sampling passes, saving, and the paired comparison of
# models (flowkit compare).  Every C object has one owner here, freed by a
# weakref.finalize (deterministically by close() or a with block).
import ctypes
import json
import math
import os
import weakref

import numpy as np

from . import _lib as L
from ._lib import Error, SpecError, CheckpointError, ShapeError

# flow_verify_scope, flow_diag_format
VERIFY_THIRD_PARTY, VERIFY_ALL = 0, 1
DIAG_TEXT = 0


def _free_spec(h):
    if h.get("comp"):
        L.flowc.flow_compile_free(h.pop("comp"))
    if h.get("ctx"):
        L.kit.flow_ctx_free(h.pop("ctx"))


def _diagnostics(comp):
    out = []
    for i in range(L.flowc.flow_compile_diag_count(comp)):
        d = L.flowc.flow_compile_diag(comp, i).contents
        dec = (lambda s: s.decode("utf-8", "replace") if s else None)
        out.append({"severity": "warning" if d.severity else "error",
                    "code": dec(d.code), "file": dec(d.file),
                    "line": d.line, "col": d.col, "message": dec(d.message),
                    "help": dec(d.help)})
    return out


def _checked_compilation(ctx, comp, what):
    """comp when it has a graph; else frees it and raises SpecError with
    the compiler's text."""
    if not comp:
        raise L.error_for(L.ERR_NOMEM, L.errmsg(ctx))
    text = L.captured(
        lambda f: L.flowc.flow_compile_print_diags(comp, f, DIAG_TEXT)) \
        if L.flowc.flow_compile_diag_count(comp) else ""
    if L.flowc.flow_compile_errors(comp) or not L.flowc.flow_compile_graph(comp):
        diags = _diagnostics(comp)
        n = L.flowc.flow_compile_errors(comp)
        L.flowc.flow_compile_free(comp)
        raise SpecError("%s%s: %d error%s in the spec" % (
            text, what, n, "" if n == 1 else "s"), diags)
    return comp, text


class Spec:
    """A compiled and verified spec (``flowkit.compile``).

    Attributes: ``name`` (the flow's name), ``dim`` (input dimension),
    ``context_dim`` (0 when unconditional), ``n_params`` (parameters,
    bases included), ``n_layers`` (graph nodes), ``train`` (the spec's
    ``train { }`` section as a dict), ``target`` (text of the declared
    target or None), ``source`` (the main file's text), ``path`` (the
    file, or the name given to text), ``warnings`` (the compiler's text
    for warnings, "" when none).
    """

    def __init__(self, source, name=None, target=None):
        ctx = L.new_ctx()
        self._h = {"ctx": ctx}
        self._fin = weakref.finalize(self, _free_spec, self._h)
        is_text = not isinstance(source, os.PathLike) and (
            "\n" in source or "{" in source)
        if is_text:
            self.path = name or "<string>"
            raw = source.encode()
            comp = L.flowc.flow_compile_string_target(
                ctx, self.path.encode(), raw, len(raw),
                target.encode() if target else None)
        else:
            self.path = os.fspath(source)
            comp = L.flowc.flow_compile_file_target(
                ctx, self.path.encode(), target.encode() if target else None)
        self._text = source if is_text else None
        comp, self.warnings = _checked_compilation(ctx, comp, self.path)
        self._h["comp"] = comp
        g = self._graph
        self.name = L.flowc.flow_graph_name(g).decode()
        self.dim = L.flowc.flow_graph_input_dim(g)
        self.context_dim = L.flowc.flow_graph_context_dim(g)
        self.n_params = L.flowc.flow_graph_params(g)
        self.n_layers = L.flowc.flow_graph_node_count(g)
        self.train = {}
        for i in range(L.flowc.flow_graph_train_count(g)):
            e = L.flowc.flow_graph_train_get(g, i).contents
            num = int(e.number) if e.is_number and e.number == int(e.number) \
                else e.number
            self.train[e.key.decode()] = num if e.is_number \
                else e.text.decode()
        self._train_entries = [
            L.flowc.flow_graph_train_get(g, i).contents
            for i in range(L.flowc.flow_graph_train_count(g))]
        t = L.flowc.flow_graph_target_get(g)
        self.target = t.contents.text.decode() if t else None
        p = ctypes.c_char_p()
        n = L.c_size()
        self.source = L.flowc.flow_graph_source(
            g, 0, ctypes.byref(p), ctypes.byref(n)).decode()

    @property
    def _ctx(self):
        return self._h["ctx"]

    @property
    def _graph(self):
        return L.flowc.flow_compile_graph(self._h["comp"])

    def with_target(self, target):
        """The same spec compiled with ``target`` (text of a target
        statement, e.g. ``"funnel(scale = 3)"``) replacing the one it
        declares, as ``flowkit fit --target``."""
        return Spec(self._text if self._text is not None else self.path,
                    name=self.path, target=target)

    def report(self):
        """The compiler's report table (``flowc --report``): layers,
        shapes, parameters, Jacobian classes, costs."""
        return L.captured(L.flowc.flow_graph_print_report, self._graph)

    def to_json(self):
        """The graph as ``flowc --emit=json`` describes it, parsed."""
        return json.loads(L.captured(L.flowc.flow_graph_print_json,
                                     self._graph))

    def build(self, seed=0):
        """A new untrained Model of this spec, initialised from ``seed``."""
        return Model._build(self, seed)

    def _spec_files(self):
        g = self._graph
        n = L.flowc.flow_graph_spec_file_count(g)
        files = (L.SpecFile * max(n, 1))()
        for i in range(n):
            L.check(self._ctx, L.flowc.flow_graph_spec_file(
                g, i, ctypes.byref(files[i])))
        return files, n

    def __repr__(self):
        return "<flowkit.Spec %s: dim %d, context %d, %d parameters>" % (
            self.name, self.dim, self.context_dim, self.n_params)


def compile(source, name=None, target=None):
    """Compiles a spec: ``source`` is a file path, or the text of a spec
    (a str holding a newline or a '{'; ``name`` then names it in
    diagnostics).  ``target`` replaces the spec's target statement.

    Returns a ``Spec``; raises ``SpecError`` with the compiler's
    diagnostics (``file:line:col: error[Fnnnn]: ...``) when the spec has
    errors."""
    return Spec(source, name=name, target=target)


def _free_model(h, owner):
    for key, free in (("trainer", L.kit.flow_trainer_free),
                      ("target", L.kit.flow_target_free),
                      ("model", L.kit.flow_model_free),
                      ("comp", L.flowc.flow_compile_free),
                      ("ck", L.kit.flow_checkpoint_free),
                      ("ctx", L.kit.flow_ctx_free)):
        if h.get(key):
            free(h.pop(key))
    h.clear()


class Model:
    """A flow with its parameters: made by ``flowkit.load``,
    ``flowkit.train``, ``flowkit.fit`` or ``Spec.build``.

    It owns C objects, freed when it is garbage-collected, by ``close()``,
    or at the end of a ``with`` block.  Arrays go in and out as numpy
    arrays of the build's precision (``flowkit.dtype``), rows first:
    x is (n, dim), context (n, context_dim).

    Attributes: ``dim``, ``context_dim``, ``n_params``, ``n_layers``,
    ``name``, ``spec`` (the main spec file's text), ``columns`` (the
    training data's column names, or None), ``history`` (per-epoch
    records of its training, a list of dicts), ``step`` (optimisation
    steps taken, for a model from train or fit; else None),
    ``interrupted`` (True when training stopped at a KeyboardInterrupt).
    """

    def __init__(self):
        raise TypeError("use flowkit.load, flowkit.train, flowkit.fit or "
                        "Spec.build")

    @classmethod
    def _new(cls, h, owner=None):
        self = object.__new__(cls)
        self._h = h
        self._owner = owner
        self._fin = weakref.finalize(self, _free_model, h, owner)
        self._keep = []
        self.columns = None
        self.history = []
        self.interrupted = False
        self.step = None
        self._meta = {}
        self._ck_meta = {}
        m = h["model"]
        self.dim = L.kit.flow_model_dim(m)
        self.context_dim = L.kit.flow_model_context_dim(m)
        self.n_params = L.kit.flow_model_num_params(m)
        self.n_layers = L.kit.flow_model_num_layers(m)
        return self

    @classmethod
    def _build(cls, spec, seed, threads=1):
        """A model on spec's context and compilation (spec stays alive as
        long as the model)."""
        h = {"borrowed_ctx": spec._ctx}
        out = ctypes.c_void_p()
        L.check(spec._ctx, L.flowc.flow_graph_build_model(
            spec._ctx, spec._graph, seed, ctypes.byref(out)))
        h["model"] = out.value
        self = cls._new(h, spec)
        self._spec_obj = spec
        self.name = spec.name
        self.spec = spec.source
        self.set_threads(threads)
        return self

    # --- plumbing -------------------------------------------------------

    @property
    def _ctx(self):
        return self._h.get("ctx") or self._h["borrowed_ctx"]

    @property
    def _m(self):
        m = self._h.get("model")
        if not m:
            raise Error("flowkit: the model is closed")
        return m

    def _check(self, rc, default=Error):
        L.check(self._ctx, rc, default)

    def close(self):
        """Frees the model's C objects now (idempotent); the model cannot
        be used afterwards."""
        self._fin()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def set_threads(self, threads):
        """Worker threads splitting each batch by rows (same seed and
        threads, same bits)."""
        self._check(L.kit.flow_model_set_threads(self._m, int(threads)))

    @property
    def parameters(self):
        """A copy of the flat parameter vector."""
        p = L.kit.flow_model_params(self._m)
        return np.ctypeslib.as_array(p, shape=(self.n_params,)).copy() \
            if self.n_params else np.zeros(0, L.REAL)

    def _context(self, context, n):
        if self.context_dim == 0:
            if context is not None:
                raise ShapeError("the model takes no context")
            return None
        if context is None:
            raise ShapeError("the model is conditional: give context with "
                             "%d columns" % self.context_dim)
        c = np.asarray(context)
        if c.ndim == 1:                 # one context for every row
            c = np.broadcast_to(L.rows(c[None, :], "context",
                                       self.context_dim),
                                (n, self.context_dim))
        c = L.rows(c, "context", self.context_dim)
        if c.shape[0] != n:
            raise ShapeError("context: %d rows for %d rows of data"
                             % (c.shape[0], n))
        return c

    def _batched(self, call, n, width, x, c, batch):
        out = np.empty((n, width) if width else n, dtype=L.REAL)
        for r in range(0, n, batch):
            b = min(batch, n - r)
            xs = None if x is None else x[r:r + b]
            cs = None if c is None else c[r:r + b]
            o = out[r:r + b]
            self._check(call(self._m, b, L.ptr(xs), L.ptr(cs), L.ptr(o)))
        return out

    # --- passes ------------------------------------------------------------

    def log_prob(self, x, context=None, batch=4096):
        """log p(x | context) in nats, one per row of x (n, dim); the
        same bits as ``flowkit logprob`` (batches of ``batch`` rows)."""
        x = L.rows(x, "x", self.dim)
        c = self._context(context, x.shape[0])
        return self._batched(L.kit.flow_model_log_prob, x.shape[0], 0, x, c,
                             batch)

    def encode(self, x, context=None, batch=4096):
        """Data x (n, dim) to latents z (n, dim), the density direction
        (``flowkit encode``); with exits, their dimensions come first."""
        x = L.rows(x, "x", self.dim)
        c = self._context(context, x.shape[0])
        f = (lambda m, n, xs, cs, o:
             L.kit.flow_model_forward(m, n, xs, cs, o, None))
        return self._batched(f, x.shape[0], self.dim, x, c, batch)

    def decode(self, z, context=None, batch=4096):
        """Latents z (n, dim) back to data x, the sampling direction
        (``flowkit decode``); the inverse of ``encode``."""
        z = L.rows(z, "z", self.dim)
        c = self._context(context, z.shape[0])
        f = (lambda m, n, zs, cs, o:
             L.kit.flow_model_inverse(m, n, zs, cs, o, None))
        return self._batched(f, z.shape[0], self.dim, z, c, batch)

    def sample(self, n, context=None, seed=None, log_prob=False,
               batch=4096, temperature=1.0):
        """n samples (n, dim).  ``seed``: reseed the model's stream first
        (the same seed gives the bits of ``flowkit sample -n N --seed S``);
        None goes on with the stream.  ``context``: one row (context_dim,)
        for every sample, or (n, context_dim).  With ``log_prob=True``
        returns (x, logp), logp the model's own log-density (that of
        temperature 1).  ``temperature`` T > 0 scales every base's standard
        deviation by T (``flowkit sample --temperature``, Glow's)."""
        n = int(n)
        temperature = float(temperature)
        if not temperature > 0 or temperature == float("inf"):
            raise ValueError("sample: temperature must be a finite number "
                             "> 0, got %r" % temperature)
        if n < 1:
            raise ShapeError("sample: n must be at least 1, got %d" % n)
        c = self._context(context, n)
        if seed is not None:
            L.kit.flow_model_seed(self._m, int(seed))
        x = np.empty((n, self.dim), dtype=L.REAL)
        lp = np.empty(n, dtype=L.REAL)
        for r in range(0, n, batch):
            b = min(batch, n - r)
            cs = None if c is None else c[r:r + b]
            self._check(L.kit.flow_model_sample_tempered(
                self._m, b, temperature, L.ptr(cs), L.ptr(x[r:r + b]),
                L.ptr(lp[r:r + b])))
        return (x, lp) if log_prob else x

    def evaluate(self, x, context=None, batch=4096):
        """(mean log-likelihood, its standard error) of the rows, in nats
        per row (``flowkit eval``)."""
        x = L.rows(x, "x", self.dim)
        c = self._context(context, x.shape[0])
        mean, se = L.c_dbl(), L.c_dbl()
        self._check(L.kit.flow_model_evaluate(
            self._m, x.shape[0], L.ptr(x), L.ptr(c), batch,
            ctypes.byref(mean), ctypes.byref(se)))
        return mean.value, se.value

    # --- files -------------------------------------------------------------

    def _spec_files(self):
        if getattr(self, "_spec_obj", None) is not None:
            return self._spec_obj._spec_files()
        comp = self._h["comp"]
        g = L.flowc.flow_compile_graph(comp)
        n = L.flowc.flow_graph_spec_file_count(g)
        files = (L.SpecFile * max(n, 1))()
        for i in range(n):
            self._check(L.flowc.flow_graph_spec_file(g, i,
                                                     ctypes.byref(files[i])))
        return files, n

    def save(self, path):
        """Writes a checkpoint (the C checkpoint API: atomically, a
        temporary file renamed over ``path``), readable by every flowkit
        command.  A model from ``train`` or ``fit`` also saves its
        training state (``flowkit train --resume`` continues it)."""
        files, n = self._spec_files()
        info = L.CheckpointInfo()
        info.struct_size = ctypes.sizeof(info)
        info.files = files
        info.n_files = n
        hist = json.dumps(self.history) if self.history else None
        info.history_json = hist.encode() if hist else None
        meta = []
        for k, v in self._meta.items():
            meta += [k.encode(), v.encode()]
        meta_arr = (ctypes.c_char_p * (len(meta) + 1))(*meta, None)
        info.meta = meta_arr if meta else None
        if self.columns:
            cols = (ctypes.c_char_p * len(self.columns))(
                *[c.encode() for c in self.columns])
            info.columns = cols
        self._check(L.kit.flow_checkpoint_write(
            self._m, self._h.get("trainer"), ctypes.byref(info),
            os.fspath(path).encode()), CheckpointError)

    def info(self):
        """A dict like ``flowkit info --json``: parameters, layers,
        dimensions, precision, the checkpoint's metadata (format_version,
        flowkit_version, epoch, step, best_score, spec_hash, target) when
        it was loaded from one, epochs_done, history, and the spec."""
        d = {"parameters": self.n_params, "layers": self.n_layers,
             "dim": self.dim, "context_dim": self.context_dim,
             "precision": L.PRECISION, "name": self.name}
        d.update(self._ck_meta)
        d.update(self._meta)
        if "epochs_done" not in d:
            d["epochs_done"] = sum(1 for r in self.history
                                   if "epoch" in r and not r.get("partial"))
        d["history"] = list(self.history)
        d["spec"] = self.spec
        if self.columns:
            d["columns"] = list(self.columns)
        return d

    def __repr__(self):
        return "<flowkit.Model %s: dim %d, context %d, %d parameters>" % (
            self.name, self.dim, self.context_dim, self.n_params)


_INFO_KEYS = ("format_version", "flowkit_version", "precision", "epoch",
              "step", "best_score", "spec_hash", "target")


def load(path, threads=1):
    """Loads a checkpoint written by ``flowkit train``, ``flowkit fit`` or
    ``Model.save``: its embedded spec is compiled (nothing is read from
    disk but the checkpoint), the model built and its parameters
    restored.  Raises ``CheckpointError`` for an unreadable or corrupt
    file, ``SpecError`` when the embedded spec no longer compiles."""
    path = os.fspath(path)
    ctx = L.new_ctx()
    h = {"ctx": ctx}
    try:
        ck = ctypes.c_void_p()
        rc = L.kit.flow_checkpoint_open(ctx, path.encode(), ctypes.byref(ck))
        if rc != L.OK:
            raise L.error_for(rc, L.errmsg(ctx), CheckpointError)
        h["ck"] = ck.value
        n = L.c_size()
        files = L.kit.flow_checkpoint_sources(ck, ctypes.byref(n))
        comp = L.flowc.flow_compile_sources(ctx, files, n.value, None)
        comp, _ = _checked_compilation(
            ctx, comp, files[0].name.decode() + " (embedded spec)")
        h["comp"] = comp
        out = ctypes.c_void_p()
        L.check(ctx, L.flowc.flow_graph_build_model(
            ctx, L.flowc.flow_compile_graph(comp), 0, ctypes.byref(out)))
        h["model"] = out.value
        L.check(ctx, L.kit.flow_checkpoint_restore(ck, out, None),
                CheckpointError)
    except BaseException:
        _free_model(h, None)
        raise
    self = Model._new(h)
    self.set_threads(threads)
    g = L.flowc.flow_compile_graph(comp)
    self.name = L.flowc.flow_graph_name(g).decode()
    self.spec = L.kit.flow_checkpoint_spec(ck).decode()
    self.path = path
    meta = lambda k: L.kit.flow_checkpoint_meta(ck, k.encode())
    for k in _INFO_KEYS:
        v = meta(k)
        if v is not None:
            self._ck_meta[k] = v.decode()
    hist = meta("history")
    self.history = json.loads(hist.decode()) if hist else []
    for k in ("target", "objective"):
        if meta(k) is not None:
            self._meta[k] = meta(k).decode()
    nd, nc = L.c_size(), L.c_size()
    cols = L.kit.flow_checkpoint_columns(ck, ctypes.byref(nd),
                                         ctypes.byref(nc))
    if cols:
        self.columns = [cols[i].decode() for i in range(nd.value + nc.value)]
    self._ck_meta["checkpoint"] = path
    e0 = int(self._ck_meta.get("epoch", 0))
    last = self.history[-1] if self.history else None
    self._ck_meta["epochs_done"] = (
        e0 + 1 if last and last.get("epoch") == e0 + 1
        and not last.get("partial") else e0)
    return self


def dataset(name, n, seed=0, labels=False, dim=0, components=0,
            means_seed=0):
    """A built-in data set (``flowkit data``): moons, circles,
    8gaussians, checkerboard, pinwheel, 2spirals, rings, swissroll, gmm,
    shapes (binary squares and discs as [1, S, S] images with pixel values
    0 or 255, S = ``dim``, 0: 8, flattened to rows of S*S).
    Returns x (n, D); with ``labels=True`` (8gaussians) returns (x,
    onehot) with the component as a one-hot context (n, 8)."""
    ctx = L.new_ctx()
    d = ctypes.c_void_p()
    try:
        p = L.DatasetParams(name=name.encode(), n=int(n), seed=int(seed),
                            dim=dim, components=components,
                            means_seed=means_seed, labels=int(bool(labels)))
        L.check(ctx, L.kit.flow_data_generate(ctx, ctypes.byref(p),
                                              ctypes.byref(d)))
        rows = L.kit.flow_data_rows(d)
        w = L.kit.flow_data_dim(d)
        k = L.kit.flow_data_context_dim(d)
        x = np.ctypeslib.as_array(L.kit.flow_data_values(d),
                                  shape=(rows, w)).copy()
        c = np.ctypeslib.as_array(L.kit.flow_data_context(d),
                                  shape=(rows, k)).copy() if k else None
    finally:
        if d.value:
            L.kit.flow_data_free(d)
        L.kit.flow_ctx_free(ctx)
    return (x, c) if labels else x


# --- compare --------------------------------------------------------------

def _mean_sd(x):
    """Mean and sample standard deviation as flowkit compare computes
    them (cli/uq.c: corrected two-pass, Chan, Golub & LeVeque 1983),
    summing in row order so the bits match."""
    n = x.shape[0]
    mu = np.cumsum(x)[-1] / n
    d = x - mu
    ss = np.cumsum(d * d)[-1]
    c = np.cumsum(d)[-1]
    ss -= c * c / n
    return float(mu), (math.sqrt(ss / (n - 1)) if n > 1 and ss > 0 else 0.0)


def compare(models, x, context=None, batch=4096):
    """The paired comparison of ``flowkit compare``: each model's mean
    log-likelihood on the rows of x with its standard error, ranked (ties
    in the order given), and for each model against the best the per-row
    differences d_r = log p_j(x_r) - log p_best(x_r), their mean, its
    standard error sd(d)/sqrt(n), z = -mean/s.e. and the one-sided
    confidence Phi(z) that the best is better (docs/uq.md).

    ``models``: Model objects or checkpoint paths.  Returns a dict: rows,
    best (index into models) and ``models``, ranked: dicts with rank,
    model (index), loglik, stderr, diff, diff_stderr, unpaired_stderr,
    z, p_value, confidence (None for the best) and ``d`` (the per-row
    differences, float64)."""
    ms = [load(m) if isinstance(m, (str, os.PathLike)) else m
          for m in models]
    if len(ms) < 2:
        raise ValueError("compare: give at least two models")
    lp = []
    for j, m in enumerate(ms):
        if (m.dim, m.context_dim) != (ms[0].dim, ms[0].context_dim):
            raise ShapeError("compare: model %d has dimension %d and %d "
                             "context columns, model 0 has %d and %d"
                             % (j, m.dim, m.context_dim, ms[0].dim,
                                ms[0].context_dim))
        v = m.log_prob(x, context, batch).astype(np.float64)
        bad = np.flatnonzero(~np.isfinite(v))
        if bad.size:
            raise L.NumericError("compare: row %d: the log-density is %g "
                                 "under model %d; compare needs a finite "
                                 "value on every row" % (bad[0], v[bad[0]], j))
        lp.append(v)
    n = lp[0].shape[0]
    if n < 2:
        raise ValueError("compare: one row; a standard error needs at least "
                         "two")
    stats = []
    for j in range(len(ms)):
        mean, sd = _mean_sd(lp[j])
        stats.append((j, mean, sd / math.sqrt(n)))
    order = sorted(range(len(ms)), key=lambda j: -stats[j][1])
    b = order[0]
    out = []
    for rank, j in enumerate(order):
        d = lp[j] - lp[b]
        diff, sd = _mean_sd(d)
        dse = sd / math.sqrt(n)
        if dse > 0:
            z = -diff / dse
        else:
            z = math.inf if diff < 0 else 0.0
        p = 0.5 * math.erfc(z / math.sqrt(2.0))
        out.append({"rank": rank + 1, "model": j, "loglik": stats[j][1],
                    "stderr": stats[j][2], "diff": diff, "diff_stderr": dse,
                    "unpaired_stderr": math.sqrt(stats[j][2] ** 2
                                                 + stats[b][2] ** 2),
                    "z": None if rank == 0 else z,
                    "p_value": None if rank == 0 else p,
                    "confidence": None if rank == 0 else 1 - p, "d": d})
    return {"rows": n, "best": b, "models": out}
