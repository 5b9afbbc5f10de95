"""One thin shell per dvc.yaml stage: read params and inputs, call library functions, write outputs
atomically, log what was read and written.  Stages never import each other."""
