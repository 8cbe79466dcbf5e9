"""The core's window batches: layout validation, providers, resumable state, step checks."""

from __future__ import annotations

import warnings

import pytest
import torch

from sae_lens_ext.data.windows import (
    BatchLayoutError,
    WindowShuffledBatches,
    WindowShuffledLMBatches,
    batch_window,
    check_step_layout,
    mark_layout_served,
    validate_window_layout,
)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 30}, "train_batch_size_tokens=30: .*multiple of 4"),
        ({"context_size": 2}, "context_size=2: .*at least 4"),
        ({"context_size": 10}, "context_size=10 .*straddle.*multiple of 4"),
        ({"exclude_special_tokens": True}, "exclude_special_tokens False"),
        ({"exclude_special_tokens": [0, 1]}, "exclude_special_tokens False"),
        ({"mixing_fraction": 0.5}, "activations_mixing_fraction 0"),
    ],
)
def test_validator_names_the_setting(kwargs, match):
    with pytest.raises(BatchLayoutError, match=match):
        validate_window_layout(4, **kwargs)


def test_validator_accepts_good_layouts_and_window_one():
    validate_window_layout(4, batch_size=32, context_size=16, exclude_special_tokens=False)
    validate_window_layout(1, batch_size=7, context_size=3, mixing_fraction=0.5)


def test_batch_window_protocol():
    class Plain:
        pass

    class Windowed:
        def batch_window(self):
            return 6

    assert batch_window(Plain()) == 1
    assert batch_window(Windowed()) == 6


def _positions(n_seq: int, seq_len: int) -> torch.Tensor:
    seq_id = torch.arange(n_seq).float()[:, None].expand(n_seq, seq_len)
    pos = torch.arange(seq_len).float()[None, :].expand(n_seq, seq_len)
    return torch.stack([seq_id, pos], -1)


def test_window_shuffled_batches_hold_whole_shuffled_windows():
    batches = WindowShuffledBatches(_positions(10, 12), window=4, batch_size=8, seed=0)
    seen, starts = set(), []
    for _ in range(batches.windows_per_epoch // 2):  # exactly one epoch
        b = next(batches).reshape(-1, 4, 2)
        assert (b[:, :, 0] == b[:, :1, 0]).all()  # one sequence per window
        assert (b[:, 1:, 1] - b[:, :-1, 1] == 1).all()  # consecutive positions
        assert (b[:, 0, 1] % 4 == 0).all()  # aligned windows (12 % 4 == 0: no offset)
        seen.update((int(w[0, 0]), int(w[0, 1])) for w in b)
        starts.append(int(b[0, 0, 0]))
    assert len(seen) == batches.windows_per_epoch  # every window once per epoch
    assert starts != sorted(starts)  # shuffled


def test_window_grid_offset_uses_every_position_when_seq_len_not_multiple():
    pos = torch.arange(10).float()[None, :, None].expand(3, 10, 1)  # 10 % 4 = 2
    batches = WindowShuffledBatches(pos, window=4, batch_size=4, seed=0)
    starts = set()
    for _ in range(60):
        b = next(batches)
        assert (b[1:, 0] - b[:-1, 0] == 1).all()
        starts.add(int(b[0, 0]))
    assert {s % 4 for s in starts} == {0, 1, 2}


def test_window_shuffled_batches_resume_from_state_dict():
    """A provider restored from a state_dict serves exactly what the original serves next
    (also across an epoch boundary)."""
    acts = torch.randn(6, 12, 3)
    original = WindowShuffledBatches(acts, window=4, batch_size=8, seed=3)
    for _ in range(5):
        next(original)
    state = original.state_dict()
    restored = WindowShuffledBatches(acts, window=4, batch_size=8, seed=99)
    restored.load_state_dict(state)
    for _ in range(12):  # 18 windows per epoch, 2 per batch: crosses epochs
        assert torch.equal(next(original), next(restored))


@pytest.mark.parametrize(
    ("window", "batch", "match"),
    [(20, 40, "seq_len=16: .*at least 20"), (4, 30, "batch_size=30: .*multiple of 4")],
)
def test_window_shuffled_batches_bad_settings(window, batch, match):
    with pytest.raises(BatchLayoutError, match=match):
        WindowShuffledBatches(torch.randn(4, 16, 3), window=window, batch_size=batch)


def test_window_shuffled_batches_reject_nan():
    acts = torch.randn(4, 16, 3)
    acts[2, 5, 1] = float("inf")
    with pytest.raises(FloatingPointError, match=r"index \(2, 5\)"):
        WindowShuffledBatches(acts, window=4, batch_size=8)


class FakeStore:
    """The ActivationsStore surface WindowShuffledLMBatches reads: positions encoded in acts."""

    training_context_size = 8
    store_batch_size_prompts = 2
    exclude_special_tokens = None
    device = torch.device("cpu")

    def __init__(self):
        self.n = 0

    def get_batch_tokens(
        self, batch_size=None, raise_at_epoch_end=False, move_to_model_device=True
    ):
        self.n += 1
        return torch.arange(self.n * 10, self.n * 10 + 2)  # 2 "prompts", ids unique per call

    def get_activations(self, tokens):
        pos = torch.arange(8).float()[None, :].expand(2, 8)
        seq = tokens.float()[:, None].expand(2, 8)
        return torch.stack([seq, pos], -1)[:, :, None, :]  # (batch, ctx, 1, d) like upstream


def test_window_shuffled_lm_batches_keep_windows_refill_and_resume():
    batches = WindowShuffledLMBatches(FakeStore(), window=4, batch_size=8, n_batches_in_buffer=4)
    for _ in range(10):
        b = next(batches).reshape(-1, 4, 2)
        assert (b[:, :, 0] == b[:, :1, 0]).all()
        assert (b[:, 1:, 1] - b[:, :-1, 1] == 1).all()
    assert batches.n_read > 4  # refilled from the store
    state, store_n = batches.state_dict(), batches.store.n
    expected = [next(batches) for _ in range(6)]
    store = FakeStore()  # a fresh store: load_state_dict replays its reads
    restored = WindowShuffledLMBatches(store, window=4, batch_size=8, n_batches_in_buffer=4)
    restored.load_state_dict(state)
    assert store.n == store_n
    assert all(torch.equal(e, next(restored)) for e in expected)


def test_window_shuffled_lm_batches_bad_layouts():
    with pytest.raises(BatchLayoutError, match=r"context_size=8 .*multiple of 3"):
        WindowShuffledLMBatches(FakeStore(), window=3, batch_size=9)
    # 2 reads of 2 prompts x 2 windows = 8 windows; a batch of 5 windows is more than half
    with pytest.raises(BatchLayoutError, match="set n_batches_in_buffer to at least 3"):
        WindowShuffledLMBatches(FakeStore(), window=4, batch_size=20, n_batches_in_buffer=2)


class _Cfg:
    class metadata:
        context_size = 6
        exclude_special_tokens = None


class _Sae:
    cfg = _Cfg()


def test_step_check_says_once_what_it_cannot_see():
    sae = _Sae()
    with pytest.raises(BatchLayoutError, match="training step 3: a batch of 10 rows"):
        check_step_layout(sae, 10, 4, 3)
    with pytest.raises(BatchLayoutError, match="context_size=6"):  # from the SAE's metadata
        check_step_layout(sae, 8, 4, 0)
    ok = _Sae()
    ok.cfg = type("C", (), {"metadata": type("M", (), {"context_size": 8})})()
    with pytest.warns(UserWarning, match="cannot be checked from here"):
        check_step_layout(ok, 8, 4, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_step_layout(ok, 8, 4, 1)  # once per SAE


def test_step_check_trusts_a_serving_provider():
    sae = _Sae()
    mark_layout_served(sae)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_step_layout(sae, 8, 4, 0)  # no metadata check, no warning
