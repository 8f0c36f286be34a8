"""Which globals a model file may name for a weights-only load, and a check that it only rebuilds them.

``torch.load(weights_only=True)`` lets an allow-listed global be *called* with arguments from the
file (pickle's REDUCE), be created with ``cls.__new__(cls, *args)`` (NEWOBJ) and receive the file's
state through ``__setstate__`` (BUILD). So an allow-listed function, or a class whose constructor
does I/O (mace's ``MaceTorchSimModel(path)`` ``torch.load``\\ s another file with
``weights_only=False``), is a way to run code. A file saved with ``torch.save(model)`` never calls a
module class: it creates each one with NEWOBJ and fills it with BUILD. The rules here:

* a global is allow-listed only when it is a class (never a function, builtin or other callable)
  defined under exactly the name the file gives, inside the allowed packages, in a module already
  imported (a module the file names is never imported: importing runs its code);
* that class is an ``nn.Module`` whose ``__new__`` and ``__setstate__`` are ``nn.Module``'s own
  (e3nn's generated modules load TorchScript stored in the file in their ``__setstate__``;
  ``DistributedDataParallel`` rebuilds distributed state; both are refused), or a value type: a
  NamedTuple, or one of e3nn's irreps classes, whose ``__new__`` only parses;
* the pickle never calls (REDUCE) an allow-listed class, nor an object it computed: checked by
  following the pickle's stack symbolically before anything is unpickled.
"""
from __future__ import annotations

import inspect
import pickletools
import sys

import torch

__all__ = ["check_global", "called_globals"]

# reviewed value types whose own __new__ only parses its argument (an irreps string or tuples)
_VALUE_TYPES = ("e3nn.o3._irreps.Irrep", "e3nn.o3._irreps.Irreps", "e3nn.o3._irreps._MulIr")


def _owner(cls: type, method: str) -> type | None:
    return next((c for c in cls.__mro__ if method in c.__dict__), None)


def check_global(name: str, prefixes: tuple[str, ...]) -> tuple[type | None, str | None]:
    """``(cls, None)`` when the global ``name`` may be allow-listed, else ``(None, why not)``."""
    if not name.startswith(prefixes):
        return None, f"globals outside {', '.join(p.rstrip('.') for p in prefixes)}"
    module, _, attr = name.rpartition(".")
    if module not in sys.modules:  # importing a module the file names would run that module's code
        return None, "globals of modules the model code does not import"
    obj = getattr(sys.modules[module], attr, None)
    if not (inspect.isclass(obj) and isinstance(obj, type)):
        return None, "functions or other objects that are not classes (the file could call them with its arguments)"
    if f"{obj.__module__}.{obj.__qualname__}" != name:
        return None, "aliases of classes defined elsewhere"
    if issubclass(obj, torch.nn.Module):
        if any(_owner(obj, method) not in (torch.nn.Module, object) for method in ("__new__", "__setstate__")):
            return None, ("module classes whose __new__ or __setstate__ is not torch.nn.Module's (e3nn's generated "
                          "modules load TorchScript stored in the file there)")
        return obj, None
    if issubclass(obj, tuple) and (hasattr(obj, "_fields") or name in _VALUE_TYPES):
        return obj, None
    return None, "classes that are neither torch.nn.Module nor a NamedTuple or e3nn irreps value"


def _pickle_bytes(path: str) -> bytes:
    with open(path, "rb") as fh, torch.serialization._open_zipfile_reader(fh) as reader:
        return reader.get_record("data.pkl")  # the record torch.load itself unpickles


def called_globals(path: str) -> set[str]:
    """Every global the pickle of a ``torch.save`` file calls (REDUCE); ``"<computed>"`` for a callable
    the pickle built itself. The stack is followed symbolically: nothing is unpickled."""
    mark = object()
    stack: list = []
    memo: dict = {}
    called: set[str] = set()
    for op, arg, _ in pickletools.genops(_pickle_bytes(path)):
        name = op.name
        if name == "GLOBAL":
            stack.append(arg.replace(" ", "."))
            continue
        if name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            memo[len(memo) if name == "MEMOIZE" else arg] = stack[-1]
            continue
        if name in ("GET", "BINGET", "LONG_BINGET", "DUP"):
            stack.append(stack[-1] if name == "DUP" else memo.get(arg))
            continue
        if name == "REDUCE":
            called.add(stack[-2] if isinstance(stack[-2], str) else "<computed>")
        before = op.stack_before
        if pickletools.markobject in before:  # pop through the topmost mark, then what lies below it
            while stack.pop() is not mark:
                pass
            below = before.index(pickletools.markobject)
            del stack[len(stack) - below:]
        else:
            del stack[len(stack) - len(before):]
        stack.extend(mark if item is pickletools.markobject else None for item in op.stack_after)
    return called
