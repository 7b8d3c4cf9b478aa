"""A corpus of hostile pickles, built by hand from pickle opcodes (or via `__reduce__`).

Each payload, were it unpickled with plain `pickle.loads`, would create its sentinel file
`<workdir>/<id>.pwned`, or set an attribute of a shared pandas object to "pwned" (`poison`),
or exhaust memory / read a file (`live=False`: no cheap proof). `run_plainly()` unpickles the
live ones with plain pickle in a child process, which proves the corpus really is hostile; the
allow-list unpickler must refuse every one with an error whose text contains `refused`.

Used by tests/test_safepickle.py; other tests may import `build_corpus` too.
"""
from __future__ import annotations

import base64
import codecs
import importlib
import json
import os
import pickle
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Hostile:
    id: str
    data: bytes
    refused: str                     # text the refusal must contain: the offending global
    live: bool = True                # plain pickle.loads really triggers the effect
    poison: tuple[str, str, str] | None = None   # (module, object, attribute) set to "pwned"
    extension: tuple[str, str, int] | None = None  # copyreg extension the attacker relies on

    def sentinel(self, workdir: Path) -> Path:
        return workdir / f"{self.id}.pwned"


# -- a tiny pickle assembler: each helper returns opcodes that push exactly one object ------
def g(module: str, name: str) -> bytes:
    """GLOBAL: valid in every protocol; what find_class sees verbatim."""
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def sg(module: str, name: str) -> bytes:
    """STACK_GLOBAL (protocol 4): the name may be a dotted path."""
    return s(module) + s(name) + pickle.STACK_GLOBAL


def s(text: str) -> bytes:
    raw = text.encode()
    return pickle.BINUNICODE + len(raw).to_bytes(4, "little") + raw


def b(data: bytes) -> bytes:
    return pickle.BINBYTES + len(data).to_bytes(4, "little") + data


def i(n: int) -> bytes:
    raw = pickle.encode_long(n)
    return pickle.LONG1 + bytes([len(raw)]) + raw


def lit(value) -> bytes:
    """Opcodes for a plain value: None, bool, int, float, str, bytes, tuple."""
    if value is None:
        return pickle.NONE
    if isinstance(value, bool):
        return pickle.NEWTRUE if value else pickle.NEWFALSE
    if isinstance(value, int):
        return i(value)
    if isinstance(value, float):
        return pickle.BINFLOAT + struct.pack(">d", value)
    if isinstance(value, str):
        return s(value)
    if isinstance(value, bytes):
        return b(value)
    if isinstance(value, tuple):
        return t(*(lit(v) for v in value))
    raise TypeError(value)


def t(*items: bytes) -> bytes:
    return pickle.MARK + b"".join(items) + pickle.TUPLE


def lst(*items: bytes) -> bytes:
    return pickle.EMPTY_LIST + (pickle.MARK + b"".join(items) + pickle.APPENDS if items else b"")


def dct(**items: bytes) -> bytes:
    return pickle.EMPTY_DICT + pickle.MARK + b"".join(s(k) + v for k, v in items.items()) + pickle.SETITEMS


def call(func: bytes, *args: bytes) -> bytes:
    return func + t(*args) + pickle.REDUCE


def newobj(cls: bytes, *args: bytes) -> bytes:
    return cls + t(*args) + pickle.NEWOBJ


def build(obj: bytes, state: bytes) -> bytes:
    return obj + state + pickle.BUILD


def let(slot: int, expr: bytes) -> bytes:
    """Evaluate `expr` first and keep it in memo `slot` (so its globals come first)."""
    return expr + pickle.BINPUT + bytes([slot]) + pickle.POP


def get(slot: int) -> bytes:
    return pickle.BINGET + bytes([slot])


def dumps(*exprs: bytes, proto: int = 4) -> bytes:
    return pickle.PROTO + bytes([proto]) + b"".join(exprs) + pickle.STOP


class Reduce:
    """An object whose pickle calls `func(*args)` on load: the classic __reduce__ gadget."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


# -- the corpus ---------------------------------------------------------------------------
def build_corpus(workdir: Path) -> list[Hostile]:
    """Build every hostile pickle; payloads that would run write `<workdir>/<id>.pwned`."""
    import numpy as np
    import pandas as pd
    import xgboost as xgb

    workdir = Path(workdir)
    out: list[Hostile] = []

    def add(id: str, data: bytes, refused: str, **kw) -> None:
        out.append(Hostile(id, data, refused, **kw))

    def path(id: str) -> str:
        return str(workdir / f"{id}.pwned")

    def touch(id: str) -> str:
        return f"touch '{path(id)}'"

    def create(id: str) -> str:
        return f"open({path(id)!r}, 'w').close()"

    def inner(id: str) -> bytes:
        """A plain pickle that runs a shell command: the payload hidden inside another one."""
        return pickle.dumps(Reduce(os.system, touch(id)), protocol=2)

    # Code execution through globals that are simply not on the list.
    add("os_system", dumps(call(g("os", "system"), s(touch("os_system")))), "os.system")
    add("os_system_protocol0", f"cos\nsystem\n(S'{touch('os_system_protocol0')}'\ntR.".encode(), "os.system")
    add("posix_system_reduce", pickle.dumps(Reduce(os.system, touch("posix_system_reduce"))), "posix.system")
    add("subprocess_popen", dumps(call(g("subprocess", "Popen"), lst(s("touch"), s(path("subprocess_popen"))))),
        "subprocess.Popen")
    add("subprocess_check_output", pickle.dumps(Reduce(subprocess.check_output, ["touch", path("subprocess_check_output")])),
        "subprocess.check_output")
    add("subprocess_run", dumps(call(g("subprocess", "run"), lst(s("touch"), s(path("subprocess_run"))))), "subprocess.run")
    add("builtins_eval", dumps(call(g("builtins", "eval"), s(create("builtins_eval")))), "builtins.eval")
    add("builtins_eval_py2_name", dumps(call(g("__builtin__", "eval"), s(create("builtins_eval_py2_name"))), proto=2),
        "builtins.eval")
    add("builtins_exec", dumps(call(g("builtins", "exec"), s(create("builtins_exec")))), "builtins.exec")
    add("builtins_open", dumps(call(g("builtins", "open"), s(path("builtins_open")), s("w"))), "builtins.open")
    add("builtins_compile", dumps(
        let(0, call(g("builtins", "compile"), s(create("builtins_compile")), s("<pickle>"), s("exec"))),
        call(g("builtins", "exec"), get(0))), "builtins.compile")
    add("builtins_import", dumps(call(call(g("builtins", "getattr"), call(g("builtins", "__import__"), s("os")), s("system")),
                                      s(touch("builtins_import")))), "builtins.__import__")
    # getattr is allowed only as getattr(ZoneInfo, "_unpickle"): anything else walks to eval.
    add("builtins_getattr_chain", dumps(
        let(0, g("builtins", "getattr")),
        let(1, call(get(0), call(get(0), g("pandas", "DataFrame"), s("__init__")), s("__globals__"))),
        call(call(call(get(0), call(call(get(0), get(1), s("get")), s("__builtins__")), s("get")), s("eval")),
             s(create("builtins_getattr_chain")))), "builtins.getattr(")
    add("importlib_import_module", dumps(call(call(g("builtins", "getattr"), call(g("importlib", "import_module"), s("os")),
                                                   s("system")), s(touch("importlib_import_module")))),
        "importlib.import_module")
    script = workdir / "runpy_payload.py"
    script.write_text(f"{create('runpy_run_path')}\n")
    add("runpy_run_path", dumps(call(g("runpy", "run_path"), s(str(script)))), "runpy.run_path")
    add("sys_modules", dumps(call(call(g("builtins", "getattr"), call(call(g("builtins", "getattr"), g("sys", "modules"),
                                                                          s("get")), s("os")), s("system")),
                                  s(touch("sys_modules")))), "sys.modules")
    add("functools_partial", dumps(call(call(g("functools", "partial"), g("os", "system"), s(touch("functools_partial"))))),
        "functools.partial")
    globals_of_frame = call(call(g("operator", "attrgetter"), s("__init__.__globals__")), g("pandas", "DataFrame"))
    add("operator_attrgetter", dumps(
        let(0, globals_of_frame),
        call(call(call(g("operator", "itemgetter"), s("eval")), call(call(g("operator", "itemgetter"), s("__builtins__")),
                                                                     get(0))), s(create("operator_attrgetter")))),
        "operator.attrgetter")
    add("operator_methodcaller", dumps(
        call(call(call(g("operator", "methodcaller"), s("get"), s("eval")),
                  call(call(g("operator", "methodcaller"), s("get"), s("__builtins__")), globals_of_frame)),
             s(create("operator_methodcaller")))), "operator.methodcaller")
    add("stack_global_dotted_path", dumps(call(call(sg("pandas.core.frame", "__builtins__.get"), s("eval")),
                                               s(create("stack_global_dotted_path")))),
        "pandas.core.frame.__builtins__.get")
    add("types_functiontype", dumps(call(call(g("types", "FunctionType"), call(g("builtins", "compile"),
                                                                               s(create("types_functiontype")), s("<p>"),
                                                                               s("exec")), pickle.EMPTY_DICT))),
        "types.FunctionType")
    code = compile(create("types_codetype"), "<p>", "exec")
    fields = (code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount, code.co_nlocals, code.co_stacksize,
              code.co_flags, code.co_code, code.co_consts, code.co_names, code.co_varnames, code.co_filename,
              code.co_name, code.co_qualname, code.co_firstlineno, code.co_linetable, code.co_exceptiontable,
              code.co_freevars, code.co_cellvars)
    add("types_codetype", dumps(let(0, call(g("types", "CodeType"), *(lit(f) for f in fields))),
                                call(call(g("types", "FunctionType"), get(0), pickle.EMPTY_DICT))), "types.CodeType")

    # Nested pickles: a loader on the list would be a way around it.
    add("pickle_loads_nested", dumps(call(g("pickle", "loads"), b(inner("pickle_loads_nested")))), "pickle.loads")
    add("_pickle_loads_nested", dumps(call(g("_pickle", "loads"), b(inner("_pickle_loads_nested")))), "_pickle.loads")
    add("numpy_load_nested", dumps(call(g("numpy", "load"), call(g("io", "BytesIO"), b(inner("numpy_load_nested"))),
                                        pickle.NONE, pickle.NEWTRUE)), "numpy.load")
    add("pandas_read_pickle_nested", dumps(call(g("pandas", "read_pickle"),
                                                call(g("io", "BytesIO"), b(inner("pandas_read_pickle_nested"))))),
        "pandas.read_pickle")
    add("pandas_io_read_pickle_nested", dumps(call(g("pandas.io.pickle", "read_pickle"),
                                                   call(g("io", "BytesIO"), b(inner("pandas_io_read_pickle_nested"))))),
        "pandas.io.pickle.read_pickle")
    add("codecs_decode_base64", dumps(
        let(0, call(g("codecs", "decode"), b(base64.b64encode(inner("codecs_decode_base64"))), s("base64"))),
        call(g("pickle", "loads"), get(0))), "codecs.decode")
    add("codecs_encode_rot13_module", dumps(
        let(0, call(g("codecs", "encode"), s(codecs.encode(create("codecs_encode_rot13_module"), "rot13")), s("rot13"))),
        call(g("builtins", "eval"), get(0))), "codecs.encode")
    # _codecs.encode is allowed only as the latin-1 spelling of bytes; rot13 would hide source code.
    add("codecs_encode_rot13", dumps(
        let(0, call(g("_codecs", "encode"), s(codecs.encode(create("codecs_encode_rot13"), "rot13")), s("rot13"))),
        call(g("builtins", "eval"), get(0))), "_codecs.encode(..., 'rot13')")

    # copyreg: the reconstructor with a real base class runs base.__init__; the extension
    # registry maps small integers to globals.
    add("copyreg_reconstructor_popen", dumps(call(g("copyreg", "_reconstructor"), g("subprocess", "Popen"),
                                                  g("subprocess", "Popen"),
                                                  lst(s("touch"), s(path("copyreg_reconstructor_popen")))), proto=1),
        "subprocess.Popen")
    add("copyreg_reconstructor_allowed_base", dumps(call(g("copyreg", "_reconstructor"), g("xgboost.core", "Booster"),
                                                         g("xgboost.core", "Booster"), pickle.NONE), proto=1),
        "copyreg._reconstructor(", live=False)
    code_no = 0x7FA1
    add("copyreg_add_extension", dumps(
        let(0, call(g("copyreg", "add_extension"), s("os"), s("system"), i(code_no))),
        pickle.EXT2 + code_no.to_bytes(2, "little") + t(s(touch("copyreg_add_extension"))) + pickle.REDUCE),
        "copyreg.add_extension")
    ext_no = 0x7FA2
    add("ext_opcode_registered", dumps(pickle.EXT2 + ext_no.to_bytes(2, "little") + t(s(touch("ext_opcode_registered")))
                                       + pickle.REDUCE), "posix.system", extension=("posix", "system", ext_no))
    add("persistent_id", dumps(s("os.system") + pickle.BINPERSID), "persistent id", live=False)

    # Allowed classes abused: malicious values inside real objects.
    add("ndarray_object_dtype_reduce", pickle.dumps(np.array([Reduce(os.system, touch("ndarray_object_dtype_reduce"))],
                                                             dtype=object)), "posix.system")
    add("dataframe_object_cell", pickle.dumps(pd.DataFrame({"a": [Reduce(subprocess.check_output,
                                                                         ["touch", path("dataframe_object_cell")])]})),
        "subprocess.check_output")
    add("info_dict_nested", pickle.dumps({"symbol": "SOLUSDT", "train_start": pd.Timestamp("2026-01-01", tz="UTC"),
                                          "params": {"eta": 0.1, "callbacks": [[Reduce(eval, create("info_dict_nested"))]]}}),
        "builtins.eval")
    estimator = xgb.XGBRegressor(n_estimators=2)
    estimator.objective = Reduce(os.system, touch("xgb_estimator_objective"))
    add("xgb_estimator_objective", pickle.dumps(estimator), "posix.system")
    add("new_index_popen", dumps(call(g("pandas.core.indexes.base", "_new_Index"), g("subprocess", "Popen"),
                                      dct(args=lst(s("touch"), s(path("new_index_popen")))))), "subprocess.Popen",
        live=False)
    # BUILD: on a class it rewrites the class for the whole process; on a shared singleton
    # (NaT) likewise; dunder keys would swap an object's class or dict.
    add("build_on_allowed_class", dumps(build(g("pandas", "Index"), t(pickle.NONE, dct(equals=s("pwned"))))),
        "(BUILD on an object the pickle did not create)", poison=("pandas", "Index", "equals"))
    add("build_on_nat_singleton", dumps(build(call(g("pandas._libs.tslibs.nattype", "_nat_unpickle")),
                                              dct(isoformat=s("pwned")))),
        "(BUILD on an object the pickle did not create)", poison=("pandas", "NaT", "isoformat"))
    add("build_sets_class", dumps(build(newobj(g("pandas", "DataFrame")), dct(_typ=s("dataframe"),
                                                                              __class__=g("pandas", "Series")))),
        ".__class__ (set by BUILD)", live=False)
    add("build_sets_dict", dumps(build(newobj(g("xgboost.sklearn", "XGBRegressor")),
                                       t(pickle.NONE, dct(__dict__=dct(get_booster=s("pwned")))))),
        ".__dict__ (set by BUILD)", live=False)
    add("getattr_zoneinfo_other", dumps(call(call(g("builtins", "getattr"), g("zoneinfo", "ZoneInfo"), s("clear_cache")))),
        "builtins.getattr(zoneinfo.ZoneInfo, 'clear_cache')", live=False)
    add("defaultdict_factory", dumps(call(g("collections", "defaultdict"), g("xgboost.core", "Booster"))),
        "collections.defaultdict(xgboost.core.Booster)", live=False)
    # Constructors that would read a file or build something huge from a few bytes.
    model_file = workdir / "someone_elses_model.json"
    add("booster_model_file_call", dumps(call(g("xgboost.core", "Booster"), pickle.NONE, pickle.NONE, s(str(model_file)))),
        "xgboost.core.Booster(...) (a direct call)", live=False)
    big_index = call(g("pandas.core.indexes.base", "_new_Index"), g("pandas", "RangeIndex"),
                     dct(start=i(0), stop=i(1_000_000), step=i(1)))
    add("dataframe_call_bomb", dumps(call(g("pandas", "DataFrame"), lit(0.0), big_index,
                                          big_index)), "DataFrame(...) (a direct call)", live=False)
    add("ndarray_newobj_bomb", dumps(newobj(g("numpy", "ndarray"), t(i(10**10)))), "numpy.ndarray.__new__", live=False)
    add("ndarray_call_bomb", dumps(call(g("numpy", "ndarray"), t(i(10**10)))), "numpy.ndarray(...) (a direct call)",
        live=False)
    add("reconstruct_shape_bomb", dumps(call(g("numpy._core.multiarray", "_reconstruct"), g("numpy", "ndarray"),
                                             t(i(10**10)), b(b"b"))), "_reconstruct(shape=", live=False)
    zero_size = call(g("numpy", "dtype"), s("V0"), pickle.NEWFALSE, pickle.NEWTRUE)
    add("zero_itemsize_array_bomb", dumps(build(call(g("numpy.core.multiarray", "_reconstruct"), g("numpy", "ndarray"),
                                                     t(i(0)), b(b"b")),
                                                t(i(1), t(i(10**12)), zero_size, pickle.NEWFALSE, b(b"")))),
        "numpy.ndarray of 1000000000000 items", live=False)
    add("range_bomb", dumps(call(g("builtins", "set"), call(g("builtins", "range"), i(10**12)))),
        "builtins.range of 1000000000000 items", live=False)
    add("rangeindex_bomb", dumps(call(g("pandas.core.indexes.base", "_new_Index"), g("pandas", "RangeIndex"),
                                      dct(start=i(0), stop=i(10**12), step=i(1)))),
        "pandas.RangeIndex of 1000000000000 items", live=False)
    add("bytearray_bomb", dumps(call(g("builtins", "bytearray"), i(10**11))), "builtins.bytearray(100000000000)", live=False)
    add("numpy_scalar_array_bomb", numpy_scalar_bomb(), "numpy.float64(<list>) (builds an array)", live=False)
    # Allowed constructors that would read a time zone from any file, and tell by their error
    # whether it exists.
    for where, zone in [("passwd", "dateutil//etc/passwd"), ("relative", "dateutil/../../../../etc/hostname"),
                        ("local", "tzlocal()")]:
        add(f"datetimetzdtype_{where}", dumps(call(g("pandas", "DatetimeTZDtype"), s("ns"), s(zone))),
            "(a time zone read from a file)", live=False)
    add("datetimetzdtype_dtype_string", dumps(call(g("pandas.core.dtypes.dtypes", "DatetimeTZDtype"),
                                                   s("datetime64[ns, dateutil//etc/passwd]"))),
        "(a time zone read from a file)", live=False)
    add("datetimetzdtype_build_state", dumps(build(newobj(g("pandas", "DatetimeTZDtype")),
                                                   dct(unit=s("ns"), tz=s("dateutil//etc/passwd")))),
        "(a time zone read from a file)", live=False)
    add("timestamp_tz_path", dumps(call(g("pandas._libs.tslibs.timestamps", "_unpickle_timestamp"), i(0), pickle.NONE,
                                        s("dateutil//etc/passwd"), i(10))), "(a time zone read from a file)", live=False)
    add("zoneinfo_key_file", dumps(call(g("zoneinfo", "ZoneInfo"), s("leapseconds"))),
        "zoneinfo.ZoneInfo('leapseconds') (not a known time zone name)", live=False)
    add("zoneinfo_unpickle_key_file", dumps(call(call(g("builtins", "getattr"), g("zoneinfo", "ZoneInfo"), s("_unpickle")),
                                                 s("../../../etc/passwd"), i(1))),
        "zoneinfo.ZoneInfo._unpickle('../../../etc/passwd') (not a known time zone name)", live=False)
    return out


def numpy_scalar_bomb(levels: int = 5) -> bytes:
    """About 165 bytes that ask numpy.float64 for an array of 3**levels million floats (2 GB at 5):
    memo references to one list, nested a few levels deep."""
    exprs = [let(0, call(g("builtins", "range"), i(10**6)))]
    for level in range(1, levels + 1):
        exprs.append(let(level, lst(get(level - 1), get(level - 1), get(level - 1))))
    return dumps(*exprs, call(g("numpy", "float64"), get(levels)))


# -- proof that the corpus is real: plain pickle, in a child process ----------------------
def _effect_seen(entry: dict, workdir: Path) -> bool:
    if entry["poison"]:
        module, name, attr = entry["poison"]
        return getattr(getattr(importlib.import_module(module), name), attr, None) == "pwned"
    return (workdir / f"{entry['id']}.pwned").exists()


def _run_plainly_child(spec_file: str) -> None:
    import copyreg

    spec = json.loads(Path(spec_file).read_text())
    workdir = Path(spec["workdir"])
    seen = {}
    for entry in spec["entries"]:
        if entry["extension"]:
            copyreg.add_extension(*entry["extension"])
        try:
            pickle.loads(bytes.fromhex(entry["data"]))
        except Exception:
            pass  # some gadgets fail after doing their damage
        deadline = time.monotonic() + 5  # Popen returns before its child has run
        while not _effect_seen(entry, workdir) and time.monotonic() < deadline:
            time.sleep(0.02)
        seen[entry["id"]] = _effect_seen(entry, workdir)
    print(json.dumps(seen))


def run_plainly(corpus: list[Hostile], workdir: Path) -> dict[str, bool]:
    """Unpickle each live payload with plain pickle in a child process: {id: effect seen}."""
    spec = {"workdir": str(workdir), "entries": [
        {"id": h.id, "data": h.data.hex(), "poison": h.poison, "extension": h.extension} for h in corpus if h.live]}
    spec_file = workdir / "plain-run.json"
    spec_file.write_text(json.dumps(spec))
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", f"from tests.hostile_pickles import _run_plainly_child; "
                                                 f"_run_plainly_child({str(spec_file)!r})"],
                          capture_output=True, text=True, cwd=root, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
