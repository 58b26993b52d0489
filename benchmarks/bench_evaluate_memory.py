"""`lrptool evaluate` on photos: peak memory and wall time for many images.

Runs ``lrptool evaluate`` on the trained SqueezeNet v1.0 (Caffe, 227×227 input) from
../shared/models/real (or $LRPTOOL_SHARED_MODELS) for N photos (default 50: the 15 natural images
there, mirrored and cropped into distinct pictures), in a fresh process. Peak memory is the
process's high-water mark (VmHWM) minus its resident size once lrptool, onnxruntime and the model
are loaded, as in bench_lrp.py: what the evaluation itself holds, independent of import size.

Usage: ``python benchmarks/bench_evaluate_memory.py [--images 50] [-- extra evaluate options]``,
e.g. ``-- --patch 4 --steps 20`` for the former defaults. Two threads, as on the CI machine.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
SHARED = pathlib.Path(os.environ.get("LRPTOOL_SHARED_MODELS", HERE.parents[1] / "shared" / "models"))
MODEL = SHARED / "real/caffe-squeezenet-dc/SqueezeNet_deploy.prototxt"
WEIGHTS = SHARED / "real/caffe-squeezenet-dc/squeezenet_dc.caffemodel"


def make_photos(folder, count):
    """``count`` distinct pictures from the shared natural images: each original, mirrored, and
    centre crops of decreasing size."""
    from PIL import Image, ImageOps

    sources = sorted(p for p in (SHARED / "real/images").iterdir() if p.suffix in (".png", ".jpg"))
    made = 0
    variant = 0
    while made < count:
        for source in sources:
            if made == count:
                break
            with Image.open(source) as image:
                picture = image.convert("RGB")
            if variant % 2:
                picture = ImageOps.mirror(picture)
            shrink = 1.0 - 0.1 * (variant // 2)
            width, height = picture.size
            box = (int(width * (1 - shrink) / 2), int(height * (1 - shrink) / 2),
                   int(width * (1 + shrink) / 2), int(height * (1 + shrink) / 2))
            picture.crop(box).save(folder / f"{made:03d}_{source.stem}.png")
            made += 1
        variant += 1


def worker(arguments):
    """In a fresh process: load everything, note the resident size, run the command, report."""
    import resource

    import onnxruntime  # noqa: F401 - loaded before the baseline, as the command loads it anyway

    from converters import load_model
    from lrptool import cli, evaluate  # noqa: F401

    load_model(str(MODEL), weights=str(WEIGHTS))
    with open("/proc/self/statm") as handle:
        before = int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass
    start = time.perf_counter()
    try:
        cli.main(arguments)
    except SystemExit as exit_status:
        code = exit_status.code
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1]) * 1024
    print(json.dumps({"seconds": seconds, "peak": peak - before, "exit": code}), file=sys.__stdout__)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("extra", nargs="*", help="more `lrptool evaluate` options (after --)")
    options = parser.parse_args()
    if not MODEL.is_file():
        raise SystemExit(f"SqueezeNet not found at {MODEL} (set LRPTOOL_SHARED_MODELS)")
    env = dict(os.environ, OMP_NUM_THREADS="2", NUMBA_NUM_THREADS="2", OPENBLAS_NUM_THREADS="2")
    with tempfile.TemporaryDirectory() as temp:
        photos = pathlib.Path(temp) / "photos"
        photos.mkdir()
        make_photos(photos, options.images)
        command = ["evaluate", str(MODEL), "--weights", str(WEIGHTS), str(photos), "-o", str(pathlib.Path(temp) / "out"),
                   "--preprocess", "caffe"] + options.extra
        result = subprocess.run([sys.executable, __file__, "--worker"] + command, capture_output=True, text=True,
                                env=env)
        lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
        if not lines:
            raise SystemExit(f"evaluate failed:\n{result.stderr}")
        figures = json.loads(lines[-1])
        print("lrptool evaluate SqueezeNet_deploy.prototxt --weights squeezenet_dc.caffemodel PHOTOS -o OUT "
              + " ".join(command[6:]))
        print("\n".join(line for line in result.stderr.splitlines() if "evaluate:" in line))
        print(f"{options.images} photos: {figures['seconds']:.1f} s, peak memory {figures['peak'] / 2**20:.0f} MiB "
              f"above the loaded model (exit {figures['exit']})")


if __name__ == "__main__":
    main()
