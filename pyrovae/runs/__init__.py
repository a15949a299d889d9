"""The run layer: what the ``pyrovae`` command and the ``experiments/`` scripts share to make a
training run — provenance and JSON (`provenance`), the device and processes (`launch`), the
run-folder policy (`folder`), the data sets of a run (`data`), and one module per model family
(`vae`, `m2`) that builds its model, callbacks and metrics from a run's options.

Both front ends only parse, call this layer and print; the library below it (``models``,
``infer``, ``data``) never imports it.
"""

from pyrovae.runs.launch import RunError, resolve_device, start_processes
from pyrovae.runs.provenance import command_line, provenance, write_json

__all__ = ["RunError", "command_line", "provenance", "resolve_device", "start_processes",
           "write_json"]
