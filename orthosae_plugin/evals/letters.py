"""What the absorption eval measures per letter: the table the alarm reads.

:func:`per_letter_table` joins SAEBench's k-sparse probing metrics and its per-letter
absorption scores; :func:`letter_projection_carried` adds how much of each letter's
projection latents aligned with the letter's probe carry.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from sae_bench.evals.absorption.eval_config import AbsorptionEvalConfig
from sae_bench.evals.absorption.vocab import LETTERS
from sae_lens import SAE

SCORE_COLUMNS = ("mean_absorption_fraction", "full_absorption_rate", "num_split_features",
                 "num_full_absorption", "num_probe_true_positives")
"""SAEBench's per-letter absorption numbers (NaN for letters it does not score)."""


@torch.no_grad()
def letter_projection_carried(sae: SAE, probe_weights_LD: torch.Tensor, acts_ND: torch.Tensor,
                              labels_N: list[int], level: float) -> dict[str, float]:
    """Per letter: the share of the SAE's projection onto the letter's probe direction that
    is carried by latents aligned with that direction beyond chance.

    For each test word of letter l, with ``u`` the unit probe direction of l, latent
    activations ``f`` and unit decoder rows ``d``: ``sum(f_i (d_i . u) over latents with
    d_i . u > level) / sum(f_i max(d_i . u, 0) over all latents)``, averaged over the
    letter's words (words with no positive projection count 0). A letter latent and the
    latents that absorb it both point along ``u`` (an absorbing latent's decoder carries
    the letter direction: that is what absorption is), so heavy absorption leaves this
    near 1; a random or untrained dictionary spreads the projection over latents no more
    aligned than chance, and it is near 0. `level` is the cosine one random direction
    rarely exceeds (:func:`~orthosae_plugin.evals.alarm.single_direction_level`): an
    absorbing latent's decoder mixes the letter with its token's direction, so it can be
    far less aligned than the letter latent and still carry the letter.
    """
    dec_SD = torch.nn.functional.normalize(sae.W_dec.detach().float(), dim=-1)
    unit_LD = torch.nn.functional.normalize(probe_weights_LD.float().to(dec_SD.device), dim=-1)
    cos_SL = dec_SD @ unit_LD.T
    labels = torch.tensor(labels_N, device=dec_SD.device)
    shares: dict[str, float] = {}
    for letter_idx, letter in enumerate(LETTERS):
        acts = acts_ND[labels == letter_idx]
        if len(acts) == 0:
            shares[letter] = float("nan")
            continue
        feats_NS = sae.encode(acts.to(dtype=sae.dtype)).float()
        cos_S = cos_SL[:, letter_idx]
        total_N = feats_NS @ cos_S.clamp(min=0)
        aligned_N = feats_NS @ torch.where(cos_S > level, cos_S, torch.zeros_like(cos_S))
        share_N = torch.where(total_N > 0, aligned_N / total_N.clamp(min=1e-12),
                              torch.zeros_like(total_N))
        shares[letter] = float(share_N.mean())
    return shares


def per_letter_table(metrics_df: pd.DataFrame, agg_df: pd.DataFrame,
                     config: AbsorptionEvalConfig) -> pd.DataFrame:
    """One row per letter: probe F1s and decoder cosines from SAEBench's k-sparse probing
    metrics, and its
    per-letter absorption numbers (aggregated as main.py does) for the letters it scores,
    i.e. whose ground-truth probe F1 exceeds ``config.min_GT_probe_f1``; NaN elsewhere."""
    scores = agg_df.rename(columns={"num_split_feats": "num_split_features"})[
        ["letter", *SCORE_COLUMNS]
    ]
    table = pd.DataFrame({
        "letter": metrics_df["letter"],
        "gt_probe_f1": metrics_df["f1_probe"].astype(float),
        "k1_probe_f1": metrics_df["f1_sparse_sae_1"].astype(float),
        # cosine of the k=1 latent's decoder row with the probe (an array of length k)
        "k1_decoder_probe_cos": [float(c[0]) for c in metrics_df["cos_probe_sae_dec_k_1"]],
        # the best-aligned decoder among the latents SAEBench's k-sparse probe ranks
        # highest for the letter (its k = max_k_value latents, the k=1 latent included)
        "best_decoder_probe_cos": [
            float(max(c)) for c in metrics_df[f"cos_probe_sae_dec_k_{config.max_k_value}"]],
    }).merge(scores, on="letter", how="left")
    table.loc[table["gt_probe_f1"] <= config.min_GT_probe_f1, list(SCORE_COLUMNS)] = np.nan
    return table.reset_index(drop=True)
