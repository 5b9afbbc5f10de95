"""One module per ``dvc.yaml`` stage, each a thin shell whose ``run`` reads params and inputs, calls the
libraries and writes the stage's outputs atomically.  Stages never import each other; what they share lives in
the library packages (``data``, ``features``, ``search``, ``scoring``, ``figures``, ``report``)."""

#: the ``dvc.yaml`` stages: ``python -m cbir <stage>`` calls ``cbir.stages.<stage>.run`` (names, not module
#: strings, so this table imports nothing and a stage's import closure holds only its own module)
STAGES = ("download", "weights", "curate", "extract", "evaluate", "across")
