"""sagehost: serve any trained model behind the Amazon SageMaker hosting contract."""

from __future__ import annotations

from sagehost.config import Settings
from sagehost.errors import SagehostError

__all__ = ["SagehostError", "Settings"]
