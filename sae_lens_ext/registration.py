"""Registration with SAE-Lens: plugin architectures and loss-term twins in ``sae_lens.registry``.

Above the plugin registry (:mod:`sae_lens_ext.plugins`, which says what the plugins register)
and the twins (:mod:`sae_lens_ext.training.twins`, which build them): the start-up hook
(``_autoload.py``) calls :func:`register_with_sae_lens` right after ``sae_lens`` is imported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sae_lens_ext.plugins import architectures, owner_of, warn_once
from sae_lens_ext.training.twins import register_twins


def register_with_sae_lens() -> None:
    """Add every plugin architecture, and the loss-term twin of every training architecture
    (:mod:`sae_lens_ext.training.twins`), to ``sae_lens.registry``; safe to call repeatedly.
    SAE-Lens's own architectures are never replaced: a plugin architecture of the same
    name is skipped, named once."""
    from sae_lens.registry import (
        SAE_CLASS_REGISTRY,
        SAE_TRAINING_CLASS_REGISTRY,
        register_sae_class,
        register_sae_training_class,
    )

    for name, arch in architectures().items():
        owner = owner_of("architectures", name)
        assert owner is not None  # every collected architecture has its plugin
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
            warn_once(
                f"sae-lens-ext: {owner.label()}: architecture {name!r} skipped: "
                f"{' '.join(str(exc).split())}"
            )
    # every training architecture without loss terms gets its loss-term twin (after the
    # plugins' own, so that a plugin built on an upstream class gets one too)
    register_twins()


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
            f"({existing[0].__module__}.{existing[0].__name__}), which is kept; rename "
            "the plugin's architecture"
        )
