"""Plugin loading: one pluggy manager, fed from the ``sae_lens_ext`` entry-point group.

``SAE_LENS_EXT_LOAD_PLUGINS`` chooses which entry points load: unset loads
all of them, a comma-separated list loads only those names, and an empty
string loads none (built-ins included: they use the same entry points).
A plugin that fails to import or to register is skipped with a warning that
names it; it never breaks ``import sae_lens``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pluggy

from sae_lens_ext import hookspecs

if TYPE_CHECKING:
    from sae_lens_ext.architectures import Architecture
    from sae_lens_ext.loss_terms import LossTerm
    from sae_lens_ext.presets import Preset

ENTRY_POINT_GROUP = "sae_lens_ext"
LOAD_PLUGINS_ENV = "SAE_LENS_EXT_LOAD_PLUGINS"


class PluginWarning(UserWarning):
    """A plugin failed to load or to register; it was skipped."""


@dataclass
class PluginInfo:
    """What ``sae-lens plugins`` reports for one loaded plugin."""

    name: str
    distribution: str | None = None
    version: str | None = None
    architectures: list[str] = field(default_factory=list)
    loss_terms: list[str] = field(default_factory=list)
    presets: list[str] = field(default_factory=list)
    resampler: bool = False
    commands: list[str] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "architectures": self.architectures,
            "loss_terms": self.loss_terms,
            "presets": self.presets,
            "resampler": self.resampler,
            "commands": self.commands,
            "error": self.error,
        }


pm = pluggy.PluginManager(hookspecs.PROJECT)
pm.add_hookspecs(hookspecs)

_infos: dict[str, PluginInfo] = {}
_loaded = False
_architectures: dict[str, Architecture] | None = None
_loss_terms: dict[str, LossTerm] | None = None
_presets: dict[str, Preset] | None = None


def _warn(plugin: str, what: str, exc: BaseException) -> None:
    info = _infos.setdefault(plugin, PluginInfo(name=plugin))
    info.error = f"{what}: {type(exc).__name__}: {exc}"
    warnings.warn(
        f"sae-lens-ext plugin {plugin!r} skipped ({what}): {type(exc).__name__}: {exc}",
        PluginWarning,
        stacklevel=3,
    )


def _selected_names() -> set[str] | None:
    raw = os.environ.get(LOAD_PLUGINS_ENV)
    if raw is None:
        return None
    return {name.strip() for name in raw.split(",") if name.strip()}


def load_plugins() -> pluggy.PluginManager:
    """Import and register every selected entry point once; return the manager."""
    global _loaded
    if _loaded:
        return pm
    _loaded = True
    from importlib.metadata import entry_points

    selected = _selected_names()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if (selected is not None and ep.name not in selected) or ep.name in _infos:
            continue
        dist = getattr(ep, "dist", None)
        info = _infos[ep.name] = PluginInfo(
            name=ep.name,
            distribution=dist.name if dist else None,
            version=dist.version if dist else None,
        )
        try:
            pm.register(ep.load(), name=ep.name)
        except Exception as exc:
            _warn(ep.name, "import failed", exc)
            info.error = info.error or "import failed"
    return pm


def register_plugin(plugin: object, name: str) -> None:
    """Register an in-process plugin object (tests, notebooks) and refresh the registries."""
    global _architectures, _loss_terms, _presets
    load_plugins()
    pm.register(plugin, name=name)
    _infos.setdefault(name, PluginInfo(name=name))
    _architectures = _loss_terms = _presets = None


def add_plugin_commands(group: Any) -> None:
    """Let each plugin add commands to the click ``group``, one plugin at a time."""
    load_plugins()
    for impl in reversed(pm.hook.register_commands.get_hookimpls()):
        before = set(group.commands)
        try:
            impl.function(cli=group)
        except Exception as exc:
            _warn(impl.plugin_name, "register_commands failed", exc)
        info = _infos.setdefault(impl.plugin_name, PluginInfo(name=impl.plugin_name))
        info.commands.extend(sorted(set(group.commands) - before))


def _collect(hook_name: str, key: Callable[[Any], str], kind: str) -> dict[str, Any]:
    load_plugins()
    found: dict[str, Any] = {}
    current: list[str] = [""]

    def register(item: Any) -> None:
        name = key(item)
        if name in found:
            raise ValueError(f"{kind} {name!r} is already registered by another plugin")
        found[name] = item
        getattr(_infos.setdefault(current[0], PluginInfo(name=current[0])), kind).append(name)

    hook = getattr(pm.hook, hook_name)
    for impl in reversed(hook.get_hookimpls()):
        current[0] = impl.plugin_name
        try:
            impl.function(register=register)
        except ImportError as exc:
            circular = "circular import" in str(exc) or "partially initialized" in str(exc)
            hint = " (a module of it was being imported before sae_lens: import sae_lens first)"
            _warn(impl.plugin_name, f"{hook_name} failed" + (hint if circular else ""), exc)
        except Exception as exc:
            _warn(impl.plugin_name, f"{hook_name} failed", exc)
    return found


def architectures() -> dict[str, Architecture]:
    """Every architecture the loaded plugins register, by name."""
    global _architectures
    if _architectures is None:
        # Plugin SAE classes import sae_lens, whose import hook calls back into
        # this function: import it first so that the nested call does the work.
        import sae_lens  # noqa: F401

    if _architectures is None:
        _architectures = _collect("register_architectures", lambda a: a.name, "architectures")
    return _architectures


def loss_terms() -> dict[str, LossTerm]:
    """Every loss term the loaded plugins register, by name."""
    global _loss_terms
    if _loss_terms is None:
        _loss_terms = _collect("register_loss_terms", lambda t: t.name, "loss_terms")
    return _loss_terms


def presets() -> dict[str, Preset]:
    """Every preset the loaded plugins register, by ``architecture/name``."""
    global _presets
    if _presets is None:
        _presets = _collect("register_presets", lambda p: p.key, "presets")
    return _presets


def register_with_sae_lens() -> None:
    """Add every plugin architecture to ``sae_lens.registry``; safe to call repeatedly."""
    from sae_lens.registry import (
        SAE_CLASS_REGISTRY,
        SAE_TRAINING_CLASS_REGISTRY,
        register_sae_class,
        register_sae_training_class,
    )

    for name, arch in architectures().items():
        owner = _owner_of("architectures", name)
        try:
            _register_once(
                SAE_CLASS_REGISTRY, register_sae_class, name, arch.sae_class, arch.sae_config_class
            )
            if arch.training_class is not None:
                _register_once(
                    SAE_TRAINING_CLASS_REGISTRY,
                    register_sae_training_class,
                    name,
                    arch.training_class,
                    arch.training_config_class,
                )
        except Exception as exc:
            _warn(owner, f"registering architecture {name!r} failed", exc)


def _register_once(
    registry: dict[str, Any],
    register: Callable[..., None],
    name: str,
    cls: type[Any],
    cfg_cls: type[Any] | None,
) -> None:
    existing = registry.get(name)
    if existing is None:
        register(name, cls, cfg_cls)
    elif existing[0] is not cls:
        raise ValueError(
            f"SAE-Lens already has an architecture named {name!r} "
            f"({existing[0].__module__}.{existing[0].__name__}); choose another name"
        )


def _owner_of(kind: str, name: str) -> str:
    for info in _infos.values():
        if name in getattr(info, kind):
            return info.name
    return "?"


def plugin_infos() -> list[PluginInfo]:
    """Loaded plugins with what each provides (used by ``sae-lens plugins``)."""
    architectures()
    loss_terms()
    presets()
    for impl in pm.hook.resample_dead_latents.get_hookimpls():
        _infos.setdefault(impl.plugin_name, PluginInfo(name=impl.plugin_name)).resampler = True
    return sorted(_infos.values(), key=lambda i: i.name)
