"""The OrtSAE orthogonality penalty (arXiv 2509.22033): the kernel, a pure function.

With ``D`` the decoder with unit-norm rows and the latents cut into random chunks (a
new permutation every step), each latent ``i`` of chunk ``K`` contributes the largest
squared cosine with another latent of its chunk, and the penalty is the mean over all
``n`` latents:

    L_ortsae = (1 / n) sum_i max_{j in K(i), j != i} (D_i . D_j)^2

There is no threshold: every latent is pushed away from its nearest neighbour inside
its chunk, however small their cosine. A chunk of ``c`` latents costs a ``(c, c)``
cosine matrix, so the penalty is linear in ``n`` at a fixed chunk size; one chunk of all
``n`` latents is the penalty over the whole dictionary. A latent alone in its chunk (a
remainder chunk of one) has no neighbour and contributes 0.

How the penalty joins training (``ortho_mode='ortsae'``) is in
:class:`~orthosae_plugin.ortho_term.OrthogonalityTerm`; the maths in docs/method.md.
"""

from __future__ import annotations

import torch


def ortsae_penalty(D_nd: torch.Tensor, chunk_size: int, generator: torch.Generator) -> torch.Tensor:
    """The OrtSAE penalty of the unit rows ``D_nd`` ``(n, d_in)``: the latents permuted
    by ``generator`` and cut into chunks of ``chunk_size`` (the last one may be smaller),
    the mean over the ``n`` latents of each one's largest squared cosine with the other
    latents of its chunk. A 0-dim tensor, differentiable with respect to ``D_nd``."""
    n = D_nd.shape[0]
    perm_n = torch.randperm(n, generator=generator, device=generator.device).to(D_nd.device)
    total = D_nd.sum() * 0.0
    # One gather and one split, so that the backward pass touches (n, d_in) once.
    for chunk_cd in D_nd[perm_n].split(chunk_size):
        c = chunk_cd.shape[0]
        if c < 2:
            continue
        cos_sq_cc = (chunk_cd @ chunk_cd.T).square()
        # A squared cosine is >= 0, so zeroing the diagonal leaves each row's maximum over
        # the other latents.
        eye_cc = torch.eye(c, dtype=torch.bool, device=D_nd.device)
        total = total + cos_sq_cc.masked_fill(eye_cc, 0.0).amax(dim=1).sum()
    return total / n
