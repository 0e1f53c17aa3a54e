from __future__ import annotations

from sagehost.cli import main

main()
