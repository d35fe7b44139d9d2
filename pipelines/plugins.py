"""User plugins: modules that register their own tasks, model families, sources or plots.

Why a config key (``plugins:``) rather than "import it yourself": registries live per process, and a
sparkzoo job runs in many (the driver, Spark's Python workers, every Horovod rank, a scorer's workers).
Naming the modules in the experiment makes each of those processes import them before it looks a name
up, with no edit to sparkzoo. An entry is an importable module name (``my_company.zoo``: what a cluster
installs) or a path to a ``.py`` file (handy on one machine and in tests).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from types import ModuleType

from .errors import ConfigError

PATH_PREFIX = "sparkzoo_plugin_"   # module name given to a plugin loaded from a file path


def load(entries: list[str] | tuple[str, ...], where: str = "plugins") -> list[ModuleType]:
    """Import every plugin once per process (a second call is a no-op), naming the bad entry on failure."""
    return [_load_one(entry, where) for entry in entries]


def module_file(entry: str) -> str | None:
    """The source file of a loaded plugin (the logged model carries it), or None for a package."""
    module = sys.modules.get(_name(entry))
    path = getattr(module, "__file__", None)
    return path if path and path.endswith(".py") else None


def _name(entry: str) -> str:
    if entry.endswith(".py"):
        stem = os.path.splitext(os.path.basename(entry))[0]
        return PATH_PREFIX + "".join(c if c.isalnum() else "_" for c in stem)
    return entry


def _load_one(entry: str, where: str) -> ModuleType:
    name = _name(entry)
    if name in sys.modules:
        return sys.modules[name]
    if entry.endswith(".py"):
        path = os.path.abspath(entry)
        for module in list(sys.modules.values()):   # already imported under its own name (a test module)
            if getattr(module, "__file__", None) and os.path.abspath(module.__file__) == path:
                sys.modules[name] = module
                return module
        if not os.path.isfile(path):
            raise ConfigError(f"plugin file {entry} in {where} does not exist")
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[name]
            raise ConfigError(f"plugin {entry} in {where} failed to import: {type(exc).__name__}: {exc}") from None
        return module
    try:
        return importlib.import_module(entry)
    except ImportError as exc:
        raise ConfigError(f"plugin module '{entry}' in {where} cannot be imported: {exc}; install it on the "
                          f"driver and the executors, or give a path to a .py file") from None
