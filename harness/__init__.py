"""scalelab: a pytest test lab for scalability experiments on N guests sharing one image."""

from __future__ import annotations

__version__ = "0.1.0"
