"""Parsing and validation of loss-term specs (no torch needed)."""

import pytest

from sae_lens_ext.training.loss_terms import LossTerm, LossTermSpec, parse_loss_terms, parse_options


def test_parse_full_spec():
    assert parse_loss_terms("a=0.5@100, b_2=2, c") == [
        LossTermSpec("a", 0.5, 100),
        LossTermSpec("b_2", 2.0, 0),
        LossTermSpec("c", 1.0, 0),
    ]
    assert parse_loss_terms("") == []


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("a=-1", "must be >= 0"),
        ("a=1@-3", "warm-up of 'a' must be >= 0"),
        ("a=x", "bad number"),
        ("A=1", "cannot parse"),
        ("a=1,a=2", "given twice"),
        ("a=nan", "must be >= 0"),
    ],
)
def test_parse_errors_name_the_field(spec, message):
    with pytest.raises(ValueError, match=message) as err:
        parse_loss_terms(spec)
    assert str(err.value).startswith("loss_terms:")


def test_parse_options():
    assert parse_options("k=1, w = x") == {"k": "1", "w": "x"}
    with pytest.raises(ValueError, match="loss_term_options"):
        parse_options("novalue")


def test_loss_term_name_must_be_snake_case():
    with pytest.raises(ValueError, match="lower_snake_case"):
        LossTerm(name="Bad-Name", fn=lambda ctx: 0)
