"""The method registry: ``@register_method`` in ``methods/``, entry points, and plugin files.

A selection method is a function ``fn(pool, budget, ctx, **params)`` returning either a list of example IDs or a
:class:`selbench.select.Selection`. Its parameters and their defaults are the function's keyword parameters (one
place); :func:`validate_params` checks a protocol's parameters against them before any work runs. Third-party packages expose methods through the entry-point group
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
FAMILIES = ("baseline", "control", "indicator-based", "trainable-LLM", "strong-LLM", "small-model")
ASPECTS = ("quality", "diversity", "importance", "reference", "planted-harm", "planted-gain")


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
    # Whether the method reads the response, as a bool or a function of its merged parameters. One that does not
    # also ranks the pool's untrainable (empty-response) rows; the harness keeps them out of its selection
    # (selbench.data, selbench.select). Such a method must return its IDs in its own priority order.
    needs_output: bool | Callable[[dict[str, Any]], bool] = True
    # Asks the protocol's LLM judge: its selection depends on the judge, whose identity then joins the selection's
    # cache key (selbench.select.cached_selection).
    uses_judge: bool = False

    def reads_output(self, params: dict[str, Any]) -> bool:
        return bool(self.needs_output({**self.defaults, **params}) if callable(self.needs_output)
                    else self.needs_output)

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


def signature_defaults(fn: Callable) -> dict[str, Any]:
    """The method's parameters after ``(pool, budget, ctx)`` with their defaults (``inspect.Parameter.empty`` for
    a required one)."""
    params = list(inspect.signature(fn).parameters.values())[3:]
    return {p.name: p.default for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def register_method(name: str, *, family: str, aspect: str, description: str, citation: str,
                    version: str = "1", reference: str = "", full_pool: bool = False,
                    needs_output: bool | Callable[[dict[str, Any]], bool] = True,
                    uses_judge: bool = False) -> Callable:
    """Decorator: register ``fn(pool, budget, ctx, **params)`` as selection method ``name``."""
    if family not in FAMILIES:
        raise RegistryError(f"method {name!r}: family {family!r} is not one of {FAMILIES}")
    if aspect not in ASPECTS:
        raise RegistryError(f"method {name!r}: aspect {aspect!r} is not one of {ASPECTS}")

    def deco(fn: Callable) -> Callable:
        if len(inspect.signature(fn).parameters) < 3:
            raise RegistryError(f"method {name!r}: the function must take (pool, budget, ctx, **params)")
        defaults = {k: v for k, v in signature_defaults(fn).items() if v is not inspect.Parameter.empty}
        spec = MethodSpec(name, fn, family, aspect, description, citation, version, reference, defaults, full_pool,
                          needs_output, uses_judge)
        old = _REGISTRY.get(name)
        if old is not None and (old.fn.__module__, old.fn.__qualname__) != (fn.__module__, fn.__qualname__):
            raise RegistryError(f"method {name!r} is registered twice ({old.fn.__module__} and {fn.__module__})")
        _REGISTRY[name] = spec
        return fn

    return deco


def validate_params(spec: MethodSpec, params: dict[str, Any], where: str = "") -> None:
    """Unknown, missing or mistyped parameters fail here, naming the method and the parameter."""
    accepted = signature_defaults(spec.fn)
    takes_any = any(p.kind == p.VAR_KEYWORD for p in inspect.signature(spec.fn).parameters.values())
    at = f"{where}: " if where else ""
    for k, v in params.items():
        if k not in accepted:
            if takes_any:
                continue
            raise RegistryError(f"{at}method {spec.name!r} has no parameter {k!r} (it takes: "
                                f"{', '.join(accepted) or 'none'})")
        default = accepted[k]
        if default is inspect.Parameter.empty or default is None or v is None:
            continue
        expected = (int, float) if type(default) is float else type(default)
        if not isinstance(v, expected) or (isinstance(v, bool) and type(default) is not bool):
            raise RegistryError(f"{at}method {spec.name!r}: parameter {k!r} must be "
                                f"{type(default).__name__} like its default {default!r}, got {v!r}")
    missing = [k for k, d in accepted.items() if d is inspect.Parameter.empty and k not in params]
    if missing:
        raise RegistryError(f"{at}method {spec.name!r} needs parameter(s) {missing}")


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
