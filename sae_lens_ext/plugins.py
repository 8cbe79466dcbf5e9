"""Plugins: one pluggy manager, fed from the ``sae_lens_ext`` entry-point group.

Loading: ``SAE_LENS_EXT_LOAD_PLUGINS`` chooses which entry points load (unset: all of them;
a comma-separated list: only those names; an empty string: none, built-ins included, since
they use the same entry points). After loading, ``pm.check_pending()`` finds hook
implementations that match no hook (a misspelt name): their plugin is skipped, named.

Calling: every hook goes through pluggy. :func:`call_each` and :func:`call_first` call
the implementing plugins one at a time, each through ``pm.subset_hook_caller`` (every
other implementation left out, hookwrappers kept), so that one failure policy holds for
every hook: **a plugin that raises is named in one** :class:`PluginWarning` **and skipped;
the others go on.** Registrations (``register_architectures``, ``register_loss_terms``)
hand each plugin a ``register`` bound to it, so each name knows its owner.

Name collisions (two plugins registering the same architecture or loss term name) do not
depend on load order: a built-in plugin (of the ``sae-lens-ext`` distribution) keeps its
name; between two other plugins the name is refused for both, and using it is an error
naming both (load one with ``SAE_LENS_EXT_LOAD_PLUGINS``). Each warning prints once.

Lookups: what the plugins register, by name (:func:`architectures`, :func:`loss_terms`,
:func:`presets`, :func:`get_preset`), who provides it (:func:`owner_of`) and why a name is
missing (:func:`refusal`, :func:`unknown_loss_term`). Layering: this registry sits above
the types it validates (``architectures.py``, ``training/loss_terms.py``, ``presets.py`` import
nothing of it) and below what uses it (``training/sae.py``, ``training/after_step.py``,
``registration.py``); ``tests/test_layout.py`` fails on an import circle.
"""

from __future__ import annotations

import difflib
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pluggy

from sae_lens_ext import hookspecs

if TYPE_CHECKING:
    from sae_lens_ext.architectures import Architecture
    from sae_lens_ext.presets import Preset
    from sae_lens_ext.training.loss_terms import LossTerm

ENTRY_POINT_GROUP = "sae_lens_ext"
LOAD_PLUGINS_ENV = "SAE_LENS_EXT_LOAD_PLUGINS"
#: The distribution whose plugins are built in (they win name collisions).
BUILTIN_DISTRIBUTION = "sae-lens-ext"


class PluginWarning(UserWarning):
    """A plugin, or one thing it provides, was skipped; the message names the plugin."""


class PluginError(Exception):
    """An error a plugin caused while it was used (a loss term that raised or returned a bad
    value, ...). The message names the plugin and the hook or loss term.

    Attributes:
        plugin: the plugin's entry-point name (``"?"`` if unknown).
        where: what of it failed, e.g. ``"loss term 'my_term'"``.
    """

    def __init__(self, message: str, plugin: str = "?", where: str = "") -> None:
        super().__init__(message)
        self.plugin, self.where = plugin, where


class LossTermNotFinite(PluginError, FloatingPointError):
    """A plugin's loss term gave NaN or inf (raised by the training guards)."""


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
    conflicts: list[str] = field(default_factory=list)
    """Names this plugin registered that another plugin's registration overrides or refuses."""

    @property
    def builtin(self) -> bool:
        """Whether the plugin ships with sae-lens-ext itself (built-ins win name collisions)."""
        return self.distribution == BUILTIN_DISTRIBUTION

    def label(self) -> str:
        """``plugin 'name' (distribution version)``: how messages name the plugin."""
        if self.distribution is None:
            return f"plugin {self.name!r} (registered in-process)"
        return f"plugin {self.name!r} ({self.distribution} {self.version})"

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
            "conflicts": self.conflicts,
        }


pm = pluggy.PluginManager(hookspecs.PROJECT)
pm.add_hookspecs(hookspecs)

_infos: dict[str, PluginInfo] = {}
_loaded = False
_warned: set[str] = set()
_architectures: dict[str, Architecture] | None = None
_loss_terms: dict[str, LossTerm] | None = None
_presets: dict[str, Preset] | None = None
#: (kind, name) -> the plugin that provides it / the plugins whose collision refused it
_owners: dict[tuple[str, str], PluginInfo] = {}
_refused: dict[tuple[str, str], list[PluginInfo]] = {}

_KIND_LABEL = {"architectures": "architecture", "loss_terms": "loss term", "presets": "preset"}


def warn_once(message: str) -> None:
    """Issue ``message`` as a :class:`PluginWarning`, once per process."""
    if message in _warned:
        return
    _warned.add(message)
    warnings.warn(message, PluginWarning, stacklevel=3)


def info(plugin_name: str) -> PluginInfo:
    """The :class:`PluginInfo` of a registered plugin (created on first use)."""
    return _infos.setdefault(plugin_name, PluginInfo(name=plugin_name))


def _skip(plugin: str, what: str, exc: BaseException) -> None:
    """The failure policy: name the plugin and what failed, keep going."""
    plugin_info = info(plugin)
    detail = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    plugin_info.error = plugin_info.error or f"{what}: {detail}"
    warn_once(f"sae-lens-ext {plugin_info.label()} skipped ({what}): {detail}")


def _selected_names() -> set[str] | None:
    raw = os.environ.get(LOAD_PLUGINS_ENV)
    if raw is None:
        return None
    return {name.strip() for name in raw.split(",") if name.strip()}


# --- loading -----------------------------------------------------------------------------


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
        _infos[ep.name] = PluginInfo(
            name=ep.name,
            distribution=dist.name if dist else None,
            version=dist.version if dist else None,
        )
        try:
            module = ep.load()
        except Exception as exc:
            _skip(ep.name, "import failed", exc)
            continue
        try:
            pm.register(module, name=ep.name)
        except pluggy.PluginValidationError as exc:
            _skip(ep.name, "invalid hook implementation", exc)
    _check_pending()
    return pm


def _check_pending() -> None:
    """``pm.check_pending()``; a plugin implementing a hook that does not exist (a misspelt
    name) is unregistered and named, with the closest hook name."""
    while True:
        try:
            pm.check_pending()
            return
        except pluggy.PluginValidationError as exc:
            name = pm.get_name(exc.plugin) or "?"
            unknown = [c.name for c in pm.get_hookcallers(exc.plugin) or [] if not c.has_spec()]
            pm.unregister(exc.plugin)
            hints = []
            for hook in unknown:
                close = difflib.get_close_matches(hook, _hook_names(), n=1)
                hints.append(f"{hook!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            _skip(
                name,
                "unknown hook",
                ValueError(f"{', '.join(hints)} is not a hook of sae-lens-ext"),
            )


def _hook_names() -> list[str]:
    return [name for name in vars(pm.hook) if getattr(pm.hook, name).has_spec()]


def register_plugin(plugin: object, name: str) -> None:
    """Register an in-process plugin object (tests, notebooks) and refresh the registries."""
    global _architectures, _loss_terms, _presets
    load_plugins()
    pm.register(plugin, name=name)
    info(name)
    _check_pending()
    _architectures = _loss_terms = _presets = None


# --- calling -------------------------------------------------------------------------------


def _implementers(hook_name: str) -> list[Any]:
    """The hook's implementations that are not wrappers, in pluggy's call order."""
    impls = getattr(pm.hook, hook_name).get_hookimpls()
    return [i for i in reversed(impls) if not (i.hookwrapper or i.wrapper)]


def _each(
    hook_name: str,
    make_kwargs: Callable[[str], dict[str, Any]],
    on_failure: Callable[[str], None] | None = None,
) -> Iterator[tuple[str, Any]]:
    """``(plugin name, its answer)`` for each implementing plugin, called one at a time
    through pluggy (``subset_hook_caller``: the other implementations left out, every
    hookwrapper kept) with ``make_kwargs(plugin name)``. The failure policy: a plugin that
    raises is named in a warning (``on_failure(plugin)`` undoes what it did) and skipped."""
    load_plugins()
    impls = _implementers(hook_name)
    spec = getattr(pm.hook, hook_name).spec
    firstresult = bool(spec and spec.opts.get("firstresult"))
    for impl in impls:
        others = [other.plugin for other in impls if other is not impl]
        try:
            caller = pm.subset_hook_caller(hook_name, remove_plugins=others)
            answer = caller(**make_kwargs(impl.plugin_name))
        except Exception as exc:
            if on_failure is not None:
                on_failure(impl.plugin_name)
            circular = isinstance(exc, ImportError) and "partially initialized" in str(exc)
            hint = " (a module of it was imported before sae_lens: import sae_lens first)"
            _skip(impl.plugin_name, f"{hook_name} failed" + (hint if circular else ""), exc)
            continue
        yield impl.plugin_name, answer if firstresult else (answer[0] if answer else None)


def call_each(hook_name: str, **kwargs: Any) -> list[tuple[str, Any]]:
    """Call hook ``hook_name`` on every plugin, one at a time: ``[(plugin, answer), ...]``
    of those that did not raise (a plugin that raised is named in a :class:`PluginWarning`
    and left out; an answer of ``None`` is included)."""
    return list(_each(hook_name, lambda _: kwargs))


def call_first(hook_name: str, **kwargs: Any) -> Any:
    """The first answer that is not ``None`` of a first-result hook, asking the plugins in
    pluggy's order (``tryfirst``/``trylast`` honoured); a plugin that raises is named and
    the next one is asked."""
    for _, answer in _each(hook_name, lambda _: kwargs):
        if answer is not None:
            return answer
    return None


def call_each_list(hook_name: str, item_type: type, **kwargs: Any) -> list[Any]:
    """The items of every plugin's list answer (``None``: nothing), concatenated; a plugin
    that raises, or answers anything but a list of ``item_type``, is named and skipped."""
    items: list[Any] = []
    for plugin, answer in _each(hook_name, lambda _: kwargs):
        if answer is None:
            continue
        if not isinstance(answer, (list, tuple)) or not all(
            isinstance(item, item_type) for item in answer
        ):
            got = type(answer).__name__
            expected = f"a list of {item_type.__name__} or None"
            _skip(plugin, f"{hook_name} failed", TypeError(f"returned {got}; expected {expected}"))
            continue
        items.extend(answer)
    return items


def add_plugin_commands(group: Any) -> None:
    """Let each plugin add commands to the click ``group`` (``register_commands``)."""
    before: set[str] = set()

    def kwargs(plugin: str) -> dict[str, Any]:
        before.clear()
        before.update(group.commands)
        return {"cli": group}

    def undo(plugin: str) -> None:
        for name in set(group.commands) - before:  # nothing half-added stays
            group.commands.pop(name)

    for plugin, _ in _each("register_commands", kwargs, undo):
        info(plugin).commands.extend(sorted(set(group.commands) - before))


# --- registrations ---------------------------------------------------------------------------


def _collect(
    hook_name: str,
    kind: str,
    item_type: type,
    key: Callable[[Any], str],
    taken: Callable[[str, list[Any]], str | None] = lambda name, items: None,
) -> dict[str, Any]:
    """Every plugin's registrations through ``hook_name``, one plugin at a time, each with a
    ``register`` bound to it; then the collision rule (see the module docstring)."""
    registered: dict[str, list[Any]] = {}

    def kwargs(plugin: str) -> dict[str, Any]:
        items = registered[plugin] = []

        def register(item: Any) -> None:
            if not isinstance(item, item_type):
                raise TypeError(f"register() takes a {item_type.__name__}, got {item!r}")
            if any(key(other) == key(item) for other in items):
                raise ValueError(f"{_KIND_LABEL[kind]} {key(item)!r} is registered twice")
            items.append(item)

        return {"register": register}

    succeeded = [plugin for plugin, _ in _each(hook_name, kwargs)]
    return _resolve(kind, key, [(info(p), registered[p]) for p in succeeded], taken)


def _resolve(
    kind: str,
    key: Callable[[Any], str],
    by_plugin: list[tuple[PluginInfo, list[Any]]],
    taken: Callable[[str, list[Any]], str | None],
) -> dict[str, Any]:
    """Merge registrations: a name one plugin registers is its own; on a collision a
    built-in plugin wins, and between other plugins the name is refused for all of them.
    A name that ``taken(name, items)`` says SAE-Lens itself uses is refused (named)."""
    label = _KIND_LABEL[kind]
    for plugin_info in _infos.values():  # a fresh collection (after register_plugin)
        setattr(plugin_info, kind, [])
        plugin_info.conflicts = [c for c in plugin_info.conflicts if not c.startswith(label)]
    for done in [k for k in [*_owners, *_refused] if k[0] == kind]:
        _owners.pop(done, None)
        _refused.pop(done, None)
    claims: dict[str, list[tuple[PluginInfo, Any]]] = {}
    for owner, items in by_plugin:
        for item in items:
            claims.setdefault(key(item), []).append((owner, item))
    found: dict[str, Any] = {}
    for name, claimants in claims.items():
        claimants.sort(key=lambda claim: claim[0].name)  # messages independent of load order
        upstream = taken(name, [item for _, item in claimants])
        if upstream is not None:
            for owner, _ in claimants:
                owner.conflicts.append(f"{label} {name!r}: SAE-Lens's own is kept")
                warn_once(
                    f"sae-lens-ext: {owner.label()} registers {label} {name!r}, which is "
                    f"{upstream}; SAE-Lens's is kept: rename the plugin's {label}"
                )
            continue
        builtins = [c for c in claimants if c[0].builtin]
        winners = claimants if len(claimants) == 1 else builtins
        if len(winners) != 1:
            owners = [owner for owner, _ in claimants]
            _refused[(kind, name)] = owners
            for owner in owners:
                owner.conflicts.append(f"{label} {name!r}: refused (several plugins register it)")
            warn_once(f"sae-lens-ext: {refusal(kind, name)}")
            continue
        owner, item = winners[0]
        found[name] = item
        _owners[(kind, name)] = owner
        getattr(owner, kind).append(name)
        for loser, _ in claimants:
            if loser is not owner:
                loser.conflicts.append(f"{label} {name!r}: the built-in {owner.name!r} keeps it")
                warn_once(
                    f"sae-lens-ext: {loser.label()} also registers {label} {name!r}, which the "
                    f"built-in {owner.label()} keeps (to use the other, leave {owner.name} "
                    f"out of {LOAD_PLUGINS_ENV})"
                )
    return found


def refusal(kind: str, name: str) -> str | None:
    """Why ``name`` (an architecture or loss term; ``kind`` is ``"architectures"`` or
    ``"loss_terms"``) is not available although plugins register it, else ``None``."""
    owners = _refused.get((kind, name))
    if not owners:
        return None
    listed = " and ".join(o.label() for o in owners)
    others = {o.name for o in owners[1:]}
    keep = ",".join(sorted(n for n, _ in pm.list_name_plugin() if n not in others))
    return (
        f"{_KIND_LABEL[kind]} {name!r} is registered by {listed}, so none of them is used; "
        f"load only one of them, e.g. {LOAD_PLUGINS_ENV}={keep}"
    )


def unknown_loss_term(name: str, field_name: str = "loss_terms") -> ValueError:
    """The error for an enabled loss term ``name`` that no plugin provides: why it is
    refused (two plugins register it), or the registered names."""
    why = refusal("loss_terms", name)
    if why is not None:
        return ValueError(f"{field_name}: {why}")
    known = ", ".join(sorted(loss_terms())) or "none"
    return ValueError(f"{field_name}: unknown loss term {name!r}; registered: {known}")


def owner_of(kind: str, name: str) -> PluginInfo | None:
    """The plugin that provides architecture or loss term ``name`` (``kind``:
    ``"architectures"`` or ``"loss_terms"``), or ``None``."""
    if kind == "architectures":
        architectures()
    else:
        loss_terms()
    return _owners.get((kind, name))


def architectures() -> dict[str, Architecture]:
    """Every architecture the loaded plugins register, by name."""
    global _architectures
    if _architectures is None:
        # Plugin SAE classes import sae_lens, whose import hook calls back into
        # this function: import it first so that the nested call does the work.
        import sae_lens  # noqa: F401

    if _architectures is None:
        from sae_lens_ext.architectures import Architecture

        _architectures = _collect(
            "register_architectures", "architectures", Architecture, lambda a: a.name, _upstream
        )
    return _architectures


def _upstream(name: str, claimed: list[Any]) -> str | None:
    """What SAE-Lens registers as ``name`` itself (not a class a plugin claims), or None."""
    from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY

    ours = {cls for arch in claimed for cls in (arch.sae_class, arch.training_class)}
    for registry in (SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY):
        cls = registry.get(name, (None,))[0]
        if cls is not None and cls not in ours:
            return f"SAE-Lens's own ({cls.__module__}.{cls.__name__})"
    return None


def loss_terms() -> dict[str, LossTerm]:
    """Every loss term the loaded plugins register, by name."""
    global _loss_terms
    if _loss_terms is None:
        from sae_lens_ext.training.loss_terms import LossTerm

        _loss_terms = _collect("register_loss_terms", "loss_terms", LossTerm, lambda t: t.name)
    return _loss_terms


def presets() -> dict[str, Preset]:
    """Every preset the loaded plugins register, by ``architecture/name``."""
    global _presets
    if _presets is None:
        from sae_lens_ext.presets import Preset

        _presets = _collect("register_presets", "presets", Preset, lambda p: p.key)
    return _presets


def presets_of(architecture: str) -> dict[str, Preset]:
    """The presets the loaded plugins register for ``architecture``, by name."""
    return {p.name: p for p in presets().values() if p.architecture == architecture}


def get_preset(architecture: str, name: str, flag: str = "--preset") -> Preset:
    """The preset ``name`` of ``architecture``; a :class:`~sae_lens_ext.presets.PresetError`
    naming the fix if there is none."""
    from sae_lens_ext.presets import PresetError

    own = presets_of(architecture)
    if name in own:
        return own[name]
    elsewhere = sorted(p.architecture for p in presets().values() if p.name == name)
    if elsewhere:
        raise PresetError(
            f"{flag} {name} is a preset of {', '.join(elsewhere)}, not of {architecture}; "
            f"add --architecture {elsewhere[0]}"
        )
    listing = ", ".join(own) if own else "none"
    raise PresetError(f"{flag} {name}: {architecture} has no such preset; its presets: {listing}")


def plugin_infos() -> list[PluginInfo]:
    """Loaded plugins with what each provides (used by ``sae-lens plugins``)."""
    architectures()
    loss_terms()
    presets()
    for impl in _implementers("resample_dead_latents"):
        info(impl.plugin_name).resampler = True
    return sorted(_infos.values(), key=lambda i: i.name)
