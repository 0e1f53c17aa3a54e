"""H2O-3 MOJOs (`download_mojo`'s *.zip), scored in-process in one long-lived JVM per worker
through H2O's genmodel EasyPredictModelWrapper (via JPype): never a process per request.

The JVM needs `h2o-genmodel.jar` beside the MOJO (`download_mojo(..., get_genmodel_jar=True)`
writes it). A JVM does not survive fork, so each worker starts its own after the fork.
Named fields in; class probabilities out, labelled `<response>.<class>` as H2O's scorer does.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from sagehost.config import Method, Settings
from sagehost.errors import ModelLoadError, UnsupportedMethod
from sagehost.models.arrays import require_method
from sagehost.models.extras import require
from sagehost.models.files import model_files, zip_names
from sagehost.models.format import Format
from sagehost.predictor import ColumnKind, Model, ModelSpec, Outputs, Rows

GENMODEL_JAR = "h2o-genmodel.jar"


def find(model_dir: Path) -> list[Path]:
    return [p for p in model_files(model_dir, ".zip") if "model.ini" in zip_names(p)]


def load(path: Path, settings: Settings) -> Model:
    jar = _genmodel_jar(path.parent)
    jpype = require("jpype", "h2o", f"{path.name} (an H2O MOJO)")
    if not jpype.isJVMStarted():
        settings.scratch_dir.mkdir(parents=True, exist_ok=True)
        # A JVM's crash report goes to scratch, not into whatever directory the server runs in.
        error_file = f"-XX:ErrorFile={settings.scratch_dir}/hs_err_pid%p.log"
        # At exit JPype would call DestroyJavaVM, which waits for every non-daemon Java thread; the
        # thread that started the JVM here is a loader thread that has long ended without detaching,
        # so the wait can last forever and a drained server never exits after SIGTERM. A MOJO scorer
        # holds nothing to flush: the JVM ends with the process. https://jpype.readthedocs.io/en/latest/userguide.html#customization
        setattr(require("jpype.config", "h2o", "JPype's settings"), "destroy_jvm", False)  # noqa: B010
        jpype.startJVM(error_file, classpath=[str(jar)], convertStrings=True)
    easy_predict = jpype.JClass("hex.genmodel.easy.EasyPredictModelWrapper")
    try:
        mojo = jpype.JClass("hex.genmodel.MojoModel").load(str(path))
    except Exception as exc:  # a Java exception, surfaced by JPype
        raise ModelLoadError(f"H2O genmodel could not load {path.name}: {str(exc)[:300]}") from None
    config = (
        jpype.JClass("hex.genmodel.easy.EasyPredictModelWrapper$Config")()
        .setModel(mojo)
        .setConvertUnknownCategoricalLevelsToNa(True)
        .setConvertInvalidNumbersToNa(True)
    )
    return MojoScorer(mojo, easy_predict(config), path.name, settings.target_name)


def _genmodel_jar(model_dir: Path) -> Path:
    jars = [model_dir / GENMODEL_JAR] + sorted(model_dir.glob("*genmodel*.jar"))
    for jar in jars:
        if jar.is_file():
            return jar
    raise ModelLoadError(
        f"{model_dir} holds an H2O MOJO but no {GENMODEL_JAR} to score it with. Put the jar beside the MOJO: "
        "h2o.download_mojo(model, path=DIR, get_genmodel_jar=True) writes both, or take "
        "ai.h2o:h2o-genmodel (the same version as the H2O that trained it) from Maven Central."
    )


class MojoScorer:
    def __init__(self, mojo: Any, wrapper: Any, description: str, target: str | None) -> None:
        from jpype import JClass

        self._wrapper = wrapper
        self._row_data = JClass("hex.genmodel.easy.RowData")
        self._category = str(mojo.getModelCategory().toString())
        names = [str(n) for n in mojo.getNames()][: int(mojo.nfeatures())]
        domains = [mojo.getDomainValues(i) for i in range(len(names))]
        kinds = tuple(ColumnKind.NUMBER if d is None else ColumnKind.TEXT for d in domains)
        response_domain = mojo.getDomainValues(mojo.getResponseIdx())
        classes = tuple(str(c) for c in response_domain) if response_domain is not None else None
        self._names = names
        methods = {"predict", "predict_proba"} if self._category in ("Binomial", "Multinomial") else {"predict"}
        self._spec = ModelSpec(
            methods=frozenset(methods),
            feature_names=tuple(names),
            n_features=len(names),
            kinds=kinds if ColumnKind.TEXT in kinds else None,
            classes=classes,
            default_method="predict_proba" if "predict_proba" in methods else "predict",
            target=target or str(mojo.getResponseName()),
            fork_safe=False,
            description=f"{description}: H2O MOJO ({self._category}, {mojo.getClass().getSimpleName()})",
        )

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    def predict(self, rows: Rows, method: Method) -> Outputs:
        require_method(method, self._spec)
        values = rows.values.tolist() if isinstance(rows.values, np.ndarray) else rows.values
        answers = [self._predict_row(self._row(row)) for row in values]
        if method == "predict_proba":
            return np.array([list(a.classProbabilities) for a in answers], dtype=np.float64)
        if self._category == "Regression":
            return np.array([float(a.value) for a in answers], dtype=np.float64)
        return [str(a.label) for a in answers]

    def _row(self, row: list[Any]) -> Any:
        data = self._row_data()
        for name, value in zip(self._names, row, strict=True):
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue  # absent: H2O treats it as missing
            data.put(name, value if isinstance(value, str) else float(value))
        return data

    def _predict_row(self, data: Any) -> Any:
        if self._category == "Binomial":
            return self._wrapper.predictBinomial(data)
        if self._category == "Multinomial":
            return self._wrapper.predictMultinomial(data)
        if self._category == "Regression":
            return self._wrapper.predictRegression(data)
        raise UnsupportedMethod(
            f"H2O model category {self._category} is not served; binomial, multinomial and regression are."
        )


FORMAT = Format(
    "h2o",
    extra="h2o",
    files="H2O MOJO *.zip (with h2o-genmodel.jar beside it)",
    find=find,
    load=load,
    system_packages=("default-jre-headless",),  # the JVM that runs h2o-genmodel.jar
)
