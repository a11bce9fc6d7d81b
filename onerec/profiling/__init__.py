"""Reports a person reads: plots of the tokenizer (and, as later stages land, FLOPs/MFU)."""
from .report import plot_tokenizer_report

__all__ = ["plot_tokenizer_report"]
