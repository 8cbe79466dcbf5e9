"""What a plugin registers to add an SAE architecture to SAE-Lens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Architecture:
    """An SAE architecture: SAE-Lens's inference class and, optionally, its training class.

    ``name`` must equal ``sae_config_class.architecture()`` (and the training
    config's), since that is the key SAE-Lens writes into ``cfg.json`` and looks
    up when loading.
    """

    name: str
    sae_class: type[Any]
    sae_config_class: type[Any]
    training_class: type[Any] | None = None
    training_config_class: type[Any] | None = None
    description: str = ""

    def __post_init__(self) -> None:
        for cls in (self.sae_config_class, self.training_config_class):
            if cls is not None and cls.architecture() != self.name:
                raise ValueError(
                    f"Architecture {self.name!r}: {cls.__name__}.architecture() returns "
                    f"{cls.architecture()!r}; make them equal"
                )
        if (self.training_class is None) != (self.training_config_class is None):
            raise ValueError(
                f"Architecture {self.name!r}: give both training_class and "
                "training_config_class, or neither"
            )
