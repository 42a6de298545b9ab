"""Ground-truth feature absorption on ``sae_lens.synthetic`` hierarchies.

SAEBench's absorption eval has to guess the features (first-letter probes on an LLM).
On SAELens's synthetic activations the features, their magnitudes and their
parent/child hierarchy are known, so absorption can be counted directly.

Definition (what :func:`synthetic_absorption` computes)
-------------------------------------------------------
Notation: ground-truth feature ``i`` has unit direction ``f_i`` (a row of
``feature_dict.feature_vectors``) and magnitude ``m_i(x) >= 0`` in sample ``x``, which
contains ``m_i(x) f_i``. Latent ``j`` of the SAE has activation ``a_j(x)`` and
*effective decoder row* ``w_j = decode(e_j) - decode(0)``: what one unit of the latent
adds to the reconstruction. (This is ``W_dec[j]`` for ``standard``; it also covers
``rescale_acts_by_decoder_norm`` in TopK-family SAEs.)

1. **Matching.** Each ground-truth feature ``i`` is matched to one latent ``pi(i)`` by
   the Hungarian assignment on ``|cos(f_i, w_j)|`` -- the one-to-one matching behind
   SAELens's MCC (``sae_lens.synthetic.mean_correlation_coefficient``), so
   ``matched_mcc`` here equals that MCC.
2. **Carried share.** In sample ``x`` the latent carries the share
   ``r_i(x) = a_pi(i)(x) <w_pi(i), f_i> / m_i(x)`` of feature ``i``: the component of
   the latent's reconstruction along ``f_i`` as a fraction of the feature's true
   contribution. Feature ``i`` is *represented* in ``x`` when ``r_i(x) >= min_share``
   (default 0.25: the latent must carry at least a quarter of the feature's
   magnitude). Why not 0.5: an L1-trained SAE shrinks every activation, and on the
   benchmark's hierarchy a ``standard`` SAE's parent latent carries a median 30-60% of
   a parent that fires *alone*, so at 0.5 shrinkage would read as absorption; an
   absorbed parent's latent carries a median 0 when its child fires.
3. **Absorption** of a parent/child pair ``(p, c)`` (``c`` fires only when ``p`` fires):
   the share of samples in which both are active (``m_p > 0`` and ``m_c > 0``) but
   ``p`` is not represented. 0 = the parent latent always carries the parent;
   1 = whenever the child fires, the parent latent is silent (or carries less than
   ``min_share`` of it) and, if the reconstruction is good, the child's latent has
   swallowed the parent direction.
4. **Parent recall alone** of a parent ``p``: the share of samples with ``p`` active and
   none of its children active in which ``p`` is represented. A dead or mismatched
   parent latent has absorption 1 *and* recall 0; a genuinely absorbing SAE has
   absorption near 1 with recall near 1. Read the two together.
   ``absorption_beyond_misses = absorption - (1 - recall_alone)`` is absorption in
   excess of what the parent latent's plain misses would explain.

Pairs with fewer than ``min_samples`` co-active samples (and parents with fewer than
``min_samples`` child-free samples) are left out of the means and counted in
``n_pairs_skipped``.

Only direct edges between feature-carrying nodes are pairs: in ``sae_lens.synthetic``
the children of an organisational node (``feature_index=None``) are not gated by
anything, so they have no parent to absorb.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from sae_lens.saes.sae import SAE
from sae_lens.synthetic import SyntheticModel
from sae_lens.synthetic.hierarchy import HierarchyNode
from sae_lens.util import cosine_similarities, temporary_seed
from scipy.optimize import linear_sum_assignment


@dataclass
class SyntheticAbsorptionConfig:
    """How :func:`synthetic_absorption` samples and counts."""

    min_share: float = 0.25
    """Share of a feature's true magnitude its matched latent must carry, along the
    feature's direction, for the feature to count as represented; in (0, 1]."""

    num_samples: int = 200_000
    """Samples drawn from the synthetic model (>= 1)."""

    batch_size: int = 4096
    """Samples encoded at a time (>= 1). For BatchTopK-family training SAEs, whose top-k
    is taken over the batch, use the training batch size."""

    min_samples: int = 20
    """Pairs with fewer co-active samples, and parents with fewer child-free active
    samples, are left out of the means (>= 1)."""

    seed: int | None = 0
    """Seed of the evaluation samples (the global RNG is restored afterwards); None uses
    the global RNG as it stands."""

    def __post_init__(self) -> None:
        if not 0.0 < self.min_share <= 1.0:
            raise ValueError(
                f"min_share={self.min_share!r} is invalid: it must lie in (0, 1] "
                "(a share of the feature's magnitude)"
            )
        for name in ("num_samples", "batch_size", "min_samples"):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"{name}={value!r} is invalid: it must be >= 1")


@dataclass
class PairAbsorption:
    """Absorption of one parent/child pair. Indices are ground-truth features and SAE
    latents; rates are ``nan`` when they had too few samples."""

    parent: int
    child: int
    parent_latent: int
    child_latent: int
    parent_cos: float
    """cos(f_parent, effective decoder row of the parent's latent)."""
    child_cos: float
    n_coactive: int
    """Samples in which parent and child are both active."""
    absorption: float
    """Share of co-active samples in which the parent is not represented."""
    mean_parent_share_coactive: float
    """Mean carried share r_parent over the co-active samples."""
    child_recall: float
    """Share of co-active samples in which the child is represented."""


@dataclass
class ParentRecall:
    """How often a parent's latent carries it when none of its children fire."""

    parent: int
    parent_latent: int
    n_alone: int
    recall_alone: float
    mean_share_alone: float


@dataclass
class SyntheticAbsorptionResult:
    """Ground-truth absorption of an SAE on a synthetic hierarchy (definitions in the
    module docstring). Means are over pairs (parents) with enough samples."""

    absorption: float
    """Mean absorption rate over parent/child pairs."""
    parent_recall_alone: float
    """Mean over pairs of their parent's recall when no child fires."""
    absorption_beyond_misses: float
    """Mean over pairs of absorption - (1 - parent recall alone)."""
    child_recall: float
    """Mean over pairs of the child's recall when both fire."""
    parent_share_coactive: float
    """Mean over pairs of the parent's mean carried share when both fire."""
    parent_share_alone: float
    """Mean over pairs of their parent's mean carried share when no child fires. Its
    ratio to ``parent_share_coactive`` is a threshold-free view of absorption that
    ignores uniform shrinkage."""
    n_pairs: int
    n_pairs_skipped: int
    n_parents_missed: int
    """Parents whose latent represents them in fewer than half of their child-free
    samples: for these, high absorption is (also) a missing parent latent."""
    matched_mcc: float
    """Mean |cos| of the matching (equals SAELens's MCC)."""
    min_share: float
    pairs: list[PairAbsorption] = field(default_factory=list)
    parents: list[ParentRecall] = field(default_factory=list)

    def to_dict(self, with_pairs: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not with_pairs:
            d.pop("pairs")
            d.pop("parents")
        return d


def parent_child_pairs(roots: list[HierarchyNode]) -> list[tuple[int, int]]:
    """``(parent, child)`` feature indices of every direct edge of the forest whose two
    nodes carry features, in depth-first order."""
    pairs: list[tuple[int, int]] = []
    stack = list(reversed(roots))
    while stack:
        node = stack.pop()
        for child in node.children:
            if node.feature_index is not None and child.feature_index is not None:
                pairs.append((node.feature_index, child.feature_index))
        stack.extend(reversed(node.children))
    return pairs


@torch.no_grad()
def effective_decoder(sae: SAE[Any]) -> torch.Tensor:
    """``(d_sae, d_in)``: row ``j`` is ``decode(e_j) - decode(0)``, what one unit of
    latent ``j`` adds to the reconstruction, whatever the architecture's decoder
    rescaling."""
    eye_SS = torch.eye(sae.cfg.d_sae, dtype=sae.W_dec.dtype, device=sae.W_dec.device)
    zero_1S = torch.zeros_like(eye_SS[:1])
    return sae.decode(eye_SS) - sae.decode(zero_1S)


@torch.no_grad()
def match_features_to_latents(
    features_FD: torch.Tensor, decoder_SD: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hungarian matching of ground-truth features to latents on ``|cos|``, the
    matching of SAELens's MCC. Returns ``(latent_F, abs_cos_F)``: the latent matched to
    each feature (-1 when there are fewer latents than features) and its |cos|."""
    abs_cos_FS = cosine_similarities(features_FD, decoder_SD).abs()
    rows, cols = linear_sum_assignment(1 - abs_cos_FS.float().cpu().numpy())
    latent_F = torch.full((features_FD.shape[0],), -1, dtype=torch.long)
    abs_cos_F = torch.zeros(features_FD.shape[0])
    latent_F[rows] = torch.as_tensor(cols, dtype=torch.long)
    abs_cos_F[rows] = abs_cos_FS[rows, cols].cpu()
    return latent_F, abs_cos_F


@torch.no_grad()
def carried_shares(
    sae: SAE[Any], mags_NF: torch.Tensor, x_ND: torch.Tensor,
    latent_F: torch.Tensor, gain_F: torch.Tensor,
) -> torch.Tensor:
    """``(N, F)``: the share ``r_i(x)`` of each active feature carried by its matched
    latent (0 where the feature is inactive or unmatched)."""
    acts_NS = sae.encode(x_ND)
    if acts_NS.is_sparse:
        acts_NS = acts_NS.to_dense()
    carried_NF = acts_NS[:, latent_F.clamp_min(0)] * gain_F  # along f_i, in units of |f_i|
    active_NF = mags_NF > 0
    share_NF = torch.zeros_like(mags_NF)
    share_NF[active_NF] = carried_NF[active_NF] / mags_NF[active_NF]
    share_NF[:, latent_F < 0] = 0.0
    return share_NF


@torch.no_grad()
def synthetic_absorption(
    sae: SAE[Any],
    model: SyntheticModel,
    cfg: SyntheticAbsorptionConfig | None = None,
) -> SyntheticAbsorptionResult:
    """Ground-truth absorption of ``sae`` on ``model``'s hierarchy (see module docstring)."""
    cfg = cfg or SyntheticAbsorptionConfig()
    if model.hierarchy is None or not (pairs := parent_child_pairs(model.hierarchy.roots)):
        raise ValueError(
            "model.hierarchy has no parent/child pair: absorption needs a synthetic model "
            "built with a HierarchyConfig (or a Hierarchy) whose nodes carry features"
        )
    if sae.cfg.d_in != model.cfg.hidden_dim:
        raise ValueError(
            f"sae.cfg.d_in={sae.cfg.d_in} is invalid for this model: it must equal "
            f"model.cfg.hidden_dim={model.cfg.hidden_dim}"
        )
    sae.eval()
    device, dtype = sae.W_dec.device, sae.W_dec.dtype
    features_FD = model.feature_dict.feature_vectors.to(device, dtype)
    decoder_SD = effective_decoder(sae)
    latent_F, abs_cos_F = match_features_to_latents(features_FD, decoder_SD)
    latent_F = latent_F.to(device)
    matched_F = latent_F >= 0
    # gain_F[i]: the component along f_i, in units of f_i, of one unit of its latent.
    matched_rows_FD = decoder_SD[latent_F.clamp_min(0)]
    gain_F = (matched_rows_FD * features_FD).sum(-1) / features_FD.pow(2).sum(-1) * matched_F
    cos_F = torch.nn.functional.cosine_similarity(matched_rows_FD, features_FD, dim=-1) * matched_F

    parents = sorted({p for p, _ in pairs})
    parent_P = torch.tensor(parents, device=device)
    parent_Q = torch.tensor([p for p, _ in pairs], device=device)
    child_Q = torch.tensor([c for _, c in pairs], device=device)
    parent_index_Q = torch.tensor([parents.index(p) for p, _ in pairs])
    is_child_FP = torch.zeros(features_FD.shape[0], len(parents), device=device, dtype=dtype)
    is_child_FP[child_Q, parent_index_Q.to(device)] = 1.0

    def zeros(n: int) -> torch.Tensor:
        return torch.zeros(n, dtype=torch.float64)

    n_both_Q, missed_Q, share_both_Q, child_hit_Q = (zeros(len(pairs)) for _ in range(4))
    n_alone_P, hit_alone_P, share_alone_P = (zeros(len(parents)) for _ in range(3))
    with temporary_seed(cfg.seed):
        for start in range(0, cfg.num_samples, cfg.batch_size):
            mags_NF = model.activation_generator.sample(min(cfg.batch_size, cfg.num_samples - start))
            if mags_NF.is_sparse:
                mags_NF = mags_NF.to_dense()
            x_ND = model.feature_dict(mags_NF).to(device, dtype)
            mags_NF = mags_NF.to(device, dtype)
            share_NF = carried_shares(sae, mags_NF, x_ND, latent_F, gain_F)
            active_NF = mags_NF > 0
            represented_NF = active_NF & (share_NF >= cfg.min_share)

            both_NQ = active_NF[:, parent_Q] & active_NF[:, child_Q]
            n_both_Q += both_NQ.sum(0).cpu()
            missed_Q += (both_NQ & ~represented_NF[:, parent_Q]).sum(0).cpu()
            share_both_Q += (share_NF[:, parent_Q] * both_NQ).sum(0).cpu()
            child_hit_Q += (both_NQ & represented_NF[:, child_Q]).sum(0).cpu()

            alone_NP = active_NF[:, parent_P] & (active_NF.to(dtype) @ is_child_FP == 0)
            n_alone_P += alone_NP.sum(0).cpu()
            hit_alone_P += (alone_NP & represented_NF[:, parent_P]).sum(0).cpu()
            share_alone_P += (share_NF[:, parent_P] * alone_NP).sum(0).cpu()

    def rate(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
        return torch.where(den >= cfg.min_samples, num / den.clamp_min(1), torch.nan)

    absorption_Q = rate(missed_Q, n_both_Q)
    parent_share_Q = rate(share_both_Q, n_both_Q)
    child_recall_Q = rate(child_hit_Q, n_both_Q)
    recall_P = rate(hit_alone_P, n_alone_P)
    mean_share_alone_P = rate(share_alone_P, n_alone_P)
    recall_Q = recall_P[parent_index_Q]
    valid_Q = ~absorption_Q.isnan() & ~recall_Q.isnan()

    def mean(values: torch.Tensor) -> float:
        return values[valid_Q].mean().item() if valid_Q.any() else float("nan")

    latent = latent_F.tolist()
    return SyntheticAbsorptionResult(
        absorption=mean(absorption_Q),
        parent_recall_alone=mean(recall_Q),
        absorption_beyond_misses=mean(absorption_Q - (1 - recall_Q)),
        child_recall=mean(child_recall_Q),
        parent_share_coactive=mean(parent_share_Q),
        parent_share_alone=mean(mean_share_alone_P[parent_index_Q]),
        n_pairs=int(valid_Q.sum()),
        n_pairs_skipped=int((~valid_Q).sum()),
        n_parents_missed=int((recall_P < 0.5).sum()),
        matched_mcc=abs_cos_F[matched_F.cpu()].mean().item() if matched_F.any() else 0.0,
        min_share=cfg.min_share,
        pairs=[
            PairAbsorption(
                parent=p,
                child=c,
                parent_latent=latent[p],
                child_latent=latent[c],
                parent_cos=cos_F[p].item(),
                child_cos=cos_F[c].item(),
                n_coactive=int(n_both_Q[q]),
                absorption=absorption_Q[q].item(),
                mean_parent_share_coactive=parent_share_Q[q].item(),
                child_recall=child_recall_Q[q].item(),
            )
            for q, (p, c) in enumerate(pairs)
        ],
        parents=[
            ParentRecall(
                parent=p,
                parent_latent=latent[p],
                n_alone=int(n_alone_P[k]),
                recall_alone=recall_P[k].item(),
                mean_share_alone=mean_share_alone_P[k].item(),
            )
            for k, p in enumerate(parents)
        ],
    )
