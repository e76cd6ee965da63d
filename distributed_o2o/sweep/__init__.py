"""Multi-seed studies: a sweep file (spec.py) -> cached datasets and policies (stages.py) ->
fine-tuning trials on Ray Tune (trials.py), driven by `o2o sweep` (run.py)."""
