"""A tiny transformer with a planted first-letter feature, for running absorption evals offline.

SAEBench's absorption eval asks "does the SAE have a latent for *starts with L*, and on
which words does another latent take over (absorb) that direction?". To check that the
eval measures what it claims, we need a model whose first-letter feature we know exactly.
This module builds one:

* a word-level tokenizer over ~1150 real English words shipped with the package
  (``data/planted_words.txt``), each word a single token, plus the tokens SAEBench's
  prompt needs (``has the first letter:``, the answers ``A`` .. ``Z``);
* a :class:`~transformer_lens.HookedTransformer` whose token embedding is the sum of
  three planted parts (all unit directions, mutually orthogonal across parts)::

      W_E[t] = letter_norm * L[first_letter(t)]      # 26 orthonormal letter directions
             + group_norm  * G[group(t)]             # n_groups orthonormal "group" directions
             + token_norm  * U[t]                    # one random direction per token

  Non-alphabetic tokens (special tokens, ":") have only the token part. Positional
  embeddings are zero; the transformer blocks are randomly initialised and their outputs
  scaled down by ``block_output_scale``, so that the residual stream at every layer is the
  planted embedding plus a little noise from attention over the prompt. Groups are dealt
  round-robin within each letter (from a random first group), so every letter has about
  the same share of tokens in every group; they stand in for the semantic features that
  absorb the letter in real models (Chanin et al.'s " short" absorbing "starts with S").

:func:`build_reference_sae` hand-builds SAELens ``standard`` SAEs on top of the planted
directions with a known absorption rate: the letter latent is switched off (by the group
directions in its encoder) on every token of the chosen groups, and those tokens' own
latents carry the letter direction in their decoder instead. SAEBench's absorption score of
such an SAE is the share of absorbed tokens among the words it scores
(:meth:`PlantedFirstLetterModel.planted_absorption_rate`).
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from importlib import resources

import torch
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata
from tokenizers import Tokenizer, models, pre_tokenizers
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformers import PreTrainedTokenizerFast

PLANTED_MODEL_NAME = "planted-first-letter"
"""`model.cfg.model_name` of the planted model; ``orthosae-absorption --model`` accepts it."""

LETTERS = string.ascii_lowercase
SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>")
# SAEBench's default prompt is "{word} has the first letter:" followed by " X" answers; the
# word-level tokenizer needs each of these as a token (the words are in the word list too).
PROMPT_TOKENS = (":", "has", "the", "first", "letter", *string.ascii_uppercase)


def load_planted_words() -> list[str]:
    """The shipped English word list: lower-case, alphabetic, unique, every letter present."""
    text = resources.files(__package__).joinpath("data/planted_words.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def build_word_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    """A whitespace + punctuation word-level tokenizer whose vocabulary is exactly `words`
    plus the special and prompt tokens. It prepends ``<bos>`` itself, like Gemma's."""
    vocab: dict[str, int] = {}
    for token in (*SPECIAL_TOKENS, *PROMPT_TOKENS, *words):
        vocab.setdefault(token, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    # transformer-lens re-loads a tokenizer by `name_or_path` unless it already has
    # add_bos_token=True; with both set it uses this in-memory object as is.
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        add_bos_token=True,
        name_or_path=PLANTED_MODEL_NAME,
    )


@dataclass
class PlantedModelConfig:
    """Shape and planted magnitudes of the planted first-letter model."""

    d_model: int = 128
    """Residual width. Must exceed 26 + n_groups (the letter and group directions)."""
    n_layers: int = 1
    """Number of randomly initialised transformer blocks."""
    n_heads: int = 4
    """Attention heads per block (d_head = d_model / n_heads)."""
    d_mlp: int = 256
    """MLP width of each block."""
    n_ctx: int = 128
    """Context length; SAEBench's prompts (10 in-context examples) use 77 tokens here."""
    n_groups: int = 10
    """Number of group directions; reference SAEs absorb whole groups, so planted
    absorption rates are about k / n_groups."""
    letter_norm: float = 1.0
    """Norm of the planted first-letter part of each alphabetic token's embedding."""
    group_norm: float = 1.0
    """Norm of the group part of each alphabetic token's embedding."""
    token_norm: float = 1.0
    """Norm of the token-specific part of every embedding."""
    block_output_scale: float = 0.05
    """Factor on the blocks' output weights: the noise the blocks add to the residual."""
    seed: int = 0
    """Seeds the directions, the group assignment and the blocks."""
    model_name: str = PLANTED_MODEL_NAME
    """``model.cfg.model_name``; SAEs trained on the model record it."""

    def __post_init__(self) -> None:
        if self.d_model <= len(LETTERS) + self.n_groups:
            raise ValueError(
                f"d_model={self.d_model} must exceed 26 + n_groups={self.n_groups}: the "
                "letter and group directions need their own orthogonal subspace"
            )
        if self.n_groups < 1:
            raise ValueError(f"n_groups={self.n_groups}; allowed: an integer >= 1")


@dataclass
class PlantedFirstLetterModel:
    """The planted model and the ground truth needed to build reference SAEs on it."""

    model: HookedTransformer
    config: PlantedModelConfig
    letter_directions_LD: torch.Tensor
    """(26, d_model) orthonormal first-letter directions, 'a' first."""
    group_directions_GD: torch.Tensor
    """(n_groups, d_model) orthonormal group directions, orthogonal to the letters."""
    token_directions_VD: torch.Tensor
    """(d_vocab, d_model) unit token-specific directions, orthogonal to letters and groups."""
    token_letter_V: torch.Tensor
    """(d_vocab,) index in 'a'..'z' of each token's first letter; -1 if not alphabetic."""
    token_group_V: torch.Tensor
    """(d_vocab,) group of each alphabetic token; -1 if not alphabetic."""

    @property
    def hook_name(self) -> str:
        """The hook SAEs on this model read: the last block's residual output."""
        return f"blocks.{self.config.n_layers - 1}.hook_resid_post"

    @property
    def alpha_token_ids(self) -> torch.Tensor:
        """(n_alpha,) ids of the alphabetic tokens, in vocabulary order."""
        return torch.nonzero(self.token_letter_V >= 0).squeeze(1)

    def planted_absorption_rate(
        self, absorbed_groups: int, token_ids: torch.Tensor | None = None
    ) -> float:
        """Share of each letter's tokens that lie in the first `absorbed_groups` groups,
        averaged over letters as SAEBench averages its score: what ``build_reference_sae(
        self, absorbed_groups)`` scores on the words `token_ids` (default: all alphabetic
        tokens, which gives about absorbed_groups / n_groups)."""
        ids_T = self.alpha_token_ids if token_ids is None else token_ids
        absorbed_T = (self.token_group_V[ids_T] < absorbed_groups).float()
        letter_T = self.token_letter_V[ids_T]
        shares_L = torch.zeros(len(LETTERS)).index_add_(0, letter_T, absorbed_T)
        return float((shares_L / torch.bincount(letter_T, minlength=len(LETTERS))).mean())


def build_planted_model(
    config: PlantedModelConfig | None = None,
    words: list[str] | None = None,
    device: str = "cpu",
) -> PlantedFirstLetterModel:
    """Build the planted first-letter model (deterministic given ``config.seed``).

    `words` defaults to the shipped word list; any list of lower-case alphabetic words
    works, as long as every letter has enough words that SAEBench's random 80/20 split
    puts some in both the train and the test set. Only the set of words matters: they are
    deduplicated and sorted first, so a list built from a Python ``set`` (whose order
    changes with ``PYTHONHASHSEED`` from process to process) gives the same model in every
    process. Token ids follow that sorted order (the shipped list is already sorted).
    """
    cfg = config or PlantedModelConfig()
    tokenizer = build_word_tokenizer(sorted(set(words if words is not None
                                                else load_planted_words())))
    vocab = tokenizer.get_vocab()
    d_vocab = len(vocab)
    generator = torch.Generator().manual_seed(cfg.seed)

    # One random orthogonal basis: the first 26 columns are the letters, the next
    # n_groups the groups; token directions live in the remaining subspace.
    basis_DD, _ = torch.linalg.qr(torch.randn(cfg.d_model, cfg.d_model, generator=generator))
    letters_LD = basis_DD[:, : len(LETTERS)].T.contiguous()
    groups_GD = basis_DD[:, len(LETTERS) : len(LETTERS) + cfg.n_groups].T.contiguous()
    rest_DR = basis_DD[:, len(LETTERS) + cfg.n_groups :]
    tokens_VD = torch.randn(d_vocab, rest_DR.shape[1], generator=generator) @ rest_DR.T
    tokens_VD = tokens_VD / tokens_VD.norm(dim=-1, keepdim=True)

    token_letter_V = torch.full((d_vocab,), -1, dtype=torch.long)
    token_group_V = torch.full((d_vocab,), -1, dtype=torch.long)
    for letter_idx, letter in enumerate(LETTERS):
        ids = [i for t, i in vocab.items() if t.isalpha() and t[0].lower() == letter]
        ids_N = torch.tensor(sorted(ids), dtype=torch.long)
        ids_N = ids_N[torch.randperm(len(ids_N), generator=generator)]
        token_letter_V[ids_N] = letter_idx
        # Round-robin from a random first group, so that the groups that get one token
        # more than the others differ from letter to letter.
        first_group = int(torch.randint(cfg.n_groups, (1,), generator=generator))
        token_group_V[ids_N] = (torch.arange(len(ids_N)) + first_group) % cfg.n_groups

    is_alpha_V = token_letter_V >= 0
    embed_VD = cfg.token_norm * tokens_VD
    embed_VD[is_alpha_V] += cfg.letter_norm * letters_LD[token_letter_V[is_alpha_V]]
    embed_VD[is_alpha_V] += cfg.group_norm * groups_GD[token_group_V[is_alpha_V]]

    model_cfg = HookedTransformerConfig(
        n_layers=cfg.n_layers,
        d_model=cfg.d_model,
        n_ctx=cfg.n_ctx,
        d_head=cfg.d_model // cfg.n_heads,
        n_heads=cfg.n_heads,
        d_mlp=cfg.d_mlp,
        d_vocab=d_vocab,
        act_fn="gelu",
        normalization_type="LN",
        model_name=cfg.model_name,
        device=device,
    )
    # Seed the blocks' initialisation without reseeding the caller's global RNGs
    # (HookedTransformerConfig.seed would call set_seed_everywhere).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = HookedTransformer(model_cfg, tokenizer=tokenizer, move_to_device=False)
    with torch.no_grad():
        model.embed.W_E.copy_(embed_VD)
        model.pos_embed.W_pos.zero_()
        for block in model.blocks:
            block.attn.W_O.mul_(cfg.block_output_scale)
            block.mlp.W_out.mul_(cfg.block_output_scale)
    model.to(device, print_details=False)
    model.eval()
    return PlantedFirstLetterModel(
        model=model,
        config=cfg,
        letter_directions_LD=letters_LD,
        group_directions_GD=groups_GD,
        token_directions_VD=tokens_VD,
        token_letter_V=token_letter_V,
        token_group_V=token_group_V,
    )


def build_reference_sae(
    planted: PlantedFirstLetterModel,
    absorbed_groups: int,
    training_steps: int | None = None,
) -> StandardSAE:
    """Hand-build a ReLU SAE on `planted` in which `absorbed_groups` of the n_groups groups
    absorb the first-letter feature, i.e. a planted absorption rate of
    ``absorbed_groups / n_groups``.

    Latents, in order (every decoder row unit-norm, each latent's activation equal to the
    norm of the part it reconstructs):

    * 26 letter latents, decoder ``L[l]``. Each fires on the tokens starting with its
      letter, except those in an absorbed group: the encoder subtracts twice the absorbed
      group directions, which outweighs the letter part;
    * n_groups group latents, decoder ``G[g]``;
    * one latent per alphabetic token, decoder ``U[t]``; for a token in an absorbed group
      the decoder is ``normalize(letter_norm * L[l] + token_norm * U[t])``: the token's
      latent has absorbed its first letter.

    `training_steps` is written to ``cfg.metadata.training_steps`` (left unset by default,
    which is what a hand-built SAE honestly has).
    """
    cfg = planted.config
    if not 0 <= absorbed_groups <= cfg.n_groups:
        raise ValueError(
            f"absorbed_groups={absorbed_groups}; allowed: 0 .. n_groups={cfg.n_groups}"
        )
    a, g, w = cfg.letter_norm, cfg.group_norm, cfg.token_norm
    alpha_ids_T = planted.alpha_token_ids
    letter_T = planted.token_letter_V[alpha_ids_T]
    absorbed_T = planted.token_group_V[alpha_ids_T] < absorbed_groups
    n_letters, n_groups, n_tokens = len(LETTERS), cfg.n_groups, len(alpha_ids_T)
    d_sae = n_letters + n_groups + n_tokens

    W_enc_DS = torch.zeros(cfg.d_model, d_sae)
    W_dec_SD = torch.zeros(d_sae, cfg.d_model)
    b_enc_S = torch.zeros(d_sae)

    # Latent fires with activation m when the input has norm m along its direction:
    # ReLU(2 <x, dir> - m) is m on the planted part and 0 without it.
    letter_slice = slice(0, n_letters)
    suppress_D = planted.group_directions_GD[:absorbed_groups].sum(dim=0)
    W_enc_DS[:, letter_slice] = (2 * planted.letter_directions_LD - 2 * (a / g) * suppress_D).T
    W_dec_SD[letter_slice] = planted.letter_directions_LD
    b_enc_S[letter_slice] = -a

    group_slice = slice(n_letters, n_letters + n_groups)
    W_enc_DS[:, group_slice] = 2 * planted.group_directions_GD.T
    W_dec_SD[group_slice] = planted.group_directions_GD
    b_enc_S[group_slice] = -g

    token_slice = slice(n_letters + n_groups, d_sae)
    tokens_TD = planted.token_directions_VD[alpha_ids_T]
    absorbed_dec_TD = a * planted.letter_directions_LD[letter_T] + w * tokens_TD
    act_norm_T = torch.where(absorbed_T, absorbed_dec_TD.norm(dim=-1), torch.tensor(w))
    dec_TD = torch.where(absorbed_T[:, None], absorbed_dec_TD, tokens_TD)
    W_dec_SD[token_slice] = dec_TD / dec_TD.norm(dim=-1, keepdim=True)
    W_enc_DS[:, token_slice] = (2 * tokens_TD * (act_norm_T / w)[:, None]).T
    b_enc_S[token_slice] = -act_norm_T

    metadata = SAEMetadata(model_name=cfg.model_name, hook_name=planted.hook_name)
    if training_steps is not None:
        metadata.training_steps = training_steps
    sae = StandardSAE(StandardSAEConfig(d_in=cfg.d_model, d_sae=d_sae, metadata=metadata))
    with torch.no_grad():
        sae.W_enc.copy_(W_enc_DS)
        sae.W_dec.copy_(W_dec_SD)
        sae.b_enc.copy_(b_enc_S)
        sae.b_dec.zero_()
    return sae
