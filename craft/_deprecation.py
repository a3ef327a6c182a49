"""Old names kept for a while: a renamed keyword argument or attribute still works, warns with a
DeprecationWarning naming the new name, and forwards to it."""
from __future__ import annotations

import functools
import warnings


def rename_kwargs(owner: str, kwargs: dict, renames: dict[str, str], stacklevel: int = 3) -> dict:
    """``kwargs`` with every deprecated key of ``renames`` (old -> new) moved to its new name."""
    for old, new in renames.items():
        if old in kwargs:
            if new in kwargs:
                raise TypeError(f"{owner}: pass {new} only ({old} is its deprecated name)")
            warnings.warn(f"{owner}: {old} is deprecated, use {new}", DeprecationWarning, stacklevel=stacklevel)
            kwargs[new] = kwargs.pop(old)
    return kwargs


def renamed(**renames: str):
    """Class decorator: ``@renamed(old="new")`` accepts ``old=`` in the constructor and reads or
    writes ``obj.old`` as ``obj.new``, each with a DeprecationWarning (put it above ``@dataclass``)."""

    def decorate(cls):
        init = cls.__init__

        @functools.wraps(init)
        def __init__(self, *args, **kwargs):
            init(self, *args, **rename_kwargs(cls.__name__, kwargs, renames))

        cls.__init__ = __init__
        for old, new in renames.items():
            setattr(cls, old, _alias(cls.__name__, old, new))
        return cls

    return decorate


def _alias(owner: str, old: str, new: str) -> property:
    message = f"{owner}.{old} is deprecated, use {new}"

    def get(self):
        warnings.warn(message, DeprecationWarning, stacklevel=2)
        return getattr(self, new)

    def set(self, value):
        warnings.warn(message, DeprecationWarning, stacklevel=2)
        setattr(self, new, value)

    return property(get, set, doc=f"Deprecated name of ``{new}``.")
