"""Demo data of the temporal plugin: synthetic sequences whose features persist over positions."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from typing_extensions import override

from sae_lens_ext.api import DemoData, DemoDataOptions, EvalData
from sae_lens_ext_plugins.temporal_consistency.data import (
    SyntheticSequenceConfig,
    SyntheticSequences,
)

SEQ_LEN = 64
CONFIG_FILE = "sequence_config.json"
FEATURES_FILE = "feature_vectors.pt"


class SequenceDemoData(DemoData):
    """Training sequences (about four epochs of the run) and held-out sequences drawn from
    the same feature dictionary, with the true activations for the metrics."""

    def __init__(self, sequences: SyntheticSequences) -> None:
        self.sequences = sequences
        cfg = sequences.cfg
        self.description = (
            f"synthetic sequences: {cfg.num_features} sticky-Markov features in {cfg.d_in} "
            f"dimensions, {cfg.seq_len} positions"
        )

    @classmethod
    def create(cls, options: DemoDataOptions) -> SequenceDemoData:
        n_sequences = max(64, min(1024, math.ceil(options.samples / SEQ_LEN / 4)))
        cfg = SyntheticSequenceConfig(
            num_features=options.n_features,
            d_in=options.d_in,
            seq_len=SEQ_LEN,
            n_sequences=n_sequences,
            seed=options.seed,
        )
        return cls(SyntheticSequences(cfg))

    @override
    def training_batches(self, batch_size: int, window: int, seed: int) -> Iterator[torch.Tensor]:
        return self.sequences.batches(window, batch_size, seed)

    @override
    def eval_data(self, n_samples: int, seed: int) -> EvalData:
        cfg = self.sequences.cfg
        held_out_cfg = SyntheticSequenceConfig(
            **{
                **asdict(cfg),
                "n_sequences": max(1, math.ceil(n_samples / cfg.seq_len)),
                "seed": seed,
            }
        )
        # same directions and the same per-feature chains as the training sequences
        held_out = SyntheticSequences(held_out_cfg, features_from=self.sequences)
        return EvalData(
            activations=held_out.activations,
            feature_vectors=held_out.feature_vectors,
            feature_acts=held_out.feature_acts,
            description=self.description,
        )

    @override
    def save_files(self, folder: Path) -> None:
        (folder / CONFIG_FILE).write_text(json.dumps(asdict(self.sequences.cfg)) + "\n")
        torch.save(self.sequences.feature_dict.state_dict(), folder / FEATURES_FILE)

    @override
    @classmethod
    def load_files(cls, folder: Path) -> SequenceDemoData:
        from sae_lens.synthetic import FeatureDictionary

        raw = json.loads((folder / CONFIG_FILE).read_text())
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
        cfg = SyntheticSequenceConfig(**values)
        feature_dict = FeatureDictionary(cfg.num_features, cfg.d_in, seed=cfg.seed)
        feature_dict.load_state_dict(torch.load(folder / FEATURES_FILE, weights_only=True))
        return cls(SyntheticSequences(cfg, feature_dict=feature_dict))
