"""Training-only twins: every SAE-Lens training architecture, with plugin loss terms.

For each training architecture SAE-Lens itself registers (``standard``, ``topk``,
``batchtopk``, ``jumprelu``, ``gated``, ``matryoshka_batchtopk``, ... whatever the
installed SAE-Lens has), a twin named
``<name>_with_loss_terms`` is registered in ``sae_lens.registry``'s *training* registry
only. It is the upstream class with :class:`~sae_lens_ext.training.sae.LossTermsMixin` in
front and the upstream config with :class:`~sae_lens_ext.training.sae.LossTermTrainingSAEConfig`
in front: every upstream field keeps its name and meaning, and ``loss_terms``,
``loss_term_options``, ``resample_dead_every`` and ``max_silent_steps`` are added.

Loss terms only shape training: the twin saves exactly what the upstream architecture
saves (its ``get_inference_config_class``, its weights), so ``cfg.json`` names the
upstream architecture and ``SAE.load_from_disk`` gives upstream's inference class, with
or without this package installed. The twin's name is kept in the metadata
(``training_architecture``), as upstream keeps ``batchtopk`` when it saves a JumpReLU SAE.

Upstream's own names are untouched: ``--architecture standard`` trains exactly what it
trains without this package. ``sae-lens train`` and ``sae-lens demo`` switch to the twin
themselves when a loss-term setting is given with an upstream architecture
(:func:`route_to_twin`).
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

#: ``<upstream name><TWIN_SUFFIX>`` is the twin's architecture name.
TWIN_SUFFIX = "_with_loss_terms"
#: The config fields a twin adds to its upstream config (``LossTermTrainingSAEConfig``'s).
TWIN_FIELDS = ("loss_terms", "loss_term_options", "resample_dead_every", "max_silent_steps")


class LossTermTwin:
    """Marks a training class or config class made by :func:`make_twin`."""

    upstream_architecture: str


def twin_name(architecture: str) -> str:
    """The name of the loss-term twin of SAE-Lens's training architecture ``architecture``
    (``standard`` -> ``standard_with_loss_terms``)."""
    return architecture + TWIN_SUFFIX


def make_twin(
    architecture: str, sae_class: type[Any], config_class: type[Any]
) -> tuple[type[Any], type[Any]]:
    """The twin of an SAE-Lens training architecture: ``(training class, config class)``.

    The classes live in this module's namespace (``sae_lens_ext.training.twins.<Name>``), so they
    pickle by name like any other class."""
    from sae_lens.registry import get_sae_class
    from sae_lens.saes.sae import SAEConfig, TrainingSAEConfig

    from sae_lens_ext.training.sae import LossTermsMixin, LossTermTrainingSAEConfig

    name = twin_name(architecture)
    own_inference_config = (
        config_class.get_inference_config_class is TrainingSAEConfig.get_inference_config_class
    )

    def architecture_name(cls: type[Any]) -> str:
        return name

    def get_inference_config_class(self: Any) -> type[SAEConfig]:
        """What the upstream architecture saves (loss terms are training-only)."""
        if own_inference_config:
            return get_sae_class(architecture)[1]
        return config_class.get_inference_config_class(self)

    config_namespace = {
        "architecture": classmethod(architecture_name),
        "get_inference_config_class": get_inference_config_class,
        "upstream_architecture": architecture,
        "__module__": __name__,
        "__doc__": f"Training config of ``{architecture}`` (SAE-Lens) with plugin loss terms.",
    }
    config_name = f"{config_class.__name__}WithLossTerms"
    twin_config: type[Any] = dataclasses.dataclass(kw_only=True)(
        type(config_name, (LossTermTrainingSAEConfig, config_class, LossTermTwin), config_namespace)
    )
    sae_name = f"{sae_class.__name__}WithLossTerms"
    twin_sae = type(
        sae_name,
        (LossTermsMixin, sae_class, LossTermTwin),
        {
            "upstream_architecture": architecture,
            "__module__": __name__,
            "__doc__": f"SAE-Lens's ``{architecture}`` training SAE with plugin loss terms.",
        },
    )
    module = sys.modules[__name__]
    setattr(module, config_name, twin_config)
    setattr(module, sae_name, twin_sae)
    return twin_sae, twin_config


def register_twins() -> list[str]:
    """Register the twin of every training architecture of SAE-Lens itself (idempotent);
    return the twins' names. A plugin architecture takes loss terms by deriving from
    ``LossTermTrainingSAE`` or mixing in ``LossTermsMixin``, never through a twin."""
    from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY, register_sae_training_class

    from sae_lens_ext.training.sae import LossTermsMixin

    names = []
    for architecture, (sae_class, config_class) in list(SAE_TRAINING_CLASS_REGISTRY.items()):
        if sae_class.__module__.split(".")[0] != "sae_lens" or issubclass(
            sae_class, (LossTermsMixin, LossTermTwin)
        ):
            continue  # a plugin's own class takes loss terms by deriving from the API's
        name = twin_name(architecture)
        existing = SAE_TRAINING_CLASS_REGISTRY.get(name)
        if existing is None:
            register_sae_training_class(name, *make_twin(architecture, sae_class, config_class))
        elif not issubclass(existing[0], LossTermTwin):
            raise ValueError(
                f"SAE-Lens already has a training architecture named {name!r} "
                f"({existing[0].__module__}.{existing[0].__name__}); the loss-term twin of "
                f"{architecture!r} cannot be registered"
            )
        names.append(name)
    return names


def route_to_twin(architecture: str, fields: set[str]) -> str:
    """The architecture to train when the user gives ``architecture`` and the config
    ``fields``: its twin if a loss-term field is given that the architecture's own config
    lacks (upstream's ``standard`` with ``loss_terms``), else ``architecture`` itself."""
    from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY

    wanted = fields & set(TWIN_FIELDS)
    if not wanted or architecture not in SAE_TRAINING_CLASS_REGISTRY:
        return architecture
    own = {f.name for f in dataclasses.fields(SAE_TRAINING_CLASS_REGISTRY[architecture][1])}
    twin = twin_name(architecture)
    if wanted <= own or twin not in SAE_TRAINING_CLASS_REGISTRY:
        return architecture
    return twin
