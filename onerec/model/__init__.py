"""The OneRec model layers, built on the onerec_kernels ops (modules under onerec.model.*;
import them from their modules)."""
