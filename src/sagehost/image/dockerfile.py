"""The Dockerfile `sagehost build` writes next to the build context, for users to read and keep.

Two stages. The first installs sagehost and the model's dependencies into a virtual environment
from the wheelhouse in the context, offline (`--no-index`): no index, proxy or credentials are
needed inside the build, and the same wheelhouse gives the same image. The second copies only
that environment onto a fresh base: no wheels, compilers or pip caches in the image.

The entry point is exec-form, so the server is PID 1 and receives SageMaker's SIGTERM; it takes
`serve` and `train` as SageMaker passes them (`docker run IMAGE serve`). Not tini: SageMaker's
docs warn that it mistakes those arguments, and sagehost's supervisor reaps its own children.
https://docs.aws.amazon.com/sagemaker/latest/dg/your-algorithms-inference-code.html
"""

from __future__ import annotations

import shlex
from importlib.metadata import version

from sagehost.image.plan import DEFAULT_BASE_IMAGE, ImagePlan

VENV = "/opt/venv"
WHEELHOUSE = "wheelhouse"
MODEL_IN_CONTEXT = "model"
REQUIREMENTS_IN_CONTEXT = "requirements.txt"
SIGNATURE = "# Rendered by sagehost"  # marks a context `sagehost build` may replace


def render(plan: ImagePlan) -> str:
    lines = [
        f"{SIGNATURE} {version('sagehost')} (`sagehost build`): it serves {plan.serves}.",
        "# Rebuild with: podman build (or docker build) --platform linux/amd64 -t TAG <this directory>",
        f"ARG BASE_IMAGE={DEFAULT_BASE_IMAGE}",
        "",
        "FROM ${BASE_IMAGE} AS build",
        f"COPY {WHEELHOUSE} /{WHEELHOUSE}",
    ]
    # pip compiles the bytecode here, since a read-only root cannot cache it at run time.
    install = f"{VENV}/bin/pip install --no-index --find-links /{WHEELHOUSE} --no-cache-dir"
    install += f" {shlex.quote(plan.requirement)}"
    if plan.requirements is not None:
        lines.append(f"COPY {REQUIREMENTS_IN_CONTEXT} /{REQUIREMENTS_IN_CONTEXT}")
        install += f" -r /{REQUIREMENTS_IN_CONTEXT}"
    lines += [
        f"RUN python3 -m venv {VENV} \\",
        f" && {install} \\",
        # Test suites shipped inside packages (numpy, scipy, pandas …) are a quarter of the stack.
        f" && find {VENV}/lib -depth -type d -name tests -path '*/site-packages/*/tests' -exec rm -rf {{}} + \\",
        f" && {VENV}/bin/pip uninstall -q -y pip",
        "",
        "FROM ${BASE_IMAGE}",
    ]
    if plan.system_packages:
        packages = " ".join(plan.system_packages)
        lines += [
            "RUN apt-get update \\",
            f" && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {packages} \\",
            " && rm -rf /var/lib/apt/lists/*",
        ]
    lines.append(f"COPY --from=build {VENV} {VENV}")
    if plan.model_dir is not None:
        lines.append(f"COPY {MODEL_IN_CONTEXT}/ /opt/ml/model/")
    lines += [
        # Nothing is written outside /tmp at run time, so the image runs on a read-only root.
        f"ENV PATH={VENV}/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 SAGEHOST_SCRATCH_DIR=/tmp/sagehost",
        *(f'LABEL {key}="{value}"' for key, value in sorted(plan.labels.items())),
        "EXPOSE 8080",
        f'ENTRYPOINT ["{VENV}/bin/sagehost"]',
        'CMD ["serve"]',
        "",
    ]
    return "\n".join(lines)
