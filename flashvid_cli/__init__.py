"""vidq: ask questions about videos with a vision-language model, fast."""

__version__ = "0.1.0"
