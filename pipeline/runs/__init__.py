"""Run folders: the run record (run.json), the encoders record (encoders.json) and the validated readers."""
