"""Training-free visual token compression: plain tensors in, plain tensors out (no transformers here)."""

from .base import Compressed, Grid, Method, MethodError
from .registry import build, methods

__all__ = ["Compressed", "Grid", "Method", "MethodError", "build", "methods"]
