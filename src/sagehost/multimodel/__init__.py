"""Multi-model serving: many models behind one endpoint (`sagehost serve --multi-model`, or
`SAGEMAKER_MULTI_MODEL=true`, which SageMaker sets for `Mode=MultiModel`).

The server starts with no model and answers /ping 200. SageMaker loads models with
POST /models, invokes them with POST /models/NAME/invoke and unloads them with DELETE when it
needs room (sagemaker-contract.md §4). Each model is served as `sagehost serve` serves one:
loaded by `sagehost.models.load`, warmed up, micro-batched behind its own RowService (or a
ScriptService for an inference.py), every model call on the worker's one model thread.

Design, with several workers (forked processes on one socket; any of them may get any call):

- One registry shared by the workers: a directory made before they fork (`shared.py`), holding
  the state (each model's directory, phase and what each worker's copy costs) changed under a
  file lock, plus one locked file per worker, whose lock tells whether it is alive.
- POST /models, in the worker that gets it: refuse a name already there (409) or a model whose
  files would not fit (507); load and warm it on the worker's load thread, measure what it
  costs, refuse it if it does not fit after all (507, memory given back); then mark it for
  every worker and notify them (one datagram each on an abstract unix socket). Each worker
  loads its own copy and records it; the first worker answers 200 once every live worker has
  one, so from that answer on every worker serves it. If one cannot load it, none keeps it.
- DELETE /models/NAME: mark it for unloading, notify, answer 200 once no worker holds a copy.
- A worker that replaces one that died loads every registered model before it serves; the
  dead worker's copies stop counting the moment its lock is gone.
- Memory (`budget.py`): every copy is counted, at what it measured (or, until a worker has
  loaded it, at the first worker's measure); the budget is `--model-memory-mb`, else a share
  of the container's cgroup memory limit.
- Loading never blocks the event loop: /ping and the other models' invocations go on meanwhile.

The App delegates the /models routes to `routes.Routes`; `host.serve_models` runs the processes.
"""
