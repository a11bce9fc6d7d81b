"""`OneRecConfig`: the model's hyper-parameters as plain data, and the named presets.

The presets follow the OneRec paper's Table 1 sizes (layers = encoder + decoder, split equally).
Dataset-dependent fields (codebook shape, static feature cardinalities, item features, the
signals present) start at production-like defaults and are filled from the data with
`config.for_data(...)`. `to_dict` / `from_dict` round-trip through plain Python types, which is
how checkpoints store it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

MOE_PLACES = ("none", "decoder", "both")


@dataclass(frozen=True)
class OneRecConfig:
    name: str = "custom"
    # transformer
    num_encoder_layers: int = 2
    num_decoder_layers: int = 2
    d_model: int = 128
    d_ff: int = 256  # SwiGLU hidden width, and each expert's hidden width in MoE layers
    num_heads: int = 4
    num_experts: int = 0  # 0: dense SwiGLU everywhere
    top_k: int = 0
    moe_in: str = "none"  # "none" | "decoder" | "both"
    # semantic IDs (from the tokenizer)
    codebook_sizes: tuple[int, ...] = (8192, 8192, 8192)
    # pathways
    short_len: int = 20
    positive_len: int = 256
    lifelong_len: int = 2000  # compress_history target
    num_queries: int = 128  # QFormer queries summarising the lifelong pathway
    qformer_layers: int = 2
    # features the dataset has (absent features are simply absent)
    num_users: int = 0  # > 0: a user-id embedding in the static token
    static_cardinalities: tuple[int, ...] = ()
    num_static_numeric: int = 0
    item_cardinalities: tuple[int, ...] = ()  # item categorical features (author, category, ...)
    signals: tuple[str, ...] = ()  # interaction signals bucketized per token (play_time, ...)
    num_buckets: int = 32  # of time gaps, engagement and signals
    # regularization: dropout on the encoder's input tokens and on every sublayer's output
    # (residual branches) of both stacks, active in training mode only
    dropout: float = 0.0

    def __post_init__(self):
        def bad(msg):
            raise ValueError(f"OneRecConfig({self.name!r}): {msg}")
        if self.moe_in not in MOE_PLACES:
            bad(f"moe_in must be one of {MOE_PLACES}, got {self.moe_in!r}")
        if (self.moe_in == "none") != (self.num_experts == 0):
            bad(f"num_experts > 0 exactly when moe_in != 'none', got num_experts="
                f"{self.num_experts}, moe_in={self.moe_in!r}")
        if self.num_experts and not 1 <= self.top_k <= self.num_experts:
            bad(f"top_k must be in [1, {self.num_experts}], got {self.top_k}")
        if self.d_model % self.num_heads or self.d_model // self.num_heads not in (32, 64, 128):
            bad(f"d_model / num_heads must be 32, 64 or 128 (the attention kernel's head sizes), "
                f"got {self.d_model} / {self.num_heads}")
        if not 0.0 <= self.dropout < 1.0:
            bad(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.codebook_sizes or min(self.codebook_sizes) < 1:
            bad(f"codebook_sizes must be a non-empty tuple of ints >= 1, got {self.codebook_sizes}")
        for f in ("num_encoder_layers", "num_decoder_layers", "short_len", "positive_len",
                  "lifelong_len", "num_queries", "num_buckets"):
            if getattr(self, f) < 1:
                bad(f"{f} must be >= 1, got {getattr(self, f)}")

    @property
    def num_levels(self) -> int:
        return len(self.codebook_sizes)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def encoder_moe(self) -> bool:
        return self.moe_in == "both"

    @property
    def decoder_moe(self) -> bool:
        return self.moe_in in ("decoder", "both")

    @property
    def max_encoder_len(self) -> int:
        """Tokens of the longest user: [static; short; positive; lifelong queries]."""
        return 1 + self.short_len + self.positive_len + self.num_queries

    def for_data(self, codebook_sizes, dataset=None, *, with_user_ids: bool = False
                 ) -> "OneRecConfig":
        """This config with the codebook shape (e.g. `tokenizer.codebook_sizes`) and, given a
        `onerec.data.Dataset`, its static features, item categorical features and the
        interaction signals it records."""
        upd = {"codebook_sizes": tuple(int(k) for k in codebook_sizes)}
        if dataset is not None:
            upd.update(static_cardinalities=tuple(int(c) for c in dataset.users.cardinalities),
                       num_static_numeric=len(dataset.users.numeric_names),
                       item_cardinalities=tuple(int(c) for c in
                                                dataset.items.categorical_cardinalities),
                       signals=tuple(sorted(dataset.interactions.signals)),
                       num_users=dataset.num_users if with_user_ids else 0)
        return replace(self, **upd)

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "OneRecConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"OneRecConfig.from_dict: unknown fields {unknown}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    @classmethod
    def preset(cls, name: str, **overrides) -> "OneRecConfig":
        if name not in PRESETS:
            raise ValueError(f"OneRecConfig.preset: unknown preset {name!r}; "
                             f"choose one of {sorted(PRESETS)}")
        return replace(PRESETS[name], **overrides)


def _paper(name, layers, d, ff, heads, experts=0, top_k=0, moe_in="none"):
    return OneRecConfig(name=name, num_encoder_layers=layers // 2, num_decoder_layers=layers // 2,
                        d_model=d, d_ff=ff, num_heads=heads, num_experts=experts, top_k=top_k,
                        moe_in=moe_in)


# One source of truth for the model sizes (OneRec, Table 1). `tiny` is for CPU demos and tests:
# small everything, with a small MoE in both stacks so the MoE path runs on CPU.
PRESETS = {
    "tiny": OneRecConfig(name="tiny", num_encoder_layers=2, num_decoder_layers=2, d_model=64,
                         d_ff=64, num_heads=2, num_experts=4, top_k=2, moe_in="both",
                         codebook_sizes=(16, 16, 16), short_len=8, positive_len=16,
                         lifelong_len=64, num_queries=4, qformer_layers=1, num_buckets=16),
    # The public sequential-recommendation benchmarks (MovieLens, Amazon; histories of tens to
    # hundreds of items, ~1e5 interactions): tiny's widths, pathways long enough that the
    # lifelong history needs no compression (a forward then costs ~4x less on a CPU), and
    # dropout against overfitting such small data.
    "small": OneRecConfig(name="small", num_encoder_layers=2, num_decoder_layers=2, d_model=64,
                          d_ff=64, num_heads=2, num_experts=4, top_k=2, moe_in="both",
                          codebook_sizes=(32, 32, 32), short_len=50, positive_len=32,
                          lifelong_len=1024, num_queries=8, qformer_layers=1, num_buckets=16,
                          dropout=0.2),
    "onerec-0.015b": _paper("onerec-0.015b", 4, 128, 256, 4),
    "onerec-0.121b": _paper("onerec-0.121b", 8, 1024, 2048, 8),
    "onerec-0.935b": _paper("onerec-0.935b", 8, 1024, 2048, 8, 24, 2, "decoder"),
    "onerec-2.6b": _paper("onerec-2.6b", 24, 1024, 2048, 8, 24, 4, "both"),
}
# The nominal size each preset's name states (parameters), checked by a test.
NOMINAL_PARAMS = {"onerec-0.015b": 0.015e9, "onerec-0.121b": 0.121e9, "onerec-0.935b": 0.935e9,
                  "onerec-2.6b": 2.6e9}
