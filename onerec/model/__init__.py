"""Model layer of onerec: modules built on the onerec_kernels ops."""
