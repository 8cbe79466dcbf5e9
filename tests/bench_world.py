"""A tiny offline world for SAE-Bench's evaluations (``tests/test_bench.py``, benchmarks).

* a GPT-2 (saved with ``save_pretrained``, ``d_model`` wide) whose token embeddings
  carry the token's first letter along basis direction ``e_letter`` (absorption's
  ground-truth probe can read it), and a word-level tokenizer (every word one token);
* local stand-ins, under their hub ids in a data folder, for the datasets SAE-Bench
  reads: ``Skylion007/openwebtext`` (text), ``LabHC/bias_in_bios`` (hard_text,
  profession, gender) and ``canrager/amazon_reviews_mcauley_1and5`` (text, category,
  rating), whose texts hold class words (one first letter per class), so probes can
  learn the labels;
* SAEs with known answers: :func:`rotated_identity_sae` and :func:`random_sae`.
"""

from __future__ import annotations

import json
import random
import string
from dataclasses import dataclass
from pathlib import Path

import torch

CONTEXT = 32
WORDS_PER_LETTER = 30
LETTER, SPLIT_SIGN = 3.0, 3.0  # embedding size of the first letter / of a split letter's sign
SPLIT = {"b": 40, "d": 41, "f": 42}  # letter -> the dimension holding its words' random sign
FILLER_LETTERS = "acepqrstuwxyz"  # filler words; class words start with one letter per class
PROFESSIONS = (0, 1, 2, 6, 9, 13, 21)  # class set 1, nurse (13) and professor (21)
CATEGORIES = (1, 2, 3, 5, 6)  # SAE-Bench's chosen amazon categories
SAE_PROBES_DATASET = "117_us_state_FL"
TEMPLATE_WORDS = ["has", "the", "first", "letter", ":", *string.ascii_uppercase]
SPECIALS = ["<|endoftext|>", "<|unk|>"]


@dataclass(frozen=True)
class World:
    model_dir: Path
    data_dir: Path
    d_model: int


def _letter_words(rng: random.Random) -> list[str]:
    words: set[str] = set()
    for letter in string.ascii_lowercase:
        while len([w for w in words if w[0] == letter]) < WORDS_PER_LETTER:
            tail = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 5)))
            words.add(letter + tail)
    return sorted(words)


def _sae_probes_words() -> list[str]:
    """The words of the sae-probes dataset used in the tests (read without importing it)."""
    import importlib.util

    import pandas as pd

    package = Path(importlib.util.find_spec("sae_probes").origin).parent
    frame = pd.read_csv(package / "data" / "cleaned_data" / f"{SAE_PROBES_DATASET}.csv.zst")
    words = {w for p in frame["prompt"] for w in p.replace(",", " ").split() if w.isalpha()}
    return sorted(words)


def vocabulary(rng: random.Random) -> list[str]:
    words = [*TEMPLATE_WORDS, *_letter_words(rng), *_sae_probes_words()]
    return SPECIALS + list(dict.fromkeys(words))


def build_model(folder: Path, vocab: list[str], d_model: int = 64, n_layers: int = 2) -> None:
    """Word-level tokenizer + GPT-2 whose embeddings hold each word's first letter."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, "<|unk|>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<|unk|>",
    )
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(vocab),
        n_positions=1024,
        n_embd=d_model,
        n_layer=n_layers,
        n_head=2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = GPT2LMHeadModel(config)
    embeddings = 0.3 * torch.randn(len(vocab), d_model)
    signs = torch.randint(0, 2, (len(vocab),)) * 2.0 - 1.0
    for index, word in enumerate(vocab):
        if word.isalpha():
            letter = word[0].lower()
            embeddings[index, string.ascii_lowercase.index(letter)] += LETTER
            if letter in SPLIT:
                embeddings[index, SPLIT[letter]] += SPLIT_SIGN * signs[index]
    with torch.no_grad():
        model.transformer.wte.weight.copy_(embeddings)
    model.save_pretrained(folder)


def _write_split(folder: Path, split: str, rows: list[dict]) -> None:
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(folder / f"{split}.parquet")


def _class_words(rng: random.Random, pool: list[str], classes: list) -> dict:
    """Four words per class, all starting with a letter of that class only."""
    letters = [c for c in string.ascii_lowercase if c not in FILLER_LETTERS and c not in SPLIT]
    return {
        key: rng.sample([w for w in pool if w[0] == letter], 4)
        for key, letter in zip(classes, letters, strict=False)
    }


def _text(rng: random.Random, filler: list[str], *marks: list[str]) -> str:
    words = rng.sample(filler, 8) + [rng.choice(m) for m in marks for _ in range(3)]
    rng.shuffle(words)
    return " ".join(words)


def build_data(folder: Path, rng: random.Random, pool: list[str]) -> None:
    """Stand-ins, of the hub datasets' schema, for what SAE-Bench loads by hub id."""
    filler = [w for w in pool if w[0] in FILLER_LETTERS]
    bios_marks = _class_words(rng, pool, [*PROFESSIONS, "male", "female"])
    review_marks = _class_words(rng, pool, [*CATEGORIES, 1.0, 5.0])
    for split, per_cell in (("train", 45), ("test", 25)):
        bios = [
            {
                "hard_text": _text(rng, filler, bios_marks[p], bios_marks[gender]),
                "profession": p,
                "gender": g,
            }
            for p in PROFESSIONS
            for g, gender in enumerate(("male", "female"))
            for _ in range(per_cell)
        ]
        _write_split(folder / "LabHC" / "bias_in_bios", split, bios)
        reviews = [
            {
                "text": _text(rng, filler, review_marks[c], review_marks[r]),
                "category": c,
                "rating": r,
            }
            for c in CATEGORIES
            for r in (1.0, 5.0)
            for _ in range(per_cell)
        ]
        _write_split(folder / "canrager" / "amazon_reviews_mcauley_1and5", split, reviews)
    text = folder / "Skylion007" / "openwebtext"
    text.mkdir(parents=True)
    with open(text / "train.jsonl", "w") as f:
        for _ in range(300):
            f.write(json.dumps({"text": " ".join(rng.choices(pool, k=60))}) + "\n")


def _rotation(d_in: int) -> torch.Tensor:
    """Identity, but 45-degree turns in the planes (letter, sign dimension) of SPLIT."""
    rotation = torch.eye(d_in)
    for letter, sign_dim in SPLIT.items():
        i, c = string.ascii_lowercase.index(letter), 0.5**0.5
        (
            rotation[i, i],
            rotation[sign_dim, i],
            rotation[i, sign_dim],
            rotation[sign_dim, sign_dim],
        ) = (
            c,
            c,
            -c,
            c,
        )
    return rotation


def rotated_identity_sae(world: World):
    """Standard SAE with latents relu(x R) and relu(-x R) at ``transformer.h.0``.

    It reconstructs exactly (R is orthogonal). R is the identity except for 45-degree
    turns that mix letter b, d or f with the dimension holding a random sign of that
    letter's words: each of these letters is split over two latents (one per sign);
    every other letter is one latent.
    """
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig

    metadata = SAEMetadata(
        model_name=str(world.model_dir),
        model_class_name="AutoModelForCausalLM",
        hook_name="transformer.h.0",  # a Hugging Face module, as `sae-lens train` writes it
        prepend_bos=True,
        context_size=CONTEXT,
    )
    d_in = world.d_model
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=2 * d_in, metadata=metadata))
    rotation = _rotation(d_in)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([rotation, -rotation], dim=1))
        sae.W_dec.copy_(torch.cat([rotation.T, -rotation.T], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def random_sae(world: World, architecture: str, d_sae: int, hook_name: str, seed: int = 1):
    """A random SAE of a registered architecture (unit-norm decoder rows, tied init)."""
    from sae_lens.registry import get_sae_class
    from sae_lens.saes.sae import SAEMetadata

    sae_class, config_class = get_sae_class(architecture)
    metadata = SAEMetadata(model_name=str(world.model_dir), hook_name=hook_name)
    sae = sae_class(config_class(d_in=world.d_model, d_sae=d_sae, metadata=metadata))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(world.d_model, d_sae, generator=generator) / world.d_model**0.5)
        sae.b_enc.fill_(-0.2)
        sae.W_dec.copy_(torch.nn.functional.normalize(sae.W_enc.T.clone(), dim=-1))
        sae.b_dec.zero_()
    return sae


def build_world(root: Path, d_model: int = 64, n_layers: int = 2, seed: int = 0) -> World:
    """Write the model and the data folder under ``root``."""
    rng = random.Random(seed)
    vocab = vocabulary(rng)
    # the model's weights from this seed, not from whatever ran before in the process (the
    # letter probes' F1, which absorption thresholds, depends on them)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        build_model(root / "model", vocab, d_model, n_layers)
    pool = [w for w in vocab[len(SPECIALS) + len(TEMPLATE_WORDS) :] if w.isalpha()]
    build_data(root / "data", rng, pool)
    return World(root / "model", root / "data", d_model)
