"""onerec: the thin PyTorch layer over onerec_kernels (data, tokenizer, model, training,
profiling, CLI)."""
__version__ = "0.1.0"
