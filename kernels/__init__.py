"""Training-free visual token compression: plain tensors in, plain tensors out (no transformers here)."""

from .base import Method
from .errors import MethodError
from .registry import build, methods
from .types import Compressed, Grid

__all__ = ["Compressed", "Grid", "Method", "MethodError", "build", "methods"]
