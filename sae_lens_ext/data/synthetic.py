"""Synthetic data with ground truth for ``sae-lens demo`` and ``sae-lens evaluate``.

A plugin tells the demo how to train its architecture through the ``demo_setup`` hook,
returning a :class:`DemoSetup`: config defaults and, if the architecture needs other
data than the default, a factory of :class:`DemoData`. The default, used for every
architecture that brings none, is :class:`SyntheticModelData`: SAE-Lens's own
``SyntheticModel`` (Zipfian firing probabilities, known feature directions).

A :class:`DemoData` serves training batches (whole windows of the SAE's batch window,
through the core's window providers when it has sequences), draws fresh evaluation
data with ground truth, and saves itself beside the SAE so that ``evaluate`` can
draw more from the same ground truth later.
"""

from __future__ import annotations

import importlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from typing_extensions import override

from sae_lens_ext.metrics import EvalData

DATA_DIR = "demo_data"
DATA_CLASS_FILE = "data_class.json"


@dataclass(frozen=True)
class DemoDataOptions:
    """What ``sae-lens demo`` asks of the data: sizes, seed, device, training samples."""

    n_features: int
    d_in: int
    seed: int
    samples: int
    device: str = "cpu"


@dataclass
class DemoSetup:
    """How ``sae-lens demo`` trains one architecture (a plugin's ``demo_setup`` answer).

    Attributes:
        sae_settings: training-config fields set before the user's ``--set``.
        per_step_settings: fields set to ``round(fraction * training steps)`` (e.g. a
            warm-up over a quarter of the run), before the user's ``--set``.
        samples: default training samples (``--samples``).
        lr: default learning rate (``--lr``).
        data: factory of the training/evaluation data; ``None``: SAE-Lens's
            ``SyntheticModel`` (:class:`SyntheticModelData`).
        note: printed after the demo's results table (and kept in ``metrics.json``), e.g.
            to say why a metric is what it is on these data.
    """

    sae_settings: dict[str, Any] = field(default_factory=dict)
    per_step_settings: dict[str, float] = field(default_factory=dict)
    samples: int | None = None
    lr: float | None = None
    data: Callable[[DemoDataOptions], DemoData] | None = None
    note: str = ""


class DemoData(ABC):
    """Training and evaluation data with ground truth (see the module docstring)."""

    description: str = ""

    @abstractmethod
    def training_batches(self, batch_size: int, window: int, seed: int) -> Iterator[torch.Tensor]:
        """``(batch_size, d_in)`` batches; ``window`` consecutive rows form one window of
        consecutive positions (any ``window`` >= 1). A ``state_dict``/``load_state_dict``
        pair on the iterator (or reproducible draws from torch's global generator) makes
        ``--resume`` bit-identical."""

    @abstractmethod
    def eval_data(self, n_samples: int, seed: int) -> EvalData:
        """Fresh data with ground truth (``n_samples`` rows or positions)."""

    @abstractmethod
    def save_files(self, folder: Path) -> None:
        """Write what :meth:`load_files` needs into ``folder``."""

    @classmethod
    @abstractmethod
    def load_files(cls, folder: Path) -> DemoData:
        """Reopen data written by :meth:`save_files`."""

    def save(self, folder: Path) -> None:
        """Save into ``folder`` with the class to reopen it with (see :func:`load_demo_data`)."""
        folder.mkdir(parents=True, exist_ok=True)
        self.save_files(folder)
        cls = type(self)
        (folder / DATA_CLASS_FILE).write_text(
            json.dumps({"class": f"{cls.__module__}:{cls.__qualname__}"}) + "\n"
        )


def load_demo_data(folder: Path) -> DemoData:
    """Reopen demo data saved by :meth:`DemoData.save` (its plugin must be installed)."""
    spec = json.loads((folder / DATA_CLASS_FILE).read_text())["class"]
    module_name, _, qualname = spec.partition(":")
    try:
        cls: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            cls = getattr(cls, part)
    except (ImportError, AttributeError) as exc:
        raise ImportError(
            f"{folder}: its data were written by {spec}, which is not installed here"
        ) from exc
    if not (isinstance(cls, type) and issubclass(cls, DemoData)):
        raise TypeError(f"{folder / DATA_CLASS_FILE}: {spec} is not a DemoData class")
    return cls.load_files(folder)


class SyntheticModelData(DemoData):
    """SAE-Lens's ``SyntheticModel``: i.i.d. samples of known sparse features (Zipfian
    firing probabilities) in ``d_in`` dimensions. Rows are i.i.d., so any window layout
    holds (a window of rows is not a window of a sequence: nothing to find there)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        cfg = model.cfg
        self.description = (
            f"SAE-Lens SyntheticModel: {cfg.num_features} true features in "
            f"{cfg.hidden_dim} dimensions"
        )

    @classmethod
    def create(cls, options: DemoDataOptions) -> SyntheticModelData:
        from sae_lens.synthetic import SyntheticModel, SyntheticModelConfig

        model = SyntheticModel(
            SyntheticModelConfig(
                num_features=options.n_features, hidden_dim=options.d_in, seed=options.seed
            ),
            device=options.device,
        )
        model.feature_dict.eval()
        return cls(model)

    @override
    def training_batches(self, batch_size: int, window: int, seed: int) -> Iterator[torch.Tensor]:
        from sae_lens.synthetic.training import SyntheticActivationIterator

        return SyntheticActivationIterator(
            self.model.feature_dict, self.model.activation_generator, batch_size=batch_size
        )

    @override
    @torch.no_grad()
    def eval_data(self, n_samples: int, seed: int) -> EvalData:
        torch.manual_seed(seed)
        activations, feature_acts = self.model.sample_with_features(n_samples)
        return EvalData(
            activations=activations,
            feature_vectors=self.model.feature_dict.feature_vectors.detach(),
            feature_acts=feature_acts,
            description=self.description,
        )

    @override
    def save_files(self, folder: Path) -> None:
        self.model.save(folder / "synthetic_model")

    @override
    @classmethod
    def load_files(cls, folder: Path) -> SyntheticModelData:
        from sae_lens.synthetic import SyntheticModel

        model = SyntheticModel.load_from_disk(folder / "synthetic_model")
        model.feature_dict.eval()
        return cls(model)
