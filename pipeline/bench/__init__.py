"""The benchmark suite behind `make bench` and `make bench-gpu`."""
