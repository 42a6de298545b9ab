"""The decoder-orthogonality term of ``ortho_contrastive`` as an object.

:class:`OrthogonalityTerm` takes the unit decoder rows ``(d_sae, d_in)`` and the training
step and gives the term's loss, as the config asks: the threshold annealed over the
steps (``ortho_threshold_*``, ``ortho_anneal_steps``), the mode (``ortho_mode``: the
exact blockwise kernel, random chunks, the close-pair list, or OrtSAE's penalty), the
lazy schedule (``ortho_lazy_every``, ``ortho_lazy_mode``) and, on the Matryoshka base,
the pairs in scope (:class:`MatryoshkaPairScope`, a filter of the pairs). It holds the
state those need between steps:

- :class:`ClosePairList`, the close-pair list's whole life: the scan, the movement
  ("drift") check that proves that no pair left out of the list can contribute, the plan
  of the next scan, and the counters the benchmarks read;
- in 'reuse' mode, the value and gradient computed at the last computing step.

None of it is saved: the buffers are non-persistent, so the SAE's ``state_dict`` is the
same with or without the term, and the first step after construction or a load scans
and computes again. The kernels it calls are the pure functions of ``orthogonality.py``;
the maths, and why the list's loss is exact, are in docs/method.md.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from orthosae_plugin.orthogonality import (
    ORTHO_MATMUL_DTYPES,
    close_pair_scan,
    drift_bound,
    estimated_close_pairs,
    matryoshka_ortho_penalty,
    max_listed_pairs,
    ortho_penalty_chunked,
    ortho_penalty_exact,
    ortho_penalty_pairs,
    ortho_threshold,
    pair_row_pointers,
)
from orthosae_plugin.ortsae import ortsae_penalty

# Added to the movement bound of the 'close_pairs' check: the scan's and the step's
# cosines come from different kernels, which round differently (~1e-6 in fp32).
DRIFT_ROUNDING_ALLOWANCE = 1e-4


class MatryoshkaPairScope:
    """The pairs that ``matryoshka_ortho_pairs`` ('within_groups' or 'across_groups')
    keeps: of latents added by the same prefix level, or by different ones. It reads
    ``cfg.matryoshka_widths`` when it is used (SAELens appends d_sae to them when it
    builds the SAE)."""

    def __init__(self, cfg: Any):
        self.cfg = cfg

    def filter(self, pairs_P2: torch.Tensor) -> torch.Tensor:
        """The pairs of a close-pair list in scope (still symmetric and sorted)."""
        widths_W = torch.tensor(self.cfg.matryoshka_widths, device=pairs_P2.device)
        group_P2 = torch.bucketize(pairs_P2, widths_W, right=True)
        same_P = group_P2[:, 0] == group_P2[:, 1]
        return pairs_P2[same_P if self.cfg.matryoshka_ortho_pairs == "within_groups" else ~same_P]

    def exact(self, D_nd: torch.Tensor, tau: float, block_size: int, matmul_dtype: torch.dtype | None) -> torch.Tensor:
        """The term over the pairs in scope, blockwise over all pairs."""
        return matryoshka_ortho_penalty(
            D_nd, tau, self.cfg.matryoshka_widths, self.cfg.matryoshka_ortho_pairs, block_size, matmul_dtype
        )


class ClosePairList(nn.Module):
    """The 'close_pairs' mode's list of decoder pairs whose |cos| exceeds the list's
    threshold ``L`` (the current one minus ``ortho_margin``), with the unit rows at the
    scan that built it.

    An unlisted pair had ``|C| <= L`` at the scan, so now ``|C| <= L + drift`` with
    ``drift = m_1 + m_2``, the two largest row movements since the scan
    (:func:`drift_bound`): while ``drift < tau - L``, the listed pairs are all the pairs
    that contribute, and the list's loss is the exact loss. :meth:`missed_a_pair` checks
    that after each step computed on the list.

    Buffers (non-persistent): ``pairs`` ``(P, 2)``, None until a scan or while the list
    would be over-full; ``rows``, its CSR row pointers; ``scan_decoder`` ``(d_sae, d_in)``,
    the unit rows at the scan.
    """

    pairs: torch.Tensor | None
    rows: torch.Tensor | None
    scan_decoder: torch.Tensor | None
    scan_step: int
    """The step of the last scan (-1: none)."""
    scans: int
    """Scans run (tried ones included), for the benchmarks."""
    scans_skipped: int
    """Retries of an over-full list that a sample of rows showed to be over full still,
    so that no scan ran (:func:`estimated_close_pairs`), for the benchmarks."""
    recomputed_steps: int
    """Steps recomputed after the movement check failed, for the benchmarks."""

    def __init__(self, cfg: Any):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("pairs", None, persistent=False)
        self.register_buffer("scan_decoder", None, persistent=False)
        self.register_buffer("rows", None, persistent=False)
        self.scans = 0
        self.scans_skipped = 0
        self.recomputed_steps = 0
        # The rows' movement per step, measured at each check: how soon the next scan is
        # due. A property of the optimisation, so it survives forget().
        self._pace = 0.0
        self.forget()

    def forget(self) -> None:
        """Drop the list: the next step that needs it scans again."""
        self.pairs = None
        self.rows = None
        self.scan_decoder = None
        self.scan_step = -1
        self._threshold = 0.0
        self._rescan_next = False

    def at(self, step: int, D_nd: torch.Tensor, tau: float) -> torch.Tensor | None:
        """The list serving ``step`` (threshold ``tau``) for the unit rows ``D_nd``
        (detached); None while it would be over-full.

        Scans after construction or a state-dict load, when the movement check of an
        earlier step asked for it, when the clock went back, and, while the list is
        over-full, every ``ortho_rescan_every`` steps.
        """
        cfg, scan_step = self.cfg, self.scan_step
        due = (
            scan_step < 0
            or self._rescan_next
            or step < scan_step
            or (self.pairs is None and step - scan_step >= cfg.ortho_rescan_every)
        )
        if due:
            n = D_nd.shape[0]
            max_pairs = max_listed_pairs(n, cfg.ortho_max_pair_fraction, cfg.ortho_max_pairs_per_latent)
            threshold = max(tau - cfg.ortho_margin, 0.0)
            retry = 0 <= scan_step <= step and self.pairs is None
            if retry and estimated_close_pairs(D_nd, threshold) > 2 * max_pairs:
                # Over-full still, by a wide margin, on a sample of rows: no scan (the
                # sample costs a few rows of one; the step computes without a list).
                self.scans_skipped += 1
            else:
                self.pairs = close_pair_scan(D_nd, threshold, cfg.ortho_block_size, max_pairs=max_pairs,
                                             matmul_dtype=ORTHO_MATMUL_DTYPES[cfg.ortho_matmul_dtype])
                self.scans += 1
            listed = self.pairs is not None
            self.scan_decoder = D_nd.clone() if listed else None
            self.rows = pair_row_pointers(self.pairs, n) if listed else None
            self.scan_step = step
            self._threshold = threshold
            self._rescan_next = False
        return self.pairs

    def missed_a_pair(self, step: int, drift: float, tau: float, tau_next: float) -> bool:
        """After a step computed on the list, with the movement ``drift`` since the scan
        and the threshold ``tau`` of that step: True if an unlisted pair may have
        contributed, so that the caller must recompute the step (the next call of
        :meth:`at` scans again; counted in ``recomputed_steps``). Otherwise plans the
        next computing step's scan (``tau_next``: its threshold)."""
        if step > self.scan_step:  # the rows' pace: movement per step since the scan
            self._pace = drift / (step - self.scan_step)
        if drift >= tau - self._threshold - DRIFT_ROUNDING_ALLOWANCE:
            self._rescan_next = True
            self.recomputed_steps += 1
            return True
        self.plan_next_scan(drift, tau_next)
        return False

    def plan_next_scan(self, drift: float, tau_next: float) -> None:
        """Scan at the next computing step (``ortho_lazy_every`` steps on, threshold
        ``tau_next``) if the rows, at twice their pace since the last scan, would use up
        the slack by then (a guess that saves recomputing a step; the check after that
        step is what makes the loss exact)."""
        predicted = drift + 2.0 * self._pace * self.cfg.ortho_lazy_every
        if predicted >= tau_next - self._threshold - DRIFT_ROUNDING_ALLOWANCE:
            self._rescan_next = True


class OrthogonalityTerm(nn.Module):
    """The thresholded decoder-orthogonality term of an ``ortho_contrastive`` config.

    ``term(D_nd, step, coefficient)`` is the loss ``coefficient`` x the term at ``step``
    on the unit decoder rows ``D_nd`` ``(d_sae, d_in)``, with the lazy schedule applied;
    :meth:`penalty` is the term itself at a given threshold. It reads the config when it
    is called (the anneal horizon is derived when training starts). In 'close_pairs'
    mode a step computed on the list leaves its movement bound for the caller to check
    (:meth:`take_drift`, :meth:`missed_a_pair`), which the SAE reads in the same device
    sync as the loss's finiteness.
    """

    reused_step: int
    """'reuse': the step whose value and gradient are applied (-1: none)."""
    reused_grad_change: torch.Tensor | None
    """'reuse': relative change of the kept gradient between its last two computations
    (on the device; read at logging steps only)."""
    last_penalty: torch.Tensor | None
    """'weighted': the term at the last step that computed it (detached), the value logged
    on the steps between; None after construction or a state-dict load of the SAE."""

    def __init__(self, cfg: Any, pair_scope: MatryoshkaPairScope | None = None):
        super().__init__()
        self.cfg = cfg
        self.pair_scope = pair_scope
        self.close_pair_list = ClosePairList(cfg)
        self.reused_grad_change = None
        self.last_penalty = None
        self._drift: torch.Tensor | None = None
        self.forget()

    @property
    def matmul_dtype(self) -> torch.dtype | None:
        """The dtype of the cosine products (``ortho_matmul_dtype``; None: the rows')."""
        return ORTHO_MATMUL_DTYPES[self.cfg.ortho_matmul_dtype]

    def threshold_at(self, step: int) -> float:
        """The annealed threshold tau at training step ``step``."""
        cfg = self.cfg
        if cfg.ortho_anneal_steps is None:
            raise ValueError(
                "ortho_anneal_steps=None: the anneal horizon is unknown. Set it in the "
                "config, or train through SAELens's SAETrainer (any SAELens runner), "
                "which derives it from the run's budget when it starts."
            )
        return ortho_threshold(step, cfg.ortho_threshold_start, cfg.ortho_threshold_end, cfg.ortho_anneal_steps)

    def forget(self) -> None:
        """Drop the close-pair list (the next step scans again) and, in 'reuse' mode, the
        kept gradient (the next step computes the term)."""
        self._reused: tuple[torch.Tensor, torch.Tensor] | None = None
        self.reused_step = -1
        self.close_pair_list.forget()

    def computes_at(self, step: int) -> bool:
        """Whether the loss at ``step`` can be nonzero: in 'weighted' mode only every
        ``ortho_lazy_every``-th step; in 'reuse' mode every step."""
        return self.cfg.ortho_lazy_mode == "reuse" or step % self.cfg.ortho_lazy_every == 0

    def forward(self, D_nd: torch.Tensor, step: int, coefficient: float) -> torch.Tensor:
        """``coefficient`` x the term at ``step`` under the lazy schedule. 'weighted': on
        the steps that compute it, one step's term whose gradient counts
        ``ortho_lazy_every`` times; in between, the last computed value without a gradient
        (:meth:`value_between`), so that the logged loss reads like a per-step value.
        'reuse': see :meth:`reused`."""
        if self.cfg.ortho_lazy_mode == "reuse":
            return coefficient * self.reused(D_nd, step)
        if not self.computes_at(step):
            return coefficient * self.value_between(D_nd, step)
        penalty = self.penalty(D_nd, self.threshold_at(step), step)
        self.last_penalty = penalty.detach()
        r = self.cfg.ortho_lazy_every
        return coefficient * (penalty + (r - 1) * (penalty - penalty.detach()))  # value x 1, gradient x r

    def value_between(self, D_nd: torch.Tensor, step: int) -> torch.Tensor:
        """'weighted', between two computing steps: the term's last computed value
        (computed now, without a gradient, after construction or a load)."""
        if self.last_penalty is None:
            with torch.no_grad():
                self.last_penalty = self.penalty(D_nd.detach(), self.threshold_at(step), step)
            self._drift = None  # no step was computed on the list
        return self.last_penalty

    def reused(self, D_nd: torch.Tensor, step: int) -> torch.Tensor:
        """'reuse' mode: on a step that computes the term (``step % r == 0``, or the first
        step after construction, a load or a clock change), its value and its gradient
        ``(d_sae, d_in)`` with respect to the unit rows; on every step, a term whose value
        is that value and whose gradient is that gradient, carried to ``W_dec`` through
        the current normalisation: ``value + <D, g> - <D, g>.detach()``. O(d_sae d_in)
        between computations."""
        r, last = self.cfg.ortho_lazy_every, self.reused_step
        if self._reused is None or step % r == 0 or not (last <= step < last + r):
            D_leaf_nd = D_nd.detach().requires_grad_()
            with torch.enable_grad():
                value = self.penalty(D_leaf_nd, self.threshold_at(step), step)
                (grad_nd,) = torch.autograd.grad(value, D_leaf_nd, allow_unused=True)
            if grad_nd is None:  # a penalty with no pair in scope
                grad_nd = torch.zeros_like(D_leaf_nd)
            if self._reused is not None:
                old_nd = self._reused[1]
                self.reused_grad_change = (grad_nd - old_nd).norm() / old_nd.norm().clamp_min(1e-30)
            self._reused = (value.detach(), grad_nd)
            self.reused_step = step
        value, grad_nd = self._reused
        linear = (D_nd * grad_nd.to(D_nd.dtype)).sum()
        return value.to(D_nd.dtype) + (linear - linear.detach())

    def penalty(self, D_nd: torch.Tensor, tau: float, step: int) -> torch.Tensor:
        """The term at threshold ``tau`` on the unit rows ``D_nd``, in ``ortho_mode``, over
        the pairs in scope (``step``: the list's clock and the chunks' permutation).
        'ortsae' mode ignores ``tau``: the OrtSAE penalty has no threshold."""
        cfg, scope = self.cfg, self.pair_scope
        if cfg.ortho_mode == "ortsae":  # the config refuses a restricted scope
            return ortsae_penalty(D_nd, cfg.ortho_chunk_size, self.chunk_generator(step))
        if cfg.ortho_mode == "close_pairs":
            pairs_P2 = self.close_pair_list.at(step, D_nd.detach(), self.threshold_at(step))
            if pairs_P2 is not None:
                scan_decoder = self.close_pair_list.scan_decoder
                assert scan_decoder is not None
                self._drift = drift_bound(D_nd.detach(), scan_decoder)  # read by the caller
                if scope is None:
                    return ortho_penalty_pairs(D_nd, tau, pairs_P2, self.close_pair_list.rows)
                return ortho_penalty_pairs(D_nd, tau, scope.filter(pairs_P2))
            # Too many close pairs for a list: the same loss computed densely, or its
            # estimate on random chunks (ortho_overfull_chunks).
            if scope is None and cfg.ortho_overfull_chunks > 1:
                return self.overfull_estimate(D_nd, tau, step)
        if scope is not None:  # 'chunked' mode refuses a restricted scope
            return scope.exact(D_nd, tau, cfg.ortho_block_size, self.matmul_dtype)
        if cfg.ortho_mode != "chunked":
            return ortho_penalty_exact(D_nd, tau, cfg.ortho_block_size, self.matmul_dtype)
        return self._chunked(D_nd, tau, step, cfg.ortho_chunk_size)

    def overfull_estimate(self, D_nd: torch.Tensor, tau: float, step: int) -> torch.Tensor:
        """The term's estimate while the close-pair list is over-full: pairs inside
        ``ortho_overfull_chunks`` random chunks of ``ceil(d_sae / chunks)`` latents, with the
        permutation of ``step``."""
        return self._chunked(D_nd, tau, step, -(-D_nd.shape[0] // self.cfg.ortho_overfull_chunks))

    def chunk_generator(self, step: int) -> torch.Generator:
        """The generator of the chunks' permutation at ``step``: it depends only on
        (``projection_seed``, ``step``), so a resumed run draws the same ones."""
        return torch.Generator(device="cpu").manual_seed(self.cfg.projection_seed * 1_000_003 + step)

    def _chunked(self, D_nd: torch.Tensor, tau: float, step: int, chunk_size: int) -> torch.Tensor:
        generator = self.chunk_generator(step)
        return ortho_penalty_chunked(D_nd, tau, chunk_size, generator, self.cfg.ortho_block_size, self.matmul_dtype)

    def take_drift(self) -> torch.Tensor | None:
        """The movement bound of the last step computed on the close-pair list (a 0-dim
        tensor on the device), or None if no step was since the last call; clears it."""
        drift, self._drift = self._drift, None
        return drift

    def missed_a_pair(self, step: int, drift: float) -> bool:
        """Whether the step computed on the list with movement ``drift`` must be
        recomputed (:meth:`ClosePairList.missed_a_pair`)."""
        tau_next = self.threshold_at(step + self.cfg.ortho_lazy_every)
        return self.close_pair_list.missed_a_pair(step, drift, self.threshold_at(step), tau_next)

    def after_recompute(self, step: int) -> None:
        """Plan the next scan after ``step`` was recomputed on a fresh list."""
        self._drift = None
        if self.close_pair_list.pairs is not None:
            self.close_pair_list.plan_next_scan(0.0, self.threshold_at(step + self.cfg.ortho_lazy_every))
