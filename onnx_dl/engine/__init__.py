"""The engine layer: the only part of onnx_dl that imports ONNX Runtime.

Its interface to the layers above, and nothing else:

- :mod:`.runtime`: the engine imported lazily (:func:`~.runtime.ort`, :func:`~.runtime.training`),
  :func:`~.runtime.require_device`, :func:`~.runtime.inference_session`, :func:`~.runtime.forward`
  (a forward probe of shapes) and :data:`~.runtime.COUNTERS` (time spent in the engine);
- :mod:`.session`: :class:`~.session.TrainingSession`, built from a
  :class:`~onnx_dl.training_graph.TrainingGraph`: ``run(feeds)`` one chunk forward and backward
  (gradients add up), ``reset_grad()``, ``parameter(name)`` / ``gradient(name)`` (NumPy views of the
  engine's buffers on the CPU), ``weights()`` / ``load_weights(values)``;
- :mod:`.solver`: :class:`~.solver.Solver`, a solver of :mod:`onnx_dl.solvers` over a session's
  parameters (``apply(params)``, ``state_arrays()``, ``load_state(state)``).

A second engine implements the same three names; the layers above never touch engine objects.
Submodules are imported by name (``from onnx_dl.engine.session import TrainingSession``) so that
the graph layer can use :mod:`.runtime` without loading the training session's imports.
"""
