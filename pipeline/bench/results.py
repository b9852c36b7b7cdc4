"""The benchmark's results written out: results.json (every figure) and results.md (a table with each
figure's target, looked up by the last one or two parts of its name)."""

import json

from pipeline.files import output_folder, write_text_atomic


def write_results(out, results):
    out = output_folder(out, "--out")
    write_text_atomic(out / "results.json", json.dumps(results, indent=2) + "\n")
    write_text_atomic(out / "results.md", markdown(results))
    return out


def markdown(results):
    lines = [f"Machine: {results['machine']}", "", "| figure | value | target |", "|---|---|---|"]
    for key, value, target in flatten_figures(results):
        lines.append(f"| `{key}` | {value} | {target} |")
    return "\n".join(lines) + "\n"


TARGETS = {"efficiency": ">= 0.9 (base)", "vs_embed": ">= 0.9", "speedup_vs_naive": ">= 3", "seconds_100k": "<= 30 s",
           "rss_growth": "<= 1.1", "seconds_100k_20k": "< 60 s (2 CPU cores)", "load_overhead": "<= 1.3",
           "cosine_min": ">= 0.999", "vs_predict": ">= 0.8", "matches_predict": "1.0",
           "vs_reference.preview": "<= 0.65", "vs_reference.photo": "<= 0.9", "max_level_diff": "<= 2",
           "main_loop_ms_per_batch": "<= 5", "busy_vs_quiet": "<= 2"}


def flatten_figures(results, prefix=""):
    for key, value in results.items():
        if key == "machine":
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from flatten_figures(value, name + ".")
        else:
            yield name, value, TARGETS.get(".".join(name.split(".")[-2:]), TARGETS.get(key, ""))
