"""SAE-Bench benches that encode lone tokens refuse an SAE whose encoder reads windows.

SAE-Bench's absorption and sae-probes encode 2-D batches of single-token activations
taken from different prompts; an encoder with attention over consecutive positions would
read those rows as windows and mix unrelated prompts (or fail on a row count that is not
a multiple of its window). The core asks the config's ``architecture_window()``.
"""

from __future__ import annotations

import pytest
import sae_lens  # noqa: F401  (registers plugin architectures)
import torch
from sae_lens.saes.standard_sae import StandardSAEConfig
from sae_lens_ext_plugins.freq_ordered.sae import FreqOrderedSAE, FreqOrderedSAEConfig
from sae_lens_ext_plugins.temporal_consistency.sae import TemporalConsistencySAEConfig

from sae_lens_ext.bench import (
    SINGLE_TOKEN_BENCHES,
    BenchSettings,
    OutOfContextError,
    encoder_window,
    out_of_context_benches,
    run_bench,
)
from tests.helpers import run_module

ALL = ["core", "absorption", "sparse_probing", "sparse_probing_sae_probes", "scr", "tpp"]


def attention_sae(window: int = 4) -> FreqOrderedSAE:
    cfg = FreqOrderedSAEConfig(d_in=8, d_sae=16, attention=True, attention_window=window)
    cfg.metadata.model_name = "/nonexistent/model"
    cfg.metadata.hook_name = "blocks.0.hook_resid_post"
    return FreqOrderedSAE(cfg)


def test_only_single_token_benches_refuse_a_windowed_encoder():
    cfg = attention_sae(4).cfg
    assert encoder_window(cfg) == 4
    assert out_of_context_benches(cfg, ALL) == ["absorption", "sparse_probing_sae_probes"]
    assert set(SINGLE_TOKEN_BENCHES) <= set(ALL)


@pytest.mark.parametrize(
    "cfg",
    [
        StandardSAEConfig(d_in=8, d_sae=16),
        FreqOrderedSAEConfig(d_in=8, d_sae=16),  # attention off: one position at a time
        TemporalConsistencySAEConfig(d_in=8, d_sae=16),  # its window is its loss's
    ],
    ids=["standard", "freq_ordered", "temporal_consistency"],
)
def test_position_wise_encoders_run_every_bench(cfg):
    assert encoder_window(cfg) == 1
    assert out_of_context_benches(cfg, ALL) == []


def test_lone_tokens_really_are_mixed_by_attention():
    """Why the refusal: four lone tokens from four prompts, encoded as one 2-D batch,
    get other codes than each encoded alone (attention mixes them as one window)."""
    sae = attention_sae(4)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
        rows = torch.randn(4, 8)
        together = sae.encode(rows)
        alone = torch.cat([sae.encode(row.reshape(1, 1, 8)).reshape(1, -1) for row in rows])
    assert not torch.allclose(together[1:], alone[1:], atol=1e-4)
    torch.testing.assert_close(together[0], alone[0])  # the first sees only itself


def test_run_bench_refuses_before_loading_the_model(tmp_path):
    """The model path does not exist: the refusal comes first, and writes nothing."""
    out = tmp_path / "eval_results"
    with pytest.raises(OutOfContextError, match=r"^absorption: .*4 consecutive positions"):
        run_bench(attention_sae(), ["core", "absorption"], BenchSettings(device="cpu"), out)
    assert not out.exists()


def test_evaluate_bench_refusal_is_one_line_exit_2(tmp_path):
    folder = tmp_path / "attention-sae"
    attention_sae().save_model(folder)
    args = ["-m", "sae_lens_ext", "evaluate", str(folder), "--bench", "core,absorption"]
    proc = run_module(args, check=False, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: --bench absorption: "), proc.stderr
    assert "leave them out" in lines[0]
    assert not (folder / "eval_results").exists()


def test_sweep_leaves_unfit_benches_out_and_says_why(tmp_path, capsys):
    from sae_lens_ext.run.sweep import Variant
    from sae_lens_ext.run.sweep_lm import fit_benches

    attention_sae().save_model(tmp_path / "attention")
    FreqOrderedSAE(FreqOrderedSAEConfig(d_in=8, d_sae=16)).save_model(tmp_path / "plain")
    benches = ["core", "absorption", "sparse_probing_sae_probes", "scr"]
    windowed = Variant("attention", {}, {}, folder=tmp_path / "attention")
    assert fit_benches(windowed, benches) == ["core", "scr"]
    said = capsys.readouterr().out
    assert said.startswith("sweep: attention: skipped absorption, sparse_probing_sae_probes: ")
    plain = Variant("plain", {}, {}, folder=tmp_path / "plain")
    assert fit_benches(plain, benches) == benches
    assert capsys.readouterr().out == ""
