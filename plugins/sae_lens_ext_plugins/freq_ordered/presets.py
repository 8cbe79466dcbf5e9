"""Named presets of ``freq_ordered``: the research log's runs 2 to 9, and the defaults before
the prefix mode. Measured on the ground-truth benchmark (docs/benchmarks-freq-ordered.md),
which trains every preset as it is written here.

The log's runs are cumulative (each keeps what the earlier ones added) and know neither the
periodic sort nor the prefix term, so every ``log-run-N`` switches both off and uses the L1
scale of upstream ``standard`` (1.0; the log's 0.04 was on its own data's scale).
"""

from __future__ import annotations

from typing import Any

from sae_lens_ext.api import Preset

ARCHITECTURE = "freq_ordered"

#: No sort, no prefix term, no warm-up unless the run has one: what every log run starts from.
LOG_BASE: dict[str, Any] = {
    "l1_coefficient": 1.0,
    "sort_latents_every": 0,
    "prefix_coefficient": 0.0,
    "ordering_warm_up_steps": 0,
}
RUN_2 = {**LOG_BASE, "ordering_coefficient": 0.3}
# the log: "0 to 0.5 over the first 1000 batches" of its 4,882: about a fifth of the run
# (ordering_warm_up_steps left at its default, None, so that the fraction applies)
RUN_3 = {k: v for k, v in RUN_2.items() if k != "ordering_warm_up_steps"}
RUN_3.update(ordering_coefficient=0.5, ordering_warm_up_fraction=0.2)
RUN_4 = {**RUN_3, "resample_dead_every": 1000}
RUN_5 = {**RUN_4, "adaptive_l1": True}
RUN_7 = {**RUN_5, "layer_norm": True}
RUN_8 = {**RUN_7, "skip_projection": True, "skip_scale": 0.1}
RUN_9 = {**RUN_8, "attention": True, "attention_window": 8}

#: name -> (settings, description); ``measured`` comes from :data:`MEASURED`.
DEFINITIONS: dict[str, tuple[dict[str, Any], str]] = {
    "log-run-2": (RUN_2, "log run 2: the ordering loss at 0.3, no sort, no prefix term"),
    "log-run-3": (RUN_3, "log run 3: the ordering loss ramped 0 -> 0.5 over a fifth of the run"),
    "log-run-4": (RUN_4, "log run 4: run 3 + dead-latent resampling every 1000 steps"),
    "log-run-5": (RUN_5, "log run 5: run 4 + the adaptive L1 (scaled by reconstruction cosine)"),
    "log-run-6": (
        RUN_5,
        "log run 6: run 5 + gradient clipping at 1.0, which SAE-Lens's trainer always does "
        "(the same settings as log-run-5)",
    ),
    "log-run-7": (RUN_7, "log run 7: run 6 + LayerNorm on the pre-activations"),
    "log-run-8": (RUN_8, "log run 8: run 7 + the skip projection (scale 0.1)"),
    "log-run-9": (
        RUN_9,
        "log run 9: run 8 + causal self-attention within windows of 8 consecutive positions "
        "(needs a sequence axis: sae-lens train serves whole windows)",
    ),
    "no-prefix": (
        {"l1_coefficient": 1.0, "prefix_coefficient": 0.0},
        "the defaults before the prefix mode: ordering loss 0.3 and the periodic sort, no "
        "prefix term, l1_coefficient 1 (no prefix payoff; MCC and seed consistency at "
        "standard's L0)",
    ),
}

#: What each preset measured on the benchmark (docs/benchmarks-freq-ordered.md, run of
#: 2026-12-06; resampling there every 146 of its 585 steps): ground-truth MCC, explained
#: variance, L0, dead latents, prefix explained variance at 10 / 25 / 50 % of the latents.
MEASURED: dict[str, str] = {
    "log-run-2": "MCC 0.627, EV 0.427, L0 23.8, 80 dead, prefix EV 0.001 / 0.032 / 0.141",
    "log-run-3": "MCC 0.643, EV 0.428, L0 21.8, 74 dead, prefix EV 0.005 / 0.040 / 0.146",
    "log-run-4": "MCC 0.643, EV 0.428, L0 21.8, 74 dead, prefix EV 0.005 / 0.040 / 0.146",
    "log-run-5": "MCC 0.779, EV 0.550, L0 14.4, 0 dead, prefix EV 0.009 / 0.097 / 0.242",
    "log-run-6": "MCC 0.779, EV 0.550, L0 14.4, 0 dead, prefix EV 0.009 / 0.097 / 0.242 (the settings of log-run-5)",
    "log-run-7": "MCC 0.690, EV 0.576, L0 22.8, 52 dead, prefix EV 0.044 / 0.117 / 0.245",
    "log-run-8": "MCC 0.702, EV 0.573, L0 21.8, 50 dead, prefix EV 0.045 / 0.114 / 0.247",
    "log-run-9": "MCC 0.723, EV 0.577, L0 20.0, 53 dead, prefix EV 0.052 / 0.130 / 0.273",
    "no-prefix": "MCC 0.756, EV 0.496, L0 10.3, 3 dead, prefix EV 0.088 / 0.163 / 0.296, seed consistency 0.808",
}


def presets() -> list[Preset]:
    return [
        Preset(name, ARCHITECTURE, settings, description, MEASURED.get(name, ""))
        for name, (settings, description) in DEFINITIONS.items()
    ]
