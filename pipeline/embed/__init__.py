"""Stage one: embed the splits once and cache the vectors as Parquet (run, loader, writer, cache, fingerprint)."""
