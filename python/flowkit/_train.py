# _train.py - training from Python: flowkit.train (maximum likelihood,
# the loop of `flowkit train` driven step by step over flow_trainer_step)
# and flowkit.fit (reverse KL against a named target plugin or a Python
# function of a numpy batch, through flow_target_new_callback).
import ctypes
import json
import math
import os
import sys

import numpy as np

from . import _lib as L
from ._core import Spec, Model, compile as _compile, VERIFY_THIRD_PARTY, \
    VERIFY_ALL
from ._lib import Error, ShapeError, DivergedError, CheckpointError

_SCHEDULES = {"constant": 0, "cosine": 1}
# train { } keys and the keyword each one gives a default to
_TRAIN_KEYS = ("lr", "batch", "epochs", "steps", "weight_decay", "clip",
               "warmup", "patience", "seed", "schedule", "optimizer")


def _spec_of(spec):
    return spec if isinstance(spec, Spec) else _compile(spec)


def _train_section(spec, kw, fit=False):
    """Fills the keywords left None from the spec's train { } section, as
    `flowkit train` (or `fit`) takes its defaults from it; an unusable
    entry is an error naming file:line:col."""
    for e in spec._train_entries:
        key = e.key.decode()
        v = e.number
        text = e.text.decode() if e.text else "?"
        ok = True
        if key == "schedule" and not e.is_number and text in _SCHEDULES:
            if kw["schedule"] is None:
                kw["schedule"] = text
        elif key == "optimizer" and not e.is_number and text == "adam":
            pass
        elif key in ("lr",) and e.is_number and v > 0 \
                or key in ("batch", "epochs", "steps") and e.is_number \
                and v >= 1 \
                or key in ("weight_decay", "clip", "warmup", "patience",
                           "seed") and e.is_number and v >= 0:
            if key in ("epochs", "steps"):
                if fit and key == "steps" and kw["steps"] is None:
                    kw["steps"] = int(v)
                elif not fit and kw["epochs"] is None \
                        and kw["steps"] is None:
                    kw[key] = int(v)
            elif key in kw and kw[key] is None:
                kw[key] = v if key in ("lr", "weight_decay", "clip") \
                    else int(v)
        elif fit:
            pass                # `flowkit fit` skips what it cannot use
        else:
            ok = False
        if not ok:
            raise Error("%s:%d:%d: train setting '%s' has an unusable value "
                        "'%s' (known: optimizer = adam, lr, batch, epochs, "
                        "steps, schedule = constant|cosine, warmup, "
                        "weight_decay, clip, patience, seed)"
                        % (spec.path, e.line, e.col, key, text))


def _config(kw, total, target=None):
    cfg = L.TrainConfig()
    L.kit.flow_train_config_default(ctypes.byref(cfg))
    cfg.struct_size = ctypes.sizeof(cfg)
    if kw["batch"] is not None:
        cfg.batch = int(kw["batch"])
    if kw["lr"] is not None:
        cfg.lr = float(kw["lr"])
    if kw["schedule"] is not None:
        if kw["schedule"] not in _SCHEDULES:
            raise ValueError("schedule: '%s' is not constant or cosine"
                             % kw["schedule"])
        cfg.schedule = _SCHEDULES[kw["schedule"]]
    for k, f in (("warmup", "warmup_steps"), ("patience", "patience"),
                 ("anneal", "anneal_steps")):
        if kw.get(k) is not None:
            setattr(cfg, f, int(kw[k]))
    for k, f in (("weight_decay", "weight_decay"), ("clip", "clip_norm")):
        if kw.get(k) is not None:
            setattr(cfg, f, float(kw[k]))
    cfg.seed = int(kw["seed"] or 0)
    cfg.total_steps = total
    cfg.target = target
    return cfg


def _split_valid(x, c, frac, seed):
    """--valid-fraction: the same rows as `flowkit train` holds out
    (a splitmix64 Fisher-Yates shuffle seeded by seed ^ 0x5eed5eed5eed)."""
    n = x.shape[0]
    nv = int(n * frac)
    if nv == 0 or nv == n:
        raise ValueError("valid_fraction %g of %d rows leaves an empty part"
                         % (frac, n))
    M = (1 << 64) - 1
    s = (seed ^ 0x5eed5eed5eed) & M
    idx = list(range(n))
    for i in range(n, 1, -1):
        s = (s + 0x9E3779B97F4A7C15) & M
        z = s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
        j = (z ^ (z >> 31)) % i
        idx[i - 1], idx[j] = idx[j], idx[i - 1]
    idx = np.array(idx)
    va, tr = idx[:nv], idx[nv:]
    pick = (lambda a, r: None if a is None else np.ascontiguousarray(a[r]))
    return pick(x, tr), pick(c, tr), pick(x, va), pick(c, va)


def _check_bounds(spec, x, what):
    lo, hi = L.c_dbl(), L.c_dbl()
    if L.flowc.flow_graph_input_bounds(spec._graph, ctypes.byref(lo),
                                       ctypes.byref(hi)):
        bad = np.argwhere((x < L.REAL(lo.value)) | (x > L.REAL(hi.value)))
        if bad.size:
            r, j = bad[0]
            raise ValueError("%s: row %d, column %d: value %.9g is outside "
                             "the bounds [%g, %g] of the input"
                             % (what, r, j, x[r, j], lo.value, hi.value))


def _num(v):
    """A history value: JSON has no NaN or Inf (null, as the CLI)."""
    return round(float(v), 9) if math.isfinite(v) else None


def train(spec, x, context=None, valid=None, valid_context=None,
          valid_fraction=0.0, epochs=None, steps=None, batch=None, lr=None,
          schedule=None, warmup=None, weight_decay=None, clip=None,
          patience=None, seed=None, threads=1, verify_plugins=None,
          verbose=False, resume=None, output=None, checkpoint_every=0,
          callback=None, reraise=False):
    """Trains ``spec`` (a Spec, a spec file or spec text) on the rows of
    x (n, dim) by maximum likelihood with Adam, as ``flowkit train``: the
    same options, defaults from the spec's ``train { }`` section, then
    these keywords.  Returns the trained Model.

    Options (those of ``flowkit train``; None takes the spec's value,
    else the CLI's default): ``context`` (n, context_dim) for conditional
    models; ``valid`` (and ``valid_context``) validation rows, or
    ``valid_fraction`` of x held out (the CLI's rows); ``epochs`` (10) or
    ``steps``; ``batch`` (512); ``lr`` (1e-3); ``schedule`` ('constant' or
    'cosine'); ``warmup`` (0); ``weight_decay`` (0); ``clip`` (off);
    ``patience`` (off: stop after that many validations without
    improvement, keeping the best); ``seed`` (0: initialisation and
    shuffling); ``threads`` (1); ``verify_plugins`` (None probes only
    layers of third-party plugins before the first step, True every
    layer, False none); ``verbose`` (print the probe's notes);
    ``resume`` (a checkpoint of an interrupted run of the same spec: go
    on from its state); ``output`` (a checkpoint written at the end, and
    every ``checkpoint_every`` epochs).  The same options and seed give
    the same bits as the CLI.

    ``callback(epoch, loss, valid_loglik)`` runs after each epoch (loss:
    the epoch's mean negative log-likelihood; valid_loglik: None without
    validation data); returning False stops training there, as the end
    of the budget would (the best parameters by validation are put
    back).

    A KeyboardInterrupt (Ctrl-C, SIGINT) between or during steps stops
    cleanly after the step it interrupted: the model trained so far is
    returned with ``model.interrupted = True`` and its full training
    state (``model.save`` then ``train(..., resume=CKPT)`` goes on, as
    ``flowkit train --resume``); with ``reraise=True`` the
    KeyboardInterrupt is raised again after that, carrying the model as
    its ``model`` attribute.  ``output`` is written in both cases.

    Raises DivergedError when 10 steps in a row are non-finite, Error
    (with flowkit's message) for other failures."""
    spec = _spec_of(spec)
    kw = dict(epochs=epochs, steps=steps, batch=batch, lr=lr,
              schedule=schedule, warmup=warmup, weight_decay=weight_decay,
              clip=clip, patience=patience, seed=seed)
    if epochs is not None and steps is not None:
        raise ValueError("give epochs or steps, not both")
    if valid is not None and valid_fraction:
        raise ValueError("give valid or valid_fraction, not both")
    _train_section(spec, kw)
    seed = int(kw["seed"] or 0)
    x = L.rows(x, "x", spec.dim)
    c = None
    if spec.context_dim:
        if context is None:
            raise ShapeError("the model is conditional: give context with "
                             "%d columns" % spec.context_dim)
        c = L.rows(context, "context", spec.context_dim)
        if c.shape[0] != x.shape[0]:
            raise ShapeError("context: %d rows for %d rows of x"
                             % (c.shape[0], x.shape[0]))
    elif context is not None:
        raise ShapeError("the model takes no context")
    if x.shape[0] == 0:
        raise ShapeError("x: no rows")
    _check_bounds(spec, x, "x")
    vx = vc = None
    if valid is not None:
        vx = L.rows(valid, "valid", spec.dim)
        if spec.context_dim:
            vc = L.rows(valid_context, "valid_context", spec.context_dim)
        _check_bounds(spec, vx, "valid")
    elif valid_fraction:
        x, c, vx, vc = _split_valid(x, c, float(valid_fraction), seed)
    n = x.shape[0]
    model = Model._build(spec, seed, threads)
    model._keep += [x, c]               # the trainer borrows the rows
    cfg = _config(kw, 0)
    spe = -(-n // cfg.batch)
    total = int(kw["steps"]) if kw["steps"] is not None \
        else int(kw["epochs"] if kw["epochs"] is not None else 10) * spe
    cfg.total_steps = total
    tr = L.kit.flow_trainer_new(model._m, ctypes.byref(cfg), L.ptr(x),
                                L.ptr(c), n)
    if not tr:
        raise L.error_for(L.ERR_INVAL, L.errmsg(model._ctx))
    model._h["trainer"] = tr
    if resume is not None:
        _restore(model, spec, resume)
    else:
        b = min(n, cfg.batch)
        model._check(L.kit.flow_model_data_init(
            model._m, b, L.ptr(x), L.ptr(c)))
    _verify(model, x, c, verify_plugins, verbose)
    return _loop(model, x, c, vx, vc, n, total, cfg, callback, output,
                 checkpoint_every, reraise)


def _restore(model, spec, resume):
    ck = ctypes.c_void_p()
    ctx = model._ctx
    rc = L.kit.flow_checkpoint_open(ctx, os.fspath(resume).encode(),
                                    ctypes.byref(ck))
    if rc != L.OK:
        raise L.error_for(rc, L.errmsg(ctx), CheckpointError)
    try:
        files, n = spec._spec_files()
        L.check(ctx, L.kit.flow_checkpoint_check_sources(ck, files, n),
                CheckpointError)
        L.check(ctx, L.kit.flow_checkpoint_restore(ck, model._m,
                                                   model._h["trainer"]),
                CheckpointError)
        h = L.kit.flow_checkpoint_meta(ck, b"history")
        if h:
            model.history = json.loads(h.decode())
    finally:
        L.kit.flow_checkpoint_free(ck)


def _verify(model, x, c, verify_plugins, verbose):
    if verify_plugins is False:
        return
    scope = VERIFY_ALL if verify_plugins else VERIFY_THIRD_PARTY
    note = L.NOTE_FN(lambda arg, line: print("flowkit train: verify: "
                                             + line.decode(),
                                             file=sys.stderr)) \
        if verbose else L.NOTE_FN()
    probed = L.c_size()
    rc = L.kit.flow_model_verify_layers(model._m, x.shape[0], L.ptr(x),
                                        L.ptr(c), scope, note, None,
                                        ctypes.byref(probed))
    if rc != L.OK:
        raise L.error_for(rc, L.errmsg(model._ctx) + " (training not "
                          "started; verify_plugins=False skips this probe)")


def _loop(model, x, c, vx, vc, n, total, cfg, callback, output,
          checkpoint_every, reraise):
    tr = model._h["trainer"]
    st = L.TrainState()
    L.kit.flow_trainer_get_state(tr, ctypes.byref(st))
    loss = L.c_dbl()
    ep_loss, ep_count = 0.0, 0
    interrupted = stopped = False
    has_v = vx is not None
    try:
        while st.step < total and not stopped:
            skipped, before = st.skipped, st.step
            rc = L.kit.flow_trainer_step(tr, ctypes.byref(loss))
            L.kit.flow_trainer_get_state(tr, ctypes.byref(st))
            if rc != L.OK:
                msg = L.errmsg(model._ctx)
                if st.skipped > skipped:
                    raise DivergedError(msg + "; lower lr or set clip", rc)
                raise L.error_for(rc, msg)
            if math.isfinite(loss.value):
                ep_loss += loss.value
                ep_count += 1
            if not (st.pos >= n or st.step == total) or st.step == before:
                continue
            mean_loss = ep_loss / ep_count if ep_count else math.nan
            vscore = None
            if has_v:
                v, se = model.evaluate(vx, vc)
                L.kit.flow_trainer_validated(tr, v)
                vscore = v
            rec = {"epoch": st.epoch + 1, "step": st.step}
            if st.pos < n:
                rec["partial"] = True
            rec["loss"] = _num(mean_loss)
            if has_v:
                rec["valid_loglik"] = _num(vscore)
            model.history.append(rec)
            ep_loss, ep_count = 0.0, 0
            if output and checkpoint_every \
                    and (st.epoch + 1) % checkpoint_every == 0:
                model.save(output)
            if callback is not None and callback(
                    int(st.epoch + 1), mean_loss, vscore) is False:
                stopped = True
            if has_v and L.kit.flow_trainer_should_stop(tr):
                stopped = True
    except KeyboardInterrupt as e:
        interrupted = e
    L.kit.flow_trainer_get_state(tr, ctypes.byref(st))
    model.step, model.epoch = int(st.step), int(st.epoch)
    if interrupted:
        # the state of the last whole step, not the best parameters, so
        # that resume= goes on where this stopped
        model.interrupted = True
        if output:
            model.save(output)
        if reraise:
            interrupted.model = model
            raise interrupted
        return model
    if has_v:
        L.kit.flow_trainer_restore_best(tr)
    if output:
        model.save(output)
    return model


# --- fit ------------------------------------------------------------------

class _PyTarget:
    """The bridge from flow_target_fn to a Python function f(x) -> (logp,
    grad): the ctypes callback keeps a reference to this object; an
    exception is kept here and the call fails, so C unwinds normally and
    the exception is raised again once the C call has returned."""

    def __init__(self, fn, dim):
        self.fn = fn
        self.dim = dim
        self.exc = None
        self.c_fn = L.TARGET_FN(self._call)

    def _call(self, arg, n, dim, x, logp, grad, err, err_cap):
        try:
            xs = np.ctypeslib.as_array(x, shape=(n, dim)).copy()
            res = self.fn(xs)
            if not isinstance(res, tuple) or len(res) != 2:
                raise TypeError("the target must return (logp, grad), got "
                                "%s" % type(res).__name__)
            lp = np.asarray(res[0], dtype=L.REAL).reshape(-1)
            if lp.shape != (n,):
                raise ShapeError("the target's logp has %d values for %d "
                                 "rows" % (lp.size, n))
            np.ctypeslib.as_array(logp, shape=(n,))[:] = lp
            if grad:
                g = np.asarray(res[1], dtype=L.REAL)
                if g.shape != (n, dim):
                    raise ShapeError("the target's grad has shape %s, "
                                     "expected (%d, %d)"
                                     % (tuple(g.shape), n, dim))
                np.ctypeslib.as_array(grad, shape=(n, dim))[:] = g
            return 0
        except BaseException as e:      # KeyboardInterrupt included
            self.exc = e
            msg = ("%s: %s" % (type(e).__name__, e)).encode()[:err_cap - 1]
            ctypes.memmove(err, msg + b"\0", len(msg) + 1)
            return 1


def fit(spec, target=None, steps=None, batch=None, lr=None, schedule=None,
        warmup=None, weight_decay=None, clip=None, anneal=0, seed=None,
        threads=1, eval_samples=10000, log_z=None, output=None,
        callback=None, log_every=100, reraise=False):
    """Fits ``spec``'s flow to a target density by reverse KL (the ELBO,
    with the reparameterisation gradient), as ``flowkit fit``; returns
    (model, report).

    ``target``: None for the target the spec declares; a str, the text of
    a target statement (``"funnel(scale = 3)"``, a named target plugin,
    as ``flowkit fit --target``); or a Python callable f(x) -> (logp,
    grad) taking a batch x (n, dim) numpy array and returning log p~(x)
    (n,) and its gradient d log p~ / dx (n, dim), unnormalised, e.g. a
    Bayesian posterior written in numpy.  ``log_z``: the callable's known
    log normaliser, if any (reported as ``log_z_true``).  An exception
    raised by the callable stops the fit and is raised again here.

    Options as ``flowkit fit`` (defaults from the spec's train { }
    section, then): ``steps`` (1000), ``batch`` (256 samples per step),
    ``lr`` (1e-3), ``schedule``, ``warmup``, ``weight_decay``, ``clip``,
    ``anneal`` (steps over which log p~ is annealed in), ``seed``,
    ``threads``, ``eval_samples`` (10000 importance samples for the
    report), ``output`` (checkpoint).  ``callback(step, elbo)`` runs every
    ``log_every`` steps with the window's mean ELBO; False stops.  A
    KeyboardInterrupt stops as in ``train`` (no report: it is None).

    The report is a dict: samples, elbo, elbo_se, log_z, log_z_se,
    log_z_true, ess, ess_per_sample."""
    base = _spec_of(spec)
    named = isinstance(target, str)
    if named:
        base = base.with_target(target)
    py = None
    if callable(target):
        py = _PyTarget(target, base.dim)
    elif not named and base.target is None:
        raise Error("%s declares no target: add `target NAME(...);` to the "
                    "flow or pass target= (a name or a callable)"
                    % base.path)
    kw = dict(epochs=None, steps=steps, batch=batch, lr=lr,
              schedule=schedule, warmup=warmup, weight_decay=weight_decay,
              clip=clip, patience=None, seed=seed, anneal=anneal)
    _train_section(base, kw, fit=True)
    if kw["batch"] is None:
        kw["batch"] = 256
    total = int(kw["steps"] if kw["steps"] is not None else 1000)
    seed = int(kw["seed"] or 0)
    model = Model._build(base, seed, threads)
    ctx = model._ctx
    t = ctypes.c_void_p()
    if py is not None:
        L.check(ctx, L.kit.flow_target_new_callback(
            ctx, base.dim, py.c_fn, None,
            math.nan if log_z is None else float(log_z), ctypes.byref(t)))
        model._keep.append(py)
        model._meta["objective"] = "reverse_kl"
    else:
        L.check(ctx, L.flowc.flow_graph_build_target(ctx, base._graph,
                                                     ctypes.byref(t)))
        model._meta.update({"target": base.target,
                            "objective": "reverse_kl"})
    model._h["target"] = t.value
    cfg = _config(kw, total, t.value)
    tr = L.kit.flow_trainer_new_target(model._m, ctypes.byref(cfg), t)
    if not tr:
        raise L.error_for(L.ERR_INVAL, L.errmsg(ctx))
    model._h["trainer"] = tr
    # the samples' stream apart from the initialisation, as `flowkit fit`
    L.kit.flow_model_seed(model._m, seed ^ 0xf17f17f17)
    st = L.TrainState()
    loss = L.c_dbl()
    win, win_n = 0.0, 0
    interrupted = None
    try:
        L.kit.flow_trainer_get_state(tr, ctypes.byref(st))
        while st.step < total:
            skipped, before = st.skipped, st.step
            rc = L.kit.flow_trainer_step(tr, ctypes.byref(loss))
            L.kit.flow_trainer_get_state(tr, ctypes.byref(st))
            if rc != L.OK:
                _raise_target(py, model, rc, st.skipped > skipped)
            if math.isfinite(loss.value):
                win += -loss.value
                win_n += 1
            if st.step == before:
                continue
            if st.step % log_every == 0 or st.step == total:
                elbo = win / win_n if win_n else math.nan
                model.history.append({"step": st.step, "elbo": _num(elbo)})
                win, win_n = 0.0, 0
                if callback is not None and callback(int(st.step),
                                                     elbo) is False:
                    break
    except KeyboardInterrupt as e:
        interrupted = e
    L.kit.flow_trainer_get_state(tr, ctypes.byref(st))
    model.step = int(st.step)
    if interrupted is not None:
        model.interrupted = True
        if output:
            model.save(output)
        if reraise:
            interrupted.model = model
            raise interrupted
        return model, None
    report = _report(model, py, t.value, seed, int(eval_samples))
    if output:
        model.save(output)
    return model, report


def _raise_target(py, model, rc, diverged):
    if py is not None and py.exc is not None:
        e, py.exc = py.exc, None
        raise e
    msg = L.errmsg(model._ctx)
    if diverged:
        raise DivergedError(msg + "; lower lr or set clip", rc)
    raise L.error_for(rc, msg)


def _report(model, py, t, seed, n):
    """The importance-sampling report of `flowkit fit`, from its own
    seeded stream; the training stream is put back."""
    rng = (ctypes.c_uint64 * 6)()
    L.kit.flow_model_get_rng(model._m, rng)
    L.kit.flow_model_seed(model._m, seed ^ 0xe7a1e7a1)
    s = L.ISStats()
    rc = L.kit.flow_model_importance(model._m, t, n, 4096, ctypes.byref(s),
                                     None, None)
    if rc != L.OK:
        _raise_target(py, model, rc, False)
    L.kit.flow_model_set_rng(model._m, rng)
    lz = L.kit.flow_target_log_normalizer(t)
    nn = (lambda v: v if math.isfinite(v) else None)
    return {"samples": s.n, "elbo": nn(s.elbo), "elbo_se": nn(s.elbo_se),
            "log_z": nn(s.log_z), "log_z_se": nn(s.log_z_se),
            "log_z_true": nn(lz), "ess": nn(s.ess),
            "ess_per_sample": nn(s.ess_per_sample)}
