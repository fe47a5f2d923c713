"""The scenario hash, on its own so that checking a run directory against its
manifest (pipeline.store) needs neither the model library nor Numba."""
import hashlib
import json


def scenario_digest(text, overrides):
    """sha256 of the text, followed by the overrides as canonical JSON if any."""
    data = text.encode("utf-8")
    if overrides:
        data += b"\n" + json.dumps(dict(overrides), sort_keys=True,
                                   separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(data).hexdigest()
