"""The OneRec model layers (modules under onerec.model.*; import them from their modules)."""
