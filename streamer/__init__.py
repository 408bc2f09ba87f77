"""streamer: streaming CPU inference for BirdCLEF+ 2026 style bioacoustic ensembles."""

__version__ = "0.1.0"
