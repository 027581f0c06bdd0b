"""The pieces of the training-step benchmarks (``tools/bench.py``, ``tools/bench_zoo.py``), by concern.

- :mod:`.cases`: what ``bench.py`` measures: the cases, the solvers, the model and batch of a case,
  and the loss check that makes the comparison like for like;
- :mod:`.onnx_dl_side`: the worker side that trains with onnx_dl (never imports torch), timing the
  engine through ``onnx_dl.engine.runtime.COUNTERS``;
- :mod:`.torch_side`: the PyTorch eager peer running the same training graph;
- :mod:`.workers`: worker processes (the JSON request loop and the parent's handle), interleaved
  blocks of steps, the step timer, peak RSS;
- :mod:`.host`: the machine: its description and the probes of how much a second thread helps;
- :mod:`.report`: the summary of one case and the Markdown table.

The entry scripts put ``tools/`` on ``sys.path`` (Python does, for the script's folder), so these
modules are imported as ``benchlib.<name>``.
"""
