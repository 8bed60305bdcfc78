"""The method registry: ``@register_method`` in ``methods/``, entry points, and plugin files.

A selection method is a function ``fn(pool, budget, ctx, **params)`` returning either a list of example IDs or a
:class:`selbench.select.Selection`. Third-party packages expose methods through the entry-point group
``selbench.methods``; a single file is loaded with ``--plugin path/to/file.py``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import logging
import pkgutil
import sys
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "selbench.methods"
FAMILIES = ("baseline", "indicator-based", "trainable-LLM", "strong-LLM", "small-model")
ASPECTS = ("quality", "diversity", "importance", "reference")


class RegistryError(ValueError):
    pass


@dataclass(frozen=True)
class MethodSpec:
    name: str
    fn: Callable[..., Any]
    family: str
    aspect: str
    description: str
    citation: str
    version: str = "1"
    reference: str = ""  # the reference implementation followed
    defaults: dict[str, Any] = field(default_factory=dict)
    full_pool: bool = False  # selects the whole pool; its budget is the pool size

    @property
    def source_hash(self) -> str:
        """Hash of the method's source file, so an edited method never reuses stale selections."""
        try:
            src = inspect.getsourcefile(self.fn)
            return hashlib.sha256(Path(src).read_bytes()).hexdigest()[:16] if src else ""
        except (TypeError, OSError):
            return ""

    @property
    def category(self) -> str:
        return f"{self.family} / {self.aspect}"


_REGISTRY: dict[str, MethodSpec] = {}
_LOADED = False


def register_method(name: str, *, family: str, aspect: str, description: str, citation: str,
                    version: str = "1", reference: str = "", full_pool: bool = False,
                    **defaults: Any) -> Callable:
    """Decorator: register ``fn`` as selection method ``name``. ``defaults`` are its default parameters."""
    if family not in FAMILIES:
        raise RegistryError(f"method {name!r}: family {family!r} is not one of {FAMILIES}")
    if aspect not in ASPECTS:
        raise RegistryError(f"method {name!r}: aspect {aspect!r} is not one of {ASPECTS}")

    def deco(fn: Callable) -> Callable:
        spec = MethodSpec(name, fn, family, aspect, description, citation, version, reference, dict(defaults),
                          full_pool)
        old = _REGISTRY.get(name)
        if old is not None and (old.fn.__module__, old.fn.__qualname__) != (fn.__module__, fn.__qualname__):
            raise RegistryError(f"method {name!r} is registered twice ({old.fn.__module__} and {fn.__module__})")
        _REGISTRY[name] = spec
        return fn

    return deco


def load_builtin_methods() -> None:
    from selbench import methods as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        if not mod.name.startswith("_"):
            importlib.import_module(f"{pkg.__name__}.{mod.name}")


def load_entry_point_methods() -> None:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()  # importing the module runs its @register_method decorators
        except Exception as e:
            log.error("entry point %s (%s) failed to load: %s", ep.name, ep.value, e)


def load_plugin_file(path: str | Path) -> None:
    path = Path(path).resolve()
    if not path.is_file():
        raise RegistryError(f"plugin file {path} does not exist")
    mod_name = f"selbench_plugin_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}_{path.stem}"
    if mod_name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[mod_name]
        raise RegistryError(f"plugin file {path} failed to import: {type(e).__name__}: {e}") from e


def load_all(plugins: list[str | Path] | tuple = ()) -> dict[str, MethodSpec]:
    global _LOADED
    if not _LOADED:
        load_builtin_methods()
        load_entry_point_methods()
        _LOADED = True
    for p in plugins:
        load_plugin_file(p)
    return dict(_REGISTRY)


def get_method(name: str) -> MethodSpec:
    if name not in _REGISTRY:
        load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise RegistryError(f"unknown selection method {name!r}; known: {sorted(_REGISTRY)} "
                            "(plugins load with --plugin FILE or the 'selbench.methods' entry-point group)") from None
