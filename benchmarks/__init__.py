"""Benchmarks of IntentRec's own code paths (not unit tests): ``python -m benchmarks.run``.

Sections: ``data`` (synthetic events -> cache), ``train`` (step throughput per model),
``eval`` (full-catalogue ranking), ``quality`` (time to reference quality on ml-100k) and,
with ``--device cuda``, ``mfu`` (model FLOP utilisation at a realistic size). Every figure is
one JSON line on stdout; see ``benchmarks/README.md``.
"""
