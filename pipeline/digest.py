"""What a run's data depends on, hashed: the scenario (its text and command-line
overrides) and the code that computes it (:data:`DATA_CODE`). On its own, so that
checking a run directory against its manifest (pipeline.store) needs neither
the model library nor Numba."""
from functools import lru_cache
import hashlib
import json
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]

# the sources a shard's data depends on, relative to the folder holding the
# kernels and pipeline packages: the numerical core and the modules a shard
# task runs (tests/test_run_integrity.py checks that this covers every module
# pipeline.shard, pipeline.config and pipeline.layout import)
DATA_CODE = ("kernels", "pipeline/__init__.py", "pipeline/cohort.py", "pipeline/config.py",
             "pipeline/digest.py", "pipeline/durable.py", "pipeline/layout.py",
             "pipeline/outcomes.py", "pipeline/policies.py", "pipeline/predictors.py",
             "pipeline/shard.py")


def scenario_digest(text, overrides):
    """sha256 of the text, followed by the overrides as canonical JSON if any."""
    data = text.encode("utf-8")
    if overrides:
        data += b"\n" + json.dumps(dict(overrides), sort_keys=True,
                                   separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(data).hexdigest()


@lru_cache(maxsize=1)
def code_files():
    """{relative path: sha256} of every Python source in :data:`DATA_CODE`."""
    paths = []
    for entry in DATA_CODE:
        path = _ROOT / entry
        paths += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return {p.relative_to(_ROOT).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in paths}


def code_digest(files=None):
    """sha256 over :func:`code_files` (or ``files``): one line per source, sorted."""
    listing = "".join(f"{path} {digest}\n"
                      for path, digest in sorted((files or code_files()).items()))
    return hashlib.sha256(listing.encode("utf-8")).hexdigest()
