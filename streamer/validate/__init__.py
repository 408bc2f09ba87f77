"""Local validation on the labelled training soundscapes: the competition metric (``score``),
cached model outputs (``cache``) and sweeps of the post-model settings (``sweep``)."""
