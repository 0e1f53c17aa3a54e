"""PyTorch: TorchScript archives (`torch.jit.save`, *.pt / *.pth) and torch.export archives
(`torch.export.save`, *.pt2), run on the CPU under `torch.inference_mode()`.

A plain pickled `nn.Module` (`torch.save(model)`) needs its Python class to load, so it is
served through code/inference.py; the error says so.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np

from sagehost.config import Settings
from sagehost.errors import ModelLoadError
from sagehost.models.arrays import Array, ArrayModel, flat
from sagehost.models.extras import require, threads_per_worker
from sagehost.models.files import model_files, zip_names
from sagehost.models.format import Format
from sagehost.predictor import Model, ModelSpec, Outputs


def find(model_dir: Path) -> list[Path]:
    return model_files(model_dir, ".pt", ".pth", ".pt2")


def load(path: Path, settings: Settings) -> Model:
    torch = require("torch", "torch", f"{path.name} (a PyTorch model)")
    _share_cores(torch, threads_per_worker(settings.workers))
    module = _exported(torch, path) if path.suffix == ".pt2" else _scripted(torch, path)

    def predict(x: Array) -> Outputs:
        with torch.inference_mode():
            out = module(torch.from_numpy(x))
        return flat(out.numpy())

    spec = ModelSpec(
        methods=frozenset({"predict"}),
        fork_safe=False,
        steady_cost=True,
        description=f"{path.name}: PyTorch {'exported program' if path.suffix == '.pt2' else 'TorchScript module'}",
    )
    return ArrayModel(spec, {"predict": predict}, np.float32)


def _exported(torch: Any, path: Path) -> Any:
    try:
        return torch.export.load(str(path)).module()
    except Exception as exc:  # torch raises a variety of errors for a foreign or damaged archive
        raise ModelLoadError(f"torch.export could not load {path.name}: {str(exc).splitlines()[0][:300]}") from None


def _scripted(torch: Any, path: Path) -> Any:
    names = zip_names(path)
    if not any("/code/" in name or name.endswith("constants.pkl") for name in names):
        raise ModelLoadError(
            f"{path.name} is not a TorchScript archive: it looks like torch.save() of a module or state_dict, "
            "which needs its Python class to load. Either save it with torch.jit.save(torch.jit.script(model), "
            "'model.pt'), or add code/inference.py whose model_fn builds the module and loads the weights."
        )
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except RuntimeError as exc:
        raise ModelLoadError(f"torch could not load {path.name}: {str(exc).splitlines()[0][:300]}") from None
    return module.eval()


def _share_cores(torch: Any, threads: int) -> None:
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # allowed once per process, before any parallel work
        torch.set_num_interop_threads(1)


FORMAT = Format("torch", extra="torch", files="TorchScript *.pt, *.pth; torch.export *.pt2", find=find, load=load)
