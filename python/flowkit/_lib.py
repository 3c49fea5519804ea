# _lib.py - the ctypes layer of the flowkit package: finds and loads
# libflowkit and libflowc, declares the C calls and structs it uses, turns
# status codes into exceptions.  Nothing here is public API.
import ctypes
import ctypes.util
import os

import numpy as np

from . import _paths

c_size = ctypes.c_size_t
c_u64 = ctypes.c_uint64
c_int = ctypes.c_int
c_dbl = ctypes.c_double
c_str = ctypes.c_char_p
c_ptr = ctypes.c_void_p

# --- status codes and exceptions (flow_plugin.h: flow_status) ----------

OK, ERR_NOMEM, ERR_INVAL, ERR_NUMERIC = 0, 2, 3, 4
ERR_UNSUPPORTED, ERR_IO, ERR_FORMAT, ERR_PLUGIN = 5, 6, 7, 8


class Error(Exception):
    """A flowkit call failed; the message is flowkit's (flow_errmsg).

    ``status`` holds the C status code (``FLOW_ERR_*``), 0 when the error
    was found on the Python side."""

    def __init__(self, message, status=0):
        super().__init__(message)
        self.status = status


class SpecError(Error):
    """A spec has errors.  ``str(e)`` is the compiler's full text (first
    line ``file:line:col: error[Fnnnn]: ...``, the source line, a caret);
    ``diagnostics`` lists them as dicts (severity, code, file, line, col,
    message, help)."""

    def __init__(self, message, diagnostics=()):
        super().__init__(message, ERR_INVAL)
        self.diagnostics = list(diagnostics)


class CheckpointError(Error):
    """A checkpoint could not be read, checked or written."""


class ShapeError(Error, ValueError):
    """An array has the wrong shape for the model (also a ValueError)."""


class NumericError(Error):
    """A non-finite value, or a solver that did not converge."""


class DivergedError(NumericError):
    """Training diverged: too many non-finite steps in a row (the same
    condition that makes ``flowkit train`` exit 3)."""


class PluginError(Error):
    """A plugin could not be loaded, or a layer or target misbehaved."""


_BY_STATUS = {ERR_NUMERIC: NumericError, ERR_PLUGIN: PluginError,
              ERR_IO: CheckpointError, ERR_FORMAT: CheckpointError}


def error_for(status, message, default=Error):
    """The exception for a failed call's status and message: numeric and
    plugin failures by their kind, others as `default` (the kind of the
    call, e.g. CheckpointError for reading one)."""
    if status == ERR_NOMEM:
        return MemoryError(message or "flowkit: out of memory")
    if status in (ERR_NUMERIC, ERR_PLUGIN) or default is Error:
        return _BY_STATUS.get(status, default)(message, status)
    return default(message, status)


# --- finding the libraries -------------------------------------------

def _find_lib(name):
    """libNAME.so from FLOWKIT_LIBDIR, then the directory configure
    recorded (the build tree's .libs or the installed libdir), then the
    system's search path."""
    dirs = [os.environ.get("FLOWKIT_LIBDIR"), _paths.LIBDIR]
    for d in dirs:
        if d and os.path.exists(os.path.join(d, "lib%s.so" % name)):
            return os.path.join(d, "lib%s.so" % name)
    found = ctypes.util.find_library(name)
    if found:
        return found
    raise ImportError("flowkit: lib%s.so not found in %s (set FLOWKIT_LIBDIR "
                      "to the directory that holds it)"
                      % (name, " or ".join(d for d in dirs if d)))


def _plugin_path():
    """The build tree's copy has its bundled plugins in plugins/.libs,
    which the library's own search (FLOW_PLUGIN_PATH, then the installed
    directory) does not know: append it to FLOW_PLUGIN_PATH, after what
    the user put there, before the first context reads it."""
    if _paths.KIND != "build" or not os.path.isdir(_paths.PLUGINDIR):
        return
    cur = os.environ.get("FLOW_PLUGIN_PATH", "")
    parts = [p for p in cur.split(":") if p]
    if _paths.PLUGINDIR not in parts:
        parts.append(_paths.PLUGINDIR)
        os.environ["FLOW_PLUGIN_PATH"] = ":".join(parts)


_plugin_path()
# RTLD_GLOBAL: libflowc resolves libflowkit's symbols from this copy, not
# from another one the system's search path might find first
kit = ctypes.CDLL(_find_lib("flowkit"), mode=ctypes.RTLD_GLOBAL)
flowc = ctypes.CDLL(_find_lib("flowc"), mode=ctypes.RTLD_GLOBAL)
libc = ctypes.CDLL(None)

kit.flow_precision.restype = c_str
PRECISION = kit.flow_precision().decode()
REAL = np.float64 if PRECISION == "float64" else np.float32
c_real = ctypes.c_double if REAL is np.float64 else ctypes.c_float
p_real = ctypes.POINTER(c_real)
p_dbl = ctypes.POINTER(c_dbl)


# --- structs (include/flow/flow.h, flowc.h; field order is the ABI) ----

class TrainConfig(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("batch", c_size),
                ("lr", c_dbl), ("beta1", c_dbl), ("beta2", c_dbl),
                ("adam_eps", c_dbl), ("weight_decay", c_dbl),
                ("schedule", c_int), ("warmup_steps", c_size),
                ("total_steps", c_size), ("clip_norm", c_dbl),
                ("patience", c_size), ("seed", c_u64),
                ("max_skipped", c_size), ("anneal_steps", c_size),
                ("target", c_ptr)]


class TrainState(ctypes.Structure):
    _fields_ = [("step", c_u64), ("epoch", c_u64), ("pos", c_u64),
                ("epoch_rng", c_u64 * 6), ("skipped", c_u64),
                ("bad_validations", c_u64), ("best_score", c_dbl),
                ("has_best", c_int)]


class ISStats(ctypes.Structure):
    _fields_ = [("n", c_size), ("elbo", c_dbl), ("elbo_se", c_dbl),
                ("log_z", c_dbl), ("log_z_se", c_dbl), ("ess", c_dbl),
                ("ess_per_sample", c_dbl), ("n_finite", c_size)]


class SpecFile(ctypes.Structure):
    _fields_ = [("path", c_str), ("import_", c_str), ("resolved", c_str),
                ("name", c_str), ("text", c_str), ("len", c_size),
                ("aliases", ctypes.POINTER(c_str)), ("n_aliases", c_size)]


class CheckpointInfo(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32),
                ("files", ctypes.POINTER(SpecFile)), ("n_files", c_size),
                ("history_json", c_str), ("meta", ctypes.POINTER(c_str)),
                ("columns", ctypes.POINTER(c_str))]


class Diagnostic(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("severity", c_int),
                ("code", c_str), ("file", c_str), ("line", c_int),
                ("col", c_int), ("end_line", c_int), ("end_col", c_int),
                ("message", c_str), ("help", c_str)]


class TrainEntry(ctypes.Structure):
    _fields_ = [("key", c_str), ("is_number", c_int), ("number", c_dbl),
                ("text", c_str), ("line", c_int), ("col", c_int)]


class GraphTarget(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("type", c_ptr),
                ("plugin_file", c_str), ("file", c_str), ("line", c_int),
                ("col", c_int), ("dim", c_size), ("n_attrs", c_size),
                ("attrs", c_ptr), ("text", c_str)]


class DatasetParams(ctypes.Structure):
    _fields_ = [("name", c_str), ("n", c_size), ("seed", c_u64),
                ("dim", c_size), ("components", c_size),
                ("means_seed", c_u64), ("labels", c_int),
                ("with_logprob", c_int)]


# flow_target_fn: (arg, n, dim, x, logp, grad, err, err_cap) -> int
TARGET_FN = ctypes.CFUNCTYPE(c_int, c_ptr, c_size, c_size, p_real, p_real,
                             p_real, ctypes.POINTER(ctypes.c_char), c_size)
# flow_verify_note_fn: (arg, line)
NOTE_FN = ctypes.CFUNCTYPE(None, c_ptr, c_str)


def _proto(lib, name, restype, *argtypes):
    f = getattr(lib, name)
    f.restype = restype
    f.argtypes = list(argtypes)


P = ctypes.POINTER
for name, res, args in [
        ("flow_version", c_str, ()),
        ("flow_ctx_new", c_ptr, ()),
        ("flow_ctx_free", None, (c_ptr,)),
        ("flow_errmsg", c_str, (c_ptr,)),
        ("flow_plugin_load_on_demand", c_int, (c_ptr,)),
        ("flow_model_free", None, (c_ptr,)),
        ("flow_model_dim", c_size, (c_ptr,)),
        ("flow_model_context_dim", c_size, (c_ptr,)),
        ("flow_model_num_layers", c_size, (c_ptr,)),
        ("flow_model_num_params", c_size, (c_ptr,)),
        ("flow_model_params", p_real, (c_ptr,)),
        ("flow_model_set_training", None, (c_ptr, c_int)),
        ("flow_model_forward", c_int,
         (c_ptr, c_size, p_real, p_real, p_real, p_real)),
        ("flow_model_inverse", c_int,
         (c_ptr, c_size, p_real, p_real, p_real, p_real)),
        ("flow_model_log_prob", c_int, (c_ptr, c_size, p_real, p_real,
                                        p_real)),
        ("flow_model_sample", c_int, (c_ptr, c_size, p_real, p_real, p_real)),
        ("flow_model_sample_tempered", c_int,
         (c_ptr, c_size, c_dbl, p_real, p_real, p_real)),
        ("flow_model_data_init", c_int, (c_ptr, c_size, p_real, p_real)),
        ("flow_model_set_threads", c_int, (c_ptr, c_size)),
        ("flow_model_seed", None, (c_ptr, c_u64)),
        ("flow_model_get_rng", None, (c_ptr, P(c_u64))),
        ("flow_model_set_rng", None, (c_ptr, P(c_u64))),
        ("flow_model_evaluate", c_int, (c_ptr, c_size, p_real, p_real,
                                        c_size, p_dbl, p_dbl)),
        ("flow_model_verify_layers", c_int,
         (c_ptr, c_size, p_real, p_real, c_int, NOTE_FN, c_ptr, P(c_size))),
        ("flow_train_config_default", None, (P(TrainConfig),)),
        ("flow_trainer_new", c_ptr, (c_ptr, P(TrainConfig), p_real, p_real,
                                     c_size)),
        ("flow_trainer_new_target", c_ptr, (c_ptr, P(TrainConfig), c_ptr)),
        ("flow_trainer_free", None, (c_ptr,)),
        ("flow_trainer_step", c_int, (c_ptr, p_dbl)),
        ("flow_trainer_validated", c_int, (c_ptr, c_dbl)),
        ("flow_trainer_should_stop", c_int, (c_ptr,)),
        ("flow_trainer_restore_best", c_int, (c_ptr,)),
        ("flow_trainer_get_state", None, (c_ptr, P(TrainState))),
        ("flow_checkpoint_write", c_int, (c_ptr, c_ptr, P(CheckpointInfo),
                                          c_str)),
        ("flow_checkpoint_open", c_int, (c_ptr, c_str, P(c_ptr))),
        ("flow_checkpoint_free", None, (c_ptr,)),
        ("flow_checkpoint_spec", c_str, (c_ptr,)),
        ("flow_checkpoint_meta", c_str, (c_ptr, c_str)),
        ("flow_checkpoint_has_training", c_int, (c_ptr,)),
        ("flow_checkpoint_restore", c_int, (c_ptr, c_ptr, c_ptr)),
        ("flow_checkpoint_sources", P(SpecFile), (c_ptr, P(c_size))),
        ("flow_checkpoint_columns", P(c_str), (c_ptr, P(c_size), P(c_size))),
        ("flow_checkpoint_check_sources", c_int, (c_ptr, P(SpecFile),
                                                  c_size)),
        ("flow_target_new_callback", c_int, (c_ptr, c_size, TARGET_FN, c_ptr,
                                             c_dbl, P(c_ptr))),
        ("flow_target_free", None, (c_ptr,)),
        ("flow_target_log_normalizer", c_dbl, (c_ptr,)),
        ("flow_model_importance", c_int, (c_ptr, c_ptr, c_size, c_size,
                                          P(ISStats), p_real, p_dbl)),
        ("flow_data_generate", c_int, (c_ptr, P(DatasetParams), P(c_ptr))),
        ("flow_data_free", None, (c_ptr,)),
        ("flow_data_rows", c_size, (c_ptr,)),
        ("flow_data_dim", c_size, (c_ptr,)),
        ("flow_data_context_dim", c_size, (c_ptr,)),
        ("flow_data_values", p_real, (c_ptr,)),
        ("flow_data_context", p_real, (c_ptr,))]:
    _proto(kit, name, res, *args)

for name, res, args in [
        ("flow_compile_file_target", c_ptr, (c_ptr, c_str, c_str)),
        ("flow_compile_string_target", c_ptr, (c_ptr, c_str, c_str, c_size,
                                               c_str)),
        ("flow_compile_sources", c_ptr, (c_ptr, P(SpecFile), c_size, c_str)),
        ("flow_compile_free", None, (c_ptr,)),
        ("flow_compile_errors", c_size, (c_ptr,)),
        ("flow_compile_graph", c_ptr, (c_ptr,)),
        ("flow_compile_diag_count", c_size, (c_ptr,)),
        ("flow_compile_diag", P(Diagnostic), (c_ptr, c_size)),
        ("flow_compile_print_diags", None, (c_ptr, c_ptr, c_int)),
        ("flow_graph_name", c_str, (c_ptr,)),
        ("flow_graph_input_dim", c_size, (c_ptr,)),
        ("flow_graph_input_bounds", c_int, (c_ptr, p_dbl, p_dbl)),
        ("flow_graph_context_dim", c_size, (c_ptr,)),
        ("flow_graph_node_count", c_size, (c_ptr,)),
        ("flow_graph_params", c_size, (c_ptr,)),
        ("flow_graph_train_count", c_size, (c_ptr,)),
        ("flow_graph_train_get", P(TrainEntry), (c_ptr, c_size)),
        ("flow_graph_source", c_str, (c_ptr, c_size, P(c_str), P(c_size))),
        ("flow_graph_target_get", P(GraphTarget), (c_ptr,)),
        ("flow_graph_build_target", c_int, (c_ptr, c_ptr, P(c_ptr))),
        ("flow_graph_build_model", c_int, (c_ptr, c_ptr, c_u64, P(c_ptr))),
        ("flow_graph_print_report", None, (c_ptr, c_ptr)),
        ("flow_graph_print_json", None, (c_ptr, c_ptr)),
        ("flow_graph_spec_file_count", c_size, (c_ptr,)),
        ("flow_graph_spec_file", c_int, (c_ptr, c_size, P(SpecFile)))]:
    _proto(flowc, name, res, *args)

libc.open_memstream.restype = c_ptr
libc.open_memstream.argtypes = [P(ctypes.c_char_p), P(c_size)]
libc.fclose.argtypes = [c_ptr]
libc.free.argtypes = [c_ptr]


def captured(write, *args):
    """What write(*args, f) prints to the C stream f, as a str (through
    an open_memstream buffer, freed here)."""
    buf = ctypes.c_char_p()
    size = c_size()
    f = libc.open_memstream(ctypes.byref(buf), ctypes.byref(size))
    if not f:
        raise MemoryError("flowkit: open_memstream failed")
    try:
        write(*args, f)
    finally:
        libc.fclose(f)
    try:
        return ctypes.string_at(buf, size.value).decode("utf-8", "replace")
    finally:
        libc.free(ctypes.cast(buf, c_ptr))


def errmsg(ctx):
    """The context's last message, as a str."""
    m = kit.flow_errmsg(ctx)
    return m.decode("utf-8", "replace") if m else ""


def check(ctx, status, default=Error):
    """Raises the exception for a failed call on ctx."""
    if status != OK:
        raise error_for(status, errmsg(ctx), default)


def new_ctx():
    """A context that loads plugins as specs ask for their types (as the
    CLI does: a broken plugin harms only the specs that use it)."""
    ctx = kit.flow_ctx_new()
    if not ctx:
        raise MemoryError("flowkit: out of memory")
    rc = kit.flow_plugin_load_on_demand(ctx)
    if rc != OK:
        msg = errmsg(ctx)
        kit.flow_ctx_free(ctx)
        raise error_for(rc, msg, PluginError)
    return ctx


def rows(a, name, width, allow_none=False):
    """a as a C-contiguous (n, width) array of the build's precision,
    copied only when its dtype or layout differ."""
    if a is None:
        if allow_none:
            return None
        raise ShapeError("%s: an array is required" % name)
    arr = np.ascontiguousarray(a, dtype=REAL)
    if arr.ndim != 2 or arr.shape[1] != width:
        raise ShapeError("%s: expected shape (n, %d), got %s"
                         % (name, width, tuple(arr.shape)))
    return arr


def ptr(a):
    """A flow_real pointer to a's data (None for None)."""
    return None if a is None else a.ctypes.data_as(p_real)
