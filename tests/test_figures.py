"""Bar panels of ``all_metrics.png`` and the comparison figures, in edge cases: every mark
stays inside its panel, and a panel without values, or whose values are all 0, says so
on a sane axis (no ``1e-17`` scale)."""

from __future__ import annotations

from sae_lens_ext.run.figures import NA, build_metric_bars, build_training_curves


def _inside(fig, ax) -> bool:
    fig.canvas.draw()
    box = ax.get_window_extent()
    return all(
        box.y0 - 1 <= t.get_window_extent().y0 and t.get_window_extent().y1 <= box.y1 + 1
        for t in ax.texts
    )


def test_missing_zero_and_tiny_values_are_drawn_inside_sane_panels():
    runs = {
        "a": {"neg": -0.9, "zero": 0.0, "tiny": 1e-17, "mixed": 0.0},
        "b": {"zero": 0, "tiny": -2e-18},
    }
    keys = [("neg", "negative, b lacks it"), ("zero", "all zero"), ("tiny", "float noise"),
            ("mixed", "0 and n/a"), ("none", "no run has it")]  # fmt: skip
    fig = build_metric_bars(runs, keys)
    fig.tight_layout()
    neg, zero, tiny, mixed, none = fig.axes[:5]
    for ax in (neg, zero, tiny, mixed, none):
        assert _inside(fig, ax), ax.get_title()  # "n/a" used to sit on the title
        assert ax.yaxis.get_offset_text().get_text() == ""  # no 1e-17 offset over the title
    assert [t.get_text() for t in neg.texts].count(NA) == 1
    assert neg.get_ylim()[0] < -0.9
    for ax, says in ((zero, "0 for every run"), (tiny, "0 for every run"),
                     (mixed, "0 where measured"), (none, "n/a: no run has this metric")):  # fmt: skip
        assert ax.get_ylim() == (-1.0, 1.0), ax.get_title()
        assert says in [t.get_text() for t in ax.texts], ax.get_title()


def test_short_logs_draw_visible_points():
    one = [{"step": 1, "loss": 2.0, "mse_loss": 1.5}]
    fig = build_training_curves({"short": one})
    (line,) = fig.axes[0].get_lines()
    assert line.get_marker() == "o" and len(line.get_xdata()) == 1
