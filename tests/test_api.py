"""The public plugin API: one module, cheap to import, the only one plugins import; the
latent-parameter table and what it drives (resampling, permutations, optimizer rows,
folding); the collectives models and loss terms take from the core."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from sae_lens.saes.sae import SAEConfig
from torch import nn

import sae_lens_ext.api as api
from tests.helpers import REPO, run_python

PLUGIN_ROOTS = [REPO / "plugins", REPO / "tests" / "plugins"]


# --- the module ---------------------------------------------------------------------------
def sae_lens_ext_imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every import of a ``sae_lens_ext`` module in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            if node.module == "sae_lens_ext":  # `from sae_lens_ext import x`: module x
                names = [f"sae_lens_ext.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found += [(node.lineno, n) for n in names if n.split(".")[0] == "sae_lens_ext"]
    return found


def test_plugins_import_only_the_public_api_of_sae_lens_ext():
    files = [p for root in PLUGIN_ROOTS for p in root.rglob("*.py")]
    assert len(files) > 20  # the built-ins, the examples and the test plugins
    bad = [
        f"{path.relative_to(REPO)}:{line}: {module}"
        for path in files
        for line, module in sae_lens_ext_imports(path)
        if module != "sae_lens_ext.api"
    ]
    assert not bad, "plugins may import only sae_lens_ext.api:\n" + "\n".join(bad)


def test_the_import_check_sees_every_spelling(tmp_path: Path):
    source = tmp_path / "m.py"
    source.write_text(
        "import sae_lens_ext.training.sae\nfrom sae_lens_ext import hookimpl, api\n"
        "from sae_lens_ext.data.windows import batch_window\nfrom sae_lens_ext.api import LossTerm\n"
        "def f():\n    from sae_lens_ext.training.optim import row_states\n"
    )
    modules = [m for _, m in sae_lens_ext_imports(source)]
    assert modules == [
        "sae_lens_ext.training.sae",
        "sae_lens_ext.hookimpl",
        "sae_lens_ext.api",
        "sae_lens_ext.data.windows",
        "sae_lens_ext.api",
        "sae_lens_ext.training.optim",
    ]


def test_every_public_name_resolves_and_is_typed():
    tree = ast.parse((REPO / "sae_lens_ext" / "api.py").read_text())
    typed = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.If)  # the `if TYPE_CHECKING:` block
        for stmt in node.body
        if isinstance(stmt, ast.ImportFrom)
        for alias in stmt.names
    }
    assert set(api.__all__) == typed | {"hookimpl"}
    for name in api.__all__:
        assert getattr(api, name) is not None, name
    assert api.term_option.__name__ == "resolve_option"
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        api.nothing  # noqa: B018


def test_importing_the_api_is_cheap():
    out = run_python(
        "import sys\nimport sae_lens_ext.api as api\nfrom sae_lens_ext.api import hookimpl\n"
        "print(sorted(m for m in ('torch', 'sae_lens') if m in sys.modules))\n"
        "api.LossTerm\nprint('torch' in sys.modules)",
        env={"SAE_LENS_EXT_AUTOLOAD": "0"},
    )
    assert out.stdout.split("\n")[:2] == ["[]", "False"]


# --- the latent table ---------------------------------------------------------------------
@dataclass
class GainConfig(SAEConfig):
    @classmethod
    def architecture(cls) -> str:
        return "test_gain"


class GainSAE(api.PluginSAE[GainConfig]):
    """ReLU SAE with a per-latent gain and a d_sae x d_sae mixing matrix (not latent-indexed
    in the table below only when declared so)."""

    b_enc: nn.Parameter
    gain: nn.Parameter

    def initialize_weights(self) -> None:
        super().initialize_weights()
        d_sae = self.cfg.d_sae
        self.b_enc = nn.Parameter(torch.randn(d_sae, dtype=self.dtype) * 0.1)
        self.gain = nn.Parameter(torch.rand(d_sae, dtype=self.dtype) + 0.5)
        self.register_buffer("seen", torch.rand(d_sae, dtype=self.dtype))

    def latent_parameters(self):
        # the gain is the last map before the ReLU: folding scales it, not W_enc or b_enc
        return {"W_enc": api.LatentAxis(1, fold=0), "W_dec": api.LatentAxis(0, fold=-1),
                "b_enc": api.LatentAxis(0, fold=0), "b_dec": None,
                "gain": api.LatentAxis(0, fold=1), "seen": api.LatentAxis(0, fold=0)}  # fmt: skip

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu((self.process_sae_in(x) @ self.W_enc + self.b_enc) * self.gain)

    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        return feature_acts @ self.W_dec + self.b_dec


class ForgetfulSAE(GainSAE):
    def latent_parameters(self):
        return {"W_enc": api.LatentAxis(1, 1), "W_dec": api.LatentAxis(0, -1), "b_dec": None}


def gain_sae(cls: type[GainSAE] = GainSAE, d_in: int = 6, d_sae: int = 10) -> GainSAE:
    torch.manual_seed(0)
    return cls(GainConfig(d_in=d_in, d_sae=d_sae, dtype="float64"))


def test_an_undeclared_latent_tensor_is_named_when_the_sae_is_built():
    with pytest.raises(api.LatentTableError, match="parameter 'b_enc' of shape \\(10,\\)"):
        gain_sae(ForgetfulSAE)


def test_a_declared_name_must_exist_and_have_a_latent_axis():
    class Missing(GainSAE):
        def latent_parameters(self):
            return {**super().latent_parameters(), "scale": api.LatentAxis(0, 1)}

    class WrongAxis(GainSAE):
        def latent_parameters(self):
            return {**super().latent_parameters(), "W_enc": api.LatentAxis(0, 1)}

    with pytest.raises(api.LatentTableError, match="declares 'scale', which is neither"):
        api.latent_parameters(gain_sae(Missing))
    with pytest.raises(api.LatentTableError, match="'W_enc' has shape \\(6, 10\\), so axis 0"):
        api.latent_parameters(gain_sae(WrongAxis))


def test_d_in_equal_to_d_sae_is_no_ambiguity_for_declared_tables():
    table = api.latent_parameters(gain_sae(d_in=10, d_sae=10))
    assert table["W_enc"].axis == 1 and "b_dec" not in table


def test_upstream_classes_are_read_from_their_shapes():
    from sae_lens.saes.gated_sae import GatedSAE, GatedSAEConfig
    from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig

    gated = GatedSAE(GatedSAEConfig(d_in=10, d_sae=10))
    assert sorted(api.latent_parameters(gated)) == ["W_dec", "W_enc", "b_gate", "b_mag", "r_mag"]
    jump = api.latent_parameters(JumpReLUSAE(JumpReLUSAEConfig(d_in=4, d_sae=8)))
    assert jump["threshold"] == api.LatentAxis(0, fold=None) and jump["W_enc"].axis == 1


def test_permuting_latents_keeps_the_function_and_moves_optimizer_rows():
    sae = gain_sae()
    optimizer = torch.optim.Adam(sae.parameters())
    x = torch.randn(32, 6, dtype=torch.float64)
    sae.decode(sae.encode(x)).pow(2).sum().backward()
    optimizer.step()
    before_out, before_codes = sae.decode(sae.encode(x)), sae.encode(x)
    before_state = optimizer.state[sae.gain]["exp_avg"].clone()
    before_seen = sae.seen.clone()
    perm = torch.randperm(10)
    api.permute_latents(sae, perm, optimizer)
    torch.testing.assert_close(sae.decode(sae.encode(x)), before_out)
    torch.testing.assert_close(sae.encode(x), before_codes[:, perm])
    assert torch.equal(optimizer.state[sae.gain]["exp_avg"], before_state[perm])
    assert torch.equal(sae.seen, before_seen[perm])  # buffers move too
    with pytest.raises(ValueError, match="permutation of range"):
        api.permute_latents(sae, torch.zeros(10, dtype=torch.long))


def test_folding_follows_the_declared_table():
    sae = gain_sae()
    x = torch.randn(32, 6, dtype=torch.float64)
    out, seen = sae.decode(sae.encode(x)), sae.seen.clone()
    norms = sae.W_dec.norm(dim=-1)
    gain = sae.gain.detach().clone()
    sae.fold_W_dec_norm()
    torch.testing.assert_close(sae.decode(sae.encode(x)), out)
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(10, dtype=torch.float64))
    torch.testing.assert_close(sae.gain.detach(), gain * norms)  # fold=1
    assert torch.equal(sae.seen, seen)  # fold=0


def test_folding_refuses_a_tensor_declared_unfoldable():
    class Unfoldable(GainSAE):
        def latent_parameters(self):
            return {**super().latent_parameters(), "gain": api.LatentAxis(0, fold=None)}

    with pytest.raises(NotImplementedError, match="into gain"):
        gain_sae(Unfoldable).fold_W_dec_norm()


# --- training: resampling through the table, collectives ----------------------------------
def test_a_resample_writes_given_rows_and_resets_every_latent_parameters_moments():
    from sae_lens_ext.training.latents import write_latents

    sae = gain_sae()
    optimizer = torch.optim.Adam(sae.parameters())
    sae.decode(sae.encode(torch.randn(8, 6, dtype=torch.float64))).sum().backward()
    optimizer.step()
    rows = torch.tensor([2, 7])
    old_b = sae.b_enc.detach().clone()
    write_latents(sae, rows, {"gain": torch.full((2,), 9.0)}, optimizer)
    assert sae.gain[2] == sae.gain[7] == 9.0 and torch.equal(sae.b_enc.detach(), old_b)
    for param in (sae.gain, sae.b_enc, sae.W_dec):
        assert optimizer.state[param]["exp_avg"].index_select(0, rows).eq(0).all()
    assert optimizer.state[sae.W_enc]["exp_avg"][:, rows].eq(0).all()
    assert optimizer.state[sae.gain]["exp_avg"].ne(0).sum() == 8


def test_models_and_loss_terms_hold_no_distributed_code():
    for root in PLUGIN_ROOTS:
        for path in root.rglob("*.py"):
            text = path.read_text()
            assert "torch.distributed" not in text and "all_reduce" not in text, path


def test_batch_mean_goes_through_the_collectives_the_core_serves():
    from sae_lens.saes.sae import TrainStepInput
    from sae_lens_ext_plugins.freq_ordered.sae import (
        FreqOrderedTrainingSAE,
        FreqOrderedTrainingSAEConfig,
    )

    from sae_lens_ext.training.loss_terms import LocalCollectives

    calls: list[tuple[int, ...]] = []

    class Halving(LocalCollectives):
        def batch_mean(self, value: torch.Tensor) -> torch.Tensor:
            calls.append(tuple(value.shape))
            return value * 0.5

    torch.manual_seed(0)
    cfg = FreqOrderedTrainingSAEConfig(d_in=6, d_sae=12, frequency_decay=0.0, adaptive_l1=True)
    sae = FreqOrderedTrainingSAE(cfg)
    sae.collectives = Halving()
    x = torch.randn(64, 6)
    out = sae.training_forward_pass(
        TrainStepInput(x, {"frequency_ordering": 0.3, "adaptive_l1": 1.0}, None, 0, False)
    )
    fired = (out.feature_acts > 0).float().mean(0)
    torch.testing.assert_close(sae.latent_frequency, fired * 0.5)  # the model's statistic
    assert calls == [(12,), ()]  # then the adaptive L1's cosine scale (a loss term)
