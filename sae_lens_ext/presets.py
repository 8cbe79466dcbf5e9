"""Named presets: settings of an architecture's training config under a name.

A plugin registers them through the ``register_presets`` hook::

    @hookimpl
    def register_presets(register):
        register(Preset("log-run-5", "my_arch", {"adaptive_l1": True}, "what it is"))

``sae-lens train --preset NAME`` and ``sae-lens demo --preset NAME`` start from a preset of
the chosen ``--architecture`` (what the user sets besides wins), as does a sweep variant with
``preset: NAME``; ``sae-lens train --architecture ARCH --help-options`` lists them.
SAE-Lens's own runner takes no ``--preset``: give it the preset's flags
(:meth:`Preset.flags`, printed in that listing). The registered presets are looked up
through the plugin registry (:func:`sae_lens_ext.plugins.get_preset`,
:func:`~sae_lens_ext.plugins.presets_of`), which imports this module, never the reverse.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]*$")


class PresetError(ValueError):
    """An unknown preset, or one of another architecture (the message names the fix)."""


@dataclass(frozen=True, eq=False)
class Preset:
    """Training-config settings of ``architecture`` under ``name``.

    Attributes:
        name: lower-case words joined by ``-`` (``log-run-5``).
        architecture: the architecture whose training config has every key of ``settings``.
        settings: config field -> value, applied before the user's own settings.
        description: one line: what the preset is.
        measured: one line: what it measured, and where (shown in listings).
    """

    name: str
    architecture: str
    settings: Mapping[str, Any]
    description: str = ""
    measured: str = ""

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"preset name {self.name!r}: use lower-case words joined by '-'")
        unset = [k for k, v in self.settings.items() if v is None]
        if unset:
            raise ValueError(
                f"preset {self.key}: {unset[0]} is None; leave a field out to keep its default"
            )

    @property
    def key(self) -> str:
        """``architecture/name``: a preset's name is unique per architecture."""
        return f"{self.architecture}/{self.name}"

    def flags(self) -> list[str]:
        """The settings as flags of SAE-Lens's runner (``--field value``)."""
        out: list[str] = []
        for key, value in self.settings.items():
            out += [f"--{key}", str(value)]
        return out
