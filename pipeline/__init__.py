"""The pipeline: between the engine (plan vocabulary, Runner, records) and the commands.

- :mod:`pipeline.presets`: the preset files (``presets/``) and ``--cfg-options``;
- :mod:`pipeline.resolve`: a run's plan from its layers (knows the method and task
  registries);
- :mod:`pipeline.cell`: one cell: plan, pretrained checkpoint, task run, record;
- :mod:`pipeline.describe`: ``--dry-run`` and ``--explain``.

The commands (:mod:`benchmarks`) and the tests import from here.
"""
