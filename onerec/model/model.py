"""The OneRec model: encoder + decoder, teacher-forced loss, and constrained generation.

    config = OneRecConfig.preset("tiny").for_data(tokenizer.codebook_sizes, dataset)
    model = OneRec(config)
    batch = build_batch(dataset, users, times, item_codes, config)   # onerec.model.batch
    loss = model.loss(batch, target_codes)                       # (B, L) semantic IDs
    result = model.recommend(batch, trie, beam_width=32)        # items, codes, scores

Inference does what OneRec's serving does: the encoder runs once per user, each decoder layer's
cross-attention K/V are projected once per user and shared by all beams (the beams of a user are
that user's queries in the ragged kernel), and the decoder's self-attention KV cache is reordered
by the search's parent beams with one gather per step.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from onerec_kernels import BeamSearchResult, SemanticIdTrie, constrained_beam_search

from .batch import EncoderBatch, check_batch
from .config import OneRecConfig
from .decoder import Decoder
from .encoder import Encoder, EncoderOutput
from .layers import count_parameters


class OneRec(nn.Module):
    """config: OneRecConfig. backend: kernel backend of every op (None: the fastest available
    for the tensors' device; "torch": the plain PyTorch references)."""

    def __init__(self, config: OneRecConfig, backend: str | None = None):
        super().__init__()
        self.config = config
        # One table per semantic-ID level, shared by encoder tokens and decoder inputs.
        self.code_emb = nn.ModuleList(nn.Embedding(k, config.d_model)
                                      for k in config.codebook_sizes)
        self.encoder = Encoder(config, self.code_emb, backend)
        self.decoder = Decoder(config, self.code_emb, backend)

    def set_backend(self, backend: str | None) -> None:
        """Switch the kernel backend of every op in the model (e.g. "torch" for the references)."""
        for m in self.modules():
            if hasattr(m, "backend"):
                m.backend = backend

    def num_parameters(self) -> tuple[int, int]:
        """(total, active): MoE layers count only top_k of their experts as active."""
        return count_parameters(self)

    def extra_repr(self) -> str:
        total, active = self.num_parameters()
        return f"preset={self.config.name!r}, params={total / 1e6:.2f}M, active={active / 1e6:.2f}M"

    def encode(self, batch: EncoderBatch) -> EncoderOutput:
        if not isinstance(batch, EncoderBatch):
            raise TypeError(f"OneRec: batch must be an EncoderBatch (onerec.model.batch."
                            f"encoder_batch), got {type(batch).__name__}")
        check_batch(batch, self.config)
        return self.encoder(batch)

    def _check_codes(self, codes: torch.Tensor) -> None:
        L = self.config.num_levels
        if codes.dim() != 2 or codes.shape[1] != L or codes.dtype != torch.int64:
            raise ValueError(f"OneRec: codes must be (B, {L}) int64, got {tuple(codes.shape)} "
                             f"{codes.dtype}")
        if codes.device.type == "cpu" and codes.numel():  # free on the host only
            high = torch.tensor(self.config.codebook_sizes)
            if bool(((codes < 0) | (codes >= high)).any()):
                raise ValueError(f"OneRec: codes outside the codebook sizes "
                                 f"{self.config.codebook_sizes}")

    def forward(self, batch: EncoderBatch, codes: torch.Tensor) -> list[torch.Tensor]:
        """codes (B, L) int64 target semantic IDs -> L logits tensors (B, K_l)."""
        self._check_codes(codes)
        if codes.shape[0] != batch.batch_size:
            raise ValueError(f"OneRec: codes has {codes.shape[0]} rows, the batch "
                             f"{batch.batch_size} users")
        return self.decoder(self.encode(batch), codes)

    def loss(self, batch: EncoderBatch, codes: torch.Tensor) -> torch.Tensor:
        """Next-token cross-entropy over the L code tokens (mean over users and levels)."""
        logits = self(batch, codes)
        return sum(F.cross_entropy(lg.float(), codes[:, lvl]) for lvl, lg in enumerate(logits)
                   ) / len(logits)

    def step_fn(self, enc: EncoderOutput) -> "BeamStepper":
        return BeamStepper(self.decoder, enc)

    @torch.no_grad()
    def recommend(self, batch: EncoderBatch, trie: SemanticIdTrie, beam_width: int, *,
                  backend: str | None = None, exclude_offsets: torch.Tensor | None = None,
                  exclude_items: torch.Tensor | None = None) -> BeamSearchResult:
        """The top beam_width items per user, legal by construction: BeamSearchResult with
        codes (B, W, L), scores (B, W) summed log-probs, item_ids (B, W), best first (-1 /
        -inf where the catalogue has fewer items than W). backend: of the beam-search step.
        exclude_offsets (B + 1,) / exclude_items (T,) int64: optional packed per-user items
        never to return (e.g. `pathways.lifelong.offsets` / `.item`), masked inside the search
        (see `constrained_beam_search`)."""
        if not isinstance(trie, SemanticIdTrie):
            raise TypeError(f"OneRec.recommend: trie must be a SemanticIdTrie, got "
                            f"{type(trie).__name__}")
        if tuple(trie.vocab_sizes) != tuple(self.config.codebook_sizes):
            raise ValueError(f"OneRec.recommend: the trie's codebook shape {trie.vocab_sizes} is "
                             f"not the model's {self.config.codebook_sizes}")
        enc = self.encode(batch)
        return constrained_beam_search(self.step_fn(enc), trie, batch.batch_size, beam_width,
                                       backend=backend, exclude_offsets=exclude_offsets,
                                       exclude_items=exclude_items)


class BeamStepper:
    """step_fn for `constrained_beam_search`: one decoder position per call for every beam.

    Cross-attention K/V of every layer are projected once here, per user; the self-attention KV
    cache (num_layers, 2, B * W, L, H, Dh) is reordered by the parent beams with one
    index_select per step (all layers at once), never recomputed."""

    def __init__(self, decoder: Decoder, enc: EncoderOutput):
        self.decoder, self.enc = decoder, enc
        self.cross_kv = decoder.cross_kv(enc)
        self.cache: torch.Tensor | None = None

    def __call__(self, tokens: torch.Tensor, parents: torch.Tensor | None) -> torch.Tensor:
        B, W, t = tokens.shape
        dec, cfg = self.decoder, self.decoder.config
        if t == 0:
            mem = self.enc.memory
            self.cache = mem.new_zeros((cfg.num_decoder_layers, 2, B * W, cfg.num_levels,
                                        cfg.num_heads, cfg.head_dim))
            x = dec.bos.expand(B, W, -1)
        else:
            w_prev = self.cache.shape[2] // max(B, 1)
            rows = (parents + torch.arange(B, device=parents.device)[:, None] * w_prev).flatten()
            self.cache = self.cache.index_select(2, rows)
            x = dec._code_emb[0][t - 1](tokens[:, :, t - 1])
        return F.log_softmax(dec.step(x, self.enc, self.cross_kv, self.cache, t).float(), dim=-1)
