import os
import sys
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate


validate(config, "../schemas/params.schema.yaml")

# Jobs read params.yaml themselves (as DVC does), so --config may only choose the scale:
# any other override would be ignored by the jobs and the report would misstate its settings.
_declared = yaml.safe_load(open("params.yaml"))
_overridden = sorted(k for k in config if k != "scale" and config[k] != _declared.get(k))
if _overridden:
    raise WorkflowError(
        f"--config may only set `scale`; edit params.yaml for {', '.join(_overridden)}"
    )

# Jobs call the `genrecon` CLI installed beside the Python running Snakemake (e.g. .venv/bin),
# so `.venv/bin/snakemake` works without activating the environment first.
envvars:
    "PATH",


os.environ.update(PATH=os.pathsep.join([os.path.dirname(sys.executable), os.getenv("PATH")]))

SCALE = config["scale"]
S = config[SCALE]
RESULTS = f"results/{SCALE}"
# The default scale's report is results/report; another scale's sits in its own results folder,
# so a smoke run and a paper run on one machine never overwrite each other's report.
REPORT = "results/report" if SCALE == "smoke" else f"{RESULTS}/report"
LOGS = f"results/logs/{SCALE}"

MODELS = list(S["models"])
LODOPAB_MODELS = [m for m in MODELS if S["models"][m]["dataset"] == "lodopab"]
MNIST_FILES = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
]
DATASETS = sorted({S["models"][m]["dataset"] for m in MODELS})


def data_root(dataset):
    return f"data/{dataset}/{SCALE}"


def manifest(dataset):
    return f"{data_root(dataset)}/MANIFEST.json"


def model_dataset(wildcards):
    return S["models"][wildcards.model]["dataset"]


def model_manifest(wildcards):
    # ancient(): `dvc pull` resets mtimes; a restored dataset must not retrain every model.
    return ancient(manifest(model_dataset(wildcards)))


def model_params(wildcards):
    entry = S["models"][wildcards.model]
    return {
        "model": entry,
        "arch": S["architectures"][entry["arch"]],
        "train": S["train"][entry["dataset"]],
        "data": S["datasets"][entry["dataset"]],
        "seed": config["seed"],
    }


def resource(kind, key):
    table = S["resources"]
    return table.get(kind, table["default"]).get(key, table["default"][key])


wildcard_constraints:
    model="|".join(MODELS),
