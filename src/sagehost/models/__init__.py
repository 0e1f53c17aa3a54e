"""Models: one module per format (listed in registry.py), and the one loader over them.

`describe(model_dir, settings)` says what `serve` would load from a directory without loading
it; `load(settings)` loads it. Beside them: the lean predict paths (fast.py), request rows put in
the model's column order (schema.py), and a user's inference.py run as the AWS toolkits run it
(script.py).
"""

from __future__ import annotations

from sagehost.models.loader import ARCHIVE, Loaded, Servable, describe, fork_safe, load

__all__ = ["ARCHIVE", "Loaded", "Servable", "describe", "fork_safe", "load"]
