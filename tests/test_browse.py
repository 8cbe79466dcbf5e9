"""``sae-lens browse``: streaming statistics against brute force, bounded memory, whole
contexts for context architectures, the pages, the export, the refusals, and the browser in
a real headless Chromium (tests/chromium.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO, TinyLM, lm_runner_args, run_cli_commands, run_module, run_python

LATENTS, CONTEXTS, TOKENS = 48, 8, 4096


# --- the collector, alone ---------------------------------------------------------------------


def brute_force_top(acts: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k contexts of each latent by its highest activation in them: ``(k, n)`` each."""
    best = acts.amax(1)
    return best.topk(k, dim=0)


def test_the_collector_keeps_what_holding_every_activation_would_give():
    from sae_lens_ext.browse.collect import HIST_BINS, LatentCollector

    torch.manual_seed(0)
    B, T, d_sae, latents = 4, 24, 12, [2, 5, 6, 11]
    batches = [torch.relu(torch.randn(B, T, d_sae) - 1.0) for _ in range(6)]
    tokens = [torch.randint(0, 90, (B, T)) for _ in range(6)]
    tokens[0][:, 0] = 0  # a BOS-like special token at the start of some contexts
    collector = LatentCollector(d_sae, latents, context_size=T, contexts=5, window=8, before=6)
    for acts, toks in zip(batches, tokens, strict=True):
        collector.update(acts, toks, keep=toks != 0)
    acts, toks = torch.cat(batches), torch.cat(tokens)
    acts = acts * (toks != 0).unsqueeze(-1)
    assert int(collector.n_tokens) == int((toks != 0).sum())
    assert torch.equal(collector.counts, (acts != 0).sum((0, 1)))
    assert torch.equal(collector.max_values, acts.amax((0, 1)))
    values, contexts = brute_force_top(acts[..., latents], 5)
    top = collector.top
    assert torch.equal(top.max_values, values.T) and torch.equal(top.context, contexts.T)
    for i, latent in enumerate(latents):
        for j in range(5):
            c, s = int(top.context[i, j]), int(top.start[i, j])
            window = acts[c, s : s + 8, latent]
            assert torch.equal(top.acts[i, j], window)
            assert torch.equal(top.tokens[i, j].long(), toks[c, s : s + 8])
            peak = int(window.argmax())
            assert peak == min(6, int(acts[c, :, latent].argmax())) or s == T - 8
    positive = acts[..., latents]
    assert torch.equal(collector.hist.sum(1), (positive > 0).sum((0, 1)))
    assert collector.hist.shape == (len(latents), HIST_BINS)


def test_memory_stays_bounded_whatever_the_number_of_tokens():
    """The state does not grow with the tokens read, and the peak resident memory hardly
    does: after a warm-up of 100 batches, 400 more (1.6 GiB of latent activations) add less
    than 2 % of that (malloc's own slack; holding the activations would add all of it).
    A fresh process with the command's malloc settings, its peak resident set measured."""
    code = """
import resource, torch
from sae_lens_ext.training.host_memory import keep_freed_host_memory
keep_freed_host_memory()  # as every sae-lens command
from sae_lens_ext.browse.collect import LatentCollector, memory_bound
torch.manual_seed(0)
d_sae, T, B, d_in = 1024, 64, 16, 256
acts = torch.relu(torch.randn(B, T, d_sae) - 2.0)
tokens = torch.randint(0, 50_000, (B, T))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
collector = LatentCollector(d_sae, range(d_sae), context_size=T, contexts=20)
def feed(n):
    for _ in range(n):
        collector.update(acts.roll(1, 0), tokens)
feed(100)
state, peak = collector.state_bytes(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
feed(400)
print("RESULT", base, state, collector.state_bytes(), peak,
      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, memory_bound(d_sae, d_sae, T, d_in))
"""
    out = run_python(code, env={"OMP_NUM_THREADS": "1"}).stdout
    base, state, state_after, peak, peak_after, bound = map(int, out.split("RESULT")[1].split())
    assert state == state_after
    assert (peak_after - base) * 1024 < bound, (base, peak_after, bound)
    read = 400 * 16 * 64 * 1024 * 4
    assert (peak_after - peak) * 1024 < read // 50, (peak, peak_after)  # ru_maxrss: KiB


def test_memory_bound_of_a_16k_sae_is_a_few_gigabytes():
    from sae_lens_ext.browse.collect import memory_bound

    every_latent = memory_bound(16_384, 16_384, context_size=128, d_in=768)
    assert every_latent < 3 << 29, every_latent / 2**30  # 1.5 GiB
    default = memory_bound(16_384, 1_000, context_size=128, d_in=768)
    assert default < 1 << 29, default / 2**30


def test_latent_specs():
    from sae_lens_ext.browse.build import DEFAULT_LATENTS, parse_latents
    from sae_lens_ext.errors import CliError

    assert parse_latents("0:3,7,5:6", 10) == [0, 1, 2, 7, 5]
    assert parse_latents(":2,8:", 10) == [0, 1, 8, 9]
    assert parse_latents("all", 4) == [0, 1, 2, 3]
    assert parse_latents(None, 10) == list(range(10))
    assert len(parse_latents(None, 5000)) == DEFAULT_LATENTS
    for bad in ("a:b", "3-4", "12", "8:20"):
        with pytest.raises(CliError):
            parse_latents(bad, 10)


def test_relative_paths_a_run_recorded_are_found_from_anywhere(tmp_path: Path, monkeypatch):
    from sae_lens_ext.browse.source import _recorded_path

    run = tmp_path / "project" / "runs" / "one"
    run.mkdir(parents=True)
    (tmp_path / "project" / "my-text").mkdir()
    monkeypatch.chdir(run)  # not where the run was started
    assert _recorded_path("my-text", run) == str(tmp_path / "project" / "my-text")
    assert _recorded_path("someone/some-dataset", run) == "someone/some-dataset"  # a Hub id
    assert _recorded_path("my-text", None) == "my-text"


def test_tokens_and_plugin_text_are_escaped():
    from sae_lens_ext.browse.data import Context
    from sae_lens_ext.browse.render import HIGHLIGHT, context_html, highlight

    context = Context(["<script>", ' "x" & y', "\n"], [0.0, 2.0, 1.0], 2.0, 1, 0, 0)
    text = context_html(context, 2.0)
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert "&quot;x&quot; &amp; y" in text
    assert "\u21b5" in text  # a newline token is shown, not a line break
    assert highlight(2.0, 2.0) == "rgb({},{},{})".format(*HIGHLIGHT)
    assert highlight(0.0, 2.0) == "rgb(255,255,255)"


# --- on the tiny model ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def upstream_run(tiny_lm: TinyLM, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A standard SAE trained by SAE-Lens's own runner (its output folder, unchanged)."""
    out = tmp_path_factory.mktemp("browse") / "upstream-run"
    args = lm_runner_args(tiny_lm, "standard", out, "--d_sae", "96")
    args += ["--normalize_activations", "expected_average_only_in"]
    run_module([*args, "--n_batches_for_norm_estimate", "4"], env={"OMP_NUM_THREADS": "1"})
    return out


@pytest.fixture(scope="module")
def browser(upstream_run: Path) -> tuple[Path, list]:
    """``sae-lens browse`` of the upstream run, through the real entry point."""
    out = upstream_run.parent / "browser"
    command = [
        "browse", str(upstream_run), "-o", str(out), "--latents", f"0:{LATENTS}",
        "--tokens", str(TOKENS), "--contexts", str(CONTEXTS),
        "--export", "neuronpedia", "--progress", "plain",
    ]  # fmt: skip
    result = run_cli_commands([command], cwd=upstream_run.parent, env={"OMP_NUM_THREADS": "1"})[0]
    assert result[0] == 0, result[2][-3000:]
    return out, result


@pytest.mark.e2e
def test_browse_writes_a_self_contained_browser(browser: tuple[Path, list]):
    out, (_, stdout, stderr) = browser
    assert f"Browser of {LATENTS} latents" in stdout and "read " in stderr  # plain progress
    index = (out / "index.html").read_text()
    assert index.count('<tr data-latent="') == LATENTS
    pages = sorted(int(p.stem) for p in (out / "latents").glob("*.html"))
    assert pages == list(range(LATENTS))
    for path in [out / "index.html", *(out / "latents").glob("*.html")]:
        text = path.read_text()
        without_svg_namespace = text.replace('xmlns="http://www.w3.org/2000/svg"', "")
        assert not re.search(r"https?://|src=|@import|url\(", without_svg_namespace), path
    page = (out / "latents" / "3.html").read_text()
    assert "Top contexts" in page and 'class="tok max"' in page
    assert "&lt;|endoftext|&gt;" in page and "<|endoftext|>" not in page
    assert "Promoted / suppressed tokens" in page  # transformer.h.0 is the residual stream
    assert "Across positions" in page and "lag-1 autocorrelation" in page  # temporal plugin
    assert "Prefix explained variance" in index and "Lag-1 autocorrelation" in index


@pytest.mark.e2e
def test_the_neuronpedia_export_has_the_documented_fields(browser: tuple[Path, list]):
    from sae_lens_ext.browse.export import (
        ACTIVATION_FIELDS,
        BATCH_FIELDS,
        FEATURE_FIELDS,
        check_batch,
    )

    out, _ = browser
    documented = documented_fields()
    assert documented["batch"] == set(BATCH_FIELDS)
    assert documented["feature"] == set(FEATURE_FIELDS)
    assert documented["activation"] == set(ACTIVATION_FIELDS)
    batch = json.loads((out / "neuronpedia" / "batch-0.json").read_text())
    assert check_batch(batch) == []
    features = batch["features"]
    assert [f["feature_index"] for f in features] == list(range(LATENTS))
    feature = next(f for f in features if f["activations"])
    assert len(feature["activations"]) <= CONTEXTS and len(feature["pos_str"]) == 10
    top = feature["activations"][0]
    assert top["bin_max"] == pytest.approx(max(top["values"]), abs=1e-3)
    assert sum(feature["freq_hist_data_bar_heights"]) > 0
    settings = json.loads((out / "neuronpedia" / "run_settings.json").read_text())
    assert settings["n_tokens_in_prompt"] == 32 and settings["features"] == list(range(LATENTS))
    broken = {**batch, "features": [{**features[0], "frac_nonzero": "x"}]}
    assert check_batch(broken) == ["features[0].frac_nonzero: expected float, got str"]


def documented_fields() -> dict[str, set[str]]:
    """Field names of the export tables in docs/browse.md, by table."""
    text = (REPO / "docs" / "browse.md").read_text()
    found: dict[str, set[str]] = {}
    for kind in ("batch", "feature", "activation"):
        table = text.split(f"<!-- fields: {kind} -->", 1)[1].split("\n\n", 1)[0]
        rows = [line.split("|")[1] for line in table.splitlines()[2:]]  # first cells
        found[kind] = {name for cell in rows for name in re.findall(r"`(\w+)`", cell)}
    return found


@pytest.mark.e2e
@pytest.mark.parametrize("architecture", ["freq_ordered", "temporal"])
def test_statistics_are_those_of_whole_contexts(architecture: str, tiny_lm: TinyLM, tmp_path):
    """SAEs whose encoder reads several positions (a plugin's attention over windows of 4
    positions, upstream's attention-based ``temporal``): every number the browser keeps is
    the SAE's code of the whole context, not of lone tokens."""
    from sae_lens_ext.browse.build import BrowseOptions, TokenProgress, read
    from sae_lens_ext.browse.source import contexts, open_source

    build = attention_sae if architecture == "freq_ordered" else temporal_sae
    folder = build(tiny_lm, tmp_path / architecture)
    options = BrowseOptions(tokens=1024, contexts=4)
    source = open_source(str(folder), {}, "cpu", "float32")
    assert source.sae.cfg.architecture() == architecture
    data = read(source, list(range(16)), options, TokenProgress(1024, "none"))

    again = open_source(str(folder), {}, "cpu", "float32")  # the same contexts, in order
    batches = list(contexts(again, 1024, batch=5))
    tokens = torch.cat([t for t, _ in batches])
    inputs = torch.cat([a for _, a in batches])
    with torch.no_grad():
        whole = again.sae.encode(inputs)
        lone = again.sae.encode(inputs.reshape(-1, 1, inputs.shape[-1])).reshape(whole.shape)
    keep = ~torch.isin(tokens, torch.tensor(again.special_ids))
    whole, lone = whole * keep.unsqueeze(-1), lone * keep.unsqueeze(-1)
    scale = float(whole.abs().max())
    if architecture == "freq_ordered":  # the checks below can tell the two apart
        assert float((whole - lone).abs().max()) > 0.1 * scale
    assert data.n_contexts == tokens.shape[0] and data.n_tokens == int(keep.sum())
    assert torch.allclose(data.frequencies.float(), (whole != 0).float().sum((0, 1)) / keep.sum())
    values, _ = brute_force_top(whole[..., :16], 4)
    assert (values > 0).all()
    assert torch.allclose(data.contexts.max_values, values.T, rtol=1e-4, atol=1e-4 * scale)
    c, s = int(data.contexts.context[3, 0]), int(data.contexts.start[3, 0])
    window = whole[c, s : s + data.contexts.acts.shape[-1], 3]
    assert torch.allclose(data.contexts.acts[3, 0], window, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.e2e
def test_a_hook_outside_the_residual_stream(tiny_lm: TinyLM, tmp_path: Path):
    """An SAE on a Hugging Face module TransformerLens does not name (``transformer.h.0.mlp``)
    is read through SAE-Lens's ``load_model``; its page says why no promoted tokens."""
    from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig

    from sae_lens_ext.browse.build import BrowseOptions, TokenProgress, read, write
    from sae_lens_ext.browse.source import open_source

    cfg = StandardSAEConfig(
        d_in=tiny_lm.d_in, d_sae=16, dtype="float32", device="cpu",
        metadata=metadata(tiny_lm, "transformer.h.0.mlp"),
    )  # fmt: skip
    torch.manual_seed(0)
    StandardSAE(cfg).save_model(str(tmp_path / "mlp"))
    source = open_source(str(tmp_path / "mlp"), {}, "cpu", "float32")
    assert source.hook_name == "transformer.h.0.mlp"
    assert "not the output of one of the model's decoder layers" in source.no_unembedding
    options = BrowseOptions(tokens=512)
    data = read(source, list(range(16)), options, TokenProgress(512, "none"))
    write(tmp_path / "browser", source, data, options)
    page = (tmp_path / "browser" / "latents" / "0.html").read_text()
    assert 'Promoted tokens</h2><p class="note">Not shown: hook transformer.h.0.mlp' in page


def metadata(tiny: TinyLM, hook_name: str | None = None):
    from sae_lens.saes.sae import SAEMetadata

    return SAEMetadata(
        model_name=str(tiny.model_dir),
        model_class_name="AutoModelForCausalLM",
        hook_name=hook_name or tiny.hook_name,
        dataset_path=str(tiny.dataset_dir),
        context_size=tiny.context_size,
        prepend_bos=True,
    )


def attention_sae(tiny: TinyLM, folder: Path) -> Path:
    """A random ``freq_ordered`` SAE with causal attention over windows of 4 positions."""
    import sae_lens  # noqa: F401  (registers the plugins' architectures first)
    from sae_lens_ext_plugins.freq_ordered.sae import FreqOrderedSAE, FreqOrderedSAEConfig

    cfg = FreqOrderedSAEConfig(
        d_in=tiny.d_in, d_sae=32, attention=True, attention_window=4, dtype="float32",
        device="cpu", metadata=metadata(tiny),
    )  # fmt: skip
    assert cfg.architecture_window() == 4
    torch.manual_seed(0)
    sae = FreqOrderedSAE(cfg)
    with torch.no_grad():
        for name in ("W_enc", "W_dec", "W_v"):
            getattr(sae, name).normal_(std=tiny.d_in**-0.5)
    sae.save_model(str(folder))
    return folder


def temporal_sae(tiny: TinyLM, folder: Path) -> Path:
    """A random upstream ``temporal`` SAE (its encoder takes ``(batch, seq, d_in)`` only)."""
    from sae_lens.saes.temporal_sae import TemporalSAE, TemporalSAEConfig

    cfg = TemporalSAEConfig(
        d_in=tiny.d_in, d_sae=32, n_heads=2, bottleneck_factor=4, sae_diff_type="relu",
        dtype="float32", device="cpu", metadata=metadata(tiny),
    )  # fmt: skip
    torch.manual_seed(0)
    TemporalSAE(cfg).save_model(str(folder))
    return folder


@pytest.mark.e2e
def test_plugin_panels(tiny_lm: TinyLM, upstream_run: Path, tmp_path: Path):
    """The temporal plugin's streaming autocorrelation is its metric's; tsae shows groups."""
    from sae_lens_ext_plugins.temporal_consistency.browse import lag1_autocorrelation
    from sae_lens_ext_plugins.temporal_consistency.metrics import autocorrelation

    from sae_lens_ext.browse.build import BrowseOptions, TokenProgress, plugin_panels, read
    from sae_lens_ext.browse.source import open_source

    source = open_source(str(upstream_run), {}, "cpu", "float32")
    data = read(source, list(range(8)), BrowseOptions(tokens=512), TokenProgress(512, "none"))
    streamed = lag1_autocorrelation(data)
    whole = torch.cat(list(data.sample_latents()))
    expected = autocorrelation(whole, 1)[:, 0].double()
    finite = streamed.isfinite()
    assert finite.any() and torch.allclose(streamed[finite], expected[finite], atol=1e-6)

    tsae = tsae_from(source.sae)
    data.sae = tsae
    panels = plugin_panels(tsae, data)
    groups = [p for p in panels if p.title == "Matryoshka group"]
    assert [p.latent for p in groups] == list(range(8))
    assert "Group 1 of 2" in groups[0].html and "high-level" in groups[0].html
    assert "Group 2 of 2" in groups[-1].html  # latents 6 and 7 are past the first group
    assert any(p.title == "Matryoshka groups (tsae)" and p.latent is None for p in panels)


def tsae_from(sae):
    """A tsae inference SAE with the weights of ``sae`` and groups [0, 6) and [6, d_sae)."""
    import sae_lens  # noqa: F401  (registers the plugins' architectures first)
    from sae_lens_ext_plugins.tsae.sae import TSAE, TSAEConfig

    cfg = TSAEConfig(
        d_in=sae.cfg.d_in, d_sae=sae.cfg.d_sae, matryoshka_widths=[6, sae.cfg.d_sae],
        dtype="float32", device="cpu", metadata=sae.cfg.metadata,
    )  # fmt: skip
    tsae = TSAE(cfg)
    with torch.no_grad():
        for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
            getattr(tsae, name).copy_(getattr(sae, name))
        tsae.threshold.zero_()
    return tsae


@pytest.mark.e2e
def test_refusals_are_one_line_and_leave_nothing(upstream_run: Path, tmp_path: Path):
    demo = tmp_path / "demo-run"
    (demo / "demo_data").mkdir(parents=True)
    done = tmp_path / "done"
    (done / "index.html").parent.mkdir()
    (done / "index.html").write_text('<meta name="generator" content="sae-lens browse">')
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    several = tmp_path / "multi"  # SAE-Lens's multi-SAE runner: one SAE per subfolder
    for name in ("a", "b"):
        (several / name).mkdir(parents=True)
        (several / name / "cfg.json").write_text("{}")
    run = str(upstream_run)
    commands = {
        "browse gpt2-small-res-jb/blocks.0.hook_resid_pre": "the Hugging Face Hub cannot be reached",
        "browse no-such-release/some-id": "not a folder, nor a Hub SAE",
        "browse ./no-such-folder": "no such folder",
        f"browse {demo}": "trained on synthetic data",
        f"browse {several}": f"holds 2 SAEs (a, b); browse one of them, e.g. {several / 'a'}",
        f"browse {run} -o {done}": "already holds a browser; pass --overwrite",
        f"browse {run} -o {other}": "holds other files",
        f"browse {run} --latents 3-4": "--latents 3-4: expected latents as START:END",
        f"browse {run} --latents 90:200 -o {tmp_path / 'a'}": "outside the SAE's 96 latents",
        f"browse {run} --dataset ./no-data -o {tmp_path / 'b'}": "--dataset",
    }
    results = run_cli_commands([c.split() for c in commands], cwd=tmp_path)
    for (command, expected), (rc, _, err) in zip(commands.items(), results, strict=True):
        lines = [line for line in err.splitlines() if line.startswith("Error:")]
        assert rc == 2 and len(lines) == 1 and expected in lines[0], (command, err[-2000:])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert (other / "notes.txt").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


# --- in a real browser ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium() -> str:
    from tests.chromium import find_chromium

    found = find_chromium()
    if found is None:
        pytest.skip(
            "headless Chromium not found: scripts/test.sh installs Debian's chromium when it "
            "runs as root (and says so if apt-get fails); elsewhere: apt-get install chromium"
        )
    return found


@pytest.mark.e2e
def test_the_browser_in_headless_chromium(
    browser: tuple[Path, list], chromium: str, tmp_path: Path
):
    from tests.chromium import Chromium

    out, _ = browser
    with Chromium(chromium, width=1280, height=900) as page:
        page.open(out / "index.html")
        rows = "document.querySelectorAll('#latents tbody tr')"
        assert page.evaluate(f"{rows}.length") == LATENTS
        shown = f"[...{rows}].filter(r => !r.hidden).map(r => +r.dataset.latent)"
        token = page.evaluate(f"{rows}[5].dataset.tokens.split('\\u0001')[0]")
        page.evaluate(
            f"const s = document.getElementById('search'); s.value = {json.dumps(token)};"
            "s.dispatchEvent(new Event('input'))"
        )
        matching = page.evaluate(shown)
        assert 5 in matching and len(matching) < LATENTS
        page.evaluate(
            "document.querySelector('th[data-key=rank]').click();"
            "document.getElementById('search').value = '';"
            "document.getElementById('search').dispatchEvent(new Event('input'))"
        )
        ranks = page.evaluate(f"[...{rows}].map(r => +r.dataset.rank)")
        assert ranks == sorted(ranks)

        page.evaluate(
            "document.getElementById('latent-input').value = '7';"
            "document.getElementById('jump-latent').requestSubmit()"
        )
        assert page.wait_for("location.pathname.endsWith('/latents/7.html') && "
                             "document.readyState === 'complete' && "
                             "document.querySelector('h1').textContent") == "Latent 7"  # fmt: skip
        assert page.evaluate("document.querySelectorAll('.contexts li').length") > 0
        assert page.evaluate("document.querySelectorAll('.tok.max').length") > 0
        assert page.evaluate("document.querySelectorAll('svg.chart rect').length") > 0
        page.evaluate("document.dispatchEvent(new KeyboardEvent('keydown', {key: 'ArrowRight'}))")
        assert page.wait_for("document.readyState === 'complete' && "
                             "location.pathname.endsWith('/latents/8.html') && "
                             "document.querySelector('h1').textContent") == "Latent 8"  # fmt: skip
        shot = page.screenshot(tmp_path / "latent.png")

        page.open(out / "index.html")
        rank, latent = page.evaluate(
            f"[...{rows}].map(r => [+r.dataset.rank, +r.dataset.latent]).sort((a, b) => a[0] - b[0])[0]"
        )
        page.evaluate(
            f"document.getElementById('rank-input').value = '{rank}';"
            "document.getElementById('jump-rank').requestSubmit()"
        )
        stats = page.wait_for(
            f"document.readyState === 'complete' && location.pathname.endsWith('/latents/{latent}.html') && "
            "document.querySelector('.stats').textContent"
        )
        assert f"rank {rank} of 96" in stats
    check_screenshot(shot)


def check_screenshot(path: Path) -> None:
    """Not blank, and the strongest highlight (the orange of a context's maximum) is there."""
    from PIL import Image

    from sae_lens_ext.browse.render import HIGHLIGHT

    image = Image.open(path).convert("RGB")
    assert image.size == (1280, 900)
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # text, charts, highlights
    pixels = list(image.getdata())
    near = sum(1 for p in pixels if all(abs(a - b) <= 3 for a, b in zip(p, HIGHLIGHT, strict=True)))
    assert near > 200, near  # at least a few fully highlighted tokens
    tinted = sum(1 for r, g, b in pixels if r > 240 and 140 < g < 250 and b < 200 and g > b + 20)
    assert tinted > 2000, tinted  # and many partly highlighted ones
