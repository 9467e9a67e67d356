"""benchmarks/gpu.sh's last step: merges this call's runs into OUT/results.json and prints each
part's figures. Standard library only (it runs where TensorFlow is not installed).

  python benchmarks/gpu_results.py --out=DIR --status=FILE --parts=m1,m1m2 --seeds="0 1" \
      --seconds=480 --dry_run=0

FILE holds a "NAME STATUS" line per run of the call (done, kept, stopped, not_started). Only
those runs' entries are replaced: what earlier calls recorded for other runs or parts stays.
"""

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import sys


def last_checkpoint(run_dir):
    """The step of the newest checkpoint in `run_dir`, or None."""
    checkpoints = os.path.join(run_dir, "checkpoints")
    names = os.listdir(checkpoints) if os.path.isdir(checkpoints) else []
    steps = [int(n[5:]) for n in names if n.startswith("step-") and n[5:].isdigit()]
    return max(steps) if steps else None


def read_json(path):
    with open(path) as f:
        return json.load(f)


def run_entry(out, name, status):
    """What results.json records of run `name`: its status, last checkpoint and metrics."""
    run_dir = os.path.join(out, name)
    entry = {"status": status, "last_checkpoint_step": None}
    if os.path.isdir(run_dir):
        entry["last_checkpoint_step"] = last_checkpoint(run_dir)
        metrics = os.path.join(run_dir, "metrics.json")
        if os.path.exists(metrics) and os.path.exists(os.path.join(run_dir, "model.keras")):
            entry["status"] = "finished"
            entry["metrics"] = read_json(metrics)
        iwae = os.path.join(run_dir, "iwae.json")
        if os.path.exists(iwae):
            entry["iwae"] = read_json(iwae)
    return entry


def versions():
    """The installed versions (package metadata: nothing is imported, which takes seconds)."""
    out = {"python": platform.python_version()}
    for package in ("jax", "jaxlib", "keras", "numpy", "torch", "tfp-nightly"):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = None
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--status", required=True)
    parser.add_argument("--parts", required=True)
    parser.add_argument("--seeds", required=True)
    parser.add_argument("--seconds", type=int, required=True)
    parser.add_argument("--dry_run", type=int, default=0)
    args = parser.parse_args()

    out = args.out
    path = os.path.join(out, "results.json")
    results = read_json(path) if os.path.exists(path) else {}
    results.setdefault("runs", {})
    results.setdefault("calls", [])
    with open(args.status) as f:
        statuses = dict(line.split() for line in f if line.strip())
    for name, status in statuses.items():
        if name == "speed":
            if status == "done":
                results["speed"] = read_json(os.path.join(out, "speed.json"))
            continue
        if name == "best_mnist_iwae":
            continue
        entry = run_entry(out, name, status)
        # A run this call did not start keeps what an earlier call recorded of it.
        if status != "not_started" or name not in results["runs"]:
            results["runs"][name] = entry
    results["calls"].append(
        {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "parts": args.parts.split(","),
            "seeds": args.seeds.split(),
            "seconds": args.seconds,
            "dry_run": bool(args.dry_run),
            "runs": statuses,
            "versions": versions(),
        }
    )
    accs = {
        name: r["metrics"]
        for name, r in sorted(results["runs"].items())
        if name.startswith("m1m2_s") and r.get("metrics")
    }
    if accs:
        summary = {"seeds": len(accs)}
        for key in ("accuracy", "accuracy_binarized"):
            values = [100 * m[key] for m in accs.values()]
            summary[f"mean_{key}"] = statistics.mean(values)
            summary[f"std_{key}"] = statistics.stdev(values) if len(values) > 1 else None
        results["m1m2_summary"] = summary
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=2)
    os.replace(tmp, path)  # Whole or not at all.

    lines = []
    for name, status in statuses.items():
        r = results["runs"].get(name)
        if r is None:
            continue
        m = r.get("metrics")
        if not m:
            lines.append(f"{name}: {status}, last checkpoint at step {r['last_checkpoint_step']}")
        elif name.startswith("m1m2_s"):
            lines.append(
                f"{name}: test accuracy {100 * m['accuracy']:.2f}% "
                f"({100 * m['accuracy_binarized']:.2f}% binarised), {m['steps']} steps, "
                f"{m['train_seconds']:.0f} s"
            )
        else:
            bounds = ", ".join(
                f"{k} {m[k]:.2f}" for k in sorted(m) if k in ("nelbo", "kl", "rec", "loss")
            )
            iwae = ""
            if r.get("iwae"):
                iwae = "; bin/evaluate: " + ", ".join(
                    f"{k} {v:.2f}"
                    for k, v in r["iwae"].items()
                    if k.startswith("niwae") and isinstance(v, float)
                )
            lines.append(
                f"{name}: test {bounds}{iwae}; {m['steps']} steps, {m['train_seconds']:.0f} s"
            )
    if "m1m2_summary" in results and any(n.startswith("m1m2_s") for n in statuses):
        s = results["m1m2_summary"]
        std = lambda v: f" +/- {v:.2f}" if v is not None else ""  # noqa: E731
        lines.append(
            f"M1+M2 over the {s['seeds']} finished seed(s) in results.json: "
            f"{s['mean_accuracy']:.2f}%{std(s['std_accuracy'])} "
            f"({s['mean_accuracy_binarized']:.2f}%{std(s['std_accuracy_binarized'])} binarised)"
        )
    print("\n".join(lines))
    print(f"Call: {args.seconds} s; results in {path}")


if __name__ == "__main__":
    sys.exit(main())
