"""`o2o report`: multi-seed statistics (rliable IQM, bootstrap CIs, probability of improvement),
tables and learning curves from run directories (runs.py reads, stats.py estimates, build.py writes)."""
